"""The original PyFilter's patterns and a catalog rule's, run on the catalog's sample lines.

Each catalog rule has `NAME.cases` beside it: lines written from the daemon's
own format strings and real logs (docs/rules.md). The lines an original
pattern matches tell what it was written for; which of them our rule counts,
in which mode and with which pattern, tells how to stand in for it: the mode
that counts most of them, and our patterns for the original's instant ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from pyfilter.cli.imports.pyfilter_v1_format import V1Pattern
from pyfilter.common.config import Pattern, Rule
from pyfilter.detector.matching import Matcher

# {{text}}, {{word:text}}, {{quoted:text}}, {{#u:text}}, {{word#u:text}}: the text, unmarked
_CLIENT_TEXT = re.compile(r"\{\{(?:(?:word|quoted)?(?:#\w+)?:)?(.*?)\}\}")


@dataclass
class Compared:
    mode: str | None
    counted: dict[int, tuple[int, int]]  # original pattern index -> (sample lines it matches, ours counts)
    instant: dict[int, list[int]]  # original instant pattern index -> our patterns that fail there


def sample_lines(cases: Path) -> list[tuple[str, str | None, bool]]:
    """(line, program, forget connections first) of a catalog cases file, client-text marks removed."""
    out = []
    program, reset = None, False
    for raw in cases.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "=>")):
            continue
        if line.startswith("@"):
            word, _, value = line[1:].partition(" ")
            if word == "program":
                program = value.strip() or None
            reset = reset or word == "reset"
            continue
        out.append((_CLIENT_TEXT.sub(r"\1", raw), program, reset))
        reset = False
    return out


def compare(name: str, rule: Rule, lines: list[tuple[str, str | None, bool]],
            patterns: list[V1Pattern]) -> Compared:
    """Run the original's patterns and ours (in each mode) over the same sample lines."""
    hits = {p.index: [i for i, (line, _, _) in enumerate(lines) if re.search(p.regex, line)] for p in patterns}
    found: dict[str | None, list[set[int]]] = {}
    for mode in rule.modes or [rule.mode]:
        matcher = Matcher({name: msgspec.structs.replace(rule, mode=mode)})
        per_line = []
        for line, program, reset in lines:
            if reset:
                matcher.reset()
            per_line.append({f.pattern for f in matcher.match(line, program=program)})
        found[mode] = per_line
    counted_in = {m: {p.index: sum(1 for i in hits[p.index] if per[i]) for p in patterns}
                  for m, per in found.items()}
    # The first mode (the default comes first) that counts most of what the original counted.
    counting = [p.index for p in patterns if not p.instant]
    mode = max(found, key=lambda m: sum(counted_in[m][i] for i in counting))
    instant = {}
    for p in (p for p in patterns if p.instant):
        ours = sorted({k for i in hits[p.index] for k in found[mode][i]}
                      or {k for per in found.values() for i in hits[p.index] for k in per[i]})
        instant[p.index] = [k for k in ours if _plain_failure(rule.patterns[k])]
    return Compared(mode, {p.index: (len(hits[p.index]), counted_in[mode][p.index]) for p in patterns}, instant)


def _plain_failure(pattern: str | Pattern) -> bool:
    """A pattern that is a failure alone (no connection-state tag), with its address."""
    text = pattern if isinstance(pattern, str) else pattern.re
    return not text.startswith("<") and ("<HOST>" in text or "<ADDR>" in text)
