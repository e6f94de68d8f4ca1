"""The long HTTP fuzz campaign against a real `kt gateway run` (`make fuzz`).

    python bench/fuzz.py                          # 100,000 cases, seed from FUZZ_SEED or the clock
    python bench/fuzz.py --requests 5000 --seed 7
    python bench/fuzz.py --seed 7 --case 1234     # replay one case (what a finding's report says)
    python bench/fuzz.py --seed 7 --case 1234 --keep 0,2   # only some of its ops (the shrunk reproducer)

Prints the seed, what it tried (cases per family and route, every op, statuses seen, RSS) and
every finding with a minimal reproducer; exits 1 when there is a new finding (one not in
tests/fuzzing/campaign.py KNOWN_ISSUES). See docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing import campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=int(os.environ.get("FUZZ_REQUESTS", 100_000)),
                        help="cases to run (env FUZZ_REQUESTS; default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="campaign seed (env FUZZ_SEED; default: the clock)")
    parser.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    parser.add_argument("--case", type=int, action="append", help="replay only this case (repeatable)")
    parser.add_argument("--keep", default=None, help="with --case: indices of the ops to keep, e.g. 0,2 or none")
    parser.add_argument("--concurrency", type=int, default=12, help="connections at once (default 12)")
    parser.add_argument("--max-rss-mb", type=float, default=600.0, help="RSS bound of the gateway (default 600)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(os.environ.get("FUZZ_SEED", int(time.time()) % 1_000_000))
    keep = None
    if args.keep is not None:
        keep = set() if args.keep == "none" else {int(i) for i in args.keep.split(",")}
    print(f"fuzz: seed {seed} (replay with FUZZ_SEED={seed}), "
          f"{len(args.case) if args.case else args.requests} cases", flush=True)
    report = campaign.run(seed, args.requests, start=args.start, only=args.case, keep=keep,
                          concurrency=args.concurrency, max_rss_mb=args.max_rss_mb,
                          log=lambda line: print(line, flush=True))
    print(report.text(), flush=True)
    return 1 if report.new_findings() or not report.alive else 0


if __name__ == "__main__":
    sys.exit(main())
