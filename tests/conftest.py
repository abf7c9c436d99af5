"""Fixtures shared by every test: a real Redis server, never a mock."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """URL of a real 3-primary Redis Cluster (redis-server --cluster-enabled yes)."""
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; `make dev` does it)")
    base = tmp_path_factory.mktemp("cluster")
    procs = []
    ports = _free_ports(3)
    for port in ports:
        node = base / str(port)
        node.mkdir()
        procs.append(subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            _wait_ping(redis.Redis(port=port))
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while any(redis.Redis(port=p).cluster("info")["cluster_state"] != "ok" for p in ports):
            if time.monotonic() > deadline:
                pytest.fail("the Redis Cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.1)
        url = f"redis://127.0.0.1:{ports[0]}"
        CLUSTER_URLS.add(url)
        yield url, ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


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
