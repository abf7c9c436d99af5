"""Compile catalog rules into a matcher: which lines are failures, for which address.

A rule's patterns are regular expressions with fail2ban-like placeholders:

    <HOST>    an IPv4 or IPv6 address or a host name, captured as `host`
              (a leading `::ffff:` of an IPv4-mapped address is not captured)
    <ADDR>    the same, IP addresses only
    <USER>    any text, as little as possible, captured as `user`
    <PID>     a process id, captured as `pid` (the connection key, see below)
    <SYSLOG>  start of a syslog line: `^`, an optional timestamp, an optional host name

The rule's `prefix` is prepended to every pattern. All patterns of a rule are
joined into one alternation (prefix read once), tried in order: the first
pattern that matches decides, so a line yields at most one failure per rule.
Lines are first screened with literal substrings (the rule's `prefilter`, or
literals found in the patterns): most lines cost one C-level search.

Patterns are anchored on the fixed parts of a line, usually its end, so text
an attacker controls (a user name, a URL) cannot place another address where
the pattern reads the host.

Connection state. A pattern may start with a tag that changes what a match means:

    <NOTE>     not a failure: remembers the address (and user) of the connection
    <SUCCESS>  a successful login: ends the connection
    <CLOSE>    the connection ended
    <ONCE>     a failure only if the connection has not produced one yet

Connections are told apart by the `pid` capture. A failure pattern without an
address takes the connection's address; if none is known yet, the failure waits
for a later NOTE/CLOSE line of that connection that names one. A NOTE or SUCCESS
for a user other than the ones that already failed on that connection is a
failure (someone trying user names, fail2ban gh-2070).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from pyfilter.common.config import Rule
from pyfilter.detector import timeparse

__all__ = ["Failure", "Explanation", "Matcher", "RuleError", "expand", "normalize_host"]

_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_IPV6 = r"(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,6}(?:" + _IPV4 + r"|[0-9A-Fa-f]{1,4})?"
_HOSTNAME = r"(?=[\w.-]*[A-Za-z])[A-Za-z0-9_](?:[\w-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[\w-]*[A-Za-z0-9])?)*"
_TIMESTAMP = (
    r"(?:(?:<\d{1,3}>\d{1,2} )?\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\w{3} +\d{1,2} +\d{1,2}:\d{2}:\d{2}(?:\.\d+)?"
    r"|\d{1,2}-\w{3}-\d{4} \d{1,2}:\d{2}:\d{2}(?:\.\d+)?"
    r"|@[0-9a-fA-F]{24})"
)
PLACEHOLDERS = {
    "<HOST>": rf"(?:::ffff:)?(?P<host>{_IPV4}|{_IPV6}|{_HOSTNAME})",
    "<ADDR>": rf"(?:::ffff:)?(?P<host>{_IPV4}|{_IPV6})",
    "<USER>": r"(?P<user>.*?)",
    "<PID>": r"(?P<pid>\d+)",
    "<SYSLOG>": rf"^\s*(?:{_TIMESTAMP} +)?(?:[^\s\[\]]+ +)??",
}
_PLACEHOLDER = re.compile("|".join(re.escape(k) for k in PLACEHOLDERS))

FAIL, NOTE, SUCCESS, CLOSE, ONCE = "fail", "note", "success", "close", "once"
_TAG = re.compile(r"^<(NOTE|SUCCESS|CLOSE|ONCE)>")
_GROUP = re.compile(r"\(\?P<(\w+)>")
_MAX_CONNECTIONS = 20_000


class RuleError(ValueError):
    """A rule that cannot be compiled; the message names the rule and the pattern."""


class Failure(NamedTuple):
    rule: str
    host: str
    time: float | None
    user: str | None
    pattern: int  # index of the pattern that matched


class Explanation(NamedTuple):
    rule: str
    outcome: str  # "failure", "pending", "no failure", "ignored", "no match", "prefilter miss"
    pattern: int | None
    captures: dict[str, str]
    time: float | None
    reason: str


def expand(pattern: str) -> str:
    """Replace the placeholders of a catalog pattern by their regular expressions."""
    return _PLACEHOLDER.sub(lambda m: PLACEHOLDERS[m.group(0)], pattern)


def normalize_host(host: str) -> str:
    """`::ffff:a.b.c.d` -> `a.b.c.d`; `[2001:db8::1]` -> `2001:db8::1`; anything else unchanged."""
    if host.startswith("["):
        host = host.strip("[]")
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host


def literals(pattern: str) -> list[str]:
    """Literal runs every match of `pattern` must contain (top level, unquantified)."""
    pattern = _PLACEHOLDER.sub("(?:)", pattern)
    runs: list[str] = []
    cur: list[str] = []
    depth = 0
    i, n = 0, len(pattern)

    def flush() -> None:
        if cur:
            runs.append("".join(cur))
            cur.clear()

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            lit = nxt if not nxt.isalnum() else None
            i += 2
        elif c == "(":
            depth += 1
            flush()
            i += 1
            continue
        elif c == ")":
            depth -= 1
            flush()
            i += 1
            continue
        elif c == "|" and depth == 0:
            return []  # top-level alternation: no literal is required
        elif c == "[":
            flush()
            j = pattern.index("]", i + 2) if "]" in pattern[i + 2:] else n
            i = j + 1
            if i < n and pattern[i] in "?*{":
                i += 1
            continue
        elif c in ".^$*+?{}":
            flush()
            i += 1
            continue
        else:
            lit = c
            i += 1
        if depth > 0 or lit is None:
            flush()
            continue
        if i < n and pattern[i] in "?*{":
            flush()  # the character before a quantifier is optional
            continue
        cur.append(lit)
    flush()
    return [r for r in runs if len(r) >= 4]


@dataclass
class _Pattern:
    index: int
    kind: str
    groups: list[tuple[str, str]]  # (name in the combined regex, capture name)
    has_host: bool


@dataclass
class _Connection:
    host: str | None = None
    users: set[str] = field(default_factory=set)
    pending: tuple[float | None, str | None, int] | None = None  # (time, user, pattern)
    failed: bool = False


class _CompiledRule:
    def __init__(self, name: str, rule: Rule, default_tz: str) -> None:
        self.name = name
        self.rule = rule
        self.sources = set(rule.sources)
        self.zone = timeparse.get_zone(rule.timezone or default_tz)
        self.patterns: list[_Pattern] = []
        alternatives = []
        required: list[str] = []
        for i, raw in enumerate(rule.patterns):
            kind = FAIL
            tag = _TAG.match(raw)
            if tag:
                kind = tag.group(1).lower()
                raw = raw[tag.end():]
            body = expand(raw)
            names = _GROUP.findall(expand(rule.prefix) + body)
            self._check(i, raw, expand(rule.prefix) + body)
            renamed = _GROUP.sub(lambda m: f"(?P<{m.group(1)}__{i}>", body)
            alternatives.append(f"(?P<p__{i}>{renamed})")
            self.patterns.append(_Pattern(
                i, kind,
                [(f"{g}__{i}", g) for g in _GROUP.findall(body)]
                + [(g, g) for g in _GROUP.findall(expand(rule.prefix))],
                "host" in names,
            ))
            found = literals(raw)
            required.append(max(found, key=len) if found else "")
        self.prefilter = list(rule.prefilter) or ([] if "" in required else sorted(set(required)))
        source = expand(rule.prefix) + "(?:" + "|".join(alternatives) + ")"
        try:
            self.regex = re.compile(source)
        except re.error as exc:
            raise RuleError(f"rule {name}: patterns do not compile together: {exc}") from None
        self.ignore = []
        for j, raw in enumerate(rule.ignore):
            try:
                self.ignore.append(re.compile(expand(raw)))
            except re.error as exc:
                raise RuleError(f"rule {name}: ignore[{j}]: {exc}: {raw}") from None
        self.stateful = any(p.kind != FAIL or not p.has_host for p in self.patterns)
        self.connections: OrderedDict[tuple[str | None, str], _Connection] = OrderedDict()

    def _check(self, i: int, raw: str, full: str) -> None:
        try:
            rx = re.compile(full)
        except re.error as exc:
            raise RuleError(f"rule {self.name}: patterns[{i}]: {exc}: {raw}") from None
        if "host" not in rx.groupindex and "pid" not in rx.groupindex:
            raise RuleError(f"rule {self.name}: patterns[{i}] captures neither <HOST> nor <PID>: {raw}")

    def screen(self, text: str) -> bool:
        return not self.prefilter or any(lit in text for lit in self.prefilter)

    def search(self, text: str) -> tuple[_Pattern, dict[str, str]] | None:
        m = self.regex.search(text)
        if m is None:
            return None
        pat = self.patterns[int(m.lastgroup[3:])]  # type: ignore[index]
        caps = {short: v for full, short in pat.groups if (v := m.group(full)) is not None}
        return pat, caps

    def ignored(self, text: str) -> int | None:
        for j, rx in enumerate(self.ignore):
            if rx.search(text):
                return j
        return None

    def time_of(self, text: str, caps: dict[str, str], now: float | None) -> float | None:
        return timeparse.find_time(caps.get("time") or text, self.zone, now)

    def apply(self, pat: _Pattern, caps: dict[str, str], text: str, source: str | None,
              now: float | None) -> tuple[str, Failure | None]:
        """What a match means, given the connection's history: (outcome, failure)."""
        host = caps.get("host")
        host = normalize_host(host) if host else None
        user = caps.get("user") or caps.get("ruser") or None
        if not self.stateful or "pid" not in caps:
            if pat.kind in (FAIL, ONCE) and host:
                return "failure", Failure(self.name, host, self.time_of(text, caps, now), user, pat.index)
            return "no failure", None
        key = (source, caps["pid"])
        conn = self.connections.get(key)
        if conn is None:
            if pat.kind in (SUCCESS, CLOSE):
                return "no failure", None  # nothing known about this connection
            conn = self.connections[key] = _Connection()
            if len(self.connections) > _MAX_CONNECTIONS:
                self.connections.popitem(last=False)
        else:
            self.connections.move_to_end(key)
        if host:
            conn.host = host
        outcome, failure = "no failure", None
        if pat.kind == FAIL or (pat.kind == ONCE and not conn.failed):
            if conn.host is None:
                conn.pending = (self.time_of(text, caps, now), user, pat.index)
                return "pending", None
            failure = Failure(self.name, conn.host, self.time_of(text, caps, now), user, pat.index)
        elif pat.kind != ONCE:
            if conn.pending and conn.host:
                _, puser, pindex = conn.pending
                failure = Failure(self.name, conn.host, self.time_of(text, caps, now), puser, pindex)
            elif user and conn.host and conn.users and user not in conn.users:
                failure = Failure(self.name, conn.host, self.time_of(text, caps, now), user, pat.index)
        if user:
            conn.users.add(user)
        if failure is not None:
            conn.failed = True
            conn.pending = None
            outcome = "failure"
        if pat.kind in (SUCCESS, CLOSE):
            self.connections.pop(key, None)
        return outcome, failure


class _Screen:
    """Which rules a line may concern: each rule's literals, tested with `in` (C speed).

    Keep prefilters short (one or two distinctive tokens per rule, like the
    daemon's name): every literal costs a substring search on every line.
    """

    def __init__(self, rules: list[_CompiledRule]) -> None:
        self.rules = rules
        self.gates = [(r, tuple(r.prefilter)) for r in rules]

    def candidates(self, text: str) -> list[_CompiledRule]:
        found = []
        for rule, lits in self.gates:
            if not lits:
                found.append(rule)
                continue
            for lit in lits:
                if lit in text:
                    found.append(rule)
                    break
        return found


class Matcher:
    """The compiled catalog. `match` is the hot path; `explain` is for people."""

    def __init__(self, rules: dict[str, Rule], default_tz: str = "UTC") -> None:
        self.default_tz = default_tz
        self.rules = [_CompiledRule(name, rule, default_tz) for name, rule in rules.items()
                      if rule.enabled]
        self._by_source: dict[str | None, _Screen] = {}

    def _for_source(self, source: str | None) -> "_Screen":
        screen = self._by_source.get(source)
        if screen is None:
            rules = [r for r in self.rules if source is None or source in r.sources]
            screen = self._by_source[source] = _Screen(rules)
        return screen

    def match(self, text: str, source: str | None = None, now: float | None = None) -> list[Failure]:
        """Failures in one log line: at most one per rule. `source` None = every rule."""
        screen = self._for_source(source)
        candidates = screen.candidates(text)
        if not candidates:
            return []
        failures: list[Failure] = []
        for rule in candidates:
            hit = rule.search(text)
            if hit is None:
                continue
            if rule.ignore and rule.ignored(text) is not None:
                continue
            _, failure = rule.apply(hit[0], hit[1], text, source, now)
            if failure is not None:
                failures.append(failure)
        return failures

    def explain(self, text: str, now: float | None = None, source: str | None = None,
                rule: str | None = None) -> list[Explanation]:
        """Per rule: the pattern that matched, its captures and time, or why nothing did.

        Connection state is neither read nor changed: each line is judged alone.
        """
        out: list[Explanation] = []
        for r in self._for_source(source).rules:
            if rule is not None and r.name != rule:
                continue
            if not r.screen(text):
                out.append(Explanation(r.name, "prefilter miss", None, {}, None,
                                       f"none of {r.prefilter} occurs in the line"))
                continue
            hit = r.search(text)
            if hit is None:
                out.append(Explanation(r.name, "no match", None, {}, None, "no pattern matched"))
                continue
            pat, caps = hit
            when = r.time_of(text, caps, now)
            j = r.ignored(text) if r.ignore else None
            if j is not None:
                out.append(Explanation(r.name, "ignored", pat.index, caps, when,
                                       f"pattern {pat.index} matched, but ignore pattern {j} too"))
                continue
            if "host" in caps:
                caps = {**caps, "host": normalize_host(caps["host"])}
            if pat.kind != FAIL:
                reason = {NOTE: "remembers the address of the connection; not a failure alone",
                          SUCCESS: "successful login; ends the connection",
                          CLOSE: "connection closed; completes a waiting failure of the connection",
                          ONCE: "a failure unless the connection already failed"}[pat.kind]
                outcome = "failure" if pat.kind == ONCE and "host" in caps else "no failure"
            elif "host" in caps:
                outcome, reason = "failure", f"pattern {pat.index} matched"
            else:
                outcome = "pending"
                reason = "failure without an address: takes the connection's address (earlier or later line)"
            out.append(Explanation(r.name, outcome, pat.index, caps, when, reason))
        return out
