"""The protected hosts: their names, and their own addresses, shared through Redis.

The set `Keys.hosts` names every host whose lines the detectors read (one
stream per host). `pyfilter server add-host` lists a host when it makes its
Redis user; a collector whose host is not listed yet lists it at start (the
single-host stack, where nothing ran add-host).

Each enforcer publishes the addresses of its host (interfaces, gateways,
resolvers), and a collector that reads container logs publishes the
addresses and networks of the host's containers, each into its host's own
hash. Detectors never count them and the api refuses to ban them: what
belongs to any protected host is never banned anywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import redis.asyncio as redis

from pyfilter.common.addresses import Address, InvalidAddress, Network, parse_address, parse_network
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import transaction


# A host's name is part of its keys and of its Redis user's key patterns: no
# glob characters, no ":" (which separates the parts of a key).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class BadHostName(ValueError):
    pass


def check_name(host: str) -> str:
    if not NAME.fullmatch(host):
        raise BadHostName(f"host name {host!r}: expected letters, digits, '.', '_' or '-' "
                          "(at most 253, starting with a letter or digit)")
    return host


async def names(client: redis.Redis, keys: Keys) -> list[str]:
    """Every listed host, sorted."""
    return sorted(name.decode() for name in await client.smembers(keys.hosts))


async def register(client: redis.Redis, keys: Keys, host: str) -> None:
    """List `host` unless it is: a host made by add-host is listed already, and its
    Redis user may read the set but not write it. A confirmed write (`transaction`):
    detectors read only listed hosts' lines, and a collector lists its host once, so a
    listing lost in a failover would leave its lines unread until it starts again."""
    if not await client.sismember(keys.hosts, host):
        async with transaction(client) as tx:
            tx.sadd(keys.hosts, host)
            await tx.execute()


def field(source: str | None = None) -> str:
    """The field of a host's hash its enforcer (no source) or one of its collector sources writes."""
    return "host" if source is None else f"source:{source}"


async def publish(client: redis.Redis, keys: Keys, host: str, own: Iterable[Address | Network]) -> None:
    await register(client, keys, host)  # only listed hosts' addresses are loaded
    await client.hset(keys.own_addresses(host), field(), " ".join(sorted(map(str, own))))


async def load(client: redis.Redis, keys: Keys) -> set[Address | Network]:
    found: set[Address | Network] = set()
    listed = await names(client, keys)
    async with client.pipeline(transaction=False) as pipe:
        for host in listed:
            pipe.hvals(keys.own_addresses(host))
        values = [v for host_values in await pipe.execute() for v in host_values]
    for value in values:
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
