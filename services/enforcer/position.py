"""How far this host's enforcer has applied the decisions stream.

The position (an entry id) is a key of this host's own (`Keys.decisions_read`),
written only after the kernel has the decisions up to it: a crash replays at
most one read, which `apply(redelivered=True)` does not apply twice.

Enforcers used to read through a consumer group each (`enforce:HOST`). The
first start without a position takes it from that group, so nothing is
missed or replayed across the upgrade: from just before its oldest pending
entry (read, not yet in the kernel) or else its last delivered one. With no
group either, it starts at the stream's end: what came before is in the
active bans, which the reconcile after the start applies.
"""

from __future__ import annotations

import logging

import redis.asyncio as redis
from redis.exceptions import ResponseError

from pyfilter.common.keys import Keys

log = logging.getLogger("pyfilter.enforcer")

START = b"0-0"
MAX_SEQ = 2**64 - 1


class Position:
    def __init__(self, client: redis.Redis, keys: Keys, host: str):
        self.client, self.keys, self.host = client, keys, host
        self.key = keys.decisions_read(host)

    async def load(self) -> bytes:
        saved = await self.client.get(self.key)
        if saved is not None:
            return saved
        position, where = await self._from_group()
        if position is None:
            position, where = await self._stream_end(), "the end of the decisions stream"
        await self.client.set(self.key, position, nx=True)
        log.info("enforcer read position made", extra={"host": self.host, "position": position.decode(),
                                                        "from": where})
        return await self.client.get(self.key) or position

    async def save(self, position: bytes) -> None:
        await self.client.set(self.key, position)

    async def _from_group(self) -> tuple[bytes | None, str]:
        group = self.keys.enforce_group(self.host)
        try:
            groups = await self.client.xinfo_groups(self.keys.decisions)
        except ResponseError:  # no stream yet
            return None, ""
        found = next((g for g in groups if _bytes(g["name"]) == group.encode()), None)
        if found is None:
            return None, ""
        summary = await self.client.xpending(self.keys.decisions, group)
        if summary["pending"]:
            return before(_bytes(summary["min"])), f"the oldest pending entry of group {group}"
        return _bytes(found["last-delivered-id"]), f"the last entry group {group} read"

    async def _stream_end(self) -> bytes:
        last = await self.client.xrevrange(self.keys.decisions, count=1)
        return last[0][0] if last else START


def before(entry_id: bytes) -> bytes:
    """The greatest entry id below `entry_id`: reading after it starts at `entry_id`."""
    ms, _, seq = entry_id.partition(b"-")
    if int(seq):
        return b"%d-%d" % (int(ms), int(seq) - 1)
    if int(ms):
        return b"%d-%d" % (int(ms) - 1, MAX_SEQ)
    return START


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
