"""The event store at volume: write bench-shaped decision events (bench/event_samples.py) through
the store as the gateway's writer does (batches of 500) and print bytes per event, events per
second written, the writer's CPU per event and the store's size over time.

    python bench/events_soak.py                      # the soak: a million events
    python bench/events_soak.py --events 100000      # what `make bench` runs
    python bench/events_soak.py --max-size 64MiB     # the same under a cap (evictions counted)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.event_samples import sample_events
from gateway.events.disk import file_bytes
from gateway.events.store import EventStore
from kt.commands.gateway import parse_size

BATCH = 500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--max-size", default="4GiB", help="the store's cap (--events-max-size)")
    parser.add_argument("--dir", default=None, help="where to put events.db (default: a temporary directory)")
    parser.add_argument("--reports", type=int, default=10, help="lines of the size-over-time table")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="kt-events-soak-"))
    path = workdir / "events.db"
    store = EventStore(path, max_bytes=parse_size(args.max_size, "--max-size"))
    every = max(BATCH, args.events // max(1, args.reports) // BATCH * BATCH)
    print(f"event soak: {args.events:,} events into {path} (cap {args.max_size})")
    print(f"{'events':>10} {'store MB':>9} {'bytes/event':>11} {'events/s':>9} {'CPU us/event':>12}")
    events = sample_events(args.events, seed=5)
    cpu = wall = 0.0
    written = 0
    while written < args.events:
        batch = [next(events) for _ in range(min(BATCH, args.events - written))]
        c0, w0 = time.thread_time(), time.perf_counter()
        store.add(batch)  # the writer thread's work: encode, make room, insert, commit
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
        written += len(batch)
        if written % every == 0 or written == args.events:
            size = file_bytes(path)
            stored = written - store.evicted - store.dropped
            print(f"{written:>10,} {size / 1e6:>9.1f} {size / max(1, stored):>11.0f} {written / wall:>9,.0f} "
                  f"{cpu / written * 1e6:>12.1f}")
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = file_bytes(path)
    stored = store.count()
    print(f"events stored {stored:,} (evicted {store.evicted:,}, dropped {store.dropped:,}); "
          f"store {size / 1e6:.1f} MB = {size / max(1, stored):.0f} bytes/event; "
          f"written {written / wall:,.0f} events/s; writer CPU {cpu / written * 1e6:.1f} us/event")
    store.close()
    if args.dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
