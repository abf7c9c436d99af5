"""Connection state: what a line means given the earlier lines of its connection.

Some daemons spread one failed attempt over several lines of one connection,
told apart by a pid (the envelope's, or a `pid` capture such as MongoDB's
`[conn12]`). A pattern may start with a tag that changes what a match means:

    <NOTE>     not a failure: remembers the address (and user) of the connection
    <SUCCESS>  a successful login: ends the connection
    <CLOSE>    the connection ended
    <ONCE>     a failure only if the connection has not produced one yet

A failure pattern without an address takes the connection's address; if none
is known yet, the failure waits for a later NOTE/CLOSE line of that connection
that names one (for at most `PENDING_FOR` seconds of log time, and not from a
successful login: those are another connection on a reused pid). A NOTE or
SUCCESS for a user other than the ones that already failed on that connection
is a failure (someone trying user names, fail2ban gh-2070).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pyfilter.detector.matching.compiled import CompiledRule, Pattern
    from pyfilter.detector.matching.scan import Lines

__all__ = ["Failure", "Success", "Connections", "FAIL", "NOTE", "SUCCESS", "CLOSE", "ONCE"]

FAIL, NOTE, SUCCESS, CLOSE, ONCE = "fail", "note", "success", "close", "once"
MAX_CONNECTIONS = 20_000
# Seconds (log time) a failure without an address waits for its connection's.
PENDING_FOR = 600


class Failure(NamedTuple):
    rule: str
    address: str  # the attacker's address, as the line writes it (normalized)
    time: float | None
    user: str | None
    pattern: int  # index of the pattern that matched, in the rule file's list
    # The connection (its pid) the failure belongs to, for rules with a <ONCE>
    # pattern ("" otherwise, and for a single reader: `pyfilter replay`);
    # `once`: a <ONCE> line, a failure only if that connection has no other.
    # Detector replicas each see part of a log, so the windows check `once`
    # again across replicas (ledger.lua, record_group).
    connection: str = ""
    once: bool = False
    count: int = 1  # lines it stands for (rsyslog's "message repeated N times")
    weight: int = 1  # failures it counts as (its pattern's `weight`)
    # What a distinct window counts (a `value` capture: a request path), "" for none.
    value: str = ""


class Success(NamedTuple):
    """A successful login (a SUCCESS pattern naming its address): it spares the address
    in the rule's per-account window (windows.py); `pyfilter replay` reports it."""

    rule: str
    address: str  # normalized, as a failure's
    user: str  # "": the line names none (a per-account window does not see it)
    time: float | None


# `new_failure((...))` makes the same Failure as `Failure(...)`, without the
# Python-level `__new__` of a NamedTuple: the hot path makes one per failure.
def new_failure(fields: tuple) -> Failure:
    return tuple.__new__(Failure, fields)


class _Connection:
    __slots__ = ("host", "users", "pending", "failed", "failed_at")

    def __init__(self) -> None:
        self.host: str | None = None
        self.users: set[str] = set()
        self.pending: tuple[float | None, str | None, int] | None = None  # (time, user, pattern)
        self.failed = False
        self.failed_at: float | None = None  # log time of its last failure


Key = tuple  # (source, host the line comes from, pid)


class Connections:
    """The connections of one rule, by (source, origin host, pid), oldest first."""

    def __init__(self, rule: str, tag_connections: bool) -> None:
        self.rule = rule
        # Failures name their connection only where a <ONCE> pattern needs it
        # (the windows script checks those across replicas, at a Redis cost).
        self.tag_connections = tag_connections
        self.open: OrderedDict[Key, _Connection] = OrderedDict()
        # Connections that failed and closed: key -> address.
        self.closed: OrderedDict[Key, str] = OrderedDict()

    def clear(self) -> None:
        self.open.clear()
        self.closed.clear()

    def decide(self, pat: Pattern, host: str | None, user: str | None, pid: str, key: Key,
               rule: CompiledRule, when: str | None, lines: Lines, k: int, text: str) -> Failure | None:
        """What a match means, given the history of connection `key`.

        `host` is normalized. The line's log time is `rule.time_of(when,
        lines, k, text)`, computed only when needed.
        """
        kind = pat.kind
        connections = self.open
        conn = connections.get(key)
        if conn is None:
            if kind == SUCCESS or kind == CLOSE:
                return None  # nothing known about this connection
            if self.closed and (gone := self.closed.pop(key, None)) is not None \
                    and kind == ONCE and gone == host:
                return None  # the closing words of a connection that failed
            conn = connections[key] = _Connection()
            if len(connections) > MAX_CONNECTIONS:
                connections.popitem(last=False)
        elif host and conn.host and host != conn.host and (kind != ONCE or self._reused(conn, rule.time_of(when, lines, k, text))):
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
                conn.pending = (rule.time_of(when, lines, k, text), user, pat.index)
                return None
            failure = new_failure((self.rule, conn.host, rule.time_of(when, lines, k, text), user, pat.index,
                                   connection, kind == ONCE, 1, pat.weight, ""))
        elif kind != ONCE:
            if conn.pending and conn.host and kind != SUCCESS:
                failure = self._resolve(conn, rule.time_of(when, lines, k, text), connection, rule)
                conn.pending = None
            elif user and conn.host and conn.users and user not in conn.users:
                failure = new_failure((self.rule, conn.host, rule.time_of(when, lines, k, text), user, pat.index,
                                       connection, False, 1, pat.weight, ""))
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
                if len(self.closed) > MAX_CONNECTIONS:
                    self.closed.popitem(last=False)
        return failure

    def _resolve(self, conn: _Connection, at: float | None, connection: str,
                 rule: CompiledRule) -> Failure | None:
        """The failure that waited for its connection's address, now known, if still fresh.

        It is dated by the line that completes it, as fail2ban does. Waiting
        longer than PENDING_FOR (sshd drops an unauthenticated connection
        after 2 minutes) means the pid was reused by an unrelated connection:
        the failure is dropped, not charged to it.
        """
        ptime, puser, pindex = conn.pending  # type: ignore[misc]
        if ptime is not None and at is not None and at - ptime > PENDING_FOR:
            return None
        return new_failure((self.rule, conn.host, at, puser, pindex, connection, False, 1,
                            rule.rule.weight_of(pindex), ""))

    @staticmethod
    def _reused(conn: _Connection, when: float | None) -> bool:
        """Whether a line of connection `conn` at `when` comes too long after its failure to be the same connection."""
        if conn.failed_at is None:
            return not conn.failed
        return when is not None and when - conn.failed_at > PENDING_FOR
