"""TLS between hosts: Redis started by the stacks' start script with the
certificates compose/tls.sh makes; an agent's client verifies the server,
name included, and an agent refuses plain TCP unless told it may."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from pyfilter.common import config
from pyfilter.common.config import RedisConfig
from pyfilter.common.redisio import tls_options

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    work = tmp_path_factory.mktemp("tls")
    subprocess.run([ROOT / "compose/tls.sh", work / "tls", "redis", "127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    env = {**os.environ, "PYFILTER_REDIS_PASSWORD": PASSWORD, "PYFILTER_REDIS_DATA": str(work),
           "PYFILTER_REDIS_CONF": str(ROOT / "compose/redis.conf"), "PYFILTER_REDIS_TLS": "1",
           "PYFILTER_REDIS_TLS_DIR": str(work / "tls"), "PYFILTER_REDIS_TLS_PORT": str(port)}
    proc = subprocess.Popen(["sh", str(ROOT / "compose/redis-start.sh"), "--port", "0", "--bind", "127.0.0.1",
                             "--unixsocket", str(work / "redis.sock"), "--appendonly", "no", "--save", ""],
                            env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(unix_socket_path=str(work / "redis.sock"), password=PASSWORD).ping()
            break
        except (redis.ConnectionError, redis.AuthenticationError):
            time.sleep(0.02)
    yield port, work / "tls" / "ca.crt"
    proc.terminate()
    proc.wait(10)


def client(url: str, ca: Path | None) -> redis.Redis:
    cfg = RedisConfig(url=url, password=PASSWORD, tls_ca_file=str(ca) if ca else None)
    return redis.Redis.from_url(url, password=PASSWORD, socket_connect_timeout=5, **tls_options(cfg))


def test_an_agent_reaches_the_server_over_tls_with_the_deployments_ca(tls_redis):
    port, ca = tls_redis
    assert client(f"rediss://127.0.0.1:{port}/0", ca).ping()


def test_a_server_the_ca_did_not_sign_is_refused(tls_redis, tmp_path):
    port, _ = tls_redis
    subprocess.run([ROOT / "compose/tls.sh", tmp_path / "other", "127.0.0.1"], check=True, capture_output=True)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client(f"rediss://127.0.0.1:{port}/0", tmp_path / "other" / "ca.crt").ping()


def test_a_name_the_certificate_does_not_carry_is_refused(tls_redis):
    port, ca = tls_redis
    with pytest.raises(redis.ConnectionError, match="certificate verify failed|match"):
        client(f"rediss://localhost:{port}/0", ca).ping()


def test_plain_tcp_on_the_tls_port_gets_nothing(tls_redis):
    port, _ = tls_redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2).ping()


def test_an_agent_refuses_a_plain_url_unless_told_it_may(tmp_path, monkeypatch):
    monkeypatch.setenv("PYFILTER_REDIS_URL", "redis://pyfilter-host-web1:secret@server.example:6379/0")
    monkeypatch.setenv("PYFILTER_REDIS_REQUIRE_TLS", "1")
    with pytest.raises(config.ConfigError, match="plain TCP") as refused:
        config.load(ROOT / "config/pyfilter.yaml", rules=False)
    assert "secret" not in str(refused.value)
    monkeypatch.setenv("PYFILTER_REDIS_REQUIRE_TLS", "0")
    assert config.load(ROOT / "config/pyfilter.yaml", rules=False).config.redis.url.startswith("redis://")


def test_a_certificate_lacking_a_name_asked_for_is_made_again_by_the_same_ca(tmp_path):
    """`make server HA=1` asks for the nodes' and sentinels' names too: a certificate made
    before without them is made again, signed by the same CA (agents' ca.crt stays good);
    the operator's own certificate (no ca.key here) is kept, with a warning."""
    def tls(*names: str) -> subprocess.CompletedProcess:
        return subprocess.run([ROOT / "compose/tls.sh", tmp_path / "tls", *names], check=True,
                              capture_output=True, text=True)

    def names() -> str:
        return subprocess.run(["openssl", "x509", "-in", tmp_path / "tls/server.crt", "-noout", "-ext",
                               "subjectAltName"], check=True, capture_output=True, text=True).stdout
    tls("redis", "127.0.0.1")
    ca = (tmp_path / "tls/ca.crt").read_bytes()
    assert "using the server certificate" in tls("redis", "127.0.0.1").stdout
    tls("redis", "redis-2", "sentinel-1", "127.0.0.1")
    assert "DNS:redis-2" in names() and "DNS:sentinel-1" in names()
    assert (tmp_path / "tls/ca.crt").read_bytes() == ca
    subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "tls/ca.crt", tmp_path / "tls/server.crt"], check=True,
                   capture_output=True)
    (tmp_path / "tls/ca.key").unlink()
    kept = tls("redis", "redis-3")
    assert "does not name all of" in kept.stderr and "DNS:redis-3" not in names()


def test_a_server_only_certificate_is_made_again_for_client_authentication_too(tmp_path):
    """The Cluster bus (server-cluster.yml) authenticates both ends with the one
    certificate: one made before for server authentication only is made again by the
    same CA, with the same names."""
    tls = tmp_path / "tls"
    subprocess.run([ROOT / "compose/tls.sh", tls, "redis"], check=True, capture_output=True)
    ca = (tls / "ca.crt").read_bytes()
    # As tls.sh signed them before: server authentication only.
    (tmp_path / "old.ext").write_text("subjectAltName=DNS:redis\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-new", "-key", tls / "server.key", "-subj", "/CN=redis", "-out",
                    tmp_path / "old.csr"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", tmp_path / "old.csr", "-CA", tls / "ca.crt", "-CAkey",
                    tls / "ca.key", "-CAcreateserial", "-days", "1", "-extfile", tmp_path / "old.ext",
                    "-out", tls / "server.crt"], check=True, capture_output=True)

    def usage() -> str:
        return subprocess.run(["openssl", "x509", "-in", tls / "server.crt", "-noout", "-ext", "extendedKeyUsage"],
                              check=True, capture_output=True, text=True).stdout
    assert "Client Authentication" not in usage()
    again = subprocess.run([ROOT / "compose/tls.sh", tls, "redis"], check=True, capture_output=True, text=True)
    assert "making a new one with the same CA" in again.stdout
    assert "Client Authentication" in usage() and (tls / "ca.crt").read_bytes() == ca
