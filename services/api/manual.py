"""Manual bans and unbans, written in chunks.

Each chunk is one MULTI/EXEC holding, per address, exactly what
`common.bans.publish_ban` writes (record, active set, ban count, history,
decision): an import of 10,000 addresses is a handful of round trips, and
every chunk is all-or-nothing, so an enforcer never sees a decision whose
record is missing. A Redis failure between chunks leaves the earlier ones
written (the api answers 503); sending the call again writes the same bans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as redis

from pyfilter.common import messages
from pyfilter.common.bans import DECISIONS_MAXLEN, HISTORY_MAXLEN, write_ban
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys

CHUNK = 500


@dataclass(frozen=True)
class Wanted:
    address: str  # normalised address or CIDR
    duration: int  # seconds; -1 permanent
    reason: str


async def ban_all(client: redis.Redis, keys: Keys, host: str, geo: Geo,
                  wanted: list[Wanted]) -> list[messages.BanRecord]:
    now = time.time()
    written: list[messages.BanRecord] = []
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i:i + CHUNK]
        counts = await client.mget([keys.ban_count(w.address) for w in chunk])
        async with client.pipeline(transaction=True) as pipe:
            for w, count in zip(chunk, counts):
                expires = None if w.duration < 0 else now + w.duration
                reason = w.reason or "manual ban"
                rec = messages.BanRecord(
                    address=w.address, rule="manual", host=host, origin="manual",
                    banned_at=now, duration=w.duration, expires_at=expires,
                    ban_count=int(count or 0) + 1, reason=reason,
                    country=geo.lookup(w.address.split("/")[0]).country)
                decision = messages.Decision(
                    action="ban", address=w.address, rule="manual", origin="manual", host=host,
                    created_at=now, duration=w.duration, expires_at=expires, reason=reason)
                packed = messages.encode(rec)
                write_ban(pipe, keys, rec, packed)
                pipe.xadd(keys.ban_history, {"m": packed}, maxlen=HISTORY_MAXLEN, approximate=True)
                pipe.xadd(keys.decisions, {"m": messages.encode(decision)},
                          maxlen=DECISIONS_MAXLEN, approximate=True)
                written.append(rec)
            await pipe.execute()
    return written


async def unban_all(client: redis.Redis, keys: Keys, host: str, addresses: list[str],
                    reason: str) -> None:
    """Lift bans: the same writes as `common.bans.publish_unban`, chunked."""
    now = time.time()
    for i in range(0, len(addresses), CHUNK):
        async with client.pipeline(transaction=True) as pipe:
            for address in addresses[i:i + CHUNK]:
                decision = messages.Decision(action="unban", address=address, rule="manual",
                                             origin="manual", host=host, created_at=now,
                                             reason=reason)
                pipe.zrem(keys.active_bans, address)
                pipe.delete(keys.ban(address))
                pipe.xadd(keys.decisions, {"m": messages.encode(decision)},
                          maxlen=DECISIONS_MAXLEN, approximate=True)
            await pipe.execute()
