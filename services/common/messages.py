"""Every message that crosses Redis, in one place.

Messages are msgspec Structs encoded as MessagePack. Each carries a version
field `v` so a reader can refuse (or adapt to) a newer writer. Services never
put dicts or JSON on a stream.
"""

from __future__ import annotations

from typing import Literal

import msgspec

VERSION = 1


class Line(msgspec.Struct, array_like=True, frozen=True):
    """One log line and its stable identity.

    `id` is unique per physical line: the source name, the file identity
    (device and inode) and the byte offset of the line's start. A line read
    twice (after a crash, before its checkpoint was written) has the same id,
    which is how the detector recognises a redelivery.

    `time` is when the line was written, for sources that know it exactly
    (a container's stream time, epoch seconds); it wins over any time the
    text holds. None: read the time from the text.
    """

    id: str
    text: str
    time: float | None = None


class LineBatch(msgspec.Struct, frozen=True, tag="lines"):
    """A batch of lines from one source, as the collector writes it."""

    host: str
    source: str
    lines: list[Line]
    read_at: float
    v: int = VERSION
    # The zone the source writes timestamps that carry none in (a zoneinfo
    # name or +hh:mm); None: the detector's default (UTC).
    tz: str | None = None
    # The program whose own log the source is (its lines have no syslog
    # header naming one), e.g. "nginx"; None: unknown.
    program: str | None = None
    # The only rules that read these lines, whatever their programs and
    # sources (a container's `pyfilter.rules` label); None: chosen by program.
    rules: list[str] | None = None
    # The container whose log holds the lines, if any: connections (pids) of
    # different containers are kept apart.
    container: str | None = None
    # Rules these lines must not feed: a syslog file's copies of lines the
    # collector reads from the journal (collector/plan.py).
    skip: tuple[str, ...] = ()


Action = Literal["ban", "unban"]
Origin = Literal["detector", "manual", "sync"]


class Decision(msgspec.Struct, frozen=True, tag="decision"):
    """The one currency between deciding and enforcing.

    Whoever makes it (a detector, an operator through the api, another host),
    every enforcer applies it the same way. `duration` is in seconds; -1 is a
    permanent ban. `expires_at` is absolute, so an enforcer that applies the
    decision late gives the remaining time, not the full time again.
    """

    action: Action
    address: str
    rule: str
    origin: Origin
    host: str
    created_at: float
    duration: int = 0
    expires_at: float | None = None
    reason: str = ""
    ports: list[int] = []
    verdict: Literal["drop", "reject"] = "drop"
    v: int = VERSION


class BanRecord(msgspec.Struct):
    """What we know about one banned address: why, since when, until when."""

    address: str
    rule: str
    host: str
    origin: Origin
    banned_at: float
    duration: int
    expires_at: float | None = None  # None: permanent
    first_failure: float | None = None
    last_failure: float | None = None
    failures: int = 0
    lines: list[str] = []
    ban_count: int = 1
    country: str | None = None
    reason: str = ""
    # The kind of window that decided the ban ("sliding", "consecutive",
    # "instant", "recidive", and the kinds of docs/rules.md "Window kinds");
    # "" for bans made by hand or imported.
    window: str = ""
    # Bans not decided by one address's own failures say why: the account a
    # per-account window saw attacked, and the evidence (per account: the
    # addresses that failed on it; per network: the member bans).
    account: str | None = None
    evidence: list[str] = []
    v: int = VERSION


class BanScope(msgspec.Struct, frozen=True):
    """What a ban blocks when not every port with drop: kept beside the active bans
    (`Keys.ban_scopes`) so an enforcer reconciles a ban's scope without the rules."""

    ports: list[int] = []
    verdict: Literal["drop", "reject"] = "drop"
    v: int = VERSION


class Notice(msgspec.Struct, frozen=True):
    """What a ban notification says: the webhook's JSON body, one line of a digest.

    Taken from the decision, completed from the ban record when it still
    exists (an address unbanned before the notifier saw it has no record).
    Times are epoch seconds; `expires_at` None and `duration` -1 mean permanent.
    """

    address: str
    rule: str
    host: str
    origin: Origin
    banned_at: float
    duration: int
    expires_at: float | None = None
    reason: str = ""
    country: str | None = None
    failures: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    ban_count: int = 1
    lines: list[str] = []
    # "unban", "expiry": a network ban lifted by hand, or run out (the notifier
    # announces those of network bans only: notify.network).
    event: Literal["ban", "unban", "expiry"] = "ban"
    window: str = ""  # the kind of window that decided the ban (the record's), "" if unknown
    members: int = 0  # a network ban's: how many of its banned addresses (or networks) made it
    v: int = VERSION


class Outgoing(msgspec.Struct, tag="outgoing"):
    """A notice waiting in a channel's queue, and how its delivery went so far."""

    notice: Notice
    queued_at: float
    attempts: int = 0
    v: int = VERSION


class SourceStatus(msgspec.Struct, frozen=True):
    """One collector source as its host sees it (collector/report.py)."""

    name: str
    type: str  # file, journal, docker
    state: Literal["found", "missing", "unreadable"]
    followed: bool  # False: no enabled rule reads its lines on this host (the journal carries them)
    readable: list[str] = []  # paths (files, journal files) the collector reads
    unreadable: list[str] = []  # paths there that it may not read
    missing: list[str] = []  # configured paths with nothing there
    containers: list[str] = []  # docker: the containers followed, "name (program)"
    note: str = ""  # what is wrong with it, in words (docker: why the folder cannot be listed)


class RuleSources(msgspec.Struct, frozen=True):
    """Where one enabled rule's lines come from on a host (collector/plan.py's choice)."""

    rule: str
    sources: list[str]  # the sources that carry its lines
    journal: bool  # carried by the journal; its copies in syslog files left out
    left_out: list[str] = []
    problem: str | None = None  # why no source carries it, in words


class CollectorStatus(msgspec.Struct, frozen=True, tag="collector-status"):
    """What a host's collector reads, published to Redis at start and when it changes."""

    host: str
    at: float  # when written (epoch seconds)
    started_at: float
    sources: list[SourceStatus]
    rules: list[RuleSources]
    v: int = VERSION


class SetStatus(msgspec.Struct, frozen=True):
    name: str
    elements: int


class EnforcerStatus(msgspec.Struct, frozen=True, tag="enforcer-status"):
    """What a host's enforcer has in its kernel firewall (backends' `inspect()`)."""

    host: str
    at: float
    started_at: float
    backend: str  # nftables, iptables, log-only
    table: str | None  # "inet pyfilter", "ipset pyfilter*"; None: no firewall (log-only)
    table_present: bool
    hooks: list[str]  # where traffic meets our sets: "input", "forward"; "INPUT", "DOCKER-USER"
    docker_covered: bool  # ports Docker publishes (DNAT, then forward) are checked too
    sets: list[SetStatus]
    problems: list[str] = []  # in words, with what to do
    v: int = VERSION


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode

_batch_decoder = msgspec.msgpack.Decoder(LineBatch)
_decision_decoder = msgspec.msgpack.Decoder(Decision)
_record_decoder = msgspec.msgpack.Decoder(BanRecord)
_scope_decoder = msgspec.msgpack.Decoder(BanScope)
_outgoing_decoder = msgspec.msgpack.Decoder(Outgoing)
_status_decoder = msgspec.msgpack.Decoder(CollectorStatus | EnforcerStatus)


def decode_batch(data: bytes) -> LineBatch:
    return _batch_decoder.decode(data)


def decode_decision(data: bytes) -> Decision:
    return _decision_decoder.decode(data)


def decode_record(data: bytes) -> BanRecord:
    return _record_decoder.decode(data)


def decode_scope(data: bytes) -> BanScope:
    return _scope_decoder.decode(data)


def decode_outgoing(data: bytes) -> Outgoing:
    return _outgoing_decoder.decode(data)


def decode_status(data: bytes) -> CollectorStatus | EnforcerStatus:
    return _status_decoder.decode(data)
