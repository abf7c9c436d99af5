"""Offline matching the way the detector does it: batches of 1,000 lines.

    python -m bench.match [--rule NAME] FILE

Reads the file like the collector (bytes split on newlines, UTF-8 with
replacement, a trailing CR dropped), hands each batch of 1,000 lines to
`Matcher.match_batch` with the catalog (or one rule), and prints one JSON
object: lines, failures, the seconds spent from opening the file to the last
batch, and of those the seconds inside `match_batch`. Process start-up and
catalog compilation are not in `seconds` (the caller times the whole process
too).

The file is read in chunks of a few MB, each decoded at once and split on
newlines: the same lines as decoding line by line (a newline byte is never
part of a multi-byte character), without a Python step per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Iterator

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
    matching = 0.0
    match_batch = matcher.match_batch
    for batch in _batches(args.file):
        t = time.perf_counter()
        failures += len(match_batch(batch, None, now))
        matching += time.perf_counter() - t
        lines += len(batch)
    seconds = time.perf_counter() - started
    json.dump({"lines": lines, "failures": failures, "seconds": seconds, "matching": matching}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _batches(path: str, chunk: int = 4 << 20) -> Iterator[list[str]]:
    """The file's lines, BATCH at a time."""
    pending: list[str] = []
    rest = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1  # a line cut by the chunk waits for the next one
            rest = data[cut:]
            pending += _lines(data[:cut])
            while len(pending) >= BATCH:
                yield pending[:BATCH]
                del pending[:BATCH]
    if rest:
        pending += _lines(rest + b"\n")
    while pending:
        yield pending[:BATCH]
        del pending[:BATCH]


def _lines(data: bytes) -> list[str]:
    """Complete lines (`data` ends with a newline), as the collector decodes them."""
    lines = data.decode("utf-8", "replace").split("\n")
    lines.pop()  # after the last newline
    if b"\r" in data:
        lines = [line.rstrip("\r\n") for line in lines]
    return lines


if __name__ == "__main__":
    sys.exit(main())
