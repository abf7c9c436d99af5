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

Batches (`Matcher.match_batch`, what the detector uses) join their lines with
newlines and let one multi-line search per rule run over the whole block, so
Python only touches the lines that match; the result is the same as matching
the lines one by one (see `_block_safe` for the patterns where it would not
be, which are matched line by line). Optional groups are compiled as branches
with an empty alternative (`_optional_branches`): the same matches, cheaper
for Python's engine.

Patterns are anchored on the fixed parts of a line, usually its end, so text
an attacker controls (a user name, a URL) cannot place another address where
the pattern reads the host.

Connection state. A pattern may start with a tag that changes what a match means:

    <NOTE>     not a failure: remembers the address (and user) of the connection
    <SUCCESS>  a successful login: ends the connection
    <CLOSE>    the connection ended
    <ONCE>     a failure only if the connection has not produced one yet

Connections are told apart by the `pid` capture, within one source of one
host (the `host` argument of `match`: where the line comes from). A failure
pattern without an address takes the connection's address; if none is known
yet, the failure waits for a later NOTE/CLOSE line of that connection that
names one (for at most 10 minutes of log time, and not from a successful
login: those are another connection on a reused pid). A NOTE or SUCCESS for
a user other than the ones that already failed on that connection is a
failure (someone trying user names, fail2ban gh-2070).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Sequence

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
# Seconds (log time) a failure without an address waits for its connection's.
_PENDING_FOR = 600
# A batch block is scanned as one string when a rule's literals occur in at
# least one line in SPARSE; rarer rules only search the lines holding one.
_SPARSE = 8


class RuleError(ValueError):
    """A rule that cannot be compiled; the message names the rule and the pattern."""


class Failure(NamedTuple):
    rule: str
    host: str
    time: float | None
    user: str | None
    pattern: int  # index of the pattern that matched
    # The connection (its pid) the failure belongs to, for rules with a <ONCE>
    # pattern ("" otherwise); `once`: a <ONCE> line, a failure only if that
    # connection has no other. Detector replicas each see part of a log, so
    # the windows script checks `once` again across replicas (scripts.py).
    connection: str = ""
    once: bool = False


# `_new_tuple(Failure, (...))` makes the same Failure as `Failure(...)`, without
# the Python-level `__new__` of a NamedTuple: the hot path makes one per failure.
_new_tuple = tuple.__new__


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


def _optional_branches(source: str) -> str:
    """`(?:X)?` -> `(?:X|)` and `(?:X)??` -> `(?:|X)`: the same matches in the same order.

    Python's engine runs an optional group through its general repeat
    machinery, a branch with an empty alternative costs less; sshd's header
    alone has six such groups.
    """
    tokens = _tokens(source)
    out: list[str] = []
    opens: list[int] = []  # index in `out` of each open group's "("
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        out.append(tok)
        if tok == "(":
            opens.append(len(out) - 1)
        elif tok == ")" and opens:
            start = opens.pop()
            body = out[start + 1:-1]
            after = tokens[i + 1:i + 3]
            if body[:2] == ["?", ":"] and after[:1] == ["?"] and after[1:2] not in (["+"],):
                lazy = after[1:2] == ["?"]
                inner = "".join(body[2:])
                del out[start:]
                out.append(f"(?:|{inner})" if lazy else f"(?:{inner}|)")
                i += 2 if lazy else 1
        i += 1
    return "".join(out)


_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")


def _tokens(source: str) -> list[str]:
    """A regex cut into escapes, character classes and single characters."""
    out, i, n = [], 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            out.append(source[i:i + 2])
            i += 2
        elif c == "[":
            j = i + 1
            if j < n and source[j] == "^":
                j += 1
            if j < n and source[j] == "]":
                j += 1  # a leading ] is a member
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            out.append(source[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return out


def _may_see_newline(token: str) -> bool:
    if token == ".":
        return True
    if token.startswith("["):
        return token.startswith("[^") or any(e in token for e in ("\\s", "\\n", "\\W", "\\D", "\\S"))
    return token in ("\\s", "\\S", "\\W", "\\D", "\\n")


def _anchored(source: str) -> bool:
    """Whether every match starts at `^` (a leading `^` outside any alternation)."""
    tokens = _tokens(source)
    if not tokens or tokens[0] != "^":
        return False
    depth = 0
    for tok in tokens:
        depth += tok == "("
        depth -= tok == ")"
        if tok == "|" and depth == 0:
            return False
    return True


def _block_safe(source: str) -> bool:
    """Whether searching lines joined by newlines (MULTILINE) finds what each line alone would.

    A match that runs over a line end is noticed and redone line by line, so
    what matters is only what can tell a line's end from the end of the
    string without consuming it: `\\A`, `\\Z`, and lookarounds that can see a
    newline (`(?!\\s)` holds at the end of a line alone, not before its `\\n`).
    """
    tokens = _tokens(source)
    if "\\A" in tokens or "\\Z" in tokens:
        return False
    for i, tok in enumerate(tokens):
        if tok != "(" or not "".join(tokens[i:i + 4]).startswith(_LOOKAROUND):
            continue
        depth = 0
        for inner in tokens[i:]:
            depth += inner == "("
            depth -= inner == ")"
            if depth == 0:
                break
            if _may_see_newline(inner):
                return False
    return True


@dataclass
class _Pattern:
    index: int
    kind: str
    groups: list[tuple[str, str]]  # (name in the combined regex, capture name)
    has_host: bool
    # For the hot path: every group name in one tuple (one `Match.group` call),
    # their capture names, and whether a capture name repeats (then the
    # slower, last-one-wins dict is built instead).
    full_names: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    repeats: bool = False
    # The groups of (host, user, ruser, pid, time); a capture the pattern
    # lacks reads its end marker instead, which is always "" (no value).
    pick: tuple[str, ...] = ()
    has_pid: bool = False

    def __post_init__(self) -> None:
        self.full_names = tuple(full for full, _ in self.groups)
        self.short_names = tuple(short for _, short in self.groups)
        self.repeats = len(set(self.short_names)) != len(self.short_names)
        names = dict(zip(self.short_names, self.full_names))
        marker = f"p__{self.index}"
        self.pick = tuple(names.get(k, marker) for k in ("host", "user", "ruser", "pid", "time"))
        self.has_pid = "pid" in names

    def captures(self, m: re.Match[str]) -> dict[str, str]:
        if self.repeats or len(self.full_names) < 2:
            return {short: v for full, short in self.groups if (v := m.group(full)) is not None}
        return {short: v for short, v in zip(self.short_names, m.group(*self.full_names)) if v is not None}


class _Connection:
    __slots__ = ("host", "users", "pending", "failed", "failed_at")

    def __init__(self) -> None:
        self.host: str | None = None
        self.users: set[str] = set()
        self.pending: tuple[float | None, str | None, int] | None = None  # (time, user, pattern)
        self.failed = False
        self.failed_at: float | None = None  # log time of its last failure


class _CompiledRule:
    def __init__(self, name: str, rule: Rule, default_tz: str) -> None:
        self.name = name
        self.rule = rule
        self.sources = set(rule.sources)
        # Zone-less timestamps: the rule's zone if it names one, else the
        # zone of the source the lines come from (`use_zone`), else the default.
        self.fixed_zone = rule.timezone is not None
        self.zone = timeparse.get_zone(rule.timezone or default_tz)
        self.clock = timeparse.Clock(self.zone)
        self._clocks = {None: self.clock}
        self.patterns: list[_Pattern] = []
        prefix = expand(rule.prefix)
        alternatives = []
        bodies: list[tuple[str, str]] = []  # (pattern without its tag, expanded)
        required: list[str] = []
        for i, raw in enumerate(rule.patterns):
            kind = FAIL
            tag = _TAG.match(raw)
            if tag:
                kind = tag.group(1).lower()
                raw = raw[tag.end():]
            body = expand(raw)
            bodies.append((raw, body))
            names = _GROUP.findall(prefix + body)
            renamed = _GROUP.sub(lambda m: f"(?P<{m.group(1)}__{i}>", body)
            # The empty group at the end names the pattern that matched (it is
            # the last group closed: `lastgroup`). Wrapping the pattern in a
            # group instead would hide its first literal from the regex
            # engine, which then could not skip non-matching alternatives at
            # a glance; that costs about half the search time.
            alternatives.append(f"{renamed}(?P<p__{i}>)")
            self.patterns.append(_Pattern(
                i, kind,
                [(f"{g}__{i}", g) for g in _GROUP.findall(body)]
                + [(g, g) for g in _GROUP.findall(prefix)],
                "host" in names,
            ))
            found = literals(raw)
            required.append(max(found, key=len) if found else "")
        self.prefilter = list(rule.prefilter) or ([] if "" in required else sorted(set(required)))
        source = _optional_branches(prefix + "(?:" + "|".join(alternatives) + ")")
        try:
            self.regex = re.compile(source)
        except re.error as exc:
            self._blame(prefix, bodies)  # raises for the first pattern that does not compile alone
            raise RuleError(f"rule {name}: patterns do not compile together: {exc}") from None
        groups = set(self.regex.groupindex)
        for i, raw in enumerate(rule.patterns):
            if not {f"host__{i}", f"pid__{i}", "host", "pid"} & groups:
                raise RuleError(f"rule {name}: patterns[{i}] captures neither <HOST> nor <PID>: {raw}")
        self.by_marker = {f"p__{p.index}": p for p in self.patterns}
        # For batches: the same search over lines joined by newlines (a
        # leading newline included). A rule anchored at the line start reads
        # that newline instead of `^`: the engine then jumps from newline to
        # newline at C speed instead of trying every character of a line.
        self.anchored = _anchored(source)
        self.block_regex = None
        if _block_safe(source):
            self.block_regex = re.compile("\n" + source[1:] if self.anchored else source, re.MULTILINE)
        self.ignore = []
        for j, raw in enumerate(rule.ignore):
            try:
                self.ignore.append(re.compile(expand(raw)))
            except re.error as exc:
                raise RuleError(f"rule {name}: ignore[{j}]: {exc}: {raw}") from None
        self.stateful = any(p.kind != FAIL or not p.has_host for p in self.patterns)
        # Failures name their connection only where a <ONCE> pattern needs it
        # (the windows script checks those across replicas, at a Redis cost).
        self.tag_connections = any(p.kind == ONCE for p in self.patterns)
        # Connections by (source, origin host, pid); see the module doc.
        self.connections: OrderedDict[tuple[str | None, str | None, str], _Connection] = OrderedDict()
        # Connections that failed and closed: key -> address (see the module doc).
        self.closed: OrderedDict[tuple[str | None, str | None, str], str] = OrderedDict()

    def _blame(self, prefix: str, bodies: list[tuple[str, str]]) -> None:
        """Raise the error of the first pattern (as written, as expanded) that does not compile alone.

        Only called when the combined regex fails: compiling each pattern
        alone costs about as much as the whole rule again.
        """
        for i, (raw, body) in enumerate(bodies):
            try:
                re.compile(prefix + body)
            except re.error as exc:
                raise RuleError(f"rule {self.name}: patterns[{i}]: {exc}: {raw}") from None

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

    def screen(self, text: str) -> bool:
        return not self.prefilter or any(lit in text for lit in self.prefilter)

    def search(self, text: str) -> tuple[_Pattern, dict[str, str]] | None:
        m = self.regex.search(text)
        if m is None:
            return None
        pat = self.by_marker[m.lastgroup]  # type: ignore[index]
        return pat, pat.captures(m)

    def judge(self, m: re.Match[str], text: str, source: str | None, origin: str | None,
              now: float | None) -> Failure | None:
        """The failure a match in `text` is, if any (ignore patterns and connection state applied)."""
        if self.ignore and self.ignored(text) is not None:
            return None
        pat = self.by_marker[m.lastgroup]  # type: ignore[index]
        if pat.repeats:
            caps = pat.captures(m)
            host, user, ruser = caps.get("host"), caps.get("user"), caps.get("ruser")
            pid, when = caps.get("pid"), caps.get("time")
        else:
            host, user, ruser, pid, when = m.group(*pat.pick)
            if not pat.has_pid:
                pid = None
        if host:
            if host[0] in "[:":
                host = normalize_host(host)
        else:
            host = None
        user = user or ruser or None
        if pid is None or not self.stateful:
            if host and (pat.kind == FAIL or pat.kind == ONCE):
                return _new_tuple(Failure, (self.name, host, self.clock(when or text, now), user, pat.index,
                                            "", False))
            return None
        return self.decide(pat, host, user, pid, when, text, (source, origin, pid), now)

    def judge_line(self, text: str, source: str | None, origin: str | None,
                   now: float | None) -> Failure | None:
        m = self.regex.search(text)
        return None if m is None else self.judge(m, text, source, origin, now)

    def ignored(self, text: str) -> int | None:
        for j, rx in enumerate(self.ignore):
            if rx.search(text):
                return j
        return None

    def time_of(self, text: str, caps: dict[str, str], now: float | None) -> float | None:
        return timeparse.parse_time(caps.get("time") or text, self.zone, now)

    def decide(self, pat: _Pattern, host: str | None, user: str | None, pid: str,
               when: str | None, text: str, key: tuple, now: float | None) -> Failure | None:
        """What a match of a stateful rule means, given the history of connection `key`.

        `host` is normalized; `when` is the text of a `time` capture, if any.
        """
        kind = pat.kind
        connections = self.connections
        conn = connections.get(key)
        if conn is None:
            if kind == SUCCESS or kind == CLOSE:
                return None  # nothing known about this connection
            if self.closed and (gone := self.closed.pop(key, None)) is not None \
                    and kind == ONCE and gone == host:
                return None  # the closing words of a connection that failed
            conn = connections[key] = _Connection()
            if len(connections) > _MAX_CONNECTIONS:
                connections.popitem(last=False)
        elif host and conn.host and host != conn.host and (kind != ONCE or self._reused(conn, when, text, now)):
            # A connection never changes its address: this pid was reused by
            # a new connection, and the old one's history must not blame it.
            # A closing (ONCE) line naming another address soon after a
            # failure still belongs to the failed connection (fail2ban reads
            # it so); much later, the pid is another connection's.
            conn = connections[key] = _Connection()
            connections.move_to_end(key)
        else:
            connections.move_to_end(key)
        if host:
            conn.host = host
        failure = None
        connection = pid if self.tag_connections else ""
        if kind == FAIL or (kind == ONCE and not conn.failed):
            if conn.host is None:
                conn.pending = (self.clock(when or text, now), user, pat.index)
                return None
            failure = _new_tuple(Failure, (self.name, conn.host, self.clock(when or text, now), user, pat.index,
                                           connection, kind == ONCE))
        elif kind != ONCE:
            if conn.pending and conn.host and kind != SUCCESS:
                failure = self._resolve(conn, self.clock(when or text, now), connection)
                conn.pending = None
            elif user and conn.host and conn.users and user not in conn.users:
                failure = _new_tuple(Failure, (self.name, conn.host, self.clock(when or text, now), user, pat.index,
                                               connection, False))
        if user:
            conn.users.add(user)
        if failure is not None:
            conn.failed = True
            conn.failed_at = failure.time
            conn.pending = None
        if kind == SUCCESS or kind == CLOSE:
            connections.pop(key, None)
            if conn.failed and conn.host:
                self.closed[key] = conn.host
                if len(self.closed) > _MAX_CONNECTIONS:
                    self.closed.popitem(last=False)
        return failure


    def _resolve(self, conn: _Connection, at: float | None, connection: str) -> Failure | None:
        """The failure that waited for its connection's address, now known, if still fresh.

        It is dated by the line that completes it, as fail2ban does. Waiting
        longer than _PENDING_FOR (sshd drops an unauthenticated connection
        after 2 minutes) means the pid was reused by an unrelated connection:
        the failure is dropped, not charged to it.
        """
        ptime, puser, pindex = conn.pending  # type: ignore[misc]
        if ptime is not None and at is not None and at - ptime > _PENDING_FOR:
            return None
        return _new_tuple(Failure, (self.name, conn.host, at, puser, pindex, connection, False))

    def _reused(self, conn: _Connection, when: str | None, text: str, now: float | None) -> bool:
        """Whether a line of connection `conn` comes too long after its failure to be the same connection."""
        if conn.failed_at is None:
            return not conn.failed
        at = self.clock(when or text, now)
        return at is not None and at - conn.failed_at > _PENDING_FOR


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

    def match(self, text: str, source: str | None = None, now: float | None = None,
              host: str | None = None, tz: str | None = None) -> list[Failure]:
        """Failures in one log line: at most one per rule. `source` None = every rule.

        `host` is the host the line comes from: connections (sshd's pids) of
        different hosts are kept apart. `tz` is the zone the source writes
        zone-less times in (None: the matcher's default).
        """
        candidates = self._for_source(source).candidates(text)
        if not candidates:
            return []
        failures: list[Failure] = []
        for rule in candidates:
            rule.use_zone(tz)
            failure = rule.judge_line(text, source, host, now)
            if failure is not None:
                failures.append(failure)
        return failures

    def match_batch(self, texts: Sequence[str], source: str | None = None,
                    now: float | None = None, host: str | None = None,
                    tz: str | None = None) -> list[tuple[int, Failure]]:
        """(index in `texts`, failure) for a batch of lines, in line order then rule order.

        The same as calling `match` on each line in turn, only faster. `host`
        and `tz` are the host and zone the lines come from (see `match`).
        """
        block = "\n" + "\n".join(texts)
        if block.count("\n") != len(texts):  # a line holds a newline: no block search
            return [(i, f) for i, text in enumerate(texts) for f in self.match(text, source, now, host, tz)]
        per_rule = []
        for rule, lits in self._for_source(source).gates:
            if lits and not any(lit in block for lit in lits):
                continue
            rule.use_zone(tz)
            if rule.block_regex is None or (lits and sum(map(block.count, lits)) * _SPARSE < len(texts)):
                found = _line_by_line(rule, texts, lits, source, host, now)
            else:
                scan = _scan_anchored if rule.anchored else _scan_block
                found = scan(rule, block, texts, lits, source, host, now)
            if found:
                per_rule.append(found)
        if len(per_rule) == 1:
            return per_rule[0]
        # Stable sort: within a line, failures keep the order of the rules.
        return sorted((pair for found in per_rule for pair in found), key=lambda pair: pair[0])

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


def _line_by_line(rule: _CompiledRule, texts: Sequence[str], lits: tuple[str, ...],
                  source: str | None, origin: str | None, now: float | None,
                  lines: range | None = None) -> list[tuple[int, Failure]]:
    """One rule over `texts` (or the `lines` of it) one line at a time, as `match` does."""
    found = []
    judge_line = rule.judge_line
    for i in lines or range(len(texts)):
        text = texts[i]
        if lits and not any(lit in text for lit in lits):
            continue
        failure = judge_line(text, source, origin, now)
        if failure is not None:
            found.append((i, failure))
    return found


def _scan_block(rule: _CompiledRule, block: str, texts: Sequence[str], lits: tuple[str, ...],
                source: str | None, origin: str | None, now: float | None) -> list[tuple[int, Failure]]:
    """One rule over a batch: `texts` joined in `block`, each line after a newline.

    After a match the search goes on at the next line (a line yields at most
    one match, the leftmost, as a search of the line alone would). A match
    that runs over a line end is not what any single line would give: the
    lines it covers are judged one by one instead. A line without any of the
    gate's literals `lits` is skipped, as `match` skips it.
    """
    found = []
    search, judge = rule.block_regex.search, rule.judge  # type: ignore[union-attr]
    count, rfind, find = block.count, block.rfind, block.find
    # An anchored regex starts with the newline before its line; so does
    # `pos`, the next place to search, and `line` is the line after it.
    lead = 1 if rule.anchored else 0
    pos, line, size = 1 - lead, 0, len(block)
    while pos < size:
        m = search(block, pos)
        if m is None:
            break
        start = m.start() + lead  # where the line's text is matched from
        if start != pos + lead:
            line += count("\n", pos + lead, start)
            begin = rfind("\n", 0, start) + 1
        else:
            begin = start
        text = texts[line]
        end = begin + len(text)
        if m.end() > end:  # over a line end: judge the lines it covers alone
            last = min(line + count("\n", start, m.end()), len(texts) - 1)
            found += _line_by_line(rule, texts, lits, source, origin, now, range(line, last + 1))
            end = find("\n", m.end())
            if end < 0:
                break
            line = last + 1
        else:
            if not lits or any(lit in text for lit in lits):
                failure = judge(m, text, source, origin, now)
                if failure is not None:
                    found.append((line, failure))
            line += 1
        pos = end + 1 - lead
    return found


def _scan_anchored(rule: _CompiledRule, block: str, texts: Sequence[str], lits: tuple[str, ...],
                   source: str | None, origin: str | None, now: float | None) -> list[tuple[int, Failure]]:
    """`_scan_block` for a rule anchored at the line start, whose block regex starts with a newline.

    Every match then starts at a line's newline, so after a match the next
    one found is at a later line, as `_scan_block` would search: one
    `finditer` walks the block. A match that runs over a line end is judged
    line by line as there, and the walk goes on after those lines.
    """
    found = []
    judge = rule.judge
    count = block.count
    one = lits[0] if len(lits) == 1 else None
    line, at, resume = -1, 0, 0
    for m in rule.block_regex.finditer(block):  # type: ignore[union-attr]
        start = m.start()
        if start < resume:
            continue  # inside lines already judged alone (after a match over a line end)
        line += count("\n", at, start + 1)
        at = start + 1
        text = texts[line]
        if m.end() - at > len(text):  # over a line end: judge the lines it covers alone
            last = min(line + count("\n", at, m.end()), len(texts) - 1)
            found += _line_by_line(rule, texts, lits, source, origin, now, range(line, last + 1))
            resume = block.find("\n", m.end())
            if resume < 0:
                break
            line, at = last, resume  # `resume` is the newline before line last + 1
            continue
        if one is not None:
            if one not in text:
                continue
        elif lits and not any(lit in text for lit in lits):
            continue
        failure = judge(m, text, source, origin, now)
        if failure is not None:
            found.append((line, failure))
    return found
