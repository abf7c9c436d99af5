"""Every detector forgets expired bans: the active set and their scopes shrink to
the bans in force, and stopping the detector stops its pruner."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from pyfilter.common import messages
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan
from pyfilter.detector import metrics
from pyfilter.detector.pruner import prune_until

KEYS = Keys("t:")


def new_ban(address: str, duration: int, now: float) -> NewBan:
    record = messages.BanRecord(address=address, rule="sshd", host="h", origin="detector",
                                banned_at=now - 1, duration=duration, expires_at=now - 1 + duration)
    return NewBan(record, ports=[22])


def test_expired_bans_are_forgotten_with_their_scopes_and_the_pruner_stops(redis_url):
    async def go():
        client = aioredis.from_url(redis_url)
        ledger = Ledger(client, KEYS)
        await ledger.load()
        now = time.time()
        # One ban that ends a second from now, one in force for ten minutes.
        await ledger.ban([new_ban("198.51.100.20", 2, now), new_ban("198.51.100.21", 600, now)])
        before = metrics.PRUNED._value.get()
        stop = asyncio.Event()
        pruner = asyncio.create_task(prune_until(client, KEYS, stop, every=0.1))
        for _ in range(100):
            if await client.zrange(KEYS.active_bans, 0, -1) == [b"198.51.100.21"]:
                break
            await asyncio.sleep(0.1)
        active = await client.zrange(KEYS.active_bans, 0, -1)
        scopes = await client.hkeys(KEYS.ban_scopes)
        stop.set()
        await asyncio.wait_for(pruner, 2)
        await client.aclose()
        return active, scopes, metrics.PRUNED._value.get() - before

    active, scopes, pruned = asyncio.run(go())
    assert active == [b"198.51.100.21"]
    assert scopes == [b"198.51.100.21"]
    assert pruned == 1
