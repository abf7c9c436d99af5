"""Every body the HTTP API reads or writes, as msgspec Structs.

Handlers encode these and nothing else, and the OpenAPI document is
generated from them (`openapi.py`), so the document cannot drift from what
the API really sends.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from pyfilter.common import messages

DEFAULT_MANUAL_BANTIME = 86400

MAX_REASON = 1000
# Longer manual bans are a typo or an overflow (the decision carries the
# duration as a 64-bit integer, the kernel as milliseconds): -1 is forever.
MAX_DURATION = 10 * 365 * 86400

# What the handlers accept, written out for the OpenAPI document only
# (`extra_json_schema` is not enforced on decoding): the handlers validate,
# with messages naming the field. Two limits no pattern can say: a CIDR's
# host bits must be zero, and a duration written as text ("52w") must not
# exceed MAX_DURATION.
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"
_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = f"({_H16}:{_H16}|{_IPV4})"


def _groups(n: int) -> str:
    """Up to n 16-bit groups before a "::"."""
    return f"(({_H16}:){{0,{n - 1}}}{_H16})?"


_IPV6 = "|".join([  # RFC 3986, section 3.2.2
    f"({_H16}:){{6}}{_LS32}", f"::({_H16}:){{5}}{_LS32}", f"{_groups(1)}::({_H16}:){{4}}{_LS32}",
    f"{_groups(2)}::({_H16}:){{3}}{_LS32}", f"{_groups(3)}::({_H16}:){{2}}{_LS32}",
    f"{_groups(4)}::{_H16}:{_LS32}", f"{_groups(5)}::{_LS32}", f"{_groups(6)}::{_H16}",
    f"{_groups(7)}::",
])
IPV4_CIDR = rf"^{_IPV4}/(3[0-2]|[12]?[0-9])$"
IPV6_CIDR = rf"^({_IPV6})/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$"
TARGET_SCHEMA = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"},
                                             {"pattern": IPV4_CIDR}, {"pattern": IPV6_CIDR}]}
DURATION_TEXT = r"^(-1|[0-9]*[1-9][0-9]* ?[smhdw]?)$"

Target = Annotated[str, msgspec.Meta(
    description="an IP address, or a CIDR network (host bits zero)", extra_json_schema=TARGET_SCHEMA)]
_SECONDS = {"minimum": -1, "maximum": MAX_DURATION, "not": {"const": 0}}
Duration = Annotated[
    Annotated[int, msgspec.Meta(extra_json_schema=_SECONDS)]
    # JSON has one number type: 3600.0 (Python's timedelta.total_seconds()) is whole seconds too.
    | Annotated[float, msgspec.Meta(extra_json_schema={**_SECONDS, "multipleOf": 1})]
    | Annotated[str, msgspec.Meta(extra_json_schema={"pattern": DURATION_TEXT})],
    msgspec.Meta(description='seconds, or a duration like "10m", "1h", "2d"; -1 means permanent; '
                             'not 0; at most 10 years'),
]
Reason = Annotated[str, msgspec.Meta(extra_json_schema={"maxLength": MAX_REASON})]


class BanRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One manual ban: an address or a CIDR network."""

    address: Target
    duration: Duration = DEFAULT_MANUAL_BANTIME
    reason: Reason = ""


class Ban(messages.BanRecord, kw_only=True):
    """A ban record as the API shows it.

    `country` is null when unknown (no GeoIP database, or an address it does
    not know); `asn`/`as_org` come from the ASN database when configured.
    `active` tells whether this ban is in force now.
    """

    active: bool = False
    asn: int | None = None
    as_org: str | None = None


class BanDetail(Ban, kw_only=True):
    """One address: its current (or latest) ban, and every recorded ban of it, newest first."""

    history: list[Ban] = []


class BanList(msgspec.Struct):
    bans: list[Ban]
    total: int | None  # bans matching in all; null when the index cannot count them without reading each
    limit: int
    next: str | None = None  # the cursor of the next page; null: this is the last


class Banned(msgspec.Struct):
    banned: list[str]
    count: int


class Unbanned(msgspec.Struct):
    unbanned: str
    was_active: bool
    # Bans in force on networks that hold the address (an IPv6 /64, a CIDR):
    # lifting the address alone does not unblock it; these must be lifted.
    covered_by: list[str] = []


class WhitelistEntry(msgspec.Struct):
    network: str
    source: str  # "config" (the configuration file, read-only) or "api"
    read_only: bool
    reason: str = ""
    added_at: float | None = None


class WhitelistList(msgspec.Struct):
    entries: list[WhitelistEntry]


class WhitelistRequest(msgspec.Struct, forbid_unknown_fields=True):
    network: Target
    reason: Reason = ""


class WhitelistAdded(msgspec.Struct):
    network: str
    added: bool  # false: it was already there
    unbanned: list[str]  # active bans inside the network, lifted by this call
    message: str


class WhitelistRemoved(msgspec.Struct):
    removed: str


class DayCount(msgspec.Struct):
    day: str  # YYYY-MM-DD, UTC
    count: int


class NameCount(msgspec.Struct):
    name: str
    count: int


class EnforcerLag(msgspec.Struct):
    host: str
    pending: int  # always 0: an enforcer keeps its read position itself (stats.py)
    lag: int | None  # decisions it has not applied yet (counted up to 1000)


class Pipeline(msgspec.Struct):
    lines_length: int  # entries in the lines streams (every host's)
    detect_pending: int  # batches taken by a detector, not yet acknowledged
    detect_lag: int | None  # batches no detector has taken yet
    enforcers: list[EnforcerLag]


class Stats(msgspec.Struct):
    total_bans: int  # all time (counted by the history stream, also past its trimming)
    active_bans: int
    days: int
    bans_in_range: int
    bans_per_day: list[DayCount]  # oldest first, one entry per day, today last
    latest_ban: Ban | None
    top_countries: list[NameCount]  # over the range; "unknown" when no country is known
    top_rules: list[NameCount]
    top_hosts: list[NameCount]
    pipeline: Pipeline


class SourceView(messages.SourceStatus, kw_only=True):
    """A collector source (see messages.SourceStatus) and the lines it gave in the last hour."""

    lines_last_hour: int = 0


class CollectorView(msgspec.Struct):
    reporting: bool  # its report is fresh (written within the last few minutes)
    last_report: float | None  # epoch seconds; null: never reported
    started_at: float | None = None
    sources: list[SourceView] = []


class EnforcerView(msgspec.Struct):
    reporting: bool
    last_report: float | None
    started_at: float | None = None
    backend: str | None = None  # nftables, iptables, log-only
    table: str | None = None  # e.g. "inet pyfilter"
    table_present: bool = False
    hooks: list[str] = []  # e.g. ["input", "forward"]
    docker_covered: bool = False  # traffic to ports Docker publishes meets the bans
    sets: list[messages.SetStatus] = []  # elements per set


class RuleView(msgspec.Struct):
    rule: str
    sources: list[str]  # the sources that carry its lines on this host
    journal: bool  # carried by the journal; its copies in syslog files left out
    left_out: list[str]
    lines_last_hour: int  # lines read from those sources
    failures_last_hour: int  # failures counted for this rule from this host's lines
    bans_active: int  # bans in force decided from this host's lines by this rule
    bans_last_hour: int
    problem: str | None  # why no source carries it, in words


class HostStatus(msgspec.Struct):
    host: str
    collector: CollectorView
    enforcer: EnforcerView
    rules: list[RuleView]
    problems: list[str]  # what is wrong on this host, in words, with what to do


class StatusReport(msgspec.Struct):
    at: float
    hosts: list[HostStatus]  # one per host whose collector or enforcer reported in the last week
    problems: list[str]  # every host's problems ("host: ..."), and the deployment's


class Health(msgspec.Struct):
    status: str


class AuthCheck(msgspec.Struct):
    ok: bool


class Error(msgspec.Struct):
    error: str
