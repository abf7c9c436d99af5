"""One catalog rule compiled: its patterns joined into one regex, and what a match means.

All patterns active in the rule's mode are joined into one alternation (the
prefix read once), tried in order: the first pattern that matches decides,
so a message yields at most one failure per rule. A rule with `programs`
matches messages from their first character; a rule without (an older
file) matches whole lines, searched anywhere unless its pattern starts with `^`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from pyfilter.common.config import Rule
from pyfilter.common import timeparse
from pyfilter.detector.matching.connections import (
    CLOSE, FAIL, NOTE, ONCE, SUCCESS, Connections, Failure, Success, new_failure,
)
from pyfilter.detector.matching.placeholders import decode_path, expand, normalize_host
from pyfilter.detector.matching import envelopes
from pyfilter.detector.matching.regex import (
    anchored, ascii_digits, for_block, literals, optional_branches, tokens,
)

if TYPE_CHECKING:
    from pyfilter.detector.matching.scan import Lines

__all__ = ["CompiledRule", "Pattern", "RuleError"]

_TAG = re.compile(r"^<(NOTE|SUCCESS|CLOSE|ONCE)>")
_GROUP = re.compile(r"\(\?P<(\w+)>")
_REFERENCE = re.compile(r"\(\?P=(\w+)\)")
_KINDS = {"NOTE": NOTE, "SUCCESS": SUCCESS, "CLOSE": CLOSE, "ONCE": ONCE}


class RuleError(ValueError):
    """A rule that cannot be compiled; the message names the rule and the pattern."""


@dataclass
class Pattern:
    index: int  # in the rule file's `patterns`
    kind: str
    groups: list[tuple[str, str]]  # (name in the combined regex, capture name)
    has_host: bool
    # For the hot path: every group name in one tuple (one `Match.group` call),
    # their capture names, and whether a capture name repeats (then the
    # slower, last-one-wins dict is built instead).
    full_names: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    repeats: bool = False
    # The groups of (host, user, ruser, pid, time, value); a capture the pattern
    # lacks reads its end marker instead, which is always "" (no value).
    pick: tuple[str, ...] = ()
    ends: bool = False  # SUCCESS or CLOSE: the end of a connection
    counted: str | None = None  # the group of a `count` capture (the failures a line stands for)
    weight: int = 1  # failures a match counts as (the rule file's `{re: ..., weight: N}`)
    # Its value is a <PATH>, percent-decoded before it is compared and counted: the
    # value's group in the combined regex (None: no <PATH>).
    path: str | None = None

    def __post_init__(self) -> None:
        self.ends = self.kind in (SUCCESS, CLOSE)
        self.full_names = tuple(full for full, _ in self.groups)
        self.short_names = tuple(short for _, short in self.groups)
        self.repeats = len(set(self.short_names)) != len(self.short_names)
        names = dict(zip(self.short_names, self.full_names))
        marker = f"p__{self.index}"
        self.pick = tuple(names.get(k, marker) for k in ("host", "user", "ruser", "pid", "time", "value"))
        self.counted = names.get("count")
        if self.path is not None:
            self.path = names.get("value")

    def captures(self, m: re.Match[str]) -> dict[str, str]:
        if self.repeats or len(self.full_names) < 2:
            return {short: v for full, short in self.groups if (v := m.group(full)) is not None}
        return {short: v for short, v in zip(self.short_names, m.group(*self.full_names)) if v is not None}


class CompiledRule:
    def __init__(self, name: str, rule: Rule, default_tz: str, single_reader: bool = False) -> None:
        self.name = name
        self.rule = rule
        self.sources = set(rule.sources)
        self.programs = tuple(p.lower() for p in rule.programs)
        self.reads_messages = bool(rule.programs)
        # Zone-less timestamps: the rule's zone if it names one, else the
        # zone of the source the lines come from (`use_zone`), else the default.
        self.fixed_zone = rule.timezone is not None
        self.zone = timeparse.get_zone(rule.timezone or default_tz)
        self.clock = timeparse.Clock(self.zone)
        self._clocks = {None: self.clock}
        self.patterns: list[Pattern] = []
        prefix = expand(rule.prefix)
        alternatives = []
        bodies: list[tuple[int, str, str]] = []  # (index, pattern without its tag, expanded)
        required: list[str] = []
        # The `success` patterns follow the rule's own, numbered after them.
        logins = [(len(rule.patterns) + j, "<SUCCESS>" + p) for j, p in enumerate(rule.success)]
        for i, raw in [*rule.active_patterns(), *logins]:
            kind = FAIL
            tag = _TAG.match(raw)
            if tag:
                kind = _KINDS[tag.group(1)]
                raw = raw[tag.end():]
            body = expand(raw)
            bodies.append((i, raw, body))
            names = _GROUP.findall(prefix + body)
            own = set(_GROUP.findall(body))  # named in the pattern (the prefix's keep their names)
            renamed = _REFERENCE.sub(lambda m: f"(?P={m.group(1)}__{i})" if m.group(1) in own else m.group(0),
                                     _GROUP.sub(lambda m: f"(?P<{m.group(1)}__{i}>", body))
            # The empty group at the end names the pattern that matched (it is
            # the last group closed: `lastgroup`). Wrapping the pattern in a
            # group instead would hide its first literal from the regex
            # engine, which then could not skip non-matching alternatives at
            # a glance; that costs about half the search time.
            alternatives.append(f"{renamed}(?P<p__{i}>)")
            self.patterns.append(Pattern(
                i, kind,
                [(f"{g}__{i}", g) for g in _GROUP.findall(body)] + [(g, g) for g in _GROUP.findall(prefix)],
                "host" in names, weight=rule.weight_of(i) if i < len(rule.patterns) else 1,  # (a success: none)
                path="" if "<PATH>" in raw else None,
            ))
            if rule.window == "distinct" and kind in (FAIL, ONCE) and "value" not in names:
                raise RuleError(f"rule {name}: patterns[{i}] captures no value (<PATH> or (?P<value>...)), "
                                f"which its distinct window counts: {raw}")
            found = literals(raw)
            required.append(max(found, key=len) if found else "")
        # Literals one of which a line must hold: the rule's own, always
        # applied; else found in the patterns, applied where routing by
        # program did not already choose the rule (plain lines of no program).
        self.gate = tuple(rule.prefilter)
        self.prefilter = list(rule.prefilter) or ([] if "" in required else sorted(set(required)))
        start = "^" if self.reads_messages else ""
        source = ascii_digits(optional_branches(start + prefix + "(?:" + "|".join(alternatives) + ")"))
        try:
            self.regex = re.compile(source)
        except re.error as exc:
            self._blame(start + prefix, bodies)  # raises for the first pattern that does not compile alone
            raise RuleError(f"rule {name}: patterns do not compile together: {exc}") from None
        groups = set(self.regex.groupindex)
        for i, raw, _ in bodies:
            # A message's connection may come from its envelope's pid; a
            # whole line's only from a capture.
            if not self.reads_messages and not {f"host__{i}", f"pid__{i}", "host", "pid"} & groups:
                raise RuleError(f"rule {name}: patterns[{i}] captures neither <HOST> nor <PID>: {raw}")
        self.by_marker = {f"p__{p.index}": p for p in self.patterns}
        # For batches: the same search over lines joined by newlines (`block_regex`).
        self.anchored = anchored(source)
        self._block = for_block(source[1:] if self.anchored else source)
        self._body = self._block if self.anchored and self.reads_messages else None
        self._common: re.Pattern[str] | None | bool = False  # not built yet
        self.ignore = []
        for j, raw in enumerate(rule.ignore):
            try:
                # Anchored like the patterns for a rule that reads messages:
                # client text later in the message cannot veto a failure.
                self.ignore.append(re.compile(ascii_digits(start + prefix + expand(raw) if self.reads_messages
                                                           else expand(raw))))
            except re.error as exc:
                raise RuleError(f"rule {name}: ignore[{j}]: {exc}: {raw}") from None
        self.ignore_values = [re.compile(raw) for raw in rule.ignore_values]  # checked by config
        self.stateful = any(p.kind != FAIL or not p.has_host for p in self.patterns)
        # Failures name their connection for the windows' check of <ONCE> lines
        # across detector replicas (ledger.lua, record_group), unless one reader
        # sees every line once, in order: its own connection state decides alone.
        self.connections = Connections(name, not single_reader and any(p.kind == ONCE for p in self.patterns))
        # Successful logins (Matcher's `successes`, `take_successes`); None: not kept.
        self.logins: list[Success] | None = None

    def _blame(self, prefix: str, bodies: list[tuple[int, str, str]]) -> None:
        """Raise the error of the first pattern (as written, as expanded) that does not compile alone.

        Only called when the combined regex fails: compiling each pattern
        alone costs about as much as the whole rule again.
        """
        for i, raw, body in bodies:
            try:
                re.compile(prefix + body)
            except re.error as exc:
                raise RuleError(f"rule {self.name}: patterns[{i}]: {exc}: {raw}") from None

    @cached_property
    def block_regex(self) -> re.Pattern[str] | None:
        """The search over lines joined by newlines, or None where there is none (`regex.for_block`).

        Compiled when first needed (a whole catalog's rules for programs a host
        does not run never are). A rule anchored at the line start reads the
        newline before it instead of `^`: the engine then jumps from newline to
        newline at C speed instead of trying every character of a line.
        """
        if self._block is None:
            return None
        try:
            return re.compile("\n" + self._block if self.anchored else self._block, re.MULTILINE)
        except re.error:  # not seen: the rewrite keeps a pattern valid; matched one by one then
            return None

    def common_regex(self) -> re.Pattern[str] | None:
        """The rule's search over lines as read, the common header included
        (`envelopes.common_search`), or None where it would not find what the search
        of the messages finds: programs named by a wildcard, a pattern that looks
        back before the message's start (a lookbehind, a `^` after the first).
        Compiled when first asked for: only a matcher of a few rules uses it.
        """
        if self._common is False:
            body, names = self._body, set(self.regex.groupindex)
            source = None
            if not (body is None or "^" in tokens(body) or "(?<=" in body or "(?<!" in body
                    or names & {envelopes.STAMP, envelopes.PID, envelopes.MESSAGE, envelopes.UNCOMMON}):
                source = envelopes.common_search(self.programs, body)
            self._common = None if source is None else re.compile(source, re.MULTILINE)
        return self._common  # type: ignore[return-value]

    def reads(self, program: str) -> bool:
        """Whether the rule reads messages of `program` (lower case)."""
        return any(fnmatchcase(program, p) for p in self.programs)

    def names(self, program: str) -> bool:
        """Whether the rule reads `program` other than as a catch-all (`programs: ['*']`)."""
        return any(p != "*" and fnmatchcase(program, p) for p in self.programs)

    def use_zone(self, tz: str | None) -> None:
        """Read the next lines' zone-less times in zone `tz` (their source's), unless the rule fixes one."""
        if self.fixed_zone:
            return
        clock = self._clocks.get(tz)
        if clock is None:
            try:
                clock = timeparse.Clock(timeparse.get_zone(tz))
            except timeparse.InvalidZone:
                clock = self._clocks[None]  # a collector's typo must not stop matching
            self._clocks[tz] = clock
        self.clock, self.zone = clock, clock.zone

    def search(self, text: str) -> tuple[Pattern, dict[str, str]] | None:
        m = self.regex.search(text)
        if m is None:
            return None
        pat = self.by_marker[m.lastgroup]  # type: ignore[index]
        return pat, pat.captures(m)

    def judge(self, m: re.Match[str], text: str, k: int, lines: Lines) -> Failure | None:
        """The failure a match in message `text`, message `k` of `lines`, is, if any
        (ignore patterns and connection state applied).

        The log time is worked out only when needed: most matches of a
        stateful rule are notes of a connection, which need none.
        """
        if self.ignore and self.ignored(text) is not None:
            return None
        pat = self.by_marker[m.lastgroup]  # type: ignore[index]
        if pat.path and "%" in (m.group(pat.path) or ""):
            m, text, pat = self.path_decoded(m, text, pat)
        if pat.repeats:
            caps = pat.captures(m)
            host, user, ruser = caps.get("host"), caps.get("user"), caps.get("ruser")
            pid, when, value = caps.get("pid"), caps.get("time"), caps.get("value")
        else:
            host, user, ruser, pid, when, value = m.group(*pat.pick)
        if value and self.ignore_values and any(rx.search(value) for rx in self.ignore_values):
            return None
        if host:
            if host[0] in "[:" or "%" in host:
                host = normalize_host(host)
        else:
            host = None
        user = user or ruser or None
        if pat.kind == SUCCESS and host and self.logins is not None:
            self.logins.append(Success(self.name, host, user or "", self.time_of(when, lines, k, text)))
        if self.stateful and not pid:
            pid = lines.pids[k]
        if not pid or not self.stateful:
            if host and (pat.kind == FAIL or pat.kind == ONCE):
                count = int(m.group(pat.counted) or 1) if pat.counted else 1
                return new_failure((self.name, host, self.time_of(when, lines, k, text), user, pat.index,
                                    "", False, count, pat.weight, value or ""))
            return None
        key = (lines.source, lines.origin, pid)
        if pat.ends and key not in self.connections.open:
            return None  # the end of a connection nothing is known about (most of them)
        failure = self.connections.decide(pat, host, user, pid, key, self, when, lines, k, text)
        if failure is not None and pat.counted and (count := m.group(pat.counted)):
            failure = failure._replace(count=int(count))
        return failure

    def path_decoded(self, m: re.Match[str], text: str, pat: Pattern) -> tuple[re.Match[str], str, Pattern]:
        """A match whose path holds percent-encoding, matched again with its path decoded
        (placeholders.decode_path), so that the patterns compare what the server read:
        `/%2eenv` is the probe-only `/.env`, and one value with it. The decoded path holds
        only what <PATH> reads, so the line keeps its shape; the address and time are the same."""
        assert pat.path is not None
        start, end = m.span(pat.path)
        decoded = decode_path(text[start:end])
        if decoded == text[start:end]:
            return m, text, pat
        again_text = text[:start] + decoded + text[end:]
        again = self.regex.search(again_text)
        if again is None:  # (a pattern that reads its path's encoding itself)
            return m, text, pat
        return again, again_text, self.by_marker[again.lastgroup]  # type: ignore[index]

    def time_of(self, when: str | None, lines: Lines, k: int, text: str) -> float | None:
        """Message k's log time: a `time` capture, else its envelope's stamp, else the message's start."""
        if when:
            return timeparse.parse_time(when, self.zone, lines.now)
        stamp = lines.stamps[k]
        if stamp:
            return self.clock.stamp(stamp, lines.now)
        return self.clock(text, lines.now)

    def ignored(self, text: str) -> int | None:
        for j, rx in enumerate(self.ignore):
            if rx.search(text):
                return j
        return None
