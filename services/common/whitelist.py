"""The whitelist: networks never counted and never banned.

Two parts: the configuration file's `whitelist` (fixed until restart) and the
operator's entries kept in Redis (a set of CIDRs changed through the api).
Detectors, enforcers and the api all read both, through `Whitelist.networks()`,
which caches the Redis part for a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as redis

from pyfilter.common.addresses import InvalidAddress, Network, parse_network
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import transaction


async def entries(client: redis.Redis, keys: Keys) -> list[Network]:
    """The operator's entries, as stored (invalid ones, written by hand, are skipped)."""
    found = []
    for raw in await client.smembers(keys.whitelist):
        try:
            found.append(parse_network(raw.decode()))
        except InvalidAddress:
            continue
    return sorted(found, key=lambda n: (n.version, n))


async def add(client: redis.Redis, keys: Keys, network: Network, note: bytes | None = None,
              replace_note: bool = False) -> bool:
    """Whitelist a network with its note (an older note is kept unless `replace_note`);
    whether it was new. Confirmed by the replicas, if any (redisio.transaction).

    An entry and its note are written together: in one transaction on one Redis;
    on Redis Cluster, where they are in different slots, entry first, then note,
    each confirmed by its own shard. A crash between the two can leave a removed
    entry's note behind, shown again only if the entry comes back without a
    reason of its own."""
    async with transaction(client) as tx:
        tx.sadd(keys.whitelist, str(network))
        if note is not None:
            (tx.hset if replace_note else tx.hsetnx)(keys.whitelist_notes, str(network), note)
        replies = await tx.execute()
    return bool(replies[0])


async def remove(client: redis.Redis, keys: Keys, network: Network) -> bool:
    """Take a network and its note off the whitelist; whether it was on it."""
    async with transaction(client) as tx:
        tx.srem(keys.whitelist, str(network))
        tx.hdel(keys.whitelist_notes, str(network))
        removed, _ = await tx.execute()
    return bool(removed)


class Whitelist:
    def __init__(self, client: redis.Redis, keys: Keys, configured: Iterable[str],
                 max_age: float = 5.0):
        self._client, self._keys, self._max_age = client, keys, max_age
        self.configured: list[Network] = [parse_network(n) for n in configured]
        self._dynamic: list[Network] = []
        self._loaded_at = float("-inf")

    async def networks(self) -> list[Network]:
        if time.monotonic() - self._loaded_at > self._max_age:
            self._dynamic = await entries(self._client, self._keys)
            self._loaded_at = time.monotonic()
        return self.configured + self._dynamic

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")
