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

Duration = Annotated[
    int | str,
    msgspec.Meta(description='seconds, or a duration like "10m", "1h", "2d"; -1 means permanent'),
]


class BanRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One manual ban: an address or a CIDR network."""

    address: str
    duration: Duration = DEFAULT_MANUAL_BANTIME
    reason: str = ""


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
    total: int
    limit: int
    offset: int


class Banned(msgspec.Struct):
    banned: list[str]
    count: int


class Unbanned(msgspec.Struct):
    unbanned: str
    was_active: bool


class WhitelistEntry(msgspec.Struct):
    network: str
    source: str  # "config" (the configuration file, read-only) or "api"
    read_only: bool
    reason: str = ""
    added_at: float | None = None


class WhitelistList(msgspec.Struct):
    entries: list[WhitelistEntry]


class WhitelistRequest(msgspec.Struct, forbid_unknown_fields=True):
    network: str
    reason: str = ""


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
    pending: int  # delivered to the enforcer, not yet acknowledged
    lag: int | None  # decisions not yet delivered (null if Redis cannot tell)


class Pipeline(msgspec.Struct):
    lines_length: int  # entries in the lines stream
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


class Health(msgspec.Struct):
    status: str


class AuthCheck(msgspec.Struct):
    ok: bool


class Error(msgspec.Struct):
    error: str
