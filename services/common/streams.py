"""Reading a stream through a consumer group, the same way in every service.

The detector (lines), the enforcers and the notifier (decisions) each read
through a `Consumer`:

- entries this consumer took and did not acknowledge (a crash, a lost
  connection) come first (`pending`), then new ones (`new`); entries another
  consumer left pending too long can be claimed (`claim`);
- each entry's `m` field is decoded by the consumer's decoder (`decode`);
- an entry that does not decode is dead-lettered, one policy for all: logged,
  counted, copied with where it came from to the stream's dead-letter stream
  (`<stream>:dead`, capped), and acknowledged with the others, so it never
  blocks what follows (`dead_letter`);
- entries are acknowledged only when the service is done with them, often in
  the same transaction as what it wrote (`ack_on`), so a crash replays them.

How a service batches or pipelines its reads stays its own; this is the
contract of one read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
import redis.asyncio as redis
from prometheus_client import Counter

from pyfilter.common.keys import Keys
from pyfilter.common.redisio import ensure_group

log = logging.getLogger("pyfilter.streams")

T = TypeVar("T")
Entry = tuple[bytes, dict[bytes, bytes] | None]

DEAD_MAXLEN = 10_000  # dead letters are for a person to look at, not an archive


@dataclass
class Read(Generic[T]):
    """One read, decoded: what to act on, what could not be read, and what to acknowledge."""

    messages: list[tuple[bytes, T]] = field(default_factory=list)
    undecodable: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)  # every entry read, decodable or not


class Consumer(Generic[T]):
    def __init__(self, client: redis.Redis, stream: str, group: str, name: str,
                 decode: Callable[[bytes], T], count: int, errors: Counter | None = None):
        self.client, self.stream, self.group, self.name = client, stream, group, name
        self.decoder = decode
        self.count = count
        self.errors = errors  # the service's errors counter, by kind: counts "undecodable"

    @property
    def dead(self) -> str:
        return Keys.dead_letters(self.stream)

    async def ensure_group(self, start: str = "0") -> None:
        await ensure_group(self.client, self.stream, self.group, start)

    async def pending(self) -> list[Entry]:
        """Entries this consumer read before and has not acknowledged (oldest first)."""
        return await self._read("0", None)

    async def new(self, block_ms: int | None = 1000) -> list[Entry]:
        """Entries no consumer of the group has read yet, waiting up to `block_ms` for some."""
        return await self._read(">", block_ms)

    async def claim(self, min_idle_ms: int) -> list[Entry]:
        """Take over entries another consumer left pending for `min_idle_ms` or more."""
        _, claimed, _ = await self.client.xautoclaim(self.stream, self.group, self.name, min_idle_ms,
                                                     "0-0", count=self.count)
        return claimed

    async def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        reply = await self.client.xreadgroup(self.group, self.name, {self.stream: start},
                                             count=self.count, block=block_ms)
        return [e for _, entries in reply for e in entries]

    def decode(self, entries: list[Entry]) -> Read[T]:
        """Decode a read (pure CPU: the detector runs it in a thread with its matching)."""
        read: Read[T] = Read()
        for entry_id, fields in entries:
            read.ids.append(entry_id)
            if fields is None:  # deleted while pending: nothing left to do but acknowledge
                continue
            try:
                read.messages.append((entry_id, self.decoder(fields[b"m"])))
            except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
                log.error("undecodable entry, moved aside", extra={
                    "stream": self.stream, "group": self.group, "entry": entry_id.decode(),
                    "dead_letter": self.dead, "error": str(exc)})
                if self.errors is not None:
                    self.errors.labels("undecodable").inc()
                read.undecodable.append((entry_id, fields))
        return read

    async def dead_letter(self, read: Read) -> None:
        """Copy the read's undecodable entries to the dead-letter stream (before they are acknowledged).

        Each copy keeps the entry's fields and says which entry and which group
        it was: on a stream every host reads (decisions), each group that cannot
        read an entry says so."""
        if not read.undecodable:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id, fields in read.undecodable:
                pipe.xadd(self.dead, {**fields, b"from": entry_id, b"group": self.group},
                          maxlen=DEAD_MAXLEN, approximate=True)
            await pipe.execute()

    def ack_on(self, pipe, ids: list[bytes]) -> None:
        """Queue the acknowledgement of `ids` on a pipeline (with what the service writes)."""
        if ids:
            pipe.xack(self.stream, self.group, *ids)

    async def ack(self, ids: list[bytes]) -> None:
        if ids:
            await self.client.xack(self.stream, self.group, *ids)
