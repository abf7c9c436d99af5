"""GET /api/v1/stats: the dashboard's numbers, and how far behind the pipeline is.

Days are UTC calendar days. Per-day counts and the top lists cover the
requested range only, read from the counts the ledger keeps per day as it
writes bans (`Keys.ban_day`): one hash per day, whatever the number of bans.
The all-time total is the history stream's own count of entries ever added,
which stays right after old entries are trimmed.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from aiohttp import web
from redis.exceptions import ResponseError

from pyfilter.api import countries, state
from pyfilter.api.responses import int_param, json
from pyfilter.api.schemas import Ban, DayCount, EnforcerLag, NameCount, Pipeline, Stats
from pyfilter.api.search import UNKNOWN_COUNTRY
from pyfilter.api.index import NONE_KNOWN, SEP
from pyfilter.common import hosts
from pyfilter.common.keys import DETECT_GROUP
from pyfilter.common.ledger import index_ms

TOP = 10
MAX_DAYS = 366
# An enforcer's lag is counted up to this many decisions (a bounded read per host).
LAG_CAP = 1000


def _top(counter: Counter[str]) -> list[NameCount]:
    return [NameCount(name=n, count=c) for n, c in counter.most_common(TOP)]


async def _groups(api: state.Api, stream: str) -> list[dict]:
    try:
        return await api.client.xinfo_groups(stream)
    except ResponseError:  # the stream does not exist yet
        return []


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def pipeline(api: state.Api) -> Pipeline:
    listed = await hosts.names(api.client, api.keys)
    streams = [api.keys.lines(h) for h in listed] + [api.keys.legacy_lines]
    length = pending = 0
    lags: list[int | None] = []
    for stream in streams:
        length += await api.client.xlen(stream)
        detect = next((g for g in await _groups(api, stream) if _text(g["name"]) == DETECT_GROUP), None)
        if detect is not None:
            pending += int(detect["pending"])
            lags.append(detect.get("lag"))
    lag = None if not lags or None in lags else sum(map(int, lags))  # type: ignore[arg-type]
    async with api.client.pipeline(transaction=False) as pipe:
        for host in listed:
            pipe.get(api.keys.decisions_read(host))
        positions = await pipe.execute()
    enforcers = []
    for host, position in zip(listed, positions):
        if position is None:
            continue  # no enforcer on that host has read yet
        behind = await api.client.xrange(api.keys.decisions, b"(" + position, count=LAG_CAP)
        enforcers.append(EnforcerLag(host=host, pending=0, lag=len(behind)))
    return Pipeline(lines_length=length, detect_pending=pending, detect_lag=lag, enforcers=enforcers)


async def total_bans(api: state.Api) -> int:
    try:
        info = await api.client.xinfo_stream(api.keys.ban_history)
    except ResponseError:
        return 0
    return int(info.get("entries-added", info["length"]))


async def compute(api: state.Api, days: int, now: float | None = None) -> Stats:
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, timezone.utc).date()
    first = today - timedelta(days=days - 1)
    dates = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    per_day: Counter[str] = Counter()
    by: dict[str, Counter[str]] = {"country": Counter(), "rule": Counter(), "host": Counter()}
    async with api.client.pipeline(transaction=False) as pipe:
        for day in dates:
            pipe.hgetall(api.keys.ban_day(day))
        for day, counts in zip(dates, await pipe.execute()):
            for field, value in counts.items():
                kind, _, name = field.decode().partition(SEP)
                if kind == "host-rule":
                    host, _, rule = name.partition(SEP)
                    per_day[day] += int(value)
                    by["host"][host] += int(value)
                    by["rule"][rule] += int(value)
                elif kind == "country":
                    by["country"][name] += int(value)
    countries = Counter({UNKNOWN_COUNTRY if c == NONE_KNOWN else c: n for c, n in by["country"].items()})
    return Stats(
        total_bans=await total_bans(api),
        active_bans=await api.client.zcount(api.keys.active_bans, f"({now}", "+inf"),
        days=days,
        bans_in_range=sum(per_day.values()),
        bans_per_day=[DayCount(day=d, count=per_day[d]) for d in dates],
        latest_ban=await latest(api, now),
        top_countries=_top(countries),
        top_rules=_top(by["rule"]),
        top_hosts=_top(by["host"]),
        pipeline=await pipeline(api),
    )


async def latest(api: state.Api, now: float) -> Ban | None:
    """The newest ban written; active if it is still the address's ban in force."""
    async for rec in api.reader.history(count=1):
        entry = await api.reader.index.entry(rec.address)
        in_force = entry is not None and entry.ms == index_ms(rec.banned_at) and entry.in_force(now)
        return api.reader.view(rec, in_force, entry)
    return None


async def get_stats(request: web.Request) -> web.Response:
    days = int_param(request.query, "days", 10, 1, MAX_DAYS)
    api = state.of(request)
    await countries.fill_pending(api)
    return json(await compute(api, days))


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/stats", get_stats)]
