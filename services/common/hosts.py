"""The protected hosts' own addresses, shared through Redis.

Each enforcer publishes the addresses of its host (interfaces, gateways,
resolvers). Detectors never count them and the api refuses to ban them: an
address of any protected host is never banned anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as redis

from pyfilter.common.addresses import Address, InvalidAddress, parse_address
from pyfilter.common.keys import Keys


async def publish(client: redis.Redis, keys: Keys, host: str, own: Iterable[Address]) -> None:
    await client.hset(keys.own_addresses, host, " ".join(sorted(map(str, own))))


async def load(client: redis.Redis, keys: Keys) -> set[Address]:
    found: set[Address] = set()
    for value in (await client.hgetall(keys.own_addresses)).values():
        for text in value.decode().split():
            try:
                found.add(parse_address(text))
            except InvalidAddress:
                continue
    return found


class OwnAddresses:
    """`load()` with a short cache, for hot paths that ask on every batch."""

    def __init__(self, client: redis.Redis, keys: Keys, max_age: float = 30.0):
        self._client, self._keys, self._max_age = client, keys, max_age
        self._value: set[Address] = set()
        self._loaded_at = float("-inf")

    async def get(self) -> set[Address]:
        if time.monotonic() - self._loaded_at > self._max_age:
            self._value = await load(self._client, self._keys)
            self._loaded_at = time.monotonic()
        return self._value
