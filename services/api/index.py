"""Reading the ban indexes the ledger keeps (ledger.lua, "Ban indexes").

`Keys.ban_index` is one sorted set read by lexical range. Each ban in force
has a member per way it is looked up, each member ending in the address:

    t TAB ms TAB address                 newest first: every ban in force
    r TAB rule TAB ms TAB address        by rule (h: host, c: country, "?" none known)
    x TAB host TAB rule TAB ms TAB address   by host and rule
    a TAB sortable/len TAB address       by address: a network's bans are one range
    p TAB ms TAB address                 written without a country, not looked up yet

`ms` is the ban time in milliseconds, 15 digits, so the text order is the
time order. `Keys.ban_indexed` maps each address to what its members were
built from (an `Entry`). A search reads one range, a page at a time, and
filters what the range cannot say from the entries; the cursor is the last
member read.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import time
from dataclasses import dataclass

import redis.asyncio as redis

from pyfilter.api.responses import FieldError
from pyfilter.api.search import UNKNOWN_COUNTRY, Filter, inside
from pyfilter.common.addresses import Network
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import index_ms

SEP = "\t"
NONE_KNOWN = "?"  # the index's country for "no country known"
# Index members read per request at most, matching or not: a search that
# the chosen range cannot answer alone stops there and hands out a cursor.
SCAN_BUDGET = 5000
BATCH = 500


@dataclass(frozen=True)
class Entry:
    """What one ban in force is indexed as (ledger.lua's entry_text)."""

    address: str
    ms: str
    rule: str
    host: str
    country: str  # "" not looked up yet, "?" none known
    expires_at: float | None

    @classmethod
    def parse(cls, address: str, text: bytes) -> Entry:
        ms, rule, host, country, expires = text.decode().split(SEP)
        return cls(address, ms, rule, host, country, float(expires) if expires else None)

    @property
    def banned_at(self) -> float:
        return int(self.ms) / 1000

    @property
    def known_country(self) -> str | None:
        return None if self.country in ("", NONE_KNOWN) else self.country

    def in_force(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


def sortable(network: Network, address: int | None = None) -> str:
    """An address as the index sorts it (ledger.lua's `sortable`), without its length."""
    value = int(network.network_address) if address is None else address
    return f"4{value:08x}" if network.version == 4 else f"6{value:032x}"


@dataclass(frozen=True)
class Range:
    """One lexical range of the index, newest first (or by address)."""

    low: str
    high: str
    reverse: bool
    exact: bool  # the range alone answers the search (its count is the total)
    widest: int | None = None  # by address: the prefix length a member must have at least

    def after(self, member: str) -> Range:
        """The rest of the range after a member already read."""
        if self.reverse:
            return Range(self.low, "(" + member, True, self.exact, self.widest)
        return Range("(" + member, self.high, False, self.exact, self.widest)

    def admits(self, member: str) -> bool:
        """Whether a member of the range is inside the searched network: a wider
        network starting at the same address is in the range, not inside."""
        return self.widest is None or int(member.split(SEP)[1].rpartition("/")[2]) >= self.widest

    def holds(self, member: str) -> bool:
        low, high = self.low[1:], self.high[1:]
        return low <= member <= high


def plan(flt: Filter) -> Range:
    """The range that narrows a search most; what it leaves out is filtered after."""
    if flt.prefix is not None:
        first = sortable(flt.prefix)
        last = sortable(flt.prefix, int(flt.prefix.broadcast_address))
        exact = flt.rule is flt.host is flt.country is flt.since is flt.until is None
        return Range(f"[a{SEP}{first}", f"[a{SEP}{last}/\xff", False, exact, flt.prefix.prefixlen)
    if flt.rule is not None and flt.host is not None:
        family, others = f"x{SEP}{flt.host}{SEP}{flt.rule}{SEP}", (flt.country,)
    elif flt.rule is not None:
        family, others = f"r{SEP}{flt.rule}{SEP}", (flt.host, flt.country)
    elif flt.country is not None:
        code = NONE_KNOWN if flt.country == UNKNOWN_COUNTRY.upper() else flt.country
        family, others = f"c{SEP}{code}{SEP}", (flt.host,)
    elif flt.host is not None:
        family, others = f"h{SEP}{flt.host}{SEP}", ()
    else:
        family, others = f"t{SEP}", ()
    low = family + (index_ms(flt.since) if flt.since is not None else "")
    high = family + (index_ms(flt.until) if flt.until is not None else "9") + "\xff"
    return Range("[" + low, "[" + high, True, all(o is None for o in others))


def address_of(member: str) -> str:
    return member.rpartition(SEP)[2]


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(b"i" + member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, where: Range) -> Range:
    """The range after the cursor's member; 422 for a cursor not of this search."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        member = raw[1:].decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw, member = b"", ""
    if not raw.startswith(b"i") or not where.holds(member):
        raise FieldError("cursor", "not a cursor of this search (give the `next` of the page before, "
                                   "with the same filters)")
    return where.after(member)


def matches(flt: Filter, entry: Entry, in_prefix: bool = False) -> bool:
    """What the range may not have said: every filter, on the indexed fields
    (`in_prefix`: the range already said the address is inside `flt.prefix`)."""
    if flt.rule is not None and entry.rule != flt.rule:
        return False
    if flt.host is not None and entry.host != flt.host:
        return False
    if flt.country is not None and (entry.known_country or UNKNOWN_COUNTRY.upper()).upper() != flt.country:
        return False
    if flt.since is not None and entry.banned_at < flt.since:
        return False
    if flt.until is not None and entry.banned_at > flt.until:
        return False
    if flt.address is not None and entry.address != flt.address:
        return False
    return flt.prefix is None or in_prefix or inside(entry.address, flt.prefix)


class Index:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.client, self.keys = client, keys

    async def entries(self, addresses: list[str]) -> dict[str, Entry]:
        if not addresses:
            return {}
        raw = await self.client.hmget(self.keys.ban_indexed, addresses)
        return {a: Entry.parse(a, t) for a, t in zip(addresses, raw) if t is not None}

    async def entry(self, address: str) -> Entry | None:
        return (await self.entries([address])).get(address)

    async def count(self, where: Range) -> int:
        return await self.client.zlexcount(self.keys.ban_index, where.low, where.high)

    async def _read(self, where: Range, count: int) -> list[str]:
        found = await self.client.zrange(self.keys.ban_index, where.high if where.reverse else where.low,
                                         where.low if where.reverse else where.high, desc=where.reverse,
                                         bylex=True, offset=0, num=count)
        return [m.decode() for m in found]

    async def search(self, flt: Filter, limit: int, cursor: str | None,
                     now: float | None = None) -> tuple[list[Entry], int | None, str | None]:
        """One page of bans in force: their entries, the total (None when the range
        alone cannot tell) and the cursor of the next page (None: no more)."""
        now = time.time() if now is None else now
        where = plan(flt)
        total = await self.count(where) if where.exact and flt.address is None else None
        if flt.address is not None:  # one address: no range to read
            entry = await self.entry(flt.address)
            found = [entry] if entry and entry.in_force(now) and matches(flt, entry) else []
            return found, len(found), None
        rest = decode_cursor(cursor, where) if cursor else where
        page: list[Entry] = []
        scanned, last = 0, None
        while scanned < SCAN_BUDGET:
            ask = min(limit - len(page) if where.exact else BATCH, SCAN_BUDGET - scanned)
            members = await self._read(rest, ask)
            entries = await self.entries([address_of(m) for m in members])
            for member in members:
                scanned, last = scanned + 1, member
                entry = entries.get(address_of(member))
                if entry and entry.in_force(now) and where.admits(member) and \
                        matches(flt, entry, in_prefix=where.widest is not None):
                    page.append(entry)
                    if len(page) == limit:
                        return page, total, encode_cursor(member)
            if len(members) < ask:
                return page, total, None
            rest = rest.after(last)
        return page, total, encode_cursor(last)

    async def covering(self, address: str) -> list[str]:
        """The network bans in force that hold `address` (itself excluded)."""
        target = ipaddress.ip_network(address)
        wider = [str(target.supernet(new_prefix=n)) for n in range(target.prefixlen)]
        return sorted(a for a, e in (await self.entries(wider)).items() if e.in_force(time.time()))

    async def recent(self, pairs: list[tuple[str, str]], since: float) -> dict[tuple[str, str], int]:
        """Bans in force written since a time, for each (host, rule)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for host, rule in pairs:
                family = f"x{SEP}{host}{SEP}{rule}{SEP}"
                pipe.zlexcount(self.keys.ban_index, f"[{family}{index_ms(since)}", f"[{family}\xff")
            return dict(zip(pairs, await pipe.execute()))

    async def pending_countries(self, count: int) -> list[tuple[str, float]]:
        """Bans written without a country: (address, banned_at), oldest first."""
        members = await self._read(Range(f"[p{SEP}", f"[p{SEP}\xff", False, True), count)
        return [(address_of(m), int(m.split(SEP)[1]) / 1000) for m in members]
