"""Train the event store's zstd dictionary: `python bench/train_events_dict.py` writes
gateway/events/events-v1.zdict from generated bench-shaped events (bench/event_samples.py).

A dictionary is part of the on-disk format: stored events name theirs by the first byte of the
body, so a retrained dictionary ships as a new file and version (gateway/events/codec.py), never
over an old one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.event_samples import sample_events

OUT = Path(__file__).resolve().parent.parent / "gateway" / "events" / "events-v1.zdict"
SIZE = 16 * 1024


def main() -> None:
    samples = [orjson.dumps(e) for e in sample_events(20_000, seed=7)]
    trained = zstandard.train_dictionary(SIZE, samples, level=19)
    OUT.write_bytes(trained.as_bytes())
    print(f"{OUT}: {len(trained.as_bytes())} bytes from {len(samples)} events")


if __name__ == "__main__":
    main()
