"""How long each rule takes over hostile 16 KB lines (docs/hostile-lines.md).

    python -m bench.hostile_lines [--catalog DIR] [--write docs/hostile-lines.md]

For every rule with a cases file, every case line with client text marked
`{{...}}` is given, one field at a time, the 16 KB values the hostile test
uses (`tests/unit/rulecases.hostile_values`: runs of spaces, tabs, the line's
own words, each literal of the rule's patterns), and goes through
`Matcher.match` of that rule alone, best of 3. The aim is under 5 ms per line
for every rule; the test suite checks what the lines give, this measures
how long they take.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pyfilter.common.config import load_catalog
from pyfilter.detector.matching import Matcher
from tests.unit import rulecases

AIM_MS = 5.0


def measure(catalog_dir: Path) -> list[tuple[str, int, float, str]]:
    """Per rule: (name, hostile lines of 16 KB or more, slowest ms, what the slowest held)."""
    catalog = load_catalog(catalog_dir)
    out = []
    for name, rule in sorted(catalog.items()):
        path = catalog_dir / f"{name}.cases"
        if not path.exists():
            continue
        cases = rulecases.read(path)
        count, worst, what = 0, 0.0, ""
        for case, index, value, matcher, line in rulecases.hostile_lines(name, rule, cases):
            if len(value) < rulecases.LONG:
                continue
            best = min(_once(matcher, line, case) for _ in range(3))
            count += 1
            if best > worst:
                worst, what = best, f"{path.name}:{case.line_no} field {index}: {value[:24]!r}..."
        out.append((name, count, worst * 1000, what))
    return out


def _once(matcher: Matcher, line: str, case: rulecases.Case) -> float:
    started = time.perf_counter()
    matcher.match(line, None, case.now, "bench", case.tz, case.program)
    return time.perf_counter() - started


def document(rows: list[tuple[str, int, float, str]]) -> str:
    slowest = max(rows, key=lambda r: r[2])
    over = [r for r in rows if r[2] > AIM_MS]
    lines = [
        "# Hostile lines: how long each rule takes over 16 KB of client text",
        "",
        "Written by `python -m bench.hostile_lines --write docs/hostile-lines.md` (part of",
        "`make bench`); do not edit by hand.",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Lines: {sum(r[1] for r in rows):,} hostile lines of 16 KB or more, over {len(rows)} rules: each",
        "  case line of a rule's cases file with client text, one field at a time filled with runs of",
        "  spaces, tabs, the line's own words and each literal of the rule's patterns (the values the",
        "  hostile test uses), each through `Matcher.match` of that rule alone, best of 3.",
        f"- Aim: under {AIM_MS:g} ms per line. Slowest: {slowest[0]}, {slowest[2]:.2f} ms. "
        + (f"Over the aim: {', '.join(r[0] for r in over)}." if over else "No rule is over the aim."),
        "",
        "| rule | 16 KB lines | slowest ms | slowest line |",
        "|---|--:|--:|---|",
    ]
    lines += [f"| {name} | {count} | {ms:.2f} | `{what}` |" for name, count, ms, what in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", metavar="DIR", default=str(rulecases.CATALOG),
                        help="rule folder with its cases files (default: the checkout's)")
    parser.add_argument("--write", metavar="FILE", help="write the table there (Markdown)")
    args = parser.parse_args(argv)
    rows = measure(Path(args.catalog))
    for name, count, ms, what in rows:
        flag = "  OVER THE AIM" if ms > AIM_MS else ""
        print(f"  {name:24} {count:5} lines, slowest {ms:7.2f} ms  {what}{flag}")
    if args.write:
        Path(args.write).write_text(document(rows))
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
