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


async def entries(client: redis.Redis, keys: Keys) -> list[Network]:
    """The operator's entries, as stored (invalid ones, written by hand, are skipped)."""
    found = []
    for raw in await client.smembers(keys.whitelist):
        try:
            found.append(parse_network(raw.decode()))
        except InvalidAddress:
            continue
    return sorted(found, key=lambda n: (n.version, n))


async def add(client: redis.Redis, keys: Keys, network: Network) -> bool:
    return bool(await client.sadd(keys.whitelist, str(network)))


async def remove(client: redis.Redis, keys: Keys, network: Network) -> bool:
    return bool(await client.srem(keys.whitelist, str(network)))


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
