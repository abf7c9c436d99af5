"""The ledger against a real redis-server: its functions write only the keys they are
given, every call's keys share one hash tag (one Cluster slot), the library comes back
when Redis lost it, older writers' decisions and keys still work."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from pyfilter.common import bans, messages
from pyfilter.common.config import Seconds
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import FUNCTION_PREFIX, LIBRARY, Ledger, NewBan
from pyfilter.detector.windows import Observed, Windows
from pyfilter.enforcer.backends.log_only import LogOnlyBackend
from tests.unit.test_enforcer_loop import Running, _has, until
from tests.unit.test_windows import make_rule
from tests.conftest import aclient

KEYS = Keys("t:")
NOW = time.time()


@pytest.fixture
def redis_url(any_redis_url):
    """Every test here runs on a single Redis and on a 3-primary Redis Cluster."""
    return any_redis_url


def record(address: str, duration: int = 600, rule: str = "manual") -> messages.BanRecord:
    return messages.BanRecord(address=address, rule=rule, host="host-a", origin="manual", banned_at=NOW,
                              duration=duration, expires_at=None if duration < 0 else NOW + duration)


def arguments(command: bytes) -> list[bytes]:
    """A command as sent in the Redis protocol (an array of bulk strings), read back."""
    count, _, rest = command.removeprefix(b"*").partition(b"\r\n")
    args = []
    for _ in range(int(count)):
        length, _, rest = rest.removeprefix(b"$").partition(b"\r\n")
        args.append(rest[:int(length)])
        rest = rest[int(length) + 2:]
    assert rest == b"", rest
    return args


class Watched(Ledger):
    """A ledger that notes every key it sends to a function (FCALL name numkeys KEYS... ARGV...),
    and the hash tags of each call's keys."""

    given: set[str]
    tags: list[set[str]]

    async def _send(self, pool, calls):
        self.given = getattr(self, "given", set())
        self.tags = getattr(self, "tags", [])
        for call in calls:
            _, _, count, *rest = arguments(call)
            keys = {k.decode() for k in rest[:int(count)]}
            self.given |= keys
            self.tags.append({hash_tag(k) if "{" in k else k for k in keys})
        return await super()._send(pool, calls)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text inside the first {...}."""
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


def test_every_function_writes_only_the_keys_it_is_given(redis_url):
    """And, as on Cluster, each call's keys share one hash tag: an address's (its
    windows), or the ban side's (`{bans}`: records, counts, active set, scopes,
    history, decisions)."""
    only_given_keys_are_written(redis_url, split=True)


def test_one_window_call_writes_only_the_keys_it_is_given(single_redis_url):
    """A single Redis's one window call (record_and_ban) has both kinds of keys."""
    only_given_keys_are_written(single_redis_url, split=False)


def only_given_keys_are_written(redis_url: str, split: bool) -> None:

    async def go():
        client = aclient(redis_url)
        ledger = Watched(client, KEYS)
        ledger.split = split
        rules = {"sshd": make_rule(findtime=Seconds(600), ports=[22], verdict="reject",
                                   slow={"maxretry": 2, "findtime": 3600, "bucket": 600, "bantime": 3600}),
                 "web": make_rule(window="consecutive", failed_attempts=2, request_time=Seconds(5)),
                 "recidive": make_rule(maxretry=1, findtime=Seconds(86400), bantime=Seconds(-1)),
                 "probe": make_rule(window="distinct", maxretry=2)}
        windows = Windows(client, "t:", rules)
        windows._ledger = ledger
        observed = [Observed("sshd", "198.51.100.7", "host-a", NOW - 3 + i, f"s:{i}", "failed", "h:auth:9", i == 0)
                    for i in range(4)]
        observed += [Observed("web", "2001:db8::/64", "host-a", NOW - 2 + i, f"w:{i}", "401") for i in range(2)]
        observed += [Observed("sshd", "198.51.100.6", "host-a", NOW - 1, "r:1", "root", weight=2)]  # slow bans
        observed += [Observed("probe", "198.51.100.10", "host-a", NOW - 2 + i, f"p:{i}", "404", weight=1,
                              value=f"{i:016x}") for i in range(2)]
        await windows.record(observed, NOW)
        await ledger.ban([NewBan(record("198.51.100.8")), NewBan(record("198.51.100.9", -1), [80], "drop")])
        await ledger.unban(["198.51.100.8"], "host-a", "manual unban")
        await ledger.prune(NOW + 3600)
        await ledger.claim_due("webhook", NOW, 300, 50)
        await ledger.claim_digest("email", NOW, 300, 10)
        written = {k.decode() for k in await client.keys("*")}
        await client.aclose()
        return ledger.given, written, ledger.tags
    given, written, tags = asyncio.run(go())
    assert written and written <= given, written - given
    if not split:
        return
    assert all(len(t) == 1 for t in tags), tags  # every call in one slot
    assert {"198.51.100.7"} in tags and {"2001:db8::/64"} in tags and {"bans"} in tags
    assert any(k.startswith("t:slow-ids:") for k in written)  # the slow window counted (and crossed)
    assert {"198.51.100.10"} in tags
    assert {"notify:webhook"} in tags and {"notify:email"} in tags
    # One address's windows share its tag; its record and count are on the ban side.
    for address in ("198.51.100.7", "2001:db8::/64"):
        own = [k for k in given if address in k]
        assert len(own) >= 8 and {hash_tag(k) for k in own} == {address, "bans"}, own


def test_unban_and_prune_forget_the_scope_with_the_ban(redis_url):
    async def go():
        client = aclient(redis_url)
        ledger = Ledger(client, KEYS)
        await ledger.ban([NewBan(record("198.51.100.7"), [22], "reject"),
                          NewBan(record("198.51.100.8", 60), [22, 2222], "drop"),
                          NewBan(record("198.51.100.9"))])
        before = await bans.scopes(client, KEYS)
        await ledger.unban(["198.51.100.7"], "host-a", "manual unban")
        pruned = await ledger.prune(NOW + 120)
        after = await bans.scopes(client, KEYS), await bans.active(client, KEYS, NOW + 120)
        await client.aclose()
        return before, pruned, after
    before, pruned, (scopes, active) = asyncio.run(go())
    assert before == {"198.51.100.7": messages.BanScope([22], "reject"),
                      "198.51.100.8": messages.BanScope([22, 2222], "drop")}
    assert pruned == 1 and scopes == {} and list(active) == ["198.51.100.9"]


def test_the_library_comes_back_after_redis_lost_it_and_replaces_an_older_copy(redis_url):
    async def go():
        client = aclient(redis_url)
        ledger = Ledger(client, KEYS)
        await client.function_flush()  # a Redis restarted without its data
        first = await ledger.ban([NewBan(record("198.51.100.7"))])
        # An older copy under the same name: replaced when a service starts.
        await client.function_load(f"#!lua name={LIBRARY}\nredis.register_function("
                                   f"'{FUNCTION_PREFIX}prune', function() return -1 end)", replace=True)
        stale = await ledger.prune(NOW)
        await ledger.load()
        fresh = await ledger.prune(NOW)
        await client.aclose()
        return first, stale, fresh
    first, stale, fresh = asyncio.run(go())
    assert [r.ban_count for r in first] == [1]
    assert stale == -1 and fresh == 0


def test_a_decision_of_the_previous_version_is_still_applied(redis_url):
    """Hosts upgrade one at a time: a decision as version 1 wrote it (the detector's
    Lua table, with `v` typed in) reaches the kernel with its scope."""
    old = {"type": "decision", "action": "ban", "address": "198.51.100.20", "rule": "sshd",
           "origin": "detector", "host": "host-a", "created_at": time.time(), "duration": 600,
           "expires_at": time.time() + 600, "reason": "5 failures of sshd", "ports": [22],
           "verdict": "reject", "v": 1}
    oldest = {"type": "decision", "action": "ban", "address": "198.51.100.21", "rule": "manual",
              "origin": "manual", "host": "api-1", "created_at": time.time(), "duration": -1, "v": 1}

    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel) as enforcer:
            # Straight onto the stream (no active ban): it reaches the kernel as a decision.
            await until(lambda: client.exists(enforcer.position.key))
            for decision in (old, oldest):
                await client.xadd(KEYS.decisions, {"m": msgspec.msgpack.encode(decision)})
            await until(lambda: _has(kernel, "198.51.100.20|22|reject"))
            await until(lambda: _has(kernel, "198.51.100.21"))
        await client.aclose()
        return set(await kernel.list())
    assert asyncio.run(go()) == {"198.51.100.20|22|reject", "198.51.100.21"}


def test_bans_from_before_the_ledger_keep_their_record_count_and_scope(redis_url):
    """The first load upgrades the keys of an older version (no hash tags) and gives the
    bans in force their rule's scope, so an upgrade neither loses a ban's story nor widens it."""
    async def go():
        client = aclient(redis_url)
        rec = record("198.51.100.7", rule="sshd")
        await Ledger(client, KEYS)._on_primaries("FUNCTION FLUSH")  # a Redis this version never loaded into
        await client.set("t:ban:198.51.100.7", messages.encode(rec), ex=7200)
        await client.set("t:bancount:198.51.100.7", 3, ex=3600)
        # In force now (NOW is when the module was imported: a long run may be past NOW + 600).
        await client.zadd(KEYS.active_bans, {"198.51.100.7": time.time() + 600})
        await Ledger(client, KEYS).load({"sshd": messages.BanScope([22], "reject")})
        found = (await bans.record(client, KEYS, "198.51.100.7"), await client.get(KEYS.ban_count("198.51.100.7")),
                 await client.ttl(KEYS.ban("198.51.100.7")), await bans.scopes(client, KEYS),
                 await client.exists("t:ban:198.51.100.7"))
        await client.aclose()
        return found
    found, count, ttl, scopes, old_left = asyncio.run(go())
    assert found == record("198.51.100.7", rule="sshd") and count == b"3" and 7000 < ttl <= 7200
    assert scopes == {"198.51.100.7": messages.BanScope([22], "reject")} and not old_left


def test_a_record_names_the_kind_of_window_that_decided_it(redis_url):
    """The api shows why a ban was made: the window kind is in the record, the
    recidive ban that a ban caused says so, a manual ban names none."""

    async def go():
        client = aclient(redis_url)
        rules = {"sshd": make_rule(maxretry=2), "web": make_rule(window="consecutive", failed_attempts=2, bantime=Seconds(3600)),
                 "recidive": make_rule(maxretry=2, findtime=Seconds(86400), bantime=Seconds(-1))}
        windows = Windows(client, "t:", rules)
        await windows.record([Observed("sshd", "198.51.100.7", "host-a", NOW - 2 + i, f"s:{i}", "failed")
                              for i in range(2)], NOW)
        await windows.record([Observed("web", "198.51.100.7", "host-a", NOW + i, f"w:{i}", "401")
                              for i in range(2)], NOW + 2)
        await windows._ledger.ban([NewBan(record("198.51.100.9"))])
        found = [await bans.record(client, KEYS, a) for a in ("198.51.100.7", "198.51.100.9")]
        history = [msgspec.msgpack.decode(fields[b"m"], type=messages.BanRecord)
                   for _, fields in await client.xrange(KEYS.ban_history)]
        await client.aclose()
        return found, history
    (recidive, manual), history = asyncio.run(go())
    assert [(r.rule, r.window) for r in history] == [("sshd", "sliding"), ("web", "consecutive"),
                                                     ("recidive", "recidive"), ("manual", "")]
    assert recidive.rule == "recidive" and manual.window == ""
