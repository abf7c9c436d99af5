"""Time zones as configuration names them: a zoneinfo name, UTC, or a fixed offset.

In `common` because the configuration checks a source's zone, the collector
names the zone of each batch, and the detector reads times in it.
"""

from __future__ import annotations

import re
from datetime import timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["InvalidZone", "get_zone"]


class InvalidZone(ValueError):
    pass


@lru_cache(maxsize=64)
def get_zone(name: str | None) -> tzinfo:
    """A tzinfo for a zoneinfo name ("Europe/Zurich"), "UTC", or an offset ("+01:00")."""
    if not name or name.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", name)
    if m:
        delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0))
        return timezone(-delta if m.group(1) == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidZone(f'unknown time zone "{name}": expected a zone name like '
                          '"Europe/Zurich", "UTC" or an offset like "+01:00"') from None
