"""Status reports and per-minute counters in Redis: what `pyfilter status` is made of.

Each host's collector and enforcer publish a small report of their own
(`messages.CollectorStatus`, `EnforcerStatus`) under `Keys.status(service,
host)`: at start, whenever it changes, and at least every REFRESH seconds.
The key expires after TTL, so the report of a host that died ages out;
`Keys.status_seen(host)` keeps when each was last written, to say "not
reporting since ...". Both are the host's own keys (its Redis user writes
nothing else of the kind); the api finds them through `Keys.hosts`.

The detector counts each host's lines (per source) and failures (per rule)
in one hash per minute, queued on the pipeline that acknowledges the
batches: no round trip of its own. The api sums the last hour's hashes.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import msgspec
import redis.asyncio as redis

from pyfilter.common import hosts, messages
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import is_cluster

REFRESH = 60.0  # a report is written again at least this often (s)
TTL = int(3 * REFRESH)  # then it expires: its host is "not reporting"
HOUR = 60  # minutes summed by `last_hour`
COUNTS_TTL = (HOUR + 10) * 60  # a minute's hash outlives the hour it is read in
FORGET_AFTER = 7 * 86400  # a host silent this long is no longer listed

Report = messages.CollectorStatus | messages.EnforcerStatus


class Publisher:
    """Writes one service's report of its host when it changed or REFRESH has passed."""

    def __init__(self, client: redis.Redis, keys: Keys, service: str, host: str):
        self.client, self.keys, self.service, self.host = client, keys, service, host
        self.last: bytes | None = None  # the last report written, its time left out
        self.sent = -math.inf  # monotonic time it was written
        self.listed = False  # the host is in `Keys.hosts`, where the api looks for reports

    async def publish(self, report: Report) -> bool:
        """Write `report` if due; True if written."""
        body = messages.encode(msgspec.structs.replace(report, at=0.0))
        if body == self.last and time.monotonic() - self.sent < REFRESH:
            return False
        if not self.listed:
            await hosts.register(self.client, self.keys, self.host)
            self.listed = True
        # Not a transaction: on Redis Cluster the two keys are in different slots,
        # and a report written without its time (or the reverse) misleads no one for long.
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.status(self.service, self.host), messages.encode(report), ex=TTL)
            pipe.hset(self.keys.status_seen(self.host), self.service, repr(report.at))
            await pipe.execute()
        self.last, self.sent = body, time.monotonic()
        return True


async def reports(client: redis.Redis, keys: Keys, now: float | None = None
                  ) -> tuple[dict[tuple[str, str], Report], dict[tuple[str, str], float]]:
    """(service, host) -> its live report; (service, host) -> when last written, for every
    report seen in the last FORGET_AFTER (live or aged out)."""
    now = time.time() if now is None else now
    seen: dict[tuple[str, str], float] = {}
    listed = await hosts.names(client, keys)
    async with client.pipeline(transaction=False) as pipe:
        for host in listed:
            pipe.hgetall(keys.status_seen(host))
        written = await pipe.execute()
    for host, fields in zip(listed, written):
        for service, value in fields.items():
            try:
                at = float(value)
            except ValueError:
                continue
            if now - at < FORGET_AFTER:
                seen[service.decode(), host] = at
    names = sorted(seen)
    raw = await _get_each(client, [keys.status(s, h) for s, h in names]) if names else []
    live = {}
    for name, data in zip(names, raw):
        if data is not None:
            try:
                live[name] = messages.decode_status(data)
            except msgspec.DecodeError:
                continue  # a newer writer's report: shown as not reporting
    return live, seen


async def _get_each(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    """MGET; on Redis Cluster, where the hosts' reports are in different slots, one GET each
    (in one round trip per node)."""
    return await (client.mget_nonatomic(keys) if is_cluster(client) else client.mget(keys))


def count(pipe, keys: Keys, now: float, lines: Counter, failures: Counter) -> None:
    """Queue on `pipe` this minute's counts: lines by (host, source), failures by (host, rule)."""
    minute = int(now // 60)
    touched = set()
    for prefix, counter in (("lines", lines), ("failures", failures)):
        for (host, name), n in counter.items():
            pipe.hincrby(keys.counts(host, minute), f"{prefix}:{name}", n)
            touched.add(host)
    for host in touched:
        pipe.expire(keys.counts(host, minute), COUNTS_TTL)


async def last_hour(client: redis.Redis, keys: Keys, host: str, now: float | None = None
                    ) -> tuple[Counter, Counter]:
    """A host's (lines by source, failures by rule) over the last HOUR minutes."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    async with client.pipeline(transaction=False) as pipe:
        for m in range(minute - HOUR + 1, minute + 1):
            pipe.hgetall(keys.counts(host, m))
        hashes = await pipe.execute()
    lines: Counter = Counter()
    failures: Counter = Counter()
    for fields in hashes:
        for field, value in fields.items():
            kind, _, name = field.decode().partition(":")
            {"lines": lines, "failures": failures}.get(kind, Counter())[name] += int(value)
    return lines, failures
