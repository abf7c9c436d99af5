"""One rule over a batch of messages, with as little Python per message as possible.

The messages are joined by newlines (a leading newline included) and one
regex search per rule runs over the whole block, so Python only touches the
messages that match; the result is the same as matching them one by one
(`CompiledRule.block_regex` is None for the patterns where it would not be,
which are matched one by one).

`scan_common` is the same walk over whole lines, the rule's search reading
their headers too (matcher.py says when).

`Lines` carries, per message, its envelope's stamp and pid, which the rule
needs to date a failure and follow its connection.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from pyfilter.detector.matching import envelopes
from pyfilter.detector.matching.compiled import CompiledRule
from pyfilter.detector.matching.connections import Failure

__all__ = ["Lines", "scan", "scan_common"]

# A block is scanned as one string when a rule's literals occur in at least
# one message in SPARSE; rarer rules only search the messages holding one.
SPARSE = 8


class Lines(NamedTuple):
    """Messages for one rule, their envelopes' stamps and pids, and where they come from."""

    messages: Sequence[str]
    stamps: Sequence[str | None]
    pids: Sequence[str | None]
    source: str | None
    origin: str | None  # the host whose log holds them
    now: float | None


def scan(rule: CompiledRule, lines: Lines, lits: tuple[str, ...]) -> list[tuple[int, Failure]]:
    """(index in `lines.messages`, failure) for every failure of `rule` in the messages, in order."""
    texts = lines.messages
    block = "\n" + "\n".join(texts)
    if lits and not any(lit in block for lit in lits):
        return []
    if (rule.block_regex is None or block.count("\n") != len(texts)
            or (lits and sum(map(block.count, lits)) * SPARSE < len(texts))):
        return one_by_one(rule, lines, lits)
    if rule.anchored:
        return _scan_anchored(rule, block, lines, lits)
    return _scan_block(rule, block, lines, lits)


def one_by_one(rule: CompiledRule, lines: Lines, lits: tuple[str, ...]) -> list[tuple[int, Failure]]:
    """The rule over each message alone."""
    found = []
    judge, search = rule.judge, rule.regex.search
    texts = lines.messages
    for k in range(len(texts)):
        text = texts[k]
        if lits and not any(lit in text for lit in lits):
            continue
        m = search(text)
        if m is not None:
            failure = judge(m, text, k, lines)
            if failure is not None:
                found.append((k, failure))
    return found


def _scan_block(rule: CompiledRule, block: str, lines: Lines, lits: tuple[str, ...]) -> list[tuple[int, Failure]]:
    """A rule that may match anywhere in a line (an older whole-line rule) over the block.

    After a match the search goes on at the next line (a line yields at most
    one match, the leftmost, as a search of the line alone would; no match
    runs over a line end, see `for_block`). A line without any of the
    literals `lits` is skipped, as `one_by_one` skips it.
    """
    found = []
    search, judge = rule.block_regex.search, rule.judge  # type: ignore[union-attr]
    texts = lines.messages
    count, find = block.count, block.find
    pos, line, size = 1, 0, len(block)
    while pos < size:
        m = search(block, pos)
        if m is None:
            break
        start = m.start()
        line += count("\n", pos, start)
        text = texts[line]
        if not lits or any(lit in text for lit in lits):
            failure = judge(m, text, line, lines)
            if failure is not None:
                found.append((line, failure))
        pos = find("\n", start)
        if pos < 0:
            break
        pos += 1
        line += 1
    return found


def _scan_anchored(rule: CompiledRule, block: str, lines: Lines,
                   lits: tuple[str, ...]) -> list[tuple[int, Failure]]:
    """A rule anchored at the message start, whose block regex starts with a newline.

    Every match starts at a message's newline and ends in that message
    (`for_block`), so one `finditer` walks the block.
    """
    found = []
    judge = rule.judge
    texts = lines.messages
    count = block.count
    one = lits[0] if len(lits) == 1 else None
    line, at = -1, 0
    for m in rule.block_regex.finditer(block):  # type: ignore[union-attr]
        start = m.start()
        line += count("\n", at, start + 1)
        at = start + 1
        text = texts[line]
        if one is not None:
            if one not in text:
                continue
        elif lits and not any(lit in text for lit in lits):
            continue
        failure = judge(m, text, line, lines)
        if failure is not None:
            found.append((line, failure))
    return found


def scan_common(rule: CompiledRule, block: str, texts: Sequence[str], source: str | None, origin: str | None,
                now: float | None) -> tuple[list[tuple[int, Failure]], int]:
    """`rule` over whole lines (`block`: `texts` joined, a leading newline included) with
    its `common_regex`, up to the first line without the common header.

    Returns (index in `texts`, failure) for each failure before that line, and
    its index (len(texts) if there is none): the lines from there on are for
    `read_batch` and `scan`, after these, so that the connection state sees every
    line in order.
    """
    found = []
    rx = rule.common_regex()
    assert rx is not None
    judge, lits = rule.judge, rule.gate
    stamps: list[str | None] = [None] * len(texts)
    pids: list[str | None] = [None] * len(texts)
    lines = Lines(texts, stamps, pids, source, origin, now)  # judge reads the stamps and pids
    groups = rx.groupindex
    stamp, pid, message, uncommon = (groups[g] for g in (envelopes.STAMP, envelopes.PID, envelopes.MESSAGE,
                                                          envelopes.UNCOMMON))
    count = block.count
    line, at = -1, 0
    for m in rx.finditer(block):
        start = m.start()
        line += count("\n", at, start + 1)
        at = start + 1
        if m.lastindex == uncommon:
            return found, line
        text = texts[line][m.start(message) - at:]
        if lits and not any(lit in text for lit in lits):
            continue
        stamps[line], pids[line] = m.group(stamp, pid)
        failure = judge(m, text, line, lines)
        if failure is not None:
            found.append((line, failure))
    return found, len(texts)
