"""Why a line is (not) a failure, for people: `pyfilter explain`.

For one line: its envelope (format, program, pid, time), then per rule that
reads it the pattern that matched, its captures and time, or why nothing
did; for a line no rule matched, the closest rule and where its pattern
stopped matching. Connection state is neither read nor changed: the line
is judged alone.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pyfilter.detector.matching import envelopes
from pyfilter.detector.matching.compiled import CompiledRule
from pyfilter.detector.matching.connections import CLOSE, FAIL, NOTE, ONCE, SUCCESS
from pyfilter.detector.matching.matcher import Matcher
from pyfilter.detector.matching.placeholders import expand, normalize_host
from pyfilter.detector.matching.regex import tokens

__all__ = ["Explanation", "Closest", "explain", "closest"]

_REASONS = {NOTE: "remembers the address of the connection; not a failure alone",
            SUCCESS: "successful login; ends the connection (and spares the address in per-account windows)",
            CLOSE: "connection closed; completes a waiting failure of the connection",
            ONCE: "a failure unless the connection already failed"}


class Explanation(NamedTuple):
    rule: str
    outcome: str  # "failure", "pending", "no failure", "ignored", "no match", "prefilter miss"
    pattern: int | None
    captures: dict[str, str]
    time: float | None
    reason: str


class _One(NamedTuple):
    """What `time_of` reads of the `Lines` a lone message is: its stamp, and "now"."""

    stamps: list[str | None]
    now: float | None


class Closest(NamedTuple):
    """How far a rule's best pattern got into a message it does not match."""

    rule: str
    pattern: int
    matched: str  # the part of the message the pattern matched
    expected: str  # the piece of the pattern that did not match next


def explain(matcher: Matcher, text: str, now: float | None = None, program: str | None = None,
            rule: str | None = None) -> tuple[envelopes.Envelope, list[Explanation]]:
    """The line's envelope and, per rule that reads it (or `rule` alone), what it makes of the line."""
    env = envelopes.read(text, program)
    if env.program is not None and program is not None and not matcher.knows(env.program) \
            and matcher.rules_for(program):
        env = envelopes.Envelope(envelopes.PLAIN, program, None, None, None, 0, 1)  # as match_batch reads it
    message = env.message(text)
    chosen = matcher.rules_for(env.program) + [r for r in matcher.rules if not r.reads_messages]
    if rule is not None:
        chosen = [r for r in matcher.rules if r.name == rule]
    out = []
    for r in chosen:
        subject = message if r.reads_messages else text
        routed = r in matcher.rules_for(env.program) and env.program is not None
        if r.reads_messages and r not in matcher.rules_for(env.program):
            out.append(Explanation(r.name, "no match", None, {}, None,
                                   f"the rule reads programs {list(r.rule.programs)}, not {env.program!r}"))
            continue
        out.append(_one(r, subject, env.stamp if r.reads_messages else None, now, routed))
    return env, out


def _one(r: CompiledRule, text: str, stamp: str | None, now: float | None, routed: bool) -> Explanation:
    lits = r.gate if routed else r.prefilter  # as match_batch screens
    if lits and not any(lit in text for lit in lits):
        return Explanation(r.name, "prefilter miss", None, {}, None, f"none of {list(lits)} occurs in the message")
    hit = r.search(text)
    if hit is None:
        return Explanation(r.name, "no match", None, {}, None, "no pattern matched")
    pat, caps = hit
    when = r.time_of(caps.get("time"), _One([stamp], now), 0, text)
    j = r.ignored(text) if r.ignore else None
    if j is not None:
        return Explanation(r.name, "ignored", pat.index, caps, when,
                           f"pattern {pat.index} matched, but ignore pattern {j} too")
    if "host" in caps:
        caps = {**caps, "host": normalize_host(caps["host"])}
    if pat.kind != FAIL:
        reason = _REASONS[pat.kind]
        outcome = "failure" if pat.kind == ONCE and "host" in caps else "no failure"
    elif "host" in caps:
        outcome, reason = "failure", f"pattern {pat.index} matched"
    else:
        outcome = "pending"
        reason = "failure without an address: takes the connection's address (earlier or later line)"
    return Explanation(r.name, outcome, pat.index, caps, when, reason)


def closest(matcher: Matcher, text: str, program: str | None = None, rule: str | None = None) -> Closest | None:
    """The rule pattern that matches the longest start of the line's message, and where it stops."""
    env = envelopes.read(text, program)
    rules = [r for r in matcher.rules if r.name == rule] if rule else matcher.rules_for(env.program)
    best: Closest | None = None
    for r in rules:
        if not r.reads_messages:
            continue
        subject = env.message(text)
        for i, raw in r.rule.active_patterns():
            raw = re.sub(r"^<(NOTE|SUCCESS|CLOSE|ONCE)>", "", raw)
            got = _stop(expand(r.rule.prefix), expand(raw), subject)
            if got is not None and (best is None or len(got[0]) > len(best.matched)):
                best = Closest(r.name, i, got[0], got[1])
    return best


def _stop(prefix: str, body: str, text: str) -> tuple[str, str] | None:
    """(what the longest matching start of `prefix + body` matches, the next piece) or None if it all matches."""
    pieces = _pieces(prefix) + _pieces(body)
    matched = ""
    for n in range(1, len(pieces) + 1):
        try:
            m = re.match("".join(pieces[:n]), text)
        except re.error:
            continue  # a group reference to a later piece, say: try a longer start
        if m is None:
            return matched, "".join(pieces[n - 1:n])
        matched = m.group(0)
    return None


def _pieces(source: str) -> list[str]:
    """Top-level parts of a regex, each with its quantifier: `a`, `(?:b|c)?`, `[0-9]{2,3}`..."""
    toks = tokens(source)
    out: list[str] = []
    i, n = 0, len(toks)
    while i < n:
        if toks[i] == "(":
            depth, j = 0, i
            while j < n:
                depth += toks[j] == "("
                depth -= toks[j] == ")"
                j += 1
                if depth == 0:
                    break
            piece, i = "".join(toks[i:j]), j
        else:
            piece, i = toks[i], i + 1
        if i < n and toks[i] == "{":
            j = i + 1
            while j < n and toks[j] in "0123456789,":
                j += 1
            if j < n and toks[j] == "}":
                piece, i = piece + "".join(toks[i:j + 1]), j + 1
        while i < n and toks[i] in ("?", "*", "+"):
            piece, i = piece + toks[i], i + 1
        out.append(piece)
    return out
