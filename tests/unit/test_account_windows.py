"""Per-account windows against a real redis-server (single, Cluster, and the Cluster's three
calls on a single Redis): many addresses failing on one account over several hosts, each
too rarely for its own window, are banned together; logins spare; hostile user names."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from pyfilter.common import bans, messages
from pyfilter.common.config import MAX_ACCOUNT_FAILURES, ConfigError, PerAccount, Rule, Seconds, load_rule
from pyfilter.common.keys import Keys, account_id
from pyfilter.common.ledger import Ledger
from pyfilter.detector.windows import Login, Observed, Windows
from tests.conftest import aclient, emptied_cluster
from tests.unit.test_ledger import Watched, hash_tag

NOW = 1_800_000_000.0
KEYS = Keys("pa:")
HOSTS = ("host-a", "host-b", "host-c")


def redis_of(request) -> str:
    """A single Redis (its one call, or the three calls of Cluster run there), or a
    Cluster (always the three calls)."""
    request.node.split = request.param == "single, three calls"
    if request.param == "cluster":
        return emptied_cluster(request)
    return request.getfixturevalue("single_redis_url")


@pytest.fixture(params=["single, one call", "single, three calls", "cluster"])
def redis_url(request):
    return redis_of(request)


@pytest.fixture(params=["single, three calls", "cluster"])
def three_calls_url(request):
    """Where the per-account windows take three calls, with steps in between."""
    return redis_of(request)


def rule(**per_account) -> Rule:
    """sshd's settings: 5 failures per address within 10 minutes; per account the shipped default."""
    base = dict(service="sshd", patterns=["(?P<user>x)"], maxretry=5, findtime=Seconds(600),
                bantime=Seconds(600), per_account=per_account or True)
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def spread(account: str, addresses: list[str], each: int, start: float = NOW - 300, tag: str = "f") -> list[Observed]:
    """Each address fails `each` times on `account`, the hosts taking turns, a second apart."""
    out = []
    for n in range(each):
        for i, address in enumerate(addresses):
            k = n * len(addresses) + i
            out.append(Observed("sshd", address, HOSTS[k % 3], start + k, f"{tag}:{k}",
                                f"Failed password for {account} from {address}", user=account))
    return out


def addresses(n: int, first: int = 1) -> list[str]:
    return [f"198.51.100.{i}" for i in range(first, first + n)]


async def record(request, url: str, rules: dict[str, Rule], batches, now: float = NOW, ledger_cls=None):
    client = aclient(url)
    windows = Windows(client, "pa:", rules)
    if ledger_cls is not None:
        windows._ledger = ledger_cls(client, KEYS)
    windows._ledger.split = windows._ledger.split or request.node.split
    banned = []
    for observed, logins in batches:
        banned += await windows.record(observed, now, logins)
    in_force = sorted(a.decode() for a in await client.zrange(KEYS.active_bans, 0, -1))
    records = {r.address: r for r in await bans.records(client, KEYS, in_force)}
    decisions = [messages.decode_decision(d[b"m"]) for _, d in await client.xrange(KEYS.decisions)]
    return client, windows, banned, records, decisions


def test_addresses_spread_over_three_hosts_are_banned_together(request, redis_url):
    """12 addresses fail twice each on root, over three hosts: no address reaches maxretry (5),
    no host sees more than 8 failures, but the account sees 24 from 12 addresses in 24 s."""
    attackers = addresses(12)

    async def go():
        client, _, banned, records, decisions = await record(request, redis_url, {"sshd": rule()},
                                                              [(spread("root", attackers, 2), [])])
        await client.aclose()
        return banned, records, decisions
    banned, records, decisions = asyncio.run(go())
    assert sorted(b.address for b in banned) == sorted(attackers)
    assert sorted(records) == sorted(attackers)
    for rec in records.values():
        assert (rec.window, rec.account, rec.rule, rec.origin) == ("account", "root", "sshd", "detector")
        assert sorted(rec.evidence) == sorted(attackers)
        assert rec.failures >= 20 and rec.duration == 600
        assert rec.lines and "Failed password for root" in rec.lines[-1]
    assert sorted(d.address for d in decisions) == sorted(attackers)  # one decision each


def test_a_ban_replaced_by_another_writer_is_judged_by_its_record(request, redis_url):
    """The ledger remembers the durations of the bans it wrote (ledger.lua, held_bans), but
    believes that only while the active set's expiry is the one it wrote: a ban replaced
    by anything else (here written by hand: another library version) is read from its
    record. One attacker's 600 s ban is replaced by a 300 s one: a second crossing (600 s)
    bans it again and no other attacker, whose 600 s bans are in force."""
    attackers = addresses(12)
    replaced = attackers[0]
    later = NOW + 60

    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pa:", {"sshd": rule()})
        windows._ledger.split = windows._ledger.split or request.node.split
        first = await windows.record(spread("root", attackers, 2), NOW)
        held = await bans.record(client, KEYS, replaced)
        shorter = msgspec.structs.replace(held, banned_at=NOW - 200, duration=300, expires_at=NOW + 100)
        await client.set(KEYS.ban(replaced), msgspec.msgpack.encode(shorter))
        await client.zadd(KEYS.active_bans, {replaced: NOW + 100})
        second = await windows.record(spread("admin", attackers, 2, start=later - 30, tag="g"), later)
        await client.aclose()
        return first, second
    first, second = asyncio.run(go())
    assert sorted(b.address for b in first) == sorted(attackers)
    assert [(b.address, b.duration) for b in second] == [(replaced, 600)]


def test_too_few_addresses_or_failures_ban_nothing(request, redis_url):
    """25 failures from 5 addresses (fewer than 10), or 19 failures from 19 addresses (fewer than 20).
    (5 addresses failing 5 times each reach maxretry: their own windows ban them, not the account's.)"""
    async def go():
        batches = [(spread("root", addresses(5), 4), []), (spread("admin", addresses(19, 100), 1, tag="g"), [])]
        client, _, banned, records, _ = await record(request, redis_url, {"sshd": rule()}, batches)
        await client.aclose()
        return banned, records
    banned, records = asyncio.run(go())
    assert banned == [] and records == {}


def test_failures_further_apart_than_findtime_ban_nothing(request, redis_url):
    async def go():
        attackers = addresses(20)
        slow = [Observed("sshd", a, "host-a", NOW - 3000 + i * 40, f"s:{i}", "x", user="root")
                for i, a in enumerate(attackers)]  # 20 failures over 800 s: at most 15 in 10 minutes
        client, _, banned, _, _ = await record(request, redis_url, {"sshd": rule()}, [(slow, [])])
        await client.aclose()
        return banned
    assert asyncio.run(go()) == []


def test_an_address_that_logged_in_as_the_account_is_spared(request, redis_url):
    """The administrator's own address fails too (typos), but logged in as root 10 days ago;
    another logged in as another account, a third as root 40 days ago: those two are banned."""
    attackers = addresses(11)
    admin, other_user, long_ago = attackers[0], attackers[1], attackers[2]
    logins = [Login("sshd", admin, "root", "host-b", NOW - 10 * 86400),
              Login("sshd", other_user, "deploy", "host-a", NOW - 3600),
              Login("sshd", long_ago, "root", "host-c", NOW - 40 * 86400)]

    async def go():
        # the logins first, as they came, then the attack
        client, _, banned, records, _ = await record(
            request, redis_url, {"sshd": rule()}, [([], logins[:1]), ([], logins[1:]), (spread("root", attackers, 2), [])])
        await client.aclose()
        return banned, records
    banned, records = asyncio.run(go())
    assert sorted(records) == sorted(attackers[1:])
    assert admin not in {b.address for b in banned}
    rec = records[other_user]
    assert sorted(rec.evidence) == sorted(attackers[1:])
    assert "1 spared" in rec.reason


def test_a_login_in_the_same_batch_spares_too(request, redis_url):
    attackers = addresses(11)

    async def go():
        batch = (spread("root", attackers, 2), [Login("sshd", attackers[5], "root", "host-a", NOW - 1)])
        client, _, _, records, _ = await record(request, redis_url, {"sshd": rule()}, [batch])
        await client.aclose()
        return records
    assert sorted(asyncio.run(go())) == sorted(set(attackers) - {attackers[5]})


def test_a_redelivered_batch_changes_nothing(request, redis_url):
    """The same lines again (a replica died before acknowledging them): no new ban, no new
    decision; and lines older than the crossing count no more."""
    attackers = addresses(12)
    batch = spread("root", attackers, 2)

    async def go():
        client, windows, first, _, decisions = await record(request, redis_url, {"sshd": rule()}, [(batch, [])])
        again = await windows.record(batch, NOW, [])
        again += await windows.record(batch[:5], NOW + 1, [])
        after = await client.xlen(KEYS.decisions)
        window = await client.zcard(KEYS.account_window(account_id("sshd", "root")))
        await client.aclose()
        return first, decisions, again, after, window
    first, decisions, again, after, window = asyncio.run(go())
    assert len(first) == 12 and again == [] and after == len(decisions) == 12
    assert window == 0  # the crossing's failures are gone; the redelivered ones are not counted again


def test_a_failure_read_after_the_crossing_joins_its_evidence(request, redis_url):
    """Replicas read batches in any order: the earliest failure of the attack, read after
    the others crossed the threshold without it, is banned with them (late evidence); a
    failure older than the crossed window is not, and reading it all again bans nobody more."""
    first = Observed("sshd", "198.51.100.60", "host-c", NOW - 301, "e:0", "x", user="root")
    too_old = Observed("sshd", "198.51.100.61", "host-c", NOW - 1000, "e:1", "x", user="root")
    rest = spread("root", addresses(15), 2)

    async def go(batches):
        client, windows, banned, records, _ = await record(request, redis_url, {"sshd": rule()}, batches)
        again = await windows.record([first, too_old, *rest], NOW, [])
        await client.flushall()
        await client.aclose()
        return sorted(b.address for b in banned), records, again
    in_order, _, _ = asyncio.run(go([([too_old, first, *rest], [])]))
    late, records, again = asyncio.run(go([(rest, []), ([first, too_old], [])]))
    assert in_order == late == sorted([*addresses(15), "198.51.100.60"])
    assert again == []
    assert sorted(records["198.51.100.60"].evidence) == late


def recidive_rule() -> Rule:
    """Two bans within a day ban for a week."""
    base = dict(service="recidive", patterns=["x"], maxretry=2, findtime=Seconds(86400), bantime=Seconds(604800))
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def recidive_windows(request, client) -> Windows:
    """sshd's windows and recidive's, taking this case's calls (one, or the three of Cluster)."""
    windows = Windows(client, "pa:", {"sshd": rule(), "recidive": recidive_rule()})
    windows._ledger.split = windows._ledger.split or request.node.split
    return windows


def test_an_address_banned_twice_by_account_windows_gets_the_recidive_ban(request, redis_url):
    """An account's ban counts in its address's recidive window as any ban: 12 addresses
    banned on root, then an hour later (those bans ran out) on admin, are banned for a week;
    the second attack read again changes nothing."""
    attackers = addresses(12)
    later = NOW + 3600

    async def go():
        client = aclient(redis_url)
        windows = recidive_windows(request, client)
        first = await windows.record(spread("root", attackers, 2), NOW)
        second = await windows.record(spread("admin", attackers, 2, start=later - 300, tag="g"), later)
        again = await windows.record(spread("admin", attackers, 2, start=later - 300, tag="g"), later)
        records = {r.address: r for r in await bans.records(client, KEYS, attackers)}
        decisions = [messages.decode_decision(d[b"m"]) for _, d in await client.xrange(KEYS.decisions)]
        await client.aclose()
        return first, second, again, records, decisions
    first, second, again, records, decisions = asyncio.run(go())
    assert sorted((b.address, b.rule, b.duration) for b in first) == [(a, "sshd", 600) for a in sorted(attackers)]
    assert sorted((b.address, b.rule, b.duration) for b in second) == sorted(
        [(a, "sshd", 600) for a in attackers] + [(a, "recidive", 604800) for a in attackers])
    assert again == []
    assert all((r.rule, r.window, r.duration, r.ban_count) == ("recidive", "recidive", 604800, 3)
               for r in records.values()) and sorted(records) == sorted(attackers)
    assert "banned by sshd" in records[attackers[0]].lines
    assert len(decisions) == 3 * len(attackers)


def test_an_account_ban_and_an_address_ban_count_together_for_recidive(request, redis_url):
    """One address reaches maxretry on its own (its own window bans it), the next hour it is
    among an account's attackers: two bans, by two kinds of window, make the recidive ban."""
    attackers = addresses(12)
    later = NOW + 3600

    async def go():
        client = aclient(redis_url)
        windows = recidive_windows(request, client)
        alone = [Observed("sshd", attackers[0], "host-a", NOW - 10 + i, f"a:{i}", "x") for i in range(5)]
        first = await windows.record(alone, NOW)
        second = await windows.record(spread("root", attackers, 2, start=later - 300), later)
        record_ = await bans.record(client, KEYS, attackers[0])
        others = await bans.records(client, KEYS, attackers[1:])
        await client.aclose()
        return first, second, record_, others
    first, second, record_, others = asyncio.run(go())
    assert [(b.address, b.rule) for b in first] == [(attackers[0], "sshd")]
    assert (attackers[0], "recidive", 604800) in {(b.address, b.rule, b.duration) for b in second}
    assert (record_.rule, record_.duration) == ("recidive", 604800)
    assert all(r.rule == "sshd" and r.window == "account" for r in others)  # banned once: no recidive


def test_a_detector_dying_between_the_ban_and_its_recidive_count_loses_nothing(request, three_calls_url):
    """The three calls: a detector stops after the account's bans were written and before
    they were counted for recidive; the read, redelivered, counts them (the ban side
    answers its earlier judgement again), and the twice-banned address gets its week."""
    redis_url = three_calls_url
    attackers = addresses(12)
    later = NOW + 3600

    class Dying(Ledger):
        died = False

        async def _count_account_bans(self, counted, recidive):
            if not self.died:
                self.died = True
                raise ConnectionError("the detector stopped here")
            return await super()._count_account_bans(counted, recidive)

    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pa:", {"sshd": rule(), "recidive": recidive_rule()})
        windows._ledger = Dying(client, KEYS)
        windows._ledger.split = True
        alone = [Observed("sshd", attackers[0], "host-a", NOW - 10 + i, f"a:{i}", "x") for i in range(5)]
        await windows.record(alone, NOW)
        attack = spread("root", attackers, 2, start=later - 300)
        with pytest.raises(ConnectionError):
            await windows.record(attack, later)
        written = await bans.record(client, KEYS, attackers[0])
        again = await windows.record(attack, later)
        final = await bans.record(client, KEYS, attackers[0])
        await client.aclose()
        return written, again, final
    written, again, final = asyncio.run(go())
    assert (written.rule, written.window) == ("sshd", "account")
    assert (final.rule, final.duration) == ("recidive", 604800)
    assert (attackers[0], "recidive", 604800) in {(b.address, b.rule, b.duration) for b in again}


def test_a_user_name_cannot_frame_another_address_nor_break_keys(request, redis_url):
    """The user name is the attacker's text: addresses, braces (hash tags), spaces, newlines,
    16 KB. Only the addresses that failed are banned; every key names the account by its hash."""
    hostile = ["root 198.51.100.99", "{bans}", "}x{", "a\nb\r\n198.51.100.98", "pa:{bans}:ban:198.51.100.97",
               "x" * 16384, "\x00\u202eroot"]
    attackers = addresses(10)

    async def go():
        batches = [(spread(name, attackers, 2, tag=f"h{n}"), []) for n, name in enumerate(hostile)]
        client, _, banned, records, _ = await record(request, redis_url, {"sshd": rule()}, batches,
                                                     ledger_cls=Watched)
        written = [k.decode() for k in await client.keys("pa:account-*")]
        await client.aclose()
        return records, written
    records, written = asyncio.run(go())
    assert sorted(records) == sorted(attackers)
    assert {r.account for r in records.values()} <= {h[:100].encode("utf-8", "replace").decode() for h in hostile}
    assert written and all(hash_tag(k).startswith("acct:") and len(hash_tag(k)) == 37 for k in written), written


def test_memory_per_account_is_bounded(request, redis_url):
    """A flood on one account from one address (never enough addresses), and logins from
    thousands of addresses: the window keeps the newest failures, the logins the newest few."""
    async def go():
        flood = [Observed("sshd", "198.51.100.7", "host-a", NOW - 100 + i / 100, f"x:{i}", "x", user="root")
                 for i in range(3 * MAX_ACCOUNT_FAILURES)]
        logins = [Login("sshd", f"2001:db8::{i:x}", "root", "host-a", NOW - i) for i in range(2000)]
        client, _, _, _, _ = await record(request, redis_url, {"sshd": rule(addresses=10)}, [(flood, logins)])
        account = account_id("sshd", "root")
        sizes = (await client.zcard(KEYS.account_window(account)), await client.zcard(KEYS.account_logins(account)),
                 await client.llen(KEYS.account_lines(account)))
        ttl = await client.ttl(KEYS.account_window(account))
        await client.aclose()
        return sizes, ttl
    (window, logins, lines), ttl = asyncio.run(go())
    assert window == MAX_ACCOUNT_FAILURES and logins <= 256 and lines <= 10
    assert 0 < ttl <= 600 + 60


def test_a_flood_in_one_second_bans_a_bounded_crossing(request, redis_url):
    """3,000 addresses fail once each on root within one second of log time (sshd writes whole
    seconds), read in batches of 500: the first batch crosses, the others' failures are the
    crossed window's (late evidence) until it holds 1,000 addresses; each record names 100."""
    flood = [Observed("sshd", f"2001:db8:f::{i:x}", HOSTS[i % 3], NOW - 5, f"z:{i}", "x", user="root")
             for i in range(3000)]

    async def go():
        client, _, banned, records, _ = await record(
            request, redis_url, {"sshd": rule()}, [(flood[i:i + 500], []) for i in range(0, 3000, 500)])
        state = await client.hget(KEYS.account_state(account_id("sshd", "root")), "crossing")
        await client.aclose()
        return banned, records, len(state)
    banned, records, state = asyncio.run(go())
    assert len(banned) == len(records) == MAX_ACCOUNT_FAILURES
    assert all(len(r.evidence) == 100 for r in records.values())
    assert f"from {MAX_ACCOUNT_FAILURES} addresses" in records[banned[-1].address].reason
    assert state < 40 * MAX_ACCOUNT_FAILURES


def test_every_account_call_writes_only_the_keys_it_is_given(request, redis_url):
    """On Cluster (and in the three calls) each call's keys share one hash tag: the
    account's, the ban side's, or an address's (recidive). A single Redis's one call makes
    a banned address's keys from keys.py's templates: exactly keys.py's keys of the address.
    (Only the account window bans here: no address reaches its own window's maxretry.)"""
    attackers = addresses(12)

    async def go():
        client, windows, _, _, _ = await record(
            request, redis_url, {"sshd": rule(), "recidive": recidive_rule()},
            [([], [Login("sshd", "198.51.100.200", "root", "host-a", NOW - 5)]), (spread("root", attackers, 2), [])],
            ledger_cls=Watched)
        written = {k.decode() for k in await client.keys("*")}
        await client.aclose()
        return windows._ledger, written
    ledger, written = asyncio.run(go())
    made = {key for a in attackers
            for key in (KEYS.ban(a), KEYS.ban_count(a), KEYS.window("recidive", a), KEYS.window_lines("recidive", a))}
    if not ledger.split:
        assert made <= written and written <= made | ledger.given, written - made - ledger.given
        return
    assert made <= ledger.given and written <= ledger.given, written - ledger.given  # (one node's keys)
    assert all(len(t) == 1 for t in ledger.tags), ledger.tags
    assert {account_id("sshd", "root")} in ledger.tags and {"bans"} in ledger.tags
    assert {attackers[0]} in ledger.tags


def test_per_account_settings_and_their_errors(tmp_path):
    assert rule().per_account == PerAccount(20, 10, Seconds(600), Seconds(30 * 86400))
    path = tmp_path / "r.yaml"
    cases = {
        "patterns: ['Failed for x from <HOST>']\nper_account: true": "capture no user name",
        "patterns: ['(?P<user>\\S+) <HOST>']\nper_account: {failures: 5, addresses: 9}": "cannot come from",
        "patterns: ['(?P<user>\\S+) <HOST>']\nper_account: {failures: 1}": "failures",
        "patterns: ['(?P<user>\\S+) <HOST>']\nper_account: {findtime: ten}": 'expected a duration like "10m"',
        "patterns: ['(?P<user>\\S+) <HOST>']\nper_account: {lock: true}": "lock",
        "patterns: ['(?P<user>\\S+) <HOST>']\nsuccess: ['Accepted from <HOST>']": "success[0]",
    }
    for body, message in cases.items():
        path.write_text(f"service: s\n{body}\n")
        with pytest.raises(ConfigError) as err:
            load_rule(path, "r")
        assert message in str(err.value) and f"{path}: rules.r" in str(err.value), str(err.value)
    path.write_text("service: s\npatterns: ['(?P<user>\\S+) <HOST>']\nper_account: false\n")
    assert load_rule(path, "r").per_account is None
    sshd = load_rule(path.parents[0] / "none.yaml", "sshd", {"service": "s", "patterns": ["(?P<user>.) <HOST>"]})
    assert sshd.per_account is None  # off unless asked for
