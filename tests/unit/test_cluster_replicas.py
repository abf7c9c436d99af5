"""Writes that must not be lost, confirmed on Redis Cluster: each by its own shard.

A real Redis Cluster of three primaries, each with one replica (conftest's
`replicated_cluster`), and `redis.wait_replicas: 1`. With one shard's replica
frozen (SIGSTOP), that shard's primary still takes the writes, but its WAIT
finds no replica holding them: the collector's batch whose lines go there does
not count as done (its checkpoint stays where it was) and is written again;
the detector's window update that touches it raises, so the detector does not
acknowledge the batch; a ban, an unban or a whitelist change kept there says
NotReplicated. The other shards' writes go through. Once the replica is back,
everything lands, each failure counted once.

The failover under attack, with real processes, is in test_cluster_failover.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec
import pytest
from redis.crc import key_slot

from pyfilter.collector.checkpoints import Committer
from pyfilter.collector.sources.base import Batch, Stats
from pyfilter.common import bans, messages, whitelist
from pyfilter.common.addresses import parse_network
from pyfilter.common.config import Config, Rule, Seconds, Settings
from pyfilter.common.keys import BAN_SIDE_SLOT, DETECT_GROUP, Keys
from pyfilter.common.ledger import Ledger, NewBan
from pyfilter.common.redisio import NotReplicated, connect
from pyfilter.detector.main import Detector
from tests.conftest import redis_config

KEYS = Keys()
MAXRETRY = 3
WHITELISTED = parse_network("198.51.100.128/25")


@pytest.fixture
def cluster(replicated_cluster):
    replicated_cluster.empty()
    return replicated_cluster


def shard_of(cluster, key: str) -> int:
    """Which shard (index into cluster.primaries(), by first slot) holds `key`."""
    slot = key_slot(key.encode())
    starts = sorted(int(n["slots"][0][0]) for n in cluster.node(cluster.ports[0]).cluster("nodes").values()
                    if "master" in n["flags"] and n["slots"])
    return sum(1 for start in starts if start <= slot) - 1


def host_on(cluster, shard: int, avoid: str = "") -> str:
    """A host name whose lines stream and checkpoint are both kept by `shard`."""
    for i in range(10_000):
        name = f"web{i}"
        if name != avoid and shard_of(cluster, KEYS.lines(name)) == shard == shard_of(
                cluster, KEYS.checkpoint(name, "auth")):
            return name
    raise LookupError(shard)


def address_on(cluster, shard: int, other: bool = False, after: int = 0) -> str:
    """An attacker (198.51.100.x, x > `after`) whose sshd window is kept by `shard` (by another one: `other`)."""
    for i in range(after + 1, 250):
        address = f"198.51.100.{i}"
        if (shard_of(cluster, KEYS.window("sshd", address)) == shard) != other:
            return address
    raise LookupError(shard)


def detector(cluster) -> Detector:
    sshd = msgspec.convert({"service": "sshd", "sources": ["auth"], "maxretry": MAXRETRY, "findtime": 3600,
                            "bantime": 3600, "patterns": [r"Failed password for \S+ from <HOST> port \d+"]},
                           Rule, dec_hook=lambda t, v: Seconds(v))
    config = Config(host="detector")
    config.redis = redis_config(cluster.url, wait_replicas=1, wait_timeout_ms=500)
    return Detector(Settings(config=config, rules={"sshd": sshd}, path="t"))


def failures(host: str, *addresses: str) -> Batch:
    lines = [messages.Line(f"auth:1:{host}:{i}", f"sshd[1]: Failed password for root from {address} port 22")
             for i, address in enumerate(a for a in addresses for _ in range(MAXRETRY))]
    return Batch(lines, checkpoint={"offset": str(len(lines)).encode()})


def manual(address: str) -> NewBan:
    now = time.time()
    return NewBan(messages.BanRecord(address=address, rule="manual", host="api", origin="manual",
                                     banned_at=now, duration=3600, expires_at=now + 3600))


async def raises_unconfirmed(call) -> bool:
    """Whether `call()` said its write was not confirmed (else it was done)."""
    try:
        await call()
    except NotReplicated:
        return True
    return False


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_writes_count_only_once_the_replica_of_their_own_shard_holds_them(cluster, frozen):
    stuck_host, free_host = host_on(cluster, frozen), host_on(cluster, (frozen + 1) % 3)
    mine, theirs = address_on(cluster, frozen), address_on(cluster, frozen, other=True)
    later = address_on(cluster, frozen, after=max(int(a.rpartition(".")[2]) for a in (mine, theirs)))
    replica = cluster.replica_of(cluster.primaries()[frozen])
    bans_here = shard_of(cluster, KEYS.active_bans) == frozen
    assert key_slot(KEYS.active_bans.encode()) == BAN_SIDE_SLOT
    whitelist_here = frozen in (shard_of(cluster, KEYS.whitelist), shard_of(cluster, KEYS.whitelist_notes))

    async def go():
        client = connect(redis_config(cluster.url, wait_replicas=1, wait_timeout_ms=500))
        ledger = Ledger(client, KEYS)
        await ledger.load()
        await ledger.ban([manual("198.51.100.250")])
        d = detector(cluster)
        stuck, free = Committer(client, KEYS, stuck_host, 1_000_000), Committer(client, KEYS, free_host, 1_000_000)
        await free.commit("auth", failures(free_host, mine, theirs), Stats())
        await d.resume()
        os.kill(cluster.procs[replica].pid, signal.SIGSTOP)
        try:
            stats = Stats()
            commit = asyncio.create_task(stuck.commit("auth", failures(stuck_host, later), stats))
            while stats.errors < 2:  # written on the primary, not confirmed, written again
                await asyncio.sleep(0.05)
            assert not commit.done() and stats.lines == 0, "the batch counted as done without a replica"
            assert await client.hget(KEYS.checkpoint(stuck_host, "auth"), "offset") is None
            # The other shard's host commits as usual.
            await free.commit("auth", Batch([], checkpoint={"seen": b"1"}), Stats())

            # The detector's update touches the frozen shard (its window of `mine`): not acknowledged.
            # (Its read may also take the stuck host's entries, written but not confirmed.)
            entries = []
            while not any(stream == KEYS.lines(free_host) for stream, *_ in entries):
                entries += await d.lines.new(block_ms=None)
            assert sum(stream == KEYS.lines(free_host) for stream, *_ in entries) == 1
            with pytest.raises(NotReplicated):
                await d.handle(entries)
            assert (await client.xpending(KEYS.lines(free_host), DETECT_GROUP))["pending"] == 1

            assert await raises_unconfirmed(lambda: ledger.unban(["198.51.100.250"], "api", "test")) == bans_here
            assert await raises_unconfirmed(lambda: whitelist.add(client, KEYS, WHITELISTED)) == whitelist_here
        finally:
            os.kill(cluster.procs[replica].pid, signal.SIGCONT)
        await commit
        assert stats.lines == MAXRETRY
        await ledger.unban(["198.51.100.250"], "api", "test")  # what a user whose unban failed does
        await whitelist.add(client, KEYS, WHITELISTED)
        await d.resume()  # what the detector does after a Redis error: its pending batch first
        while entries := await d.lines.new(block_ms=None):
            await d.handle(entries)
        decisions = [messages.decode_decision(f[b"m"]) for _, f in await client.xrange(KEYS.decisions)]
        records = {r.address: r.failures for r in await bans.records(client, KEYS, [mine, theirs, later])}
        active = set(await bans.active(client, KEYS))
        listed = await whitelist.entries(client, KEYS)
        left = [(await client.xpending(KEYS.lines(h), DETECT_GROUP))["pending"] for h in (stuck_host, free_host)]
        await client.aclose()
        await d.client.aclose()
        return decisions, records, active, listed, left

    decisions, records, active, listed, left = asyncio.run(go())
    banned = [mine, theirs, later]
    assert sorted(d.address for d in decisions if d.action == "ban" and d.rule == "sshd") == sorted(banned)
    # stuck_host's batch was written at least twice (same line ids): its failures counted once.
    assert records == dict.fromkeys(banned, MAXRETRY)
    assert "198.51.100.250" not in active and set(banned) <= active
    assert WHITELISTED in listed and left == [0, 0]


def test_confirmed_writes_follow_their_slots_to_the_new_primaries(cluster):
    """Every replica takes over from its primary (CLUSTER FAILOVER, graceful): the
    clients' layout is then stale, and a write sent to a former primary is answered
    MOVED. The collector's commit, the ledger's calls and a whitelist change each
    find the slot's new primary and are confirmed there, without an error."""
    hosts = [host_on(cluster, shard) for shard in range(3)]

    async def go():
        # One client each, so that each meets the stale layout itself.
        clients = [connect(redis_config(cluster.url, wait_replicas=1, wait_timeout_ms=500)) for _ in range(3)]
        ledger = Ledger(clients[0], KEYS)
        await ledger.load()
        committers = [Committer(clients[1], KEYS, host, 1_000_000) for host in hosts]
        for committer in committers:
            await committer.commit("auth", failures(committer.host, "198.51.100.1"), Stats())
        await ledger.ban([manual("198.51.100.250")])
        await whitelist.add(clients[2], KEYS, WHITELISTED)
        before = cluster.primaries()
        for primary in before:
            heir = cluster.replica_of(primary)
            cluster.node(heir).cluster("failover")
            cluster.until(lambda heir=heir: heir in cluster.primaries() and cluster.following(heir) == 1,
                          f"127.0.0.1:{heir} promoted, its former primary following it")
        await ledger.unban(["198.51.100.250"], "api", "test")
        stats = Stats()
        for committer in committers:
            await committer.commit("auth", Batch([], checkpoint={"offset": b"99"}), stats)
        removed = await whitelist.remove(clients[2], KEYS, WHITELISTED)
        offsets = [await clients[1].hget(KEYS.checkpoint(host, "auth"), "offset") for host in hosts]
        active = set(await bans.active(clients[0], KEYS))
        for client in clients:
            await client.aclose()
        return before, cluster.primaries(), stats.errors, offsets, active, removed

    before, after, errors, offsets, active, removed = asyncio.run(go())
    assert not set(before) & set(after)
    assert errors == 0 and offsets == [b"99"] * 3
    assert "198.51.100.250" not in active and removed
