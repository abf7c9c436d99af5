"""Find and parse the timestamp of a log line: pure functions, epoch seconds out.

The detector calls it for lines a rule matched, the collector to find where a
log's recent part begins (sources/seek.py); so it may try several formats;
the conversions that cost something (calendar and zone arithmetic) are cached,
because consecutive lines usually share their second.

Supported at the start of the line (after spaces, '[' or '('); a timestamp
elsewhere in a line is never searched for, since the rest of a line may hold
text an attacker chose (a user name, a URL) and a planted old date would make
failures look too old to count. A rule whose lines carry their time further
in captures it (`(?P<time>...)`), and that capture is read the same way.

    Nov 21 20:19:28              syslog RFC 3164, year-less (resolved against now);
    PDT Apr 16 21:05:29          also after a zone abbreviation (Monit)
    apr 15, 2013 8:34:08 PM      Java's java.util.logging
    2014:07:02-00:17:45          DirectAdmin; [20220407-12:11:06] xrdp
    2011.11.21 14:29:16          stunnel
    11-06-2013 02:09:40 +0300    3proxy, Domino (day first; also 22.06.2014)
    L 01/01/2014 - 01:25:17      Half-Life servers; 06/27/2014 17:51:19 (month first, maybe PM)
    13/7/14@00:58:09             xinetd's own log
    12-31 17:39:54.767815        FreeSWITCH (year-less, month first)
    20:19:28.551 x               a time of day alone (logback): today, or yesterday if later than now
    Oct 27 2015 09:24:46         syslog with a year (macOS)
    Fri Jan 19 12:20:33 2007     ctime / Apache 2.2 error log (optionally [..] and .ffffff)
    2026-11-21T20:19:28.551+00:00   ISO 8601 / RFC 3339 (also ' ' for T, ',' for '.',
    2015-10-07  8:25:38             space-padded hours, Z, +hh:mm, +hhmm)
    <38>1 2019-07-08T17:40:16-04:00 RFC 5424 header
    21/Nov/2026:20:19:28 +0100   Apache / nginx access log (also Jetty's 02/sept./2015, Kerio's
                                 [17/Jun/2011 17:00:45])
    Apr-07-13 07:08:36           ASSP
    2026/11/21 20:19:28          nginx error log
    11-Aug-2013 03:36:11.372     BIND; [22-Jan-2013 22:28:21 +0200] roundcube
    130324  0:04:00              MySQL 5.x (YYMMDD)
    @400000004c91b044077a9e94    TAI64N (daemontools, multilog)
    audit(1373330716.415:4063)   epoch seconds (also [1373330716], [1373330716.415] and bare
    1373330716.415                 ten digits, as squid and caddy write them)

A timestamp without an offset is read in the zone `tz` (a zoneinfo name such
as "Europe/Zurich", "UTC", or a fixed offset "+01:00"). Fractions of a second
are truncated, as fail2ban does.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from pyfilter.common.zones import InvalidZone, get_zone

__all__ = ["parse_time", "get_zone", "InvalidZone", "Clock"]

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_MON = r"(?i:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
# Month names in the server's language, as Java and PHP servers write them
# (Jetty's French "sept."), in the access-log format only.
_LOCAL_MONTHS = {"janv": 1, "févr": 2, "fevr": 2, "mars": 3, "avr": 4, "mai": 5, "juin": 6, "juil": 7,
                 "août": 8, "aout": 8, "sept": 9, "déc": 12, "mär": 3, "mrz": 3, "okt": 10, "dez": 12}
_MON_ANY = r"(?:" + _MON + r"|(?i:" + "|".join(sorted(_LOCAL_MONTHS, key=len, reverse=True)) + r"))\.?"
_WDAY = r"(?i:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_OFFSET = r"(?P<off>Z|[+-]\d{2}:?\d{2})"

# Each format: (name, regex), tried in order at the start of the line.
_FORMATS: list[tuple[str, str]] = [
    ("iso", r"(?P<Y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:T| +)(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"
            r"(?:[.,]\d+)?" + "(?: ?" + _OFFSET + ")?(?!\\d|:\\d)"),
    ("syslog", r"(?:(?P<abbr>[A-Z]{2,5}) +(?=" + _MON + r" ))?(?:" + _WDAY + r" +)?(?P<b>" + _MON
               + r") +(?P<d>\d{1,2}) +(?:(?P<Y2>\d{4}) +)?(?P<H>\d{1,2}):"
               r"(?P<M>\d{2}):(?P<S>\d{2})(?:\.\d+)?(?: +(?P<Y>\d{4})(?![\d:.]))?"),
    ("java", r"(?P<b>" + _MON + r") (?P<d>\d{1,2}), (?P<Y>\d{4}) (?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2}) "
             r"(?P<ampm>[AaPp][Mm])"),
    ("compact", r"(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})-(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    ("colons", r"(?P<Y>\d{4}):(?P<m>\d{2}):(?P<d>\d{2})-(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    ("dotted", r"(?P<Y>\d{4})\.(?P<m>\d{2})\.(?P<d>\d{2}) (?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    # numeric dates: with "-" or "." day first, with "/" month first
    ("dmy_num", r"(?P<d>\d{2})[-.](?P<m>\d{2})[-.](?P<Y>\d{4}) +(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"
                r"(?:[.,]\d+)?(?: " + _OFFSET + ")?"),
    ("mdy", r"(?:L )?(?P<m>\d{2})/(?P<d>\d{2})/(?P<Y>\d{4})(?: -)? +(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"
            r"(?: (?P<ampm>[AaPp][Mm]))?"),
    ("mon_dd_yy", r"(?P<b>" + _MON + r")-(?P<d>\d{2})-(?P<y>\d{2}) (?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    ("ymd_at", r"(?P<y>\d{2})/(?P<m>\d{1,2})/(?P<d>\d{1,2})@(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    ("md_num", r"(?P<m>\d{2})-(?P<d>\d{2}) (?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.\d+)?(?![\d:])"),
    ("clf", r"(?P<d>\d{1,2})/(?P<b>" + _MON_ANY + r")/(?P<Y>\d{4})[: ](?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"
            r"(?:\.\d+)?(?: *" + _OFFSET + ")?"),
    ("slash", r"(?P<Y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})[ T](?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})(?:[.,]\d+)?"),
    ("dmy", r"(?P<d>\d{1,2})-(?P<b>" + _MON + r")-(?P<Y>\d{4})[ :](?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"
            r"(?:\.\d+)?(?: *" + _OFFSET + ")?"),
    ("mysql", r"(?P<y>\d{2})(?P<m>\d{2})(?P<d>\d{2}) +(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"),
    ("tai64n", r"@(?P<tai>4000000[0-9a-fA-F]{9})[0-9a-fA-F]{8}"),
    ("tod", r"(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:[.,]\d+)?(?![\d:])"),
    ("epoch", r"(?:audit\(|\[)?(?P<epoch>1\d{9}|[2-9]\d{9})(?:\.\d+)?(?:[:\]]|(?![\d:]))"),
]

def _prefixed(name: str, rx: str) -> str:
    # The empty group at the end names the format (`lastgroup`); a group
    # around the format would hide its first character from the regex
    # engine, which then tries every format in full at every start.
    return rx.replace("(?P<", f"(?P<{name}_") + f"(?P<{name}>)"


_START = re.compile(r"[\s\[(]*+(?:<\d{1,3}>\d{1,2} +|=[A-Z]+ REPORT=+ )?(?:"
                    + "|".join(_prefixed(name, rx) for name, rx in _FORMATS) + ")")
_FORMAT_NAMES = [name for name, _ in _FORMATS]


@lru_cache(maxsize=4096)
def _local_epoch(y: int, mo: int, d: int, h: int, mi: int, s: int, zone: tzinfo) -> float | None:
    try:
        if zone is timezone.utc:
            return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))) if _valid(y, mo, d, h, mi, s) else None
        return datetime(y, mo, d, h, mi, s, tzinfo=zone).timestamp()
    except ValueError:
        return None


def _valid(y: int, mo: int, d: int, h: int, mi: int, s: int) -> bool:
    return 1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 61


def _offset_seconds(off: str) -> int:
    if off == "Z":
        return 0
    sign = -1 if off[0] == "-" else 1
    digits = off[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)


def _month(name: str) -> int:
    name = name.rstrip(".").lower()
    return _LOCAL_MONTHS.get(name) or _MONTHS[name[:3]]


def _fixed(f: dict[str, str | None], zone: tzinfo) -> float | None | tuple[int, ...]:
    """The epoch, or (month, day, h, m, s) when the year has to come from "now"."""
    if f.get("tai"):
        return float(int(f["tai"], 16) - (1 << 62))  # type: ignore[arg-type]
    if f.get("epoch"):
        return float(int(f["epoch"]))  # type: ignore[arg-type]
    h, mi, s = int(f["H"]), int(f["M"]), int(f["S"])  # type: ignore[arg-type]
    if f.get("ampm"):
        h = h % 12 + (12 if f["ampm"].lower() == "pm" else 0)  # type: ignore[union-attr]
    if f.get("d") is None:
        return (h, mi, s)  # a time of day: the date comes from "now"
    d = int(f["d"])  # type: ignore[arg-type]
    mo = _month(f["b"]) if f.get("b") else int(f["m"])  # type: ignore[arg-type]
    off = f.get("off") or _ABBREVIATIONS.get(f.get("abbr") or "")
    if f.get("Y") or f.get("Y2"):
        y = int(f.get("Y") or f["Y2"])  # type: ignore[arg-type]
    elif f.get("y"):
        y = 2000 + int(f["y"])  # type: ignore[arg-type]
    elif off is not None:  # a year-less date in a named zone
        return (mo, d, h, mi, s, timezone(timedelta(seconds=_offset_seconds(off))))
    else:
        return (mo, d, h, mi, s)
    if off is not None:
        if not _valid(y, mo, d, h, mi, s):
            return None
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - _offset_seconds(off))
    return _local_epoch(y, mo, d, h, mi, s, zone)


_FIELDS = ("tai", "epoch", "H", "M", "S", "d", "b", "m", "off", "Y", "Y2", "y", "abbr", "ampm")
# Zone abbreviations a log may write before its time, and their offsets. Only
# the unambiguous common ones: IST, CST, AST... name different zones.
_ABBREVIATIONS = {
    "UTC": "+0000", "GMT": "+0000", "Z": "+0000", "WET": "+0000", "WEST": "+0100", "BST": "+0100",
    "CET": "+0100", "CEST": "+0200", "MET": "+0100", "MEST": "+0200", "EET": "+0200", "EEST": "+0300",
    "MSK": "+0300", "JST": "+0900", "KST": "+0900", "AEST": "+1000", "AEDT": "+1100", "NZST": "+1200",
    "NZDT": "+1300", "HST": "-1000", "AKST": "-0900", "AKDT": "-0800", "PST": "-0800", "PDT": "-0700",
    "MST": "-0700", "MDT": "-0600", "EST": "-0500", "EDT": "-0400",
}
_GROUPS = {name: [(f, f"{name}_{f}") for f in _FIELDS if f"{name}_{f}" in _START.groupindex]
           for name in _FORMAT_NAMES}


def _start_fixed(stamp: str, zone: tzinfo) -> float | None | tuple[int, ...]:
    m = _START.match(stamp)
    if m is None or m.lastgroup not in _GROUPS:  # pragma: no cover - matched before
        return None
    return _fixed({f: m.group(g) for f, g in _GROUPS[m.lastgroup]}, zone)


class _Stamp:
    """What a timestamp string means in a zone, cached: most lines repeat the last one's.

    A year-less date also depends on "now"; the answer is kept with the span
    of "now" over which it holds (same year of now, same choice of year for
    the date), so a detector whose clock moves on only recomputes it when
    that span is left.
    """

    __slots__ = ("fixed", "lo", "hi", "value")

    def __init__(self, fixed: float | None | tuple[int, ...]) -> None:
        self.fixed = fixed
        self.lo = self.hi = 0.0  # an empty span: computed at first use
        self.value: float | None = None

    def at(self, zone: tzinfo, now: float | None) -> float | None:
        fixed = self.fixed
        if not isinstance(fixed, tuple):
            return fixed
        ref = now if now is not None else datetime.now(timezone.utc).timestamp()
        if not self.lo <= ref < self.hi:
            if len(fixed) == 3:
                self.value, self.lo, self.hi = _time_of_day_span(*fixed, zone, ref)
            elif len(fixed) == 6:  # the date's own zone
                self.value, self.lo, self.hi = _yearless_span(*fixed[:5], fixed[5], ref)
            else:
                self.value, self.lo, self.hi = _yearless_span(*fixed, zone, ref)
        return self.value


_stamps: dict[tuple[str, tzinfo], _Stamp] = {}
_MAX_STAMPS = 8192


def _stamp(stamp: str, zone: tzinfo) -> _Stamp:
    entry = _stamps.get((stamp, zone))
    if entry is None:
        if len(_stamps) >= _MAX_STAMPS:
            _stamps.clear()  # a new day of timestamps: cheaper than keeping order
        entry = _stamps[(stamp, zone)] = _Stamp(_start_fixed(stamp, zone))
    return entry


_last_year: list = [None, None, None]  # (day number, zone, year) of the last "now" seen


def _year_of(ref: float, zone: tzinfo) -> int:
    day = int(ref // 3600)
    if _last_year[0] != day or _last_year[1] is not zone:
        _last_year[:] = [day, zone, datetime.fromtimestamp(ref, zone).year]
    return _last_year[2]


def _yearless_span(mo: int, d: int, h: int, mi: int, s: int, zone: tzinfo,
                   ref: float) -> tuple[float | None, float, float]:
    """`_yearless` at `ref`, and the span [lo, hi) of `ref` over which the answer stays."""
    year = _year_of(ref, zone)
    lo = _year_start(year, zone)
    hi = _year_start(year + 1, zone)
    years = (year + 1, year, year - 1) if mo == 1 else (year, year - 1)
    for y in years + (year - 2, year - 3, year - 4):  # Feb 29 may need a few
        t = _local_epoch(y, mo, d, h, mi, s, zone)
        if t is None:
            continue
        if t <= ref + 86400:
            return t, max(lo, t - 86400), hi
        hi = min(hi, t - 86400)  # later, this (more recent) year is the answer
    return None, lo, hi


def _time_of_day_span(h: int, mi: int, s: int, zone: tzinfo, ref: float) -> tuple[float | None, float, float]:
    """A time of day alone: today's, or yesterday's if today's is later than `ref` (as fail2ban reads
    it); computed anew for every "now" (an empty span)."""
    today = datetime.fromtimestamp(ref, zone)
    if not (h < 24 and mi < 60 and s < 61):
        return None, 0.0, 0.0
    t = _local_epoch(today.year, today.month, today.day, h, mi, s, zone)
    if t is not None and t > ref + 60:
        yesterday = datetime.fromtimestamp(ref - 86400, zone)
        t = _local_epoch(yesterday.year, yesterday.month, yesterday.day, h, mi, s, zone)
    return t, 0.0, 0.0


@lru_cache(maxsize=64)
def _year_start(year: int, zone: tzinfo) -> float:
    return datetime(year, 1, 1, tzinfo=zone).timestamp()


def parse_time(text: str, tz: str | tzinfo | None = None, now: float | None = None) -> float | None:
    """Epoch seconds of the timestamp at the start of `text`, or None.

    Leading spaces, '[', '(', an RFC 5424 '<PRI>VERSION ' header and an Erlang
    report's `=INFO REPORT==== ` are skipped.
    """
    m = _START.match(text)
    if m is None:
        return None
    zone = tz if isinstance(tz, tzinfo) else get_zone(tz)
    return _stamp(m.group(0), zone).at(zone, now)


# `Clock`'s shortcut: a classic syslog stamp filling the first 15 characters.
_SYSLOG15 = re.compile(r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d")
_NOT_AFTER_STAMP = " 0123456789"  # also "": a line that ends after the stamp


class Clock:
    """`parse_time` for one zone, faster on syslog lines: a matcher keeps one per rule.

    A line that starts with `Mmm dd hh:mm:ss`, then one space and a character
    that is neither a digit nor a space (the host name, usually), has exactly
    that stamp as its time (`parse_time` reads no year or fraction there), so
    the answer for those 15 characters is looked up instead of parsed. Any
    other line goes through `parse_time`.
    """

    __slots__ = ("zone", "_stamps", "_envelope_stamps")

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._stamps: dict[str, _Stamp] = {}
        self._envelope_stamps: dict[str, _Stamp] = {}

    def stamp(self, stamp: str, now: float | None) -> float | None:
        """The time of an envelope's timestamp (`stamp` is exactly the timestamp, nothing after it).

        Cached per stamp; RFC 3339 stamps per second (their fractions would
        make every line a new entry, and times are truncated to seconds).
        """
        if len(stamp) > 20 and stamp[19] in ".,":
            stamp = stamp[:19] + stamp[20:].lstrip("0123456789")
        entry = self._envelope_stamps.get(stamp)
        if entry is None:
            if len(self._envelope_stamps) >= _MAX_STAMPS:
                self._envelope_stamps.clear()
            entry = self._envelope_stamps[stamp] = _stamp(stamp, self.zone)
        if now is not None and entry.lo <= now < entry.hi:
            return entry.value
        return entry.at(self.zone, now)

    def __call__(self, text: str, now: float | None) -> float | None:
        key = text[:15]
        entry = self._stamps.get(key)
        if entry is not None and text[15:16] == " " and text[16:17] not in _NOT_AFTER_STAMP:
            if now is not None and entry.lo <= now < entry.hi:
                return entry.value
            return entry.at(self.zone, now)
        found = parse_time(text, self.zone, now)
        if text[15:16] == " " and text[16:17] not in _NOT_AFTER_STAMP and _SYSLOG15.fullmatch(key):
            if len(self._stamps) >= _MAX_STAMPS:
                self._stamps.clear()
            self._stamps[key] = _stamp(key, self.zone)
        return found
