"""Reading the ban state in Redis, as the api, the notifier and enforcers do.

Every write (a ban, an unban, pruning) goes through the ledger (ledger.py).
"""

from __future__ import annotations

import math
import time

import msgspec
import redis.asyncio as redis

from pyfilter.common import messages
from pyfilter.common.keys import Keys


async def active(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, float | None]:
    """Address -> expiry (None: permanent) of every ban still in force."""
    now = time.time() if now is None else now
    rows = await client.zrangebyscore(keys.active_bans, f"({now}", "+inf", withscores=True)
    return {a.decode(): (None if math.isinf(s) else s) for a, s in rows}


async def scopes(client: redis.Redis, keys: Keys) -> dict[str, messages.BanScope]:
    """Address -> scope of the bans not on every port with drop (the others have none here).
    One that does not decode is left out: its ban then covers every port, rather than none."""
    found = {}
    for address, raw in (await client.hgetall(keys.ban_scopes)).items():
        try:
            found[address.decode()] = messages.decode_scope(raw)
        except msgspec.DecodeError:
            continue
    return found


async def records(client: redis.Redis, keys: Keys, addresses: list[str]) -> list[messages.BanRecord]:
    if not addresses:
        return []
    raw = await client.mget([keys.ban(a) for a in addresses])
    return [messages.decode_record(r) for r in raw if r is not None]


async def record(client: redis.Redis, keys: Keys, address: str) -> messages.BanRecord | None:
    raw = await client.get(keys.ban(address))
    return messages.decode_record(raw) if raw is not None else None
