"""Reading bans for the API: a page of bans in force, the history, one address.

Bans in force are found through the indexes the ledger keeps (index.py); a
page costs its own records, never every record. The history stream holds one
entry per ban ever written (detector or manual), keyed by the time it was
written, so a time range maps to a stream ID range; it is read a page at a
time too. Country and ASN are looked up only for the bans a page shows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as redis

from pyfilter.api.index import SCAN_BUDGET, Entry, Index
from pyfilter.api.responses import FieldError
from pyfilter.api.schemas import Ban, BanDetail, BanList
from pyfilter.api.search import Filter
from pyfilter.common import bans, messages
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import index_ms

CHUNK = 500
VIEWS_AT_ONCE = 100
# Stream IDs carry the writer's Redis clock, `banned_at` the detector's: a
# scan from a time on starts this much earlier, then filters exactly. Only
# the lower bound is taken from IDs; scans always start at the newest entry.
CLOCK_MARGIN = 3600


def stream_id(epoch: float) -> str:
    return str(max(0, int(epoch * 1000)))


def _history_cursor(entry_id: str) -> str:
    return base64.urlsafe_b64encode(b"h" + entry_id.encode()).decode().rstrip("=")


def _history_after(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    entry_id = raw[1:]
    if not raw.startswith("h") or not entry_id.replace("-", "").isdigit():
        raise FieldError("cursor", "not a cursor of this search (give the `next` of the page before, "
                                   "with the same filters)")
    return "(" + entry_id


def _decode(raw: bytes | None) -> messages.BanRecord | None:
    if raw is None:
        return None
    try:
        return messages.decode_record(raw)
    except msgspec.DecodeError:
        return None  # written by a newer or broken writer: not ours to show


class Reader:
    def __init__(self, client: redis.Redis, keys: Keys, geo: Geo):
        self.client, self.keys, self.geo = client, keys, geo
        self.index = Index(client, keys)

    def view(self, rec: messages.BanRecord, active: bool, entry: Entry | None = None) -> Ban:
        """The record as the API shows it, with country and ASN when known."""
        place = self.geo.lookup(rec.address.split("/")[0])
        fields = msgspec.structs.asdict(rec)
        fields["country"] = rec.country or (entry and entry.known_country) or place.country
        return Ban(**fields, active=active, asn=place.asn, as_org=place.org)

    def _is_current(self, entry: Entry | None, rec: messages.BanRecord, now: float) -> bool:
        return entry is not None and entry.ms == index_ms(rec.banned_at) and entry.in_force(now)

    async def history(self, since: float | None = None, count: int = CHUNK) -> AsyncIterator[messages.BanRecord]:
        """History records, newest first (from `since` on, if given), read `count` at a time."""
        high = "+"
        low = "-" if since is None else stream_id(since - CLOCK_MARGIN)
        while True:
            entries = await self.client.xrevrange(self.keys.ban_history, high, low, count=count)
            for _, fields in entries:
                if rec := _decode(fields.get(b"m")):
                    yield rec
            if len(entries) < count:
                return
            high = "(" + entries[-1][0].decode()

    async def search(self, flt: Filter, include_history: bool, limit: int,
                     cursor: str | None) -> BanList:
        """One page of bans matching `flt`: the ones in force, newest first (by
        address for a `prefix` search), or (history) every ban, newest first."""
        if include_history:
            return await self._search_history(flt, limit, cursor)
        now = time.time()
        entries, total, after = await self.index.search(flt, limit, cursor, now)
        raw = await self.client.mget([self.keys.ban(e.address) for e in entries]) if entries else []
        shown = []
        for i, (e, r) in enumerate(zip(entries, raw)):
            if i and i % VIEWS_AT_ONCE == 0:
                await asyncio.sleep(0)  # a page of 1,000 is CPU: let /healthz and others in between
            if (rec := _decode(r)) is not None:
                shown.append(self.view(rec, True, e))
        return BanList(bans=shown, total=total, limit=limit, next=after)

    async def _search_history(self, flt: Filter, limit: int, cursor: str | None) -> BanList:
        high = _history_after(cursor) if cursor else "+"
        low = "-" if flt.since is None else stream_id(flt.since - CLOCK_MARGIN)
        needle = flt.address.encode() if flt.address else None
        found: list[messages.BanRecord] = []
        scanned, after = 0, None
        unfiltered = flt == Filter(since=flt.since, until=flt.until)
        while scanned < SCAN_BUDGET and after is None:
            # Without filters a page is the next `limit` entries (or a few more, out of the time range).
            count = min(CHUNK, limit - len(found) + 10) if unfiltered else CHUNK
            entries = await self.client.xrevrange(self.keys.ban_history, high, low, count=count)
            for entry_id, fields in entries:
                scanned += 1
                raw = fields.get(b"m")
                rec = _decode(raw) if needle is None or (raw and needle in raw) else None
                if rec is not None and self._matches(flt, rec):
                    found.append(rec)
                    if len(found) == limit:
                        after = _history_cursor(entry_id.decode())
                        break
            if after is None and len(entries) < count:
                break
            if after is None:
                high = "(" + entries[-1][0].decode()
                if scanned >= SCAN_BUDGET:
                    after = _history_cursor(entries[-1][0].decode())
        now = time.time()
        current = await self.index.entries(sorted({r.address for r in found}))
        shown = []
        for i, r in enumerate(found):
            if i and i % VIEWS_AT_ONCE == 0:
                await asyncio.sleep(0)
            shown.append(self.view(r, self._is_current(current.get(r.address), r, now), current.get(r.address)))
        total = None if flt != Filter() else await self.client.xlen(self.keys.ban_history)
        return BanList(bans=shown, total=total, limit=limit, next=after)

    def _matches(self, flt: Filter, rec: messages.BanRecord) -> bool:
        """`flt` on a history record; its country looked up only when the filter needs it."""
        if flt.country is not None and rec.country is None:
            return flt.matches(self.view(rec, False))
        return flt.matches(rec)

    async def detail(self, address: str, now: float | None = None) -> BanDetail | None:
        """One address: its current or latest ban and its history; None if none is on record.

        Its history is read by the IDs the ledger keeps per address (`Keys.ban_past`,
        forgotten with its ban count), never by scanning the stream.
        """
        now = time.time() if now is None else now
        rec = await bans.record(self.client, self.keys, address)
        entry = await self.index.entry(address)
        ids = (await self.client.hget(self.keys.ban_past, address) or b"").split()
        past: list[messages.BanRecord] = []
        if ids:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xrange(self.keys.ban_history, entry_id, entry_id)
                for found in await pipe.execute():
                    past += [r for _, fields in found if (r := _decode(fields.get(b"m")))]
        latest = rec or (past[0] if past else None)
        if latest is None:
            return None
        in_force = self._is_current(entry, latest, now)
        history = [self.view(old, in_force and old.banned_at == latest.banned_at, entry) for old in past]
        shown = self.view(latest, in_force, entry)
        return BanDetail(**msgspec.structs.asdict(shown), history=history)
