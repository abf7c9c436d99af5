"""Ban search: the filters of `GET /bans`, parsed from the query and applied to bans.

Pure functions on values; the Redis reading lives in `records.py`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from pyfilter.api.responses import FieldError
from pyfilter.common import messages
from pyfilter.common.addresses import InvalidAddress, Network, parse_network, parse_target

UNKNOWN_COUNTRY = "unknown"
_SPACED_OFFSET = re.compile(r"(.*\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)")


@dataclass(frozen=True)
class Filter:
    address: str | None = None  # exact, normalised (a CIDR ban matches only its CIDR)
    prefix: Network | None = None  # bans whose address or network lies inside
    rule: str | None = None
    host: str | None = None
    country: str | None = None  # ISO code, upper case; "unknown" matches bans without one
    since: float | None = None  # banned at or after
    until: float | None = None  # banned at or before

    def matches(self, ban: messages.BanRecord) -> bool:
        if self.address is not None and ban.address != self.address:
            return False
        if self.rule is not None and ban.rule != self.rule:
            return False
        if self.host is not None and ban.host != self.host:
            return False
        if self.country is not None and (ban.country or UNKNOWN_COUNTRY).upper() != self.country:
            return False
        if self.since is not None and ban.banned_at < self.since:
            return False
        if self.until is not None and ban.banned_at > self.until:
            return False
        return self.prefix is None or inside(ban.address, self.prefix)


def inside(address: str, prefix: Network) -> bool:
    try:
        target = ipaddress.ip_network(parse_target(address))
    except InvalidAddress:
        return False
    return target.version == prefix.version and target.subnet_of(prefix)


# Times are clamped to 1970..9999: stream IDs (milliseconds) must fit in 64 bits.
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z


def parse_time(field: str, text: str) -> float:
    """Epoch seconds from `1767225600`, `2026-01-01`, `2026-01-01T12:00:00Z` (no zone: UTC)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value != value or value in (math.inf, -math.inf):
            raise FieldError(field, f"expected a finite time, got {text!r}")
        return min(max(value, 0.0), LATEST)
    # An unencoded "+01:00" in a query string arrives as " 01:00": take it back.
    if m := _SPACED_OFFSET.fullmatch(text):
        text = f"{m.group(1)}+{m.group(2)}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(field, f'expected ISO 8601 like "2026-01-01T12:00:00Z" or epoch seconds, got {text!r}') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return min(max(moment.timestamp(), 0.0), LATEST)


def parse_filter(query) -> Filter:
    def text(name: str) -> str | None:
        value = query.get(name, "").strip()
        return value or None

    address = text("address")
    if address is not None:
        try:
            address = str(parse_target(address))
        except InvalidAddress as exc:
            raise FieldError("address", str(exc)) from None
    prefix = text("prefix")
    network = None
    if prefix is not None:
        try:
            network = parse_network(prefix)
        except InvalidAddress as exc:
            raise FieldError("prefix", str(exc)) from None
    since = parse_time("since", v) if (v := text("since")) else None
    until = parse_time("until", v) if (v := text("until")) else None
    country = text("country")
    return Filter(address=address, prefix=network, rule=text("rule"), host=text("host"),
                  country=country.upper() if country else None, since=since, until=until)
