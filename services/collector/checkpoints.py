"""Where each source's progress is kept, and how it only moves with the lines.

A source's checkpoint is a Redis hash (`Keys.checkpoint(host, source)`) whose
fields only the source interprets. `Committer.commit` writes a batch's lines
(XADD, one field `m`) and its checkpoint fields (HSET/HDEL) in one MULTI/EXEC
transaction: either both are in Redis or neither is. A crash, or a reply lost
on the way back, can at most make the same batch go out twice, and its line
ids let the detector drop the copy. With `redis.wait_replicas`, the write
counts only once that many replicas hold it (redisio.transaction): a
failover cannot take back a batch whose checkpoint the source moved past.

On Redis Cluster one transaction may only touch one slot, and the stream,
the checkpoint and the host's own addresses each hash to their own. There
the commit is three steps, in this order, each retried until done: the lines
(with the stream's length), then the checkpoint, then the own addresses.
The checkpoint so never moves past lines that are not in Redis; a crash
between the first two steps sends the batch again on restart, the same as
a lost reply on one Redis, and the windows count each line id once.

The stream is never trimmed here. While it holds more than `lines_maxlen`
entries the committer waits for the detectors to drain it; lines wait on
disk, not in memory. Transient Redis errors (`redisio.TRANSIENT`) are retried
with backoff, forever: the batch in hand is kept until it is written.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from pyfilter.common import hosts
from pyfilter.common.keys import Keys
from pyfilter.common.messages import LineBatch, encode
from pyfilter.common.redisio import TRANSIENT, is_cluster, transaction

from .sources.base import Batch, Stats

log = logging.getLogger("pyfilter.collector.checkpoints")

FULL_POLL = 0.2  # how often to look at the stream length while it is full (s)
BACKOFF_MAX = 5.0  # longest wait between two tries of a failed write (s)


async def load(redis: aioredis.Redis, keys: Keys, host: str, source: str) -> dict[str, bytes]:
    """What the source's checkpoint hash holds (empty on the first run)."""
    raw = await retry(lambda: redis.hgetall(keys.checkpoint(host, source)),
                      "Redis failed while reading a checkpoint; retrying", source)
    return {k.decode(): v for k, v in raw.items()}


async def retry(call, failed: str, source: str, stats: Stats | None = None):
    """Await `call()` until it succeeds, backing off while Redis fails (logged as `failed`)."""
    delay = 0.1
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            if stats is not None:
                stats.errors += 1
            log.warning(failed, extra={
                "source": source, "error": str(exc),
                "error_type": type(exc).__name__, "retry_in": round(delay, 1)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


class Committer:
    def __init__(self, redis: aioredis.Redis, keys: Keys, host: str, maxlen: int):
        self.redis, self.keys, self.host, self.maxlen = redis, keys, host, maxlen
        self.length = 0  # stream length seen at the last write (the lag metric)
        self.listed = False  # this host is in the hosts set, so detectors read its stream

    async def commit(self, source: str, batch: Batch, stats: Stats, tz: str | None = None,
                     program: str | None = None, skip: tuple[str, ...] = ()) -> None:
        """Write the batch and its checkpoint atomically; return once they are in Redis.

        `tz` is the zone the source writes zone-less timestamps in, `program`
        the program whose own log it is (if the source says; the batch's own
        `program` wins), `skip` the rules its lines must not feed
        (collector/plan.py). The addresses the batch says the source owns are
        published with it.
        """
        payload = None
        if batch.lines:
            payload = encode(LineBatch(self.host, source, batch.lines, time.time(), tz=tz,
                                       program=batch.program or program, rules=batch.rules,
                                       container=batch.container, skip=skip))
        key = self.keys.checkpoint(self.host, source)

        def lines(tx) -> None:
            if payload is not None:
                tx.xadd(self.keys.lines(self.host), {b"m": payload})
            tx.xlen(self.keys.lines(self.host))

        # A field both forgotten and written is written: a file the source
        # forgot (gone, or read on from its compressed copy) freed its inode,
        # and a file made since took it, so its identity now names that file.
        forget = [field for field in batch.forget if field not in batch.checkpoint]

        def checkpoint(tx) -> None:
            if batch.checkpoint:
                tx.hset(key, mapping=batch.checkpoint)
            if forget:
                tx.hdel(key, *forget)

        def own(tx) -> None:
            if batch.own is not None:
                tx.hset(self.keys.own_addresses(self.host), hosts.field(source), " ".join(batch.own))

        async def write(*steps) -> list:
            if not self.listed:
                await hosts.register(self.redis, self.keys, self.host)
                self.listed = True
            if lines in steps:
                await self._wait_for_room(stats)
            async with transaction(self.redis) as tx:
                for step in steps:
                    step(tx)
                return await tx.execute() if len(tx) else []

        failed = "Redis failed while writing a batch; retrying"
        if is_cluster(self.redis):  # one slot per transaction: the steps in order (above)
            replies = await retry(lambda: write(lines), failed, source, stats)
            for step in (checkpoint, own):
                await retry(lambda step=step: write(step), failed, source, stats)
        else:
            replies = await retry(lambda: write(checkpoint, own, lines), failed, source, stats)
        self.length = replies[-1]
        if payload is not None:
            stats.lines += len(batch.lines)
            stats.batches += 1
            stats.bytes += len(payload)

    async def _wait_for_room(self, stats: Stats) -> None:
        # Detectors delete what they acknowledged; until they catch up, wait.
        # The length comes back with every write, so a stream with room costs
        # no extra round trip.
        waited = False
        while self.length > self.maxlen:
            if not waited:
                log.warning("stream full; waiting for the detectors to drain it",
                            extra={"length": self.length, "maxlen": self.maxlen})
                waited = True
            await asyncio.sleep(FULL_POLL)
            self.length = await self.redis.xlen(self.keys.lines(self.host))
        if waited:
            log.info("stream has room again; writing", extra={"length": self.length})
