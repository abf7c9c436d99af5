"""The protected hosts' own addresses, shared through Redis.

Each enforcer publishes the addresses of its host (interfaces, gateways,
resolvers), and a collector that reads container logs publishes the
addresses and networks of the host's containers. Detectors never count them
and the api refuses to ban them: what belongs to any protected host is never
banned anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as redis

from pyfilter.common.addresses import Address, InvalidAddress, Network, parse_address, parse_network
from pyfilter.common.keys import Keys


def field(host: str, source: str | None = None) -> str:
    """The hash field a host's enforcer (no source) or one of its collector sources writes."""
    return host if source is None else f"{host}/{source}"


async def publish(client: redis.Redis, keys: Keys, host: str, own: Iterable[Address | Network]) -> None:
    await client.hset(keys.own_addresses, field(host), " ".join(sorted(map(str, own))))


async def load(client: redis.Redis, keys: Keys) -> set[Address | Network]:
    found: set[Address | Network] = set()
    for value in (await client.hgetall(keys.own_addresses)).values():
        for text in value.decode().split():
            try:
                found.add(parse_network(text) if "/" in text else parse_address(text))
            except InvalidAddress:
                continue
    return found


class OwnAddresses:
    """`load()` with a short cache, for hot paths that ask on every batch.

    A few seconds: a container's address must be known soon after it starts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, max_age: float = 5.0):
        self._client, self._keys, self._max_age = client, keys, max_age
        self._value: set[Address | Network] = set()
        self._loaded_at = float("-inf")

    async def get(self) -> set[Address | Network]:
        if time.monotonic() - self._loaded_at > self._max_age:
            self._value = await load(self._client, self._keys)
            self._loaded_at = time.monotonic()
        return self._value
