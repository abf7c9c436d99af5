"""Redis with replicas and Sentinel, for real: a primary, two replicas and three
sentinels (`redis-server --sentinel`) started here on loopback ports.

What it proves: the services' one way to connect (redisio.connect) finds the
primary through the sentinels and follows it through a failover; writes that
must not be lost (a collector batch with its checkpoint, the ledger's calls,
whitelist changes) count as done only when a replica confirms them (WAIT), and
are kept and written again until one does; the ledger's functions are there on
the promoted replica; with no replicas to wait for, no WAIT is sent at all.

The tests share one set of servers and run in order: the last one fails the
primary over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from pyfilter.collector.checkpoints import Committer
from pyfilter.collector.sources.base import Batch, Stats
from pyfilter.common import hosts, messages, whitelist
from pyfilter.common.addresses import parse_network
from pyfilter.common.config import ConfigError, RedisConfig, Seconds, load, parse_sentinel_url
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import LIBRARY, Ledger, NewBan
from pyfilter.common.redisio import TRANSIENT, NotReplicated, connect, transaction
from pyfilter.detector.windows import Observed, Windows
from tests import processes
from tests.conftest import REDIS_SERVER
from tests.integration.stack import free_port
from tests.unit.test_windows import make_rule

PASSWORD = "sentinel-test-secret"
SERVICE = "pyfilter"
KEYS = Keys("t:")


class Processes:
    """Redis nodes and sentinels this test started (`procs`, by port): waiting on them, stopping them."""

    procs: dict[int, subprocess.Popen]

    until = staticmethod(processes.until)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


class Servers(Processes):
    """A primary, two replicas and three sentinels on 127.0.0.1, all with a password."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[int, subprocess.Popen] = {}
        self.data = [free_port() for _ in range(3)]
        self.sentinels = [free_port() for _ in range(3)]
        for i, port in enumerate(self.data):
            self.start_data(port, replica_of=None if i == 0 else self.data[0])
        for port in self.sentinels:
            conf = root / f"sentinel-{port}.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {root}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.data[0]} 2",
                f"sentinel auth-pass {SERVICE} {PASSWORD}",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"requirepass {PASSWORD}", ""]))
            self.procs[port] = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"],
                                                stdout=subprocess.DEVNULL)
        self.until(lambda: all(self.node(p).ping() for p in self.data + self.sentinels), "every server to answer")
        # Connected is not enough: a replica confirms writes (WAIT) once its first sync is done.
        self.until(lambda: self.node(self.data[0]).info("replication")["connected_slaves"] == 2
                   and self.node(self.data[0]).wait(2, 1000) == 2, "both replicas to follow the primary, in sync")
        self.until(lambda: all(self.node(s).sentinel_master(SERVICE)["num-other-sentinels"] == 2
                               and self.node(s).sentinel_master(SERVICE)["num-slaves"] == 2
                               for s in self.sentinels), "the sentinels to know each other and the replicas")

    def start_data(self, port: int, replica_of: int | None) -> None:
        extra = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        folder = self.root / f"redis-{port}"
        folder.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD,
             *extra], stdout=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}/0"

    def config(self, replicas: int = 1, timeout_ms: int = 300) -> RedisConfig:
        return RedisConfig(url=self.url, prefix=KEYS.prefix, wait_replicas=replicas, wait_timeout_ms=timeout_ms)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=2)

    def primary(self) -> int:
        return int(self.node(self.sentinels[0]).sentinel_get_master_addr_by_name(SERVICE)[1])

    def replicas(self) -> list[int]:
        return [p for p in self.data if p != self.primary() and self.procs[p].poll() is None]

    def signal(self, ports: list[int], sig: int) -> None:
        for port in ports:
            os.kill(self.procs[port].pid, sig)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    servers = Servers(tmp_path_factory.mktemp("sentinel"))
    try:
        yield servers
    finally:
        servers.stop()


def test_a_bad_sentinel_url_is_refused_saying_what_is_wrong(tmp_path, monkeypatch):
    target = parse_sentinel_url("redis+sentinel://:pw@s1,s2:26380,[2001:db8::1]:5/pyfilter/2")
    assert target.sentinels == [("s1", 26379), ("s2", 26380), ("2001:db8::1", 5)]
    assert (target.service, target.db, target.username, target.password) == ("pyfilter", 2, None, "pw")
    file = tmp_path / "pyfilter.yaml"
    for url, says in [("redis+sentinel://s1:26379", "no service name"),
                      ("redis+sentinel://s1:99999/pyfilter", "sentinel 's1:99999' is not host:port"),
                      ("redis+sentinel://s1,,s2/pyfilter", "sentinel '' is not host:port"),
                      ("redis+sentinel://s1/pyfilter/zero", "database 'zero' is not a number")]:
        file.write_text(f"redis: {{url: '{url}'}}\n")
        with pytest.raises(ConfigError, match=f"{file}: redis: url: {says}"):
            load(file, rules=False)
    file.write_text("redis: {wait_replicas: -1}\n")
    with pytest.raises(ConfigError, match="redis.wait_replicas: expected int >= 0"):
        load(file, rules=False)
    file.write_text("{}\n")
    monkeypatch.setenv("PYFILTER_REDIS_URL", "redis+sentinel://s1:x/pyfilter")
    with pytest.raises(ConfigError, match="PYFILTER_REDIS_URL: sentinel 's1:x' is not host:port"):
        load(file, rules=False)
    monkeypatch.setenv("PYFILTER_REDIS_URL", "redis+sentinel://s1/pyfilter")
    monkeypatch.setenv("PYFILTER_REDIS_WAIT_REPLICAS", "one")
    with pytest.raises(ConfigError, match="PYFILTER_REDIS_WAIT_REPLICAS: expected a number"):
        load(file, rules=False)
    monkeypatch.setenv("PYFILTER_REDIS_WAIT_REPLICAS", "2")
    assert load(file, rules=False).config.redis.wait_replicas == 2


def test_one_redis_sends_no_wait(redis_url):
    async def go():
        client = connect(RedisConfig(url=redis_url, prefix=KEYS.prefix))
        async with transaction(client) as tx:
            tx.set("t:a", 1)
            await tx.execute()
        await Ledger(client, KEYS).ban([NewBan(ban("198.51.100.20"))])
        stats = await client.info("commandstats")
        await client.aclose()
        return stats
    stats = asyncio.run(go())
    assert "cmdstat_fcall" in stats and "cmdstat_exec" in stats
    assert "cmdstat_wait" not in stats


def ban(address: str) -> messages.BanRecord:
    now = time.time()
    return messages.BanRecord(address=address, rule="manual", host="host-a", origin="manual",
                              banned_at=now, duration=600, expires_at=now + 600)


def test_the_client_finds_the_primary_through_the_sentinels(servers):
    async def go():
        client = connect(servers.config())
        await client.set("t:where", "primary")
        role = (await client.info("replication"))["role"]
        port = (await client.config_get("port"))["port"]
        await client.aclose()
        return role, int(port)
    assert asyncio.run(go()) == ("master", servers.data[0])


def test_writes_no_replica_confirms_do_not_count_and_are_kept_until_one_does(servers):
    """With both replicas frozen (SIGSTOP) the primary still takes the writes, but
    WAIT finds no replica holding them: each write says NotReplicated, and the
    collector keeps its batch and writes it again until a replica confirms."""
    async def go():
        client = connect(servers.config())
        ledger = Ledger(client, KEYS)
        await ledger.load()
        committer = Committer(client, KEYS, "host-a", maxlen=1_000_000)
        servers.signal(servers.replicas(), signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="confirmed by 0 of 1 replica"):
                await ledger.ban([NewBan(ban("198.51.100.21"))])
            with pytest.raises(NotReplicated):
                await ledger.unban(["198.51.100.21"], "host-a", "test")
            with pytest.raises(NotReplicated):
                await whitelist.add(client, KEYS, parse_network("198.51.100.128/25"))
            with pytest.raises(NotReplicated):  # detectors read only the lines of listed hosts
                await hosts.register(client, KEYS, "host-b")
            stats = Stats()
            batch = Batch([messages.Line("auth:1:2:0", "a line")], checkpoint={"offset": b"7"})
            commit = asyncio.create_task(committer.commit("auth", batch, stats))
            while stats.errors < 2:  # tried, written on the primary, not confirmed, tried again
                await asyncio.sleep(0.05)
            assert not commit.done() and stats.lines == 0, "the batch counted as done without a replica"
        finally:
            servers.signal(servers.replicas(), signal.SIGCONT)
        await commit
        assert stats.lines == 1
        written = await client.xrange(KEYS.lines("host-a"))
        # Written on every try: the copies share their line ids, and a window counts an id once.
        assert len(written) >= 2
        assert {messages.decode_batch(f[b"m"]).lines[0].id for _, f in written} == {"auth:1:2:0"}
        assert await client.hget(KEYS.checkpoint("host-a", "auth"), "offset") == b"7"
        await client.aclose()
    asyncio.run(go())


def test_a_failover_loses_no_confirmed_write_and_every_client_follows_it(servers):
    """Kill the primary (SIGKILL) while a detector's windows and the api's bans are
    being written: every call is retried through TRANSIENT until the sentinels
    promote a replica; then every confirmed failure is in its window exactly once,
    every confirmed ban and unban holds, and the ledger's functions were there on
    the promoted replica without loading them again."""
    rules = {"sshd": make_rule(maxretry=1000, findtime=Seconds(3600))}

    async def retried(call):
        while True:
            try:
                return await call()
            except TRANSIENT:
                await asyncio.sleep(0.05)

    async def go():
        client = connect(servers.config())
        ledger = Ledger(client, KEYS)
        await ledger.load()
        windows = Windows(client, KEYS.prefix, rules)
        old = servers.primary()
        replica = servers.replicas()[0]
        assert await aioredis.Redis(port=replica, password=PASSWORD).function_list(library=LIBRARY), \
            "the library did not reach the replica"
        confirmed, killed_at, back_at = [], None, None
        await retried(lambda: ledger.ban([NewBan(ban("198.51.100.30"))]))
        for i in range(400):
            if i == 100:
                servers.signal([old], signal.SIGKILL)
                killed_at = time.monotonic()
            failure = Observed("sshd", "198.51.100.31", "host-a", time.time(), f"auth:1:2:{i}", "failed")
            await retried(lambda failure=failure: windows.record([failure], time.time()))
            confirmed.append(failure.line_id)
            if killed_at and back_at is None:
                back_at = time.monotonic()
            if i == 150:  # an unban and a ban just after the failover
                await retried(lambda: ledger.unban(["198.51.100.30"], "host-a", "test"))
                await retried(lambda: ledger.ban([NewBan(ban("198.51.100.32"))]))
        new = servers.primary()
        window = await client.zrange(KEYS.window("sshd", "198.51.100.31"), 0, -1)
        active = {a.decode() for a in await client.zrange(KEYS.active_bans, 0, -1)}
        await client.aclose()
        print(f"\nwrites resumed {back_at - killed_at:.2f} s after the primary was killed "
              f"(sentinel down-after 1 s)")
        return old, new, sorted(w.decode() for w in window), active

    old, new, window, active = asyncio.run(go())
    assert new != old and new in servers.data
    assert window == sorted(f"auth:1:2:{i}" for i in range(400))
    assert "198.51.100.30" not in active and "198.51.100.32" in active
