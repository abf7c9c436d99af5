"""Fixtures shared by every test: a real Redis server, never a mock."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests import processes

REDIS_SERVER = shutil.which("redis-server")


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start redis-server on a unix socket in `directory`; return (process, url)."""
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; `make dev` does it)")
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(directory), "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture
def redis_url(tmp_path: Path):
    """URL of a fresh, empty redis-server of our own for this test."""
    proc, url = start_redis(tmp_path)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A folder of its own for a test's log files."""
    folder = tmp_path / "log"
    folder.mkdir()
    return folder


@pytest.fixture
def single_redis_url(tmp_path: Path):
    """The same, under a name modules that run their `redis_url` on Cluster too
    (any_redis_url) use for what only a single Redis does."""
    proc, url = start_redis(tmp_path)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def catalog():
    """The shipped rule catalog (config/rules), loaded as the services load it."""
    from pyfilter.common.config import load_catalog

    return load_catalog(Path(__file__).resolve().parents[1] / "config" / "rules")


# Redis Cluster: three primaries on loopback, one cluster for the whole session;
# each test that uses it starts from empty primaries (the library stays loaded).
CLUSTER_URLS: set[str] = set()


def _free_ports(n: int) -> list[int]:
    """Loopback ports free now, each with its cluster bus port (port + 10000) free too."""
    import random
    import socket
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.append(port)
    return ports


class Cluster:
    """Redis Cluster nodes on loopback (redis-server --cluster-enabled yes), started
    here: `primaries` primaries, each with `replicas` replicas; `node_timeout_ms`
    (cluster-node-timeout) is how soon a primary that stopped answering is failed
    over. A node stopped and started again keeps its nodes.conf, so it rejoins."""

    def __init__(self, base: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int | None = None):
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server; `make dev` does it)")
        self.base = base
        self.extra = ["--cluster-node-timeout", str(node_timeout_ms)] if node_timeout_ms else []
        self.replicas = replicas
        self.ports = _free_ports(primaries * (1 + replicas))
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self.start(port)
            for port in self.ports:
                _wait_ping(self.node(port))
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL)
            self.until(lambda: all(self.node(p).cluster("info")["cluster_state"] == "ok" for p in self.ports)
                       and all(self.following(p) == replicas for p in self.primaries()),
                       "cluster_state:ok with every replica in sync")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        CLUSTER_URLS.add(self.url)

    def start(self, port: int) -> None:
        node = self.base / str(port)
        node.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node), "--save", "",
             "--appendonly", "no", "--repl-diskless-sync-delay", "0", *self.extra], stdout=subprocess.DEVNULL)

    def following(self, primary: int) -> int:
        """How many replicas of `primary` are in sync with it (past their first full copy)."""
        info = self.node(primary).info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and k[5:].isdigit() and v["state"] == "online")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def alive(self) -> list[int]:
        return [p for p in self.ports if self.procs[p].poll() is None]

    def primaries(self) -> list[int]:
        """The primaries serving slots now, by their first slot, as a node still up sees them."""
        shards = sorted((int(n["slots"][0][0]), int(address.split(":")[1].split("@")[0]))
                        for address, n in self.node(self.alive()[0]).cluster("nodes").items()
                        if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"])
        return [port for _, port in shards]

    def replica_of(self, primary: int) -> int:
        """The port of the (first) replica following `primary`."""
        for port in self.alive():
            info = self.node(port).info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary:
                return port
        raise LookupError(f"no replica follows 127.0.0.1:{primary}")

    def empty(self) -> None:
        """Every primary emptied, and each of its replicas holding that (WAIT), so a
        test starts with every shard confirming writes, not with a replica still busy."""
        for port in self.primaries():
            node = self.node(port)
            node.flushall()
            if self.replicas and (confirmed := node.wait(self.replicas, 10_000)) < self.replicas:
                pytest.fail(f"127.0.0.1:{port}: {confirmed} of {self.replicas} replica(s) confirmed FLUSHALL in 10 s")

    until = staticmethod(processes.until)

    def stop(self) -> None:
        processes.stop(self.procs.values())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """URL of a real 3-primary Redis Cluster (redis-server --cluster-enabled yes), and its ports."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.url, cluster.ports
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory):
    """A real Redis Cluster of 3 primaries, each with 1 replica, that fails a primary
    over within about two seconds (cluster-node-timeout 1 s). One per module: its
    tests may stop and kill nodes."""
    cluster = Cluster(tmp_path_factory.mktemp("replicated"), replicas=1, node_timeout_ms=1000)
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait_ping(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request, tmp_path):
    """A fresh single redis-server, then the session's Redis Cluster emptied: a module
    that names its `redis_url` this runs each test on both."""
    if request.param == "single":
        proc, url = start_redis(tmp_path)
        yield url
        proc.terminate()
        proc.wait(10)
        return
    yield emptied_cluster(request)


def emptied_cluster(request) -> str:
    """The session's Redis Cluster (its URL), every primary emptied."""
    url, ports = request.getfixturevalue("redis_cluster")
    for port in ports:
        redis.Redis(port=port).flushall()
    return url


def aclient(url: str):
    """An asyncio client for a test's Redis: Cluster's own client for the cluster."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    return RedisCluster.from_url(url) if url in CLUSTER_URLS else aioredis.from_url(url)


def redis_config(url: str, **kw):
    """The services' Redis settings for a test's Redis (cluster mode for the cluster)."""
    from pyfilter.common.config import RedisConfig
    return RedisConfig(url=url, cluster=url in CLUSTER_URLS, **kw)
