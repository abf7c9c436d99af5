"""The enforcer's loop against a real Redis: apply, catch up after downtime, reconcile, refuse.

Every test runs on a single Redis and on a 3-primary Redis Cluster.

The backend here is the log-only one (an in-memory stand-in for the kernel
with the same semantics); the nftables backend has its own tests in a
network namespace, and the integration suite runs both together.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from pyfilter.common import messages
from pyfilter.common.config import Config, Rule, Settings
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan
from pyfilter.enforcer.backends.log_only import LogOnlyBackend
from pyfilter.enforcer.main import Enforcer
from tests.conftest import CLUSTER_URLS, aclient

KEYS = Keys("t:")


@pytest.fixture
def redis_url(any_redis_url):
    return any_redis_url


def settings(url: str, rules: dict[str, Rule] | None = None) -> Settings:
    config = Config(host="host-b", whitelist=["198.51.100.240/28"])
    config.redis.url = url
    config.redis.cluster = url in CLUSTER_URLS
    config.redis.prefix = "t:"
    return Settings(config=config, rules=rules or {}, path="test")


async def publish(client, action: str, address: str, duration: int = 600, rule: str = "sshd",
                  ports: list[int] | None = None, verdict: str = "drop") -> None:
    now = time.time()
    expires = now + duration if duration >= 0 else None
    ledger = Ledger(client, KEYS)
    if action == "ban":
        rec = messages.BanRecord(address=address, rule=rule, host="host-a", origin="detector",
                                 banned_at=now, duration=duration, expires_at=expires)
        await ledger.ban([NewBan(rec, ports=ports or [], verdict=verdict)])
    else:
        await ledger.unban([address], "host-a", "", rule=rule, origin="detector", now=now)


async def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


class Running:
    """An enforcer task over a backend that outlives it, as the kernel does."""

    def __init__(self, url: str, backend: LogOnlyBackend, rules: dict[str, Rule] | None = None):
        self.enforcer = Enforcer(settings(url, rules), backend)

    async def __aenter__(self):
        self.task = asyncio.create_task(self.enforcer.run())
        return self.enforcer

    async def __aexit__(self, *exc):
        self.enforcer.stopping.set()
        await asyncio.wait_for(self.task, 10)


def test_decisions_apply_and_a_host_that_was_down_catches_up(redis_url):
    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel):
            await publish(client, "ban", "198.51.100.7")
            await until(lambda: _has(kernel, "198.51.100.7"))
        # Down: a ban and an unban happen meanwhile.
        await publish(client, "ban", "2001:db8::66")
        await publish(client, "unban", "198.51.100.7")
        assert "198.51.100.7" in await kernel.list()
        async with Running(redis_url, kernel):
            await until(lambda: _has(kernel, "2001:db8::66"))
            await until(lambda: _lacks(kernel, "198.51.100.7"))
        remaining = (await kernel.list())["2001:db8::66"]
        await client.aclose()
        return remaining
    remaining = asyncio.run(go())
    assert 0 < remaining <= 600


def test_reconcile_restores_missing_bans_with_remaining_time_and_drops_stale_ones(redis_url):
    async def go():
        client = aclient(redis_url)
        await publish(client, "ban", "198.51.100.8", duration=300)
        kernel = LogOnlyBackend()
        await kernel.ban([])  # nothing yet; a stale element the state does not know:
        from pyfilter.enforcer.backends.base import Ban, parse_target_text
        await kernel.ban([Ban(parse_target_text("198.51.100.99"), 1000)])
        async with Running(redis_url, kernel):
            await until(lambda: _has(kernel, "198.51.100.8"))
            await until(lambda: _lacks(kernel, "198.51.100.99"))
        state = await kernel.list()
        await client.aclose()
        return state
    state = asyncio.run(go())
    assert set(state) == {"198.51.100.8"}
    assert 290 < state["198.51.100.8"] <= 300  # the remaining time, not the full time again


def test_refuses_loopback_and_whitelisted_whatever_the_decision_says(redis_url):
    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel):
            for address in ("127.0.0.1", "198.51.100.241", "::1"):
                await publish(client, "ban", address)
            await publish(client, "ban", "198.51.100.9")  # a marker that comes after them
            await until(lambda: _has(kernel, "198.51.100.9"))
        state = await kernel.list()
        await client.aclose()
        return state
    assert set(asyncio.run(go())) == {"198.51.100.9"}


def test_expired_decision_is_not_applied(redis_url):
    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel):
            now = time.time()
            late = messages.Decision(action="ban", address="198.51.100.10", rule="sshd",
                                     origin="detector", host="a", created_at=now - 700,
                                     duration=600, expires_at=now - 100)
            await client.xadd(KEYS.decisions, {"m": messages.encode(late)})
            await publish(client, "ban", "198.51.100.11")
            await until(lambda: _has(kernel, "198.51.100.11"))
        state = await kernel.list()
        await client.aclose()
        return state
    assert "198.51.100.10" not in asyncio.run(go())


def test_a_decision_scope_reaches_the_kernel_and_a_restarted_enforcer_keeps_it(redis_url):
    """Ports and verdict travel with the decision; after a restart (nothing in memory) the
    reconcile finds the scope kept with the active bans, so it neither widens the ban to
    every port nor removes it."""
    rules = {"sshd": Rule(service="ssh", sources=["auth"], patterns=["x"], ports=[22, 2222], verdict="reject")}

    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel, rules):
            await publish(client, "ban", "198.51.100.12", ports=[2222, 22], verdict="reject")
            await publish(client, "ban", "198.51.100.13", rule="manual")  # no scope: all ports, drop
            await until(lambda: _has(kernel, "198.51.100.13"))
        first = set(await kernel.list())
        await kernel.sync({})  # the kernel lost everything meanwhile (a reboot)
        async with Running(redis_url, kernel, rules):
            await until(lambda: _has(kernel, "198.51.100.12|22,2222|reject"))
            await until(lambda: _has(kernel, "198.51.100.13"))
        second = set(await kernel.list())
        await client.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert first == second == {"198.51.100.12|22,2222|reject", "198.51.100.13"}


async def _has(kernel, address) -> bool:
    return address in await kernel.list()


async def _lacks(kernel, address) -> bool:
    return address not in await kernel.list()


def test_enforcer_publishes_its_own_addresses_for_detectors_and_api(redis_url):
    from pyfilter.common import hosts

    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel) as enforcer:
            await until(lambda: _published(client))
            own = enforcer.own
        published = await hosts.load(client, KEYS)
        await client.aclose()
        return own, published
    own, published = asyncio.run(go())
    assert own and published == own
    assert any(a.is_loopback for a in published)


async def _published(client) -> bool:
    return bool(await client.hgetall(KEYS.own_addresses("host-b")))


class CountingBackend(LogOnlyBackend):
    """The in-memory kernel, counting how often each target is banned."""

    def __init__(self):
        super().__init__()
        self.applied: dict[str, int] = {}

    async def _ban(self, bans):
        for b in bans:
            key = str(b.target)
            self.applied[key] = self.applied.get(key, 0) + 1
        await super()._ban(bans)


def test_decision_read_through_the_old_group_and_not_acknowledged_is_taken_over_once(redis_url):
    """Upgrade from consumer groups: the position starts at the group's oldest
    pending entry, which the kernel may already have: it is not applied twice."""
    from pyfilter.common.redisio import ensure_group
    from pyfilter.enforcer.backends.base import Ban, parse_target_text

    async def go():
        client = aclient(redis_url)
        group = KEYS.enforce_group("host-b")
        await ensure_group(client, KEYS.decisions, group, start="$")
        await publish(client, "ban", "198.51.100.19")
        await client.xreadgroup(group, "host-b", {KEYS.decisions: ">"})
        await client.xack(KEYS.decisions, group, (await client.xrange(KEYS.decisions))[-1][0])
        await publish(client, "ban", "198.51.100.20")
        # A previous run read it and put it in the kernel, then died before its ack.
        await client.xreadgroup(group, "host-b", {KEYS.decisions: ">"})
        kernel = CountingBackend()
        await LogOnlyBackend._ban(kernel, [Ban(parse_target_text(a), 600) for a in ("198.51.100.19", "198.51.100.20")])
        async with Running(redis_url, kernel):
            await publish(client, "ban", "198.51.100.21")
            await until(lambda: _has(kernel, "198.51.100.21"))
            await until(lambda: _read_to_the_end(client))
        await client.aclose()
        return kernel.applied
    applied = asyncio.run(go())
    assert applied == {"198.51.100.21": 1}


def test_the_first_position_comes_from_the_old_group_or_the_end_of_the_stream(redis_url):
    from pyfilter.common.redisio import ensure_group
    from pyfilter.enforcer.position import Position, before

    async def go():
        client = aclient(redis_url)
        first = await client.xadd(KEYS.decisions, {"m": b"1"})
        second = await client.xadd(KEYS.decisions, {"m": b"2"})
        await ensure_group(client, KEYS.decisions, KEYS.enforce_group("pending"), start="0")
        await client.xreadgroup(KEYS.enforce_group("pending"), "c", {KEYS.decisions: ">"})
        await client.xack(KEYS.decisions, KEYS.enforce_group("pending"), first)
        await ensure_group(client, KEYS.decisions, KEYS.enforce_group("acked"), start="0")
        await client.xreadgroup(KEYS.enforce_group("acked"), "c", {KEYS.decisions: ">"}, count=1)
        await client.xack(KEYS.decisions, KEYS.enforce_group("acked"), first)
        found = {host: await Position(client, KEYS, host).load() for host in ("pending", "acked", "new")}
        await client.set(KEYS.decisions_read("new"), first)  # saved positions win from then on
        again = await Position(client, KEYS, "new").load()
        await client.aclose()
        return found, again, first, second
    found, again, first, second = asyncio.run(go())
    assert found == {"pending": before(second), "acked": first, "new": second}
    assert again == first
    assert before(b"5-0") == b"4-18446744073709551615" and before(b"5-3") == b"5-2"


def test_decisions_after_the_saved_position_are_applied_after_a_restart_and_no_others(redis_url):
    async def go():
        client = aclient(redis_url)
        kernel = CountingBackend()
        async with Running(redis_url, kernel) as enforcer:
            # After its start: a decision written while it starts is read once and also
            # found by its first reconcile (two kernel writes of one ban, harmless there).
            await until(lambda: _started(enforcer))
            await publish(client, "ban", "198.51.100.30")
            await until(lambda: _read_to_the_end(client))
        await publish(client, "ban", "198.51.100.31")
        async with Running(redis_url, kernel):
            await until(lambda: _read_to_the_end(client))
        await client.aclose()
        return kernel.applied
    assert asyncio.run(go()) == {"198.51.100.30": 1, "198.51.100.31": 1}


async def _started(enforcer: Enforcer) -> bool:
    return enforcer.next_reconcile > 0  # its first reconcile, the last step of its start, is done


async def _read_to_the_end(client) -> bool:
    last = await client.xrevrange(KEYS.decisions, count=1)
    return bool(last) and await client.get(KEYS.decisions_read("host-b")) == last[0][0]


def test_operator_whitelist_in_redis_is_honoured(redis_url):
    from pyfilter.common import whitelist
    from pyfilter.common.addresses import parse_network

    async def go():
        client = aclient(redis_url)
        await whitelist.add(client, KEYS, parse_network("2001:db8:aa::/48"))
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel):
            await publish(client, "ban", "2001:db8:aa::5")
            await publish(client, "ban", "2001:db8:bb::5")
            await until(lambda: _has(kernel, "2001:db8:bb::5"))
        state = await kernel.list()
        await client.aclose()
        return state
    assert set(asyncio.run(go())) == {"2001:db8:bb::5"}


def test_an_undecodable_decision_is_skipped_and_the_next_applied(redis_url):
    """An enforcer may not write the decisions stream (nor its dead letters): it
    logs and counts what it cannot read, and goes on (common/streams.py)."""
    async def go():
        client = aclient(redis_url)
        kernel = LogOnlyBackend()
        async with Running(redis_url, kernel):
            # The position starts at the end of the stream: the entry must come after it.
            await until(lambda: client.exists(KEYS.decisions_read("host-b")))
            await client.xadd(KEYS.decisions, {"m": b"not msgpack"})
            await publish(client, "ban", "198.51.100.7")
            await until(lambda: _has(kernel, "198.51.100.7"))
            await until(lambda: _read_to_the_end(client))
        assert not await client.exists(KEYS.decisions + ":dead")
        await client.aclose()
    asyncio.run(go())
