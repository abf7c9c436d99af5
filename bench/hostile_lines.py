"""How long the catalog takes over one hostile line: long request paths built to make a
regex backtrack (the numbers behind docs/benchmarks.md "Hostile lines").

    python -m bench.hostile_lines [--catalog DIR]

Each line goes through `Matcher.match` with the whole catalog, best of 3.
"""

from __future__ import annotations

import argparse
import sys
import time

from pyfilter.cli import load_rules
from pyfilter.detector.matching import Matcher

ACCESS = '198.51.100.5 - - [22/Nov/2026:01:59:00 +0000] "GET {} HTTP/1.1" 404 153 "-" "curl/8.0"'
ERROR = ('2026/11/22 01:59:00 [error] 1#1: *1 open() "/usr/share/nginx/html/x" failed (2: No such file or '
         'directory), client: 198.51.100.5, server: x, request: "GET {} HTTP/1.1", host: "x"')
LINES = {
    "access log, 8,000 slashes": ACCESS.format("/" * 8000 + "nonexistent"),
    "error log, 8,000 slashes": ERROR.format("/" * 8000 + "nonexistent"),
    "access log, /db x 2,700": ACCESS.format("/db" * 2700),
    "error log, /db x 2,700": ERROR.format("/db" * 2700) + ", x",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", metavar="DIR", help="rule folder (default: the checkout's)")
    args = parser.parse_args()
    matcher = Matcher(load_rules(args.catalog, None))
    for name, line in LINES.items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            matcher.match(line, None, 1_795_000_000.0)
            times.append(time.perf_counter() - started)
        print(f"  {name:28} {min(times) * 1000:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
