"""Offline matching the way the detector does it: batches of 1,000 lines.

    python -m bench.match [--rule NAME] FILE

Reads the file like the collector (bytes split on newlines, UTF-8 with
replacement), hands each batch of 1,000 lines to `Matcher.match_batch` with
the catalog (or one rule), and prints one JSON object: lines, failures and
the seconds spent from opening the file to the last batch. Process start-up
and catalog compilation are not in `seconds` (the caller times the whole
process too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyfilter.cli import load_rules
from pyfilter.detector.rules import Matcher

BATCH = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", metavar="NAME", help="only this rule of the catalog")
    parser.add_argument("file")
    args = parser.parse_args()
    matcher = Matcher(load_rules(None, args.rule))
    now = time.time()
    started = time.perf_counter()
    lines = failures = 0
    match_batch = matcher.match_batch
    with open(args.file, "rb") as f:
        batch: list[str] = []
        for raw in f:
            batch.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if len(batch) == BATCH:
                failures += len(match_batch(batch, None, now))
                lines += len(batch)
                batch = []
        if batch:
            failures += len(match_batch(batch, None, now))
            lines += len(batch)
    seconds = time.perf_counter() - started
    json.dump({"lines": lines, "failures": failures, "seconds": seconds}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
