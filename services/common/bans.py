"""Ban state in Redis as the api and enforcers read and change it.

The detector writes bans from its window script (atomically with the
window). Manual bans and unbans are written here, in one MULTI/EXEC each:
the record, the active set, the history and the decision every enforcer
applies, so no host can miss a change the api reported as done.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as redis

from pyfilter.common import messages
from pyfilter.common.config import Escalation
from pyfilter.common.keys import Keys

HISTORY_MAXLEN = 100_000
DECISIONS_MAXLEN = 1_000_000
# A ban record is read while its ban is in force (and by the notifier just
# after); it then expires, the history stream keeps the past. The detector's
# window script writes records with the same grace.
RECORD_GRACE = 86400
DEFAULT_MEMORY = int(Escalation().memory)  # manual bans follow the default of the rules


async def active(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, float | None]:
    """Address -> expiry (None: permanent) of every ban still in force."""
    now = time.time() if now is None else now
    rows = await client.zrangebyscore(keys.active_bans, f"({now}", "+inf", withscores=True)
    return {a.decode(): (None if math.isinf(s) else s) for a, s in rows}


async def records(client: redis.Redis, keys: Keys, addresses: list[str]) -> list[messages.BanRecord]:
    if not addresses:
        return []
    raw = await client.mget([keys.ban(a) for a in addresses])
    return [messages.decode_record(r) for r in raw if r is not None]


async def record(client: redis.Redis, keys: Keys, address: str) -> messages.BanRecord | None:
    raw = await client.get(keys.ban(address))
    return messages.decode_record(raw) if raw is not None else None


async def publish_ban(client: redis.Redis, keys: Keys, rec: messages.BanRecord,
                      decision: messages.Decision) -> None:
    packed = messages.encode(rec)
    async with client.pipeline(transaction=True) as pipe:
        write_ban(pipe, keys, rec, packed)
        pipe.xadd(keys.ban_history, {"m": packed}, maxlen=HISTORY_MAXLEN, approximate=True)
        pipe.xadd(keys.decisions, {"m": messages.encode(decision)}, maxlen=DECISIONS_MAXLEN,
                  approximate=True)
        await pipe.execute()


def write_ban(pipe, keys: Keys, rec: messages.BanRecord, packed: bytes, memory: int = DEFAULT_MEMORY) -> None:
    """Queue the ban's record, its place in the active set and the address's ban count on `pipe`.

    The record expires RECORD_GRACE after the ban; the count `memory` seconds
    after this ban (-1: never), as the rule's `escalation.memory` says.
    """
    if rec.expires_at is None:
        pipe.set(keys.ban(rec.address), packed)
    else:
        pipe.set(keys.ban(rec.address), packed, exat=math.ceil(rec.expires_at + RECORD_GRACE))
    pipe.zadd(keys.active_bans, {rec.address: rec.expires_at or math.inf})
    pipe.incr(keys.ban_count(rec.address))
    if memory >= 0:
        pipe.expire(keys.ban_count(rec.address), memory)
    else:
        pipe.persist(keys.ban_count(rec.address))


async def publish_unban(client: redis.Redis, keys: Keys, decision: messages.Decision) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.active_bans, decision.address)
        pipe.delete(keys.ban(decision.address))
        pipe.xadd(keys.decisions, {"m": messages.encode(decision)}, maxlen=DECISIONS_MAXLEN,
                  approximate=True)
        await pipe.execute()


async def prune_expired(client: redis.Redis, keys: Keys, now: float | None = None) -> int:
    """Forget bans whose time ran out (the kernel already dropped them)."""
    now = time.time() if now is None else now
    return await client.zremrangebyscore(keys.active_bans, "-inf", now)
