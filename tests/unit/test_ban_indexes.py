"""The ban indexes and counters the ledger keeps as it writes (ledger.lua, "Ban indexes"),
against a real redis-server: each way of writing, lifting or forgetting a ban keeps them
equal to a full recount of the bans in force."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from pyfilter.api.index import SEP, Entry, sortable
from pyfilter.common import bans, messages
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import RECORD_GRACE, Ledger, NewBan, index_ms, utc_day
from pyfilter.common.config import Seconds
from pyfilter.detector.windows import Observed, Windows
from tests.unit.apisupport import detector_ban
from tests.unit.test_windows import make_rule

KEYS = Keys("t:")
NOW = time.time()


@pytest.fixture(autouse=True)
def clock():
    """Each test takes the time as it starts: bans of a few minutes must still be in force in a long run."""
    global NOW
    NOW = time.time()


def record(address: str, at: float | None = None, duration: int = 600, rule: str = "manual", host: str = "host-a",
           country: str | None = None) -> messages.BanRecord:
    at = NOW if at is None else at
    return messages.BanRecord(address=address, rule=rule, host=host, origin="manual", banned_at=at,
                              duration=duration, expires_at=None if duration < 0 else at + duration,
                              country=country)


def members_of(e: Entry) -> set[str]:
    """What the index must hold for one ban in force (ledger.lua's `members`)."""
    net = ipaddress.ip_network(e.address)
    country = e.country or "?"
    tail = f"{SEP}{e.ms}{SEP}{e.address}"
    found = {f"t{tail}", f"r{SEP}{e.rule}{tail}", f"h{SEP}{e.host}{tail}", f"x{SEP}{e.host}{SEP}{e.rule}{tail}",
             f"c{SEP}{country}{tail}",
             f"a{SEP}{sortable(net)}/{net.prefixlen:03d}{SEP}{e.address}"}
    return found | ({f"p{tail}"} if e.country == "" else set())


async def recount(client: aioredis.Redis) -> dict[str, Entry]:
    """Check every index and counter against the active set and the records; returns the entries."""
    active = {a.decode() for a in await client.zrange(KEYS.active_bans, 0, -1)}
    entries = {a.decode(): Entry.parse(a.decode(), t) for a, t in (await client.hgetall(KEYS.ban_indexed)).items()}
    assert set(entries) == active
    counts: Counter[str] = Counter()
    for address, e in entries.items():
        rec = await bans.record(client, KEYS, address)
        if rec is None:  # its time and grace ran out: in the active set until the next prune
            assert e.expires_at is not None and e.expires_at + RECORD_GRACE <= time.time()
        else:
            assert (e.ms, e.rule, e.host) == (index_ms(rec.banned_at), rec.rule, rec.host)
            assert e.expires_at == rec.expires_at
            assert rec.country is None or e.country == rec.country
        country = e.country or "?"
        counts.update([f"country{SEP}{country}", f"host-rule{SEP}{e.host}{SEP}{e.rule}"])
    stored = {k.decode(): int(v) for k, v in (await client.hgetall(KEYS.ban_counts)).items()}
    assert stored == dict(counts)
    expected = set().union(*(members_of(e) for e in entries.values())) if entries else set()
    assert {m.decode() for m in await client.zrange(KEYS.ban_index, 0, -1)} == expected
    return entries


async def past_of(client: aioredis.Redis, address: str) -> list[str]:
    return (await client.hget(KEYS.ban_past, address) or b"").decode().split()


def run(redis_url: str, steps):
    async def go():
        client = aioredis.from_url(redis_url)
        try:
            return await steps(client, Ledger(client, KEYS))
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_a_ban_is_indexed_by_time_rule_host_country_and_address(redis_url):
    async def steps(client, ledger):
        await ledger.ban([NewBan(record("198.51.100.7", rule="sshd", host="web-1", country="NL")),
                          NewBan(record("2001:db8::/48", duration=-1))])
        entries = await recount(client)
        day = await client.hgetall(KEYS.ban_day(utc_day(NOW)))
        return entries, day
    entries, day = run(redis_url, steps)
    assert entries["198.51.100.7"].country == "NL" and entries["2001:db8::/48"].expires_at is None
    assert day == {b"host-rule\tweb-1\tsshd": b"1", b"host-rule\thost-a\tmanual": b"1", b"country\tNL": b"1"}


def test_a_ban_again_replaces_its_entry_and_counts_once(redis_url):
    async def steps(client, ledger):
        await ledger.ban([NewBan(record("198.51.100.7", at=NOW - 60, rule="sshd"))])
        await ledger.ban([NewBan(record("198.51.100.7", rule="recidive", duration=3600))])
        await detector_ban(client, "198.51.100.8", NOW - 30)
        await detector_ban(client, "198.51.100.8", NOW, bantime=7200)  # escalation: a longer ban
        entries = await recount(client)
        return entries, await past_of(client, "198.51.100.7"), await past_of(client, "198.51.100.8")
    entries, past7, past8 = run(redis_url, steps)
    assert entries["198.51.100.7"].rule == "recidive" and entries["198.51.100.7"].ms == index_ms(NOW)
    assert len(past7) == 2 and len(past8) == 2 and past7[0] > past7[1]  # newest first


def test_unban_and_prune_take_bans_out_and_the_past_is_forgotten_with_the_ban_count(redis_url):
    async def steps(client, ledger):
        await ledger.ban([NewBan(record("198.51.100.7")), NewBan(record("198.51.100.8", at=NOW - 900))])
        await ledger.ban([NewBan(record("198.51.100.9", at=NOW - 900))], memory=60)
        await ledger.unban(["198.51.100.7"], "host-a", "test")
        await ledger.prune(NOW)  # .8 and .9 ran out 5 minutes ago; .9's count is forgotten
        entries = await recount(client)
        return entries, await past_of(client, "198.51.100.8"), await past_of(client, "198.51.100.9")
    entries, past8, past9 = run(redis_url, steps)
    assert entries == {} and len(past8) == 1 and past9 == []


def test_a_country_looked_up_later_goes_only_to_a_ban_still_waiting_for_it(redis_url):
    async def steps(client, ledger):
        await detector_ban(client, "198.51.100.7", NOW)
        await detector_ban(client, "198.51.100.8", NOW)
        pending = await recount(client)
        await ledger.unban(["198.51.100.8"], "host-a", "test")
        set_count = await ledger.set_countries([("198.51.100.7", NOW, "NL"), ("198.51.100.8", NOW, "FR")])
        again = await ledger.set_countries([("198.51.100.7", NOW, "DE")])
        entries = await recount(client)
        day = await client.hgetall(KEYS.ban_day(utc_day(NOW)))
        return pending, set_count, again, entries, day
    pending, set_count, again, entries, day = run(redis_url, steps)
    assert {e.country for e in pending.values()} == {""}  # not looked up yet
    assert (set_count, again) == (1, 0) and entries["198.51.100.7"].country == "NL"
    assert day[b"country\tNL"] == b"1" and b"country\tFR" not in day


def test_counters_equal_a_full_recount_after_a_random_mix_of_operations(redis_url):
    rnd = random.Random(16)
    pool = [f"198.51.100.{i}" for i in range(40)] + [f"2001:db8::{i:x}" for i in range(40)] + \
        ["198.51.100.0/28", "2001:db8:1::/48"]

    async def steps(client, ledger):
        for step in range(60):
            kind = rnd.choice(["ban", "ban", "ban", "unban", "prune", "countries", "detector"])
            if kind == "ban":
                batch = [NewBan(record(rnd.choice(pool), at=NOW - rnd.choice([0, 30, 700, 90000]),
                                       duration=rnd.choice([-1, 60, 600, 3600]),
                                       rule=rnd.choice(["sshd", "nginx", "manual"]),
                                       host=rnd.choice(["web-1", "web-2"]),
                                       country=rnd.choice([None, "NL", "FR"])))
                         for _ in range(rnd.randint(1, 8))]
                await ledger.ban(batch)
            elif kind == "unban":
                await ledger.unban(rnd.sample(pool, 5), "host-a", "test")
            elif kind == "prune":
                await ledger.prune(NOW)
            elif kind == "countries":
                waiting = [(m.decode().split(SEP)[2], int(m.decode().split(SEP)[1]) / 1000)
                           for m in await client.zrange(KEYS.ban_index, "[p\t", "[p\t\xff", bylex=True)]
                await ledger.set_countries([(a, at, rnd.choice(["NL", "?"])) for a, at in waiting])
            else:
                address = rnd.choice(pool[:40])
                rule = {"sshd": make_rule(bantime=Seconds(rnd.choice([60, 3600])))}
                await Windows(client, KEYS.prefix, rule).record(  # bans unless a longer ban is in force
                    [Observed("sshd", address, "web-1", NOW + step - 3 + i, f"{address}:{step}:{i}", "x")
                     for i in range(3)], NOW + step)
            await recount(client)
        await ledger.prune(NOW)
        return await recount(client)
    assert run(redis_url, steps)  # some bans are left in force to count


def test_bans_from_before_the_indexes_are_indexed_when_the_library_is_first_loaded(redis_url):
    async def steps(client, ledger):
        await ledger.ban([NewBan(record(f"198.51.100.{i}", rule="sshd")) for i in range(5)])
        await client.delete(KEYS.ban_index, KEYS.ban_indexed, KEYS.ban_counts)
        indexed = await ledger.index_existing()
        return indexed, await recount(client)
    indexed, entries = run(redis_url, steps)
    assert indexed == 5 and len(entries) == 5
