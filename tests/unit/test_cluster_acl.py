"""Least privilege on Redis Cluster, for real: three primaries started by the
deployment's own scripts (compose/redis-start.sh in cluster mode, TLS only,
the cluster bus too; compose/cluster.sh joins them), on loopback ports, as
compose/server-cluster.yml runs them.

What it proves: each node checks the commands sent to it against its own
users, so `pyfilter server` writes every user to every node: a host's user
does its part (through the cluster client, as its collector does) and is
refused the rest on every node; `add-host` and `remove-host` change every
node, a node that missed a change is named and `init` brings it in step; a
node that was stopped during a change takes the users at its start, before it
answers (from the URL's node, the owner, or with the owner down from the
others); a node down that holds the hosts list, or a cluster that has marked a
node failed, stops add-host before anything changes and remove-host after the
revocation, with exit 2 naming the node; a restart of every node keeps the cluster, its data and its users
(cluster.sh joins them again and changes nothing).

The tests share one cluster and run in order: the last one restarts it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from pyfilter.cli import server_users as server
from pyfilter.collector.checkpoints import Committer
from pyfilter.collector.sources.base import Batch, Stats
from pyfilter.common import acl, messages
from pyfilter.common.config import RedisConfig
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import connect
from tests.conftest import REDIS_SERVER
from tests.integration.stack import free_port
from tests.unit.test_cli import run as cli
from tests.unit.test_sentinel import Processes
from tests.unit.test_sentinel_acl import refused

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret"
ROLES = {"detector": "detector-secret", "api": "api-secret", "notifier": "notifier-secret"}
KEYS = Keys("pyfilter:")
# The tests stop nodes on purpose: the others must not mark one failed meanwhile (compose
# keeps Redis's 15 s, which a loaded machine can pass between two commands), or every
# command is CLUSTERDOWN. A cluster that did mark one failed has its own test.
NODE_TIMEOUT_MS = 600_000


class Cluster(Processes):
    """Three cluster nodes as compose/server-cluster.yml runs them, TLS only, known as "localhost"."""

    def __init__(self, root: Path):
        self.root = root
        subprocess.run([ROOT / "compose/tls.sh", root / "tls", "localhost", "127.0.0.1"], check=True,
                       capture_output=True)
        self.ca = root / "tls" / "ca.crt"
        self.procs: dict[int, subprocess.Popen] = {}
        self.ports = [bus_free_port() for _ in range(3)]
        self.env = {**os.environ, "PYFILTER_REDIS_PASSWORD": ADMIN, "PYFILTER_REDIS_TLS": "1",
                    "PYFILTER_REDIS_TLS_ONLY": "1", "PYFILTER_REDIS_TLS_DIR": str(root / "tls"),
                    "REDISCLI_AUTH": ADMIN}
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """Every node, then compose/cluster.sh (a new cluster, or the same one joined again)."""
        for port in self.ports:
            self.start_node(port)
        self.joined = subprocess.run(["sh", str(ROOT / "compose/cluster.sh"), *(f"127.0.0.1:{p}" for p in self.ports)],
                                     env=self.env, capture_output=True, text=True, timeout=120)
        assert self.joined.returncode == 0, self.joined.stdout + self.joined.stderr

    def start_node(self, port: int) -> None:
        """One node; all but the first (the URL's, the users' owner) take the users from
        the others at their start, the owner first, as server-cluster.yml's redis-2 and redis-3."""
        folder = self.root / f"redis-{port}"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(ROOT / "compose/redis.conf", folder / "redis.conf")
        env = {**self.env, "PYFILTER_REDIS_DATA": str(folder), "PYFILTER_REDIS_CONF": str(folder / "redis.conf"),
               "PYFILTER_REDIS_TLS_PORT": str(port)}
        if port != self.ports[0]:
            env["PYFILTER_REDIS_USERS_FROM"] = " ".join(f"localhost:{p}" for p in self.ports if p != port)
        self.procs[port] = subprocess.Popen(
            ["sh", str(ROOT / "compose/redis-start.sh"), "--port", str(port), "--bind", "127.0.0.1",
             "--unixsocket", "", "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
             "--cluster-preferred-endpoint-type", "hostname", "--cluster-announce-hostname", "localhost",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS)],
            env=env, stdout=subprocess.DEVNULL)

    def stop_node(self, port: int) -> None:
        """As `docker compose stop` one node: Redis saves and exits."""
        self.procs[port].send_signal(signal.SIGTERM)
        self.procs[port].wait(30)

    def until_ok(self, port: int) -> None:
        """Until the node serves keys (cluster_state:ok), after a node's start."""
        self.until(lambda: self.client(port).execute_command("CLUSTER", "INFO").startswith(b"cluster_state:ok"),
                   f"node {port} to serve the cluster again")

    def client(self, port: int, username: str | None = None, password: str = ADMIN) -> redis.Redis:
        """One node's own client (no redirection); no retries: a refusal says so at once."""
        return redis.Redis(host="localhost", port=port, username=username, password=password, socket_timeout=5,
                           ssl=True, ssl_ca_certs=str(self.ca), ssl_cert_reqs="required", retry=Retry(NoBackoff(), 0))

    def config(self, user: str = "", password: str = ADMIN) -> RedisConfig:
        return RedisConfig(url=f"rediss://localhost:{self.ports[0]}/0", username=user, password=password,
                           prefix=KEYS.prefix, tls_ca_file=str(self.ca), cluster=True)

    def owner(self, key: str) -> int:
        """The port of the node that holds `key`'s slot."""
        if not hasattr(self, "slots"):
            self.slots = self.client(self.ports[0]).execute_command("CLUSTER", "SLOTS")
        slot = key_slot(key.encode())
        return next(int(primary[1]) for start, end, primary, *_ in self.slots if start <= slot <= end)


def bus_free_port() -> int:
    """A free port whose cluster bus port (port + 10000, as in compose) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    cluster = Cluster(tmp_path_factory.mktemp("cluster-acl"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def users(cluster):
    """The service users and hosts web1, web2, made as `pyfilter server` makes them: {user: password}."""
    async def go():
        admin = connect(cluster.config())
        nodes = await server.nodes_of(cluster.config(), admin)
        try:
            await server.init(admin, KEYS, ROLES, nodes)
            return {acl.host_user(h): await server.add_host(admin, KEYS, h, nodes) for h in ("web1", "web2")}
        finally:
            await nodes.aclose()
            await admin.aclose()
    return {**asyncio.run(go()), **{acl.role_user(r): p for r, p in ROLES.items()}}


def commit_as(cluster: Cluster, host: str, password: str, line: str, offset: bytes) -> None:
    """One batch committed by the host's real Committer, through the cluster client, with its own user."""
    async def go() -> None:
        client = connect(cluster.config(acl.host_user(host), password))
        try:
            batch = Batch([messages.Line(line, "a line")], checkpoint={"offset": offset})
            await asyncio.wait_for(Committer(client, KEYS, host, maxlen=1000).commit("auth", batch, Stats()), 30)
        finally:
            await client.aclose()
    asyncio.run(go())


FORBIDDEN = {
    "append to another host's lines": lambda c: c.xadd(KEYS.lines("web2"), {"m": "x"}),
    "read a window": lambda c: c.zrange(KEYS.window("sshd", "198.51.100.1"), 0, -1),
    "whitelist": lambda c: c.sadd(KEYS.whitelist, "198.51.100.0/24"),
    "write a decision": lambda c: c.xadd(KEYS.decisions, {"m": "x"}),
    "call the ledger": lambda c: c.fcall("pyfilter_ban", 0),
    "config": lambda c: c.config_get("*"),
    "acl": lambda c: c.execute_command("ACL", "LIST"),
    "flushall": lambda c: c.flushall(),
    "change the cluster": lambda c: c.execute_command("CLUSTER", "FORGET", "0" * 40),
}


def test_the_deployment_scripts_make_a_tls_cluster_of_three_primaries(cluster):
    assert "creating it" in cluster.joined.stdout
    slots = cluster.client(cluster.ports[0]).execute_command("CLUSTER", "SLOTS")
    assert sorted(int(primary[1]) for _, _, primary, *_ in slots) == sorted(cluster.ports)
    # Given out by name (the certificate's), not by address.
    assert {primary[0] for _, _, primary, *_ in slots} == {b"localhost"}
    for port in cluster.ports:
        assert cluster.client(port).config_get("tls-cluster") == {"tls-cluster": "yes"}
        assert cluster.client(port).config_get("port") == {"port": "0"}


def test_every_node_holds_the_same_users_and_a_host_does_only_its_part_on_each(cluster, users):
    for port in cluster.ports:
        assert set(cluster.client(port).acl_users()) == {*users, "default"}, f"node {port}"
        for user, password in users.items():
            assert cluster.client(port, user, password).ping()
        web1 = cluster.client(port, "pyfilter-host-web1", users["pyfilter-host-web1"])
        for what, call in FORBIDDEN.items():
            assert refused(lambda: call(web1)), f"node {port} let web1 {what}"
    # Its part, wherever each key lives: its lines, checkpoint and own addresses (the real
    # collector's commit), the bans' reads.
    commit_as(cluster, "web1", users["pyfilter-host-web1"], "auth:1:2:0", b"7")
    assert len(cluster.client(cluster.owner(KEYS.lines("web1"))).xrange(KEYS.lines("web1"))) == 1
    web1 = redis.RedisCluster(host="localhost", port=cluster.ports[0], username="pyfilter-host-web1",
                              password=users["pyfilter-host-web1"], ssl=True, ssl_ca_certs=str(cluster.ca))
    web1.zrangebyscore(KEYS.active_bans, "-inf", "+inf")
    web1.smembers(KEYS.whitelist)
    assert web1.hgetall(KEYS.checkpoint("web1", "auth"))[b"offset"] == b"7"
    web1.close()


def quiet_node(cluster: Cluster) -> tuple[str, int]:
    """A host name and a node (not the URL's) holding none of the keys remove-host writes:
    that node can be frozen while the command still does its work on the rest."""
    return node_free_of_host(cluster.owner, cluster.ports[1:])


def node_free_of_host(owner, nodes: list):
    """(host, node): a host name and one of `nodes` that holds none of the keys add-host and
    remove-host write for that host (`owner(key)` names the node holding a key)."""
    for n in range(3, 200):
        host = f"web{n}"
        written = {KEYS.hosts, KEYS.own_addresses(host), KEYS.status("collector", host),
                   KEYS.status("enforcer", host), KEYS.status_seen(host), KEYS.decisions_read(host)}
        free = [node for node in nodes if node not in {owner(k) for k in written}]
        if free:
            return host, min(free)
    raise AssertionError("no host name leaves a node free")


def cli_env(cluster: Cluster, tmp_path: Path) -> dict[str, str]:
    """`pyfilter server` as the admin, through the cluster from the first node (the URL's)."""
    (tmp_path / "none.yaml").write_text("{}\n")
    return {"PYFILTER_CONFIG": str(tmp_path / "none.yaml"), "PYFILTER_REDIS_URL": f"rediss://localhost:{cluster.ports[0]}/0",
            "PYFILTER_PUBLIC_REDIS_URL": f"rediss://localhost:{cluster.ports[0]}/0",
            "PYFILTER_REDIS_CLUSTER": "1", "PYFILTER_REDIS_PASSWORD": ADMIN, "PYFILTER_REDIS_CA": str(cluster.ca),
            **{server.ROLE_PASSWORDS[r]: p for r, p in ROLES.items()}}


def password_of(added: subprocess.CompletedProcess) -> str:
    """The host's password in add-host's output."""
    settings = dict(line.split("=", 1) for line in added.stdout.splitlines())
    return settings["PYFILTER_REDIS_URL"].split("@")[0].rsplit(":", 1)[1]


def test_add_host_and_remove_host_change_every_node_and_a_node_that_missed_one_catches_up(cluster, users, tmp_path):
    env = cli_env(cluster, tmp_path)
    host, frozen = quiet_node(cluster)
    added = cli("server", "add-host", host, "--url", f"rediss://localhost:{cluster.ports[0]}/0", env=env)
    assert added.returncode == 0, added.stderr
    settings = dict(line.split("=", 1) for line in added.stdout.splitlines())
    assert settings["PYFILTER_REDIS_CLUSTER"] == "1", "the agent would not know it talks to a cluster"
    password = settings["PYFILTER_REDIS_URL"].split("@")[0].rsplit(":", 1)[1]
    for port in cluster.ports:
        assert cluster.client(port, acl.host_user(host), password).ping(), f"node {port} lacks the new host"
    commit_as(cluster, host, password, "auth:1:2:1", b"9")

    # A node frozen while the host is removed: named, and its users left as they were...
    os.kill(cluster.procs[frozen].pid, signal.SIGSTOP)
    try:
        removed = cli("server", "remove-host", host, env=env)
    finally:
        os.kill(cluster.procs[frozen].pid, signal.SIGCONT)
    assert removed.returncode == 2 and f"localhost:{frozen}" in removed.stderr, removed.stderr
    for port in cluster.ports:
        if port != frozen:
            with pytest.raises(redis.AuthenticationError):
                cluster.client(port, acl.host_user(host), password).ping()
    assert cluster.client(frozen, acl.host_user(host), password).ping(), "the frozen node changed"
    # ...until `pyfilter server init` (the `users` one-shot at every start) brings it in step.
    synced = cli("server", "init", env=env)
    assert synced.returncode == 0, synced.stderr
    with pytest.raises(redis.AuthenticationError):
        cluster.client(frozen, acl.host_user(host), password).ping()
    assert users_of(cluster, frozen) == users_of(cluster, cluster.ports[0])


def users_of(cluster: Cluster, port: int) -> dict[str, set]:
    """A node's users and their rules, as sets."""
    def rule(text: str):
        return frozenset(text.strip("()").split()) if text.startswith("(") else text
    return {user: {rule(r) for r in rules}
            for user, rules in map(acl.parse_acl_list_line, cluster.client(port).acl_list())}


def test_a_node_down_during_add_host_and_remove_host_takes_the_users_from_the_owner_when_it_starts(
        cluster, users, tmp_path):
    env = cli_env(cluster, tmp_path)
    gone, down = quiet_node(cluster)  # remove-host's keys, and add-host's, on the nodes that stay up
    added = cli("server", "add-host", gone, env=env)
    assert added.returncode == 0, added.stderr
    old_password = password_of(added)
    assert cluster.client(down, acl.host_user(gone), old_password).ping()

    # Stopped (not frozen) while a host is added and another removed; no `init` after.
    cluster.stop_node(down)
    added = cli("server", "add-host", "web-new", env=env)
    assert added.returncode == 2 and f"localhost:{down}" in added.stderr, added.stderr
    removed = cli("server", "remove-host", gone, env=env)
    assert removed.returncode == 2 and f"localhost:{down}" in removed.stderr, removed.stderr
    cluster.start_node(down)
    cluster.until(lambda: cluster.client(down).ping(), f"node {down} to answer again")

    # It took them before it answered anyone: the new host logs in there, the removed one is refused.
    assert cluster.client(down, acl.host_user("web-new"), password_of(added)).ping()
    with pytest.raises(redis.AuthenticationError):
        cluster.client(down, acl.host_user(gone), old_password).ping()
    assert users_of(cluster, down) == users_of(cluster, cluster.ports[0])


def test_a_down_node_holding_the_hosts_list_stops_add_host_before_any_change_and_remove_host_after_the_revocation(
        cluster, users, tmp_path):
    env = cli_env(cluster, tmp_path)
    holder = cluster.owner(KEYS.hosts)
    added = cli("server", "add-host", "web-held", env=env)
    assert added.returncode == 0, added.stderr
    held_password = password_of(added)
    cluster.stop_node(holder)
    try:
        never = cli("server", "add-host", "web-never", env=env)
        assert never.returncode == 2 and f"localhost:{holder}" in never.stderr, never.stderr
        assert "nothing changed" in never.stderr and never.stdout == "", never.stderr
        removed = cli("server", "remove-host", "web-held", env=env)
        assert removed.returncode == 2 and f"localhost:{holder}" in removed.stderr, removed.stderr
        assert "still listed" in removed.stderr, removed.stderr
        up = [port for port in cluster.ports if port != holder]
        for port in up:
            assert acl.host_user("web-never") not in users_of(cluster, port), f"node {port} made web-never"
            with pytest.raises(redis.AuthenticationError):  # revoked wherever a node answered
                cluster.client(port, acl.host_user("web-held"), held_password).ping()
    finally:
        cluster.start_node(holder)
    cluster.until(lambda: cluster.client(holder).ping(), f"node {holder} to answer again")
    # The holder took the revocation at its start (not the URL's node: it has the owner's users)...
    assert holder != cluster.ports[0]
    with pytest.raises(redis.AuthenticationError):
        cluster.client(holder, acl.host_user("web-held"), held_password).ping()
    assert users_of(cluster, holder) == users_of(cluster, cluster.ports[0])
    cluster.until_ok(holder)
    listed = cluster.client(holder).smembers(KEYS.hosts)
    assert b"web-held" in listed and b"web-never" not in listed
    # ...and running remove-host again unlists the host.
    again = cli("server", "remove-host", "web-held", env=env)
    assert again.returncode == 1 and "no Redis user" in again.stderr, again.stderr
    assert b"web-held" not in cluster.client(holder).smembers(KEYS.hosts)


def test_a_node_that_starts_while_the_owner_is_down_takes_the_users_from_the_other_nodes(cluster, users, tmp_path):
    env = cli_env(cluster, tmp_path)
    _, down = quiet_node(cluster)
    owner, other = cluster.ports[0], next(p for p in cluster.ports[1:] if p != down)
    cluster.stop_node(down)
    added = cli("server", "add-host", "web-later", env=env)
    assert added.returncode == 2 and f"localhost:{down}" in added.stderr, added.stderr
    cluster.stop_node(owner)
    try:
        cluster.start_node(down)
        cluster.until(lambda: cluster.client(down).ping(), f"node {down} to answer again")
        assert cluster.client(down, acl.host_user("web-later"), password_of(added)).ping()
        assert users_of(cluster, down) == users_of(cluster, other)
    finally:
        cluster.start_node(owner)
    cluster.until_ok(owner)


def test_once_the_cluster_marks_a_down_node_failed_add_host_fails_before_any_change(cluster, users, tmp_path):
    env = cli_env(cluster, tmp_path)
    _, down = quiet_node(cluster)
    up = [port for port in cluster.ports if port != down]
    for port in up:
        cluster.client(port).config_set("cluster-node-timeout", 1000)
    try:
        cluster.stop_node(down)
        try:
            cluster.until(lambda: cluster.client(up[0]).execute_command("CLUSTER", "INFO")
                          .startswith(b"cluster_state:fail"), f"the cluster to mark node {down} failed")
            failed = cli("server", "add-host", "web-failed", env=env)
        finally:
            cluster.start_node(down)
        for port in cluster.ports:
            cluster.until_ok(port)
    finally:
        for port in up:
            cluster.client(port).config_set("cluster-node-timeout", NODE_TIMEOUT_MS)
    assert failed.returncode == 2 and f"localhost:{down}" in failed.stderr, failed.stderr
    assert "nothing changed" in failed.stderr and "down" in failed.stderr, failed.stderr
    for port in cluster.ports:
        assert acl.host_user("web-failed") not in users_of(cluster, port), f"node {port} made web-failed"
    assert b"web-failed" not in cluster.client(cluster.owner(KEYS.hosts)).smembers(KEYS.hosts)


def test_a_restart_of_every_node_keeps_the_cluster_its_data_and_its_users(cluster, users):
    before = {port: users_of(cluster, port) for port in cluster.ports}
    for proc in cluster.procs.values():
        proc.send_signal(signal.SIGTERM)  # as `docker compose stop`: Redis saves and exits
        proc.wait(30)
    cluster.start()
    assert "creating it" not in cluster.joined.stdout, "cluster.sh made a new cluster over the old one"
    assert {port: users_of(cluster, port) for port in cluster.ports} == before
    assert len(cluster.client(cluster.owner(KEYS.lines("web1"))).xrange(KEYS.lines("web1"))) == 1
    commit_as(cluster, "web1", users["pyfilter-host-web1"], "auth:1:2:2", b"8")
