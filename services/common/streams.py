"""Reading streams, the same way in every service.

The detectors (every host's lines stream) and the notifier (decisions) read
through a `Consumer` of a consumer group:

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

On Redis Cluster one XREADGROUP may only name streams of one slot, and each
host's lines stream hashes on its own name, so the streams spread over the
primaries. A consumer there reads each slot's streams with a call of its own,
all at once; a blocking read keeps one call waiting per slot and returns as
soon as any of them has entries, leaving the others waiting for the next
read (`_Spread`), so a quiet host never delays a busy one.

An enforcer reads decisions through a `Follower` instead: XREAD from a
position it keeps in a key of its own host (enforcer/position.py), because a
host's Redis user may read that stream but not write it, and XREADGROUP
writes. It decodes the same way, and skips what does not decode.

How a service batches or pipelines its reads stays its own; this is the
contract of one read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
import redis.asyncio as redis
from prometheus_client import Counter
from redis.crc import key_slot

from pyfilter.common.keys import Keys
from pyfilter.common.redisio import ensure_group, is_cluster

log = logging.getLogger("pyfilter.streams")

T = TypeVar("T")
# (stream, entry id, fields): one consumer may read several streams (the
# detectors read every host's lines stream).
Entry = tuple[str, bytes, dict[bytes, bytes] | None]

DEAD_MAXLEN = 10_000  # dead letters are for a person to look at, not an archive


@dataclass
class Read(Generic[T]):
    """One read, decoded: what to act on, what could not be read, and what to acknowledge."""

    messages: list[tuple[bytes, T]] = field(default_factory=list)
    undecodable: list[tuple[str, bytes, dict[bytes, bytes]]] = field(default_factory=list)
    ids: list[tuple[str, bytes]] = field(default_factory=list)  # every entry read, decodable or not


class Consumer(Generic[T]):
    """One member of a consumer group on one stream or on several (`streams`,
    which the owner may change between reads: each must have the group)."""

    def __init__(self, client: redis.Redis, stream: str | list[str], group: str, name: str,
                 decode: Callable[[bytes], T], count: int, errors: Counter | None = None):
        self.client, self.group, self.name = client, group, name
        self.streams = [stream] if isinstance(stream, str) else list(stream)
        self.decoder = decode
        self.count = count
        self.errors = errors  # the service's errors counter, by kind: counts "undecodable"
        self.spread = _Spread(self) if is_cluster(client) else None

    async def ensure_group(self, start: str = "0") -> None:
        for stream in self.streams:
            await ensure_group(self.client, stream, self.group, start)

    async def pending(self) -> list[Entry]:
        """Entries this consumer read before and has not acknowledged (oldest first)."""
        return await self._read("0", None)

    async def new(self, block_ms: int | None = 1000) -> list[Entry]:
        """Entries no consumer of the group has read yet, waiting up to `block_ms` for some."""
        return await self._read(">", block_ms)

    async def claim(self, min_idle_ms: int) -> list[Entry]:
        """Take over entries another consumer left pending for `min_idle_ms` or more."""
        claimed: list[Entry] = []
        for stream in self.streams:
            _, entries, _ = await self.client.xautoclaim(stream, self.group, self.name, min_idle_ms,
                                                         "0-0", count=self.count)
            claimed += [(stream, entry_id, fields) for entry_id, fields in entries]
        return claimed

    async def finish_reads(self) -> list[Entry]:
        """What the reads still waiting bring (on Cluster, the slots a blocking read did not
        return from), for a consumer that stops: it handles them rather than leave them pending."""
        return await self.spread.finish() if self.spread else []

    async def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        if self.spread:
            return await self.spread.read(start, block_ms)
        return await self._read_streams(self.streams, start, block_ms)

    async def _read_streams(self, streams: list[str], start: str, block_ms: int | None) -> list[Entry]:
        if not streams:
            return []
        # COUNT is per stream: shared out, so that a read stays about `count`
        # entries however many hosts there are, and every host gets its turn.
        count = max(1, -(-self.count // len(self.streams or streams)))
        reply = await self.client.xreadgroup(self.group, self.name, dict.fromkeys(streams, start),
                                             count=count, block=block_ms)
        return [(_text(stream), entry_id, fields) for stream, entries in reply for entry_id, fields in entries]

    def decode(self, entries: list[Entry]) -> Read[T]:
        """Decode a read (pure CPU: the detector runs it in a thread with its matching)."""
        return decode(entries, self.decoder, self.errors, {"group": self.group}, moved_aside=True)

    async def dead_letter(self, read: Read) -> None:
        """Copy the read's undecodable entries to their stream's dead-letter stream (before they are acknowledged).

        Each copy keeps the entry's fields and says which entry and which group
        it was: on a stream every host reads (decisions), each group that cannot
        read an entry says so."""
        if not read.undecodable:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for stream, entry_id, fields in read.undecodable:
                pipe.xadd(Keys.dead_letters(stream), {**fields, b"from": entry_id, b"group": self.group},
                          maxlen=DEAD_MAXLEN, approximate=True)
            await pipe.execute()

    def ack_on(self, pipe, ids: list[tuple[str, bytes]], delete: bool = False) -> None:
        """Queue the acknowledgement of `ids` on a pipeline (with what the service writes),
        one XACK per stream; with `delete`, their deletion too (XDEL)."""
        for stream, stream_ids in by_stream(ids).items():
            pipe.xack(stream, self.group, *stream_ids)
            if delete:
                pipe.xdel(stream, *stream_ids)


class _Spread:
    """A consumer's reads on Redis Cluster: one XREADGROUP per slot of its streams."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer
        # Blocking reads still waiting, by the streams they read: one per slot at most.
        self.waiting: dict[tuple[str, ...], asyncio.Task] = {}

    def slots(self) -> list[tuple[str, ...]]:
        by_slot: dict[int, list[str]] = {}
        for stream in self.consumer.streams:
            by_slot.setdefault(key_slot(stream.encode()), []).append(stream)
        return [tuple(streams) for streams in by_slot.values()]

    async def read(self, start: str, block_ms: int | None) -> list[Entry]:
        read = self.consumer._read_streams
        if start != ">" or block_ms is None:  # nothing to wait for: every slot at once
            replies = await asyncio.gather(*(read(list(s), start, block_ms) for s in self.slots()))
            return [entry for reply in replies for entry in reply]
        for streams in self.slots():
            if streams not in self.waiting:
                self.waiting[streams] = asyncio.ensure_future(read(list(streams), start, block_ms))
        if not self.waiting:
            return []
        await asyncio.wait(self.waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect()

    async def finish(self) -> list[Entry]:
        if self.waiting:
            await asyncio.wait(self.waiting.values())
        return self._collect()

    def _collect(self) -> list[Entry]:
        """The entries of every read that is done, which then stops waiting. A read that
        failed raises its error (once); the entries it may have taken stay pending."""
        entries: list[Entry] = []
        failed: BaseException | None = None
        for streams, task in list(self.waiting.items()):
            if not task.done():
                continue
            del self.waiting[streams]
            if task.cancelled():
                continue
            if task.exception() is not None:
                failed = failed or task.exception()
                continue
            entries += task.result()
        if failed is not None:
            raise failed
        return entries


class Follower(Generic[T]):
    """A reader of one stream from a position it keeps itself (XREAD, no group).

    For a reader whose Redis user may read the stream but write nothing to it
    (XREADGROUP writes the group's state into the stream): an enforcer. An
    entry it cannot decode is logged and counted, then skipped; the services
    that read the same stream through a group dead-letter it.
    """

    def __init__(self, client: redis.Redis, stream: str, name: str, decode: Callable[[bytes], T],
                 count: int, errors: Counter | None = None):
        self.client, self.stream, self.name = client, stream, name
        self.decoder = decode
        self.count = count
        self.errors = errors

    async def after(self, position: bytes, block_ms: int | None = 1000) -> list[Entry]:
        """Entries after `position` (an entry id), waiting up to `block_ms` for some."""
        reply = await self.client.xread({self.stream: position}, count=self.count, block=block_ms)
        return [(self.stream, entry_id, fields) for _, entries in reply for entry_id, fields in entries]

    def decode(self, entries: list[Entry]) -> Read[T]:
        return decode(entries, self.decoder, self.errors, {"reader": self.name}, moved_aside=False)


def decode(entries: list[Entry], decoder: Callable[[bytes], T], errors: Counter | None,
           who: dict[str, str], moved_aside: bool) -> Read[T]:
    """Decode entries; log, count and set aside the ones that do not decode."""
    read: Read[T] = Read()
    for stream, entry_id, fields in entries:
        read.ids.append((stream, entry_id))
        if fields is None:  # deleted while pending: nothing left to do but acknowledge
            continue
        try:
            read.messages.append((entry_id, decoder(fields[b"m"])))
        except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
            where = {"dead_letter": Keys.dead_letters(stream)} if moved_aside else {}
            log.error("undecodable entry, " + ("moved aside" if moved_aside else "skipped"), extra={
                "stream": stream, **who, "entry": entry_id.decode(), **where, "error": str(exc)})
            if errors is not None:
                errors.labels("undecodable").inc()
            read.undecodable.append((stream, entry_id, fields))
    return read


def by_stream(ids: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = {}
    for stream, entry_id in ids:
        grouped.setdefault(stream, []).append(entry_id)
    return grouped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
