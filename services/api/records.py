"""Reading bans for the API: current records, the history stream, GeoIP enrichment.

The history stream holds one entry per ban ever written (detector or
manual), keyed by the time it was written, so a time range maps to a stream
ID range and a day's bans are read without scanning older ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as redis

from pyfilter.api.schemas import Ban, BanDetail
from pyfilter.api.search import Filter
from pyfilter.common import bans, messages
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys

CHUNK = 1000
# Stream IDs carry the writer's Redis clock, `banned_at` the detector's: a
# scan from a time on starts this much earlier, then filters exactly. Only
# the lower bound is taken from IDs; scans always start at the newest entry.
CLOCK_MARGIN = 3600
MAX_HISTORY_SHOWN = 1000


def stream_id(epoch: float) -> str:
    return str(max(0, int(epoch * 1000)))


class Reader:
    def __init__(self, client: redis.Redis, keys: Keys, geo: Geo):
        self.client, self.keys, self.geo = client, keys, geo

    def view(self, rec: messages.BanRecord, active: bool) -> Ban:
        """The record as the API shows it, with country and ASN when the databases know them."""
        place = self.geo.lookup(rec.address.split("/")[0])
        fields = msgspec.structs.asdict(rec)
        fields["country"] = rec.country or place.country
        return Ban(**fields, active=active, asn=place.asn, as_org=place.org)

    async def current(self) -> dict[str, messages.BanRecord]:
        """Address -> record of every ban in force."""
        addresses = sorted(await bans.active(self.client, self.keys))
        found: dict[str, messages.BanRecord] = {}
        for i in range(0, len(addresses), CHUNK):
            for rec in await bans.records(self.client, self.keys, addresses[i:i + CHUNK]):
                found[rec.address] = rec
        return found

    async def history(self, since: float | None = None,
                      needle: bytes | None = None) -> AsyncIterator[messages.BanRecord]:
        """History records, newest first; `needle` skips entries that cannot be about it."""
        high = "+"
        low = "-" if since is None else stream_id(since - CLOCK_MARGIN)
        while True:
            entries = await self.client.xrevrange(self.keys.ban_history, high, low, count=CHUNK)
            for _, fields in entries:
                raw = fields.get(b"m")
                if raw is None or (needle is not None and needle not in raw):
                    continue
                try:
                    yield messages.decode_record(raw)
                except msgspec.DecodeError:
                    continue  # written by a newer or broken writer: not ours to show
            if len(entries) < CHUNK:
                return
            high = "(" + entries[-1][0].decode()

    async def search(self, flt: Filter, include_history: bool) -> list[Ban]:
        """Bans matching `flt`, newest first: the ones in force, or (history) every ban."""
        current = await self.current()
        found: list[Ban] = []
        if not include_history:
            candidates = current.values() if flt.address is None else filter(None, [current.get(flt.address)])
            found = [b for b in (self.view(r, True) for r in candidates) if flt.matches(b)]
        else:
            shown: set[str] = set()
            needle = flt.address.encode() if flt.address else None
            async for rec in self.history(flt.since, needle):
                now_in_force = _same_ban(current.get(rec.address), rec)
                if now_in_force:
                    shown.add(rec.address)
                ban = self.view(rec, now_in_force)
                if flt.matches(ban):
                    found.append(ban)
            # A ban whose history entry was trimmed away is still a ban.
            for address, rec in current.items():
                if address not in shown and (ban := self.view(rec, True)) and flt.matches(ban):
                    found.append(ban)
        found.sort(key=lambda b: b.banned_at, reverse=True)
        return found

    async def detail(self, address: str, now: float | None = None) -> BanDetail | None:
        """One address: its current or latest ban and its history; None if none is on record.

        The history is only searched when the address has a ban record or a
        ban count (both expire: docs/decisions.md), so that an address never
        banned costs no scan of the whole history.
        """
        now = time.time() if now is None else now
        rec = await bans.record(self.client, self.keys, address)
        expiry = await self.client.zscore(self.keys.active_bans, address)
        in_force = expiry is not None and (math.isinf(expiry) or expiry > now)
        count = int(await self.client.get(self.keys.ban_count(address)) or 0)
        past: list[messages.BanRecord] = []
        if count or rec is not None:
            async for old in self.history(needle=address.encode()):
                if old.address == address:
                    past.append(old)
                    if len(past) >= max(count, 1) or len(past) >= MAX_HISTORY_SHOWN:
                        break
        latest = rec or (past[0] if past else None)
        if latest is None:
            return None
        history = [self.view(old, in_force and _same_ban(latest, old)) for old in past]
        shown = self.view(latest, in_force)
        return BanDetail(**msgspec.structs.asdict(shown), history=history)


def _same_ban(current: messages.BanRecord | None, other: messages.BanRecord) -> bool:
    return current is not None and abs(current.banned_at - other.banned_at) < 1e-6
