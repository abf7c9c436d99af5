"""GET /api/v1/stats: the dashboard's numbers, and how far behind the pipeline is.

Days are UTC calendar days. Per-day counts and the top lists cover the
requested range only, read from the history stream by ID range; the all-time
total is the stream's own count of entries ever added, which stays right
after old entries are trimmed.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from aiohttp import web
from redis.exceptions import ResponseError

from pyfilter.api import state
from pyfilter.api.responses import int_param, json
from pyfilter.api.schemas import Ban, DayCount, EnforcerLag, NameCount, Pipeline, Stats
from pyfilter.api.search import UNKNOWN_COUNTRY
from pyfilter.common import bans, hosts
from pyfilter.common.keys import DETECT_GROUP

TOP = 10
MAX_DAYS = 366
# An enforcer's lag is counted up to this many decisions (a bounded read per host).
LAG_CAP = 1000


def _top(counter: Counter[str]) -> list[NameCount]:
    return [NameCount(name=n, count=c) for n, c in counter.most_common(TOP)]


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).date().isoformat()


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
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc).timestamp()
    per_day = Counter({(first + timedelta(days=i)).isoformat(): 0 for i in range(days)})
    countries: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    async for rec in api.reader.history(since=start):
        day = _day(rec.banned_at)
        if day not in per_day:
            continue
        per_day[day] += 1
        countries[api.reader.view(rec, False).country or UNKNOWN_COUNTRY] += 1
        rules[rec.rule] += 1
        hosts[rec.host] += 1
    return Stats(
        total_bans=await total_bans(api),
        active_bans=await api.client.zcount(api.keys.active_bans, f"({now}", "+inf"),
        days=days,
        bans_in_range=sum(per_day.values()),
        bans_per_day=[DayCount(day=d, count=c) for d, c in sorted(per_day.items())],
        latest_ban=await latest(api, now),
        top_countries=_top(countries),
        top_rules=_top(rules),
        top_hosts=_top(hosts),
        pipeline=await pipeline(api),
    )


async def latest(api: state.Api, now: float) -> Ban | None:
    """The newest ban written; active if it is still the address's ban in force."""
    async for rec in api.reader.history():
        current = await bans.record(api.client, api.keys, rec.address)
        expiry = await api.client.zscore(api.keys.active_bans, rec.address)
        in_force = (current is not None and current.banned_at == rec.banned_at
                    and expiry is not None and expiry > now)
        return api.reader.view(rec, in_force)
    return None


async def get_stats(request: web.Request) -> web.Response:
    days = int_param(request.query, "days", 10, 1, MAX_DAYS)
    return json(await compute(state.of(request), days))


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/stats", get_stats)]
