"""Least privilege with Sentinel, for real: a primary, two replicas and three
sentinels started by the deployment's own scripts (compose/redis-start.sh,
compose/sentinel.sh) with TLS only, on loopback ports.

What it proves: the users `pyfilter server` makes are on every node and every
sentinel, so a host's user does its part, and only its part, wherever the
primary is, also after the primary is killed and a replica promoted; on a
sentinel a user may only ask where the primary is; a wrong password is refused
by nodes and sentinels, plain TCP by all of them; the replication link logs in
as its own user, which may do nothing else; `pyfilter server add-host` and
`remove-host` change every node and sentinel, a node that missed a change is
named, and `pyfilter server init` brings it in step.

The tests share one set of servers and run in order: the last one fails the
primary over.
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

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret"
REPLICA = "replica-secret"
SENTINEL = "sentinel-secret"
PEER = "sentinel-peer-secret"
ROLES = {"detector": "detector-secret", "api": "api-secret", "notifier": "notifier-secret"}
KEYS = Keys("pyfilter:")


class Servers(Processes):
    """Three data nodes and three sentinels as compose/server-ha.yml runs them, TLS only."""

    def __init__(self, root: Path):
        self.root = root
        subprocess.run([ROOT / "compose/tls.sh", root / "tls", "127.0.0.1"], check=True, capture_output=True)
        self.ca = root / "tls" / "ca.crt"
        self.procs: dict[int, subprocess.Popen] = {}
        self.data = [free_port() for _ in range(3)]
        self.sentinels = [free_port() for _ in range(3)]
        self.env = {**os.environ, "PYFILTER_REDIS_PASSWORD": ADMIN, "PYFILTER_REPLICA_REDIS_PASSWORD": REPLICA,
                    "PYFILTER_SENTINEL_REDIS_PASSWORD": SENTINEL, "PYFILTER_SENTINEL_PEER_REDIS_PASSWORD": PEER,
                    "PYFILTER_REDIS_TLS": "1", "PYFILTER_REDIS_TLS_ONLY": "1",
                    "PYFILTER_REDIS_TLS_DIR": str(root / "tls"),
                    "PYFILTER_REDIS_SENTINELS": " ".join(f"127.0.0.1:{p}" for p in self.sentinels)}
        for i, port in enumerate(self.data):
            self.start_data(port, replica_of=None if i == 0 else self.data[0])
        for port in self.sentinels:
            self.start_sentinel(port)
        try:
            self.until(lambda: all(self.admin(p).ping() for p in self.data + self.sentinels),
                       "every server to answer")
            self.until(lambda: self.admin(self.data[0]).info("replication")["connected_slaves"] == 2,
                       "both replicas to follow the primary")
            self.until(lambda: all(self.admin(s).sentinel_master("pyfilter")["num-other-sentinels"] == 2
                                   and self.admin(s).sentinel_master("pyfilter")["num-slaves"] == 2
                                   for s in self.sentinels), "the sentinels to know each other and the replicas")
        except BaseException:
            self.stop()
            raise

    def start_data(self, port: int, replica_of: int | None) -> None:
        folder = self.root / f"redis-{port}"
        folder.mkdir(exist_ok=True)
        # A copy of the configuration: Sentinel has a node rewrite its file (CONFIG REWRITE) on a failover.
        shutil.copyfile(ROOT / "compose/redis.conf", folder / "redis.conf")
        extra = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        env = {**self.env, "PYFILTER_REDIS_DATA": str(folder), "PYFILTER_REDIS_CONF": str(folder / "redis.conf"),
               "PYFILTER_REDIS_TLS_PORT": str(port)}
        self.procs[port] = subprocess.Popen(
            ["sh", str(ROOT / "compose/redis-start.sh"), "--port", str(port), "--bind", "127.0.0.1",
             "--unixsocket", "", "--save", "", "--appendonly", "no", *extra], env=env, stdout=subprocess.DEVNULL)

    def start_sentinel(self, port: int) -> None:
        folder = self.root / f"sentinel-{port}"
        folder.mkdir(exist_ok=True)
        env = {**self.env, "PYFILTER_REDIS_DATA": str(folder), "PYFILTER_REDIS_ANNOUNCE": "127.0.0.1",
               "PYFILTER_REDIS_PRIMARY_PORT": str(self.data[0]), "PYFILTER_SENTINEL_DOWN_AFTER_MS": "1000"}
        self.procs[port] = subprocess.Popen(["sh", str(ROOT / "compose/sentinel.sh"), str(port),
                                             "--bind", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL)

    def stop_one(self, port: int) -> None:
        self.procs[port].terminate()
        self.procs[port].wait(10)

    def client(self, port: int, username: str | None = None, password: str = ADMIN, **extra) -> redis.Redis:
        # No retries: a refused password (an AuthenticationError is a ConnectionError) says so at once.
        return redis.Redis(host="127.0.0.1", port=port, username=username, password=password, socket_timeout=3,
                           ssl=True, ssl_ca_certs=str(self.ca), ssl_cert_reqs="required", retry=Retry(NoBackoff(), 0),
                           **extra)

    def admin(self, port: int) -> redis.Redis:
        return self.client(port)

    def url(self, user: str = "", password: str = ADMIN) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"rediss+sentinel://{user}:{password}@{hosts}/pyfilter/0"

    def config(self, user: str = "", password: str = ADMIN) -> RedisConfig:
        return RedisConfig(url=self.url(user, password), prefix=KEYS.prefix, tls_ca_file=str(self.ca),
                           wait_replicas=1)

    def primary(self) -> int:
        return int(self.admin(self.sentinels[0]).sentinel_get_master_addr_by_name("pyfilter")[1])

    def live(self) -> list[int]:
        return [p for p in self.data if self.procs[p].poll() is None]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    servers = Servers(tmp_path_factory.mktemp("sentinel-acl"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def users(servers):
    """The service users and hosts web1, web2, made as `pyfilter server` makes them: {user: password}."""
    async def go():
        cfg = servers.config()
        nodes = await server.nodes_of(cfg, connect(cfg))
        try:
            admin = nodes.primary.client
            await server.init(admin, KEYS, ROLES, nodes)
            return {acl.host_user(h): await server.add_host(admin, KEYS, h, nodes) for h in ("web1", "web2")}
        finally:
            await nodes.aclose()
    return {**asyncio.run(go()), **{acl.role_user(r): p for r, p in ROLES.items()}}


def refused(call) -> bool:
    """Whether Redis answers NOPERM."""
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def a_host_does_its_part_only(servers, users, port: int) -> None:
    """On data node `port`: web1 reads the bans and writes its own keys (on the
    primary; a replica refuses writes as READONLY, not NOPERM), nothing else."""
    web1 = servers.client(port, "pyfilter-host-web1", users["pyfilter-host-web1"])
    web1.zrangebyscore(KEYS.active_bans, "-inf", "+inf")
    if port == servers.primary():
        web1.xadd(KEYS.lines("web1"), {"m": "x"})
        web1.hset(KEYS.checkpoint("web1", "auth"), "offset", "1")
    for call in (lambda: web1.xadd(KEYS.lines("web2"), {"m": "x"}),
                 lambda: web1.zrange(KEYS.window("sshd", "198.51.100.1"), 0, -1),
                 lambda: web1.sadd(KEYS.whitelist, "198.51.100.0/24"),
                 lambda: web1.fcall("pyfilter_ban", 0),
                 lambda: web1.config_get("*"), lambda: web1.execute_command("ACL", "LIST"),
                 lambda: web1.flushall(), lambda: web1.execute_command("REPLICAOF", "NO", "ONE")):
        assert refused(call), f"node {port} let web1 do what is not its part"


def test_every_node_holds_the_same_users_and_a_host_does_only_its_part_on_each(servers, users):
    for port in servers.data:
        listed = set(servers.admin(port).acl_users())
        assert listed >= {*users, "default", "pyfilter-replica", "pyfilter-sentinel"}, f"node {port}: {listed}"
        a_host_does_its_part_only(servers, users, port)


def test_on_a_sentinel_a_user_may_only_ask_where_the_primary_is(servers, users):
    for port in servers.sentinels:
        for user, password in users.items():
            client = servers.client(port, user, password)
            assert int(client.sentinel_get_master_addr_by_name("pyfilter")[1]) == servers.primary()
            assert "pyfilter" in client.sentinel_masters()
        web1 = servers.client(port, "pyfilter-host-web1", users["pyfilter-host-web1"])
        for call in (lambda: web1.sentinel_failover("pyfilter"),
                     lambda: web1.sentinel_set("pyfilter", "down-after-milliseconds", 1),
                     lambda: web1.sentinel_remove("pyfilter"), lambda: web1.sentinel_reset("pyfilter"),
                     lambda: web1.execute_command("ACL", "LIST"), lambda: web1.publish("x", "y"),
                     lambda: web1.execute_command("SENTINEL", "CONFIG", "GET", "*")):
            assert refused(call), f"sentinel {port} let a host's user change it"


def test_a_wrong_password_and_plain_tcp_are_refused_by_nodes_and_sentinels(servers, users):
    for port in servers.data + servers.sentinels:
        for user, password in (("pyfilter-host-web1", "wrong"), (None, "wrong"), ("pyfilter-replica", ADMIN)):
            with pytest.raises(redis.AuthenticationError):
                servers.client(port, user, password).ping()
        with pytest.raises(redis.AuthenticationError):  # NOAUTH
            servers.client(port, password=None).execute_command(
                *(("SENTINEL", "MASTERS") if port in servers.sentinels else ("GET", "x")))
        assert not plain_answer(port), f"{port} answered plain TCP"


def plain_answer(port: int) -> bytes:
    """What a server sends back to a PING in plain TCP (nothing: the TLS handshake fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        try:
            return s.recv(100)
        except ConnectionResetError:
            return b""


def test_the_replication_link_logs_in_as_its_own_user_which_may_do_nothing_else(servers, users):
    for port in servers.data:
        assert servers.admin(port).config_get("masteruser") == {"masteruser": "pyfilter-replica"}
        assert servers.admin(port).config_get("tls-replication") == {"tls-replication": "yes"}
    # The primary lists a replica from its first sync on; its own link says "up" once that sync
    # is done, logged in as pyfilter-replica (a loaded machine may take a while).
    replicas = [port for port in servers.data if port != servers.primary()]
    servers.until(lambda: all(servers.admin(port).info("replication")["master_link_status"] == "up"
                              for port in replicas), "every replica's link to the primary to be up", timeout=60)
    link = servers.client(servers.primary(), "pyfilter-replica", REPLICA)
    for call in (lambda: link.get(KEYS.active_bans), lambda: link.set("x", "1"),
                 lambda: link.config_get("*"), lambda: link.keys("*")):
        assert refused(call)


def test_the_sentinels_log_in_to_each_other_as_their_own_user_which_may_do_nothing_else(servers, users):
    """`sentinel sentinel-user`: the sentinels reach each other as pyfilter-sentinel-peer (the
    admin password is in no link's settings); that user may ping, say hello on
    __sentinel__:hello and vote, nothing else, and is no user of the data nodes."""
    for port in servers.sentinels:
        conf = (servers.root / f"sentinel-{port}" / "sentinel.conf").read_text().splitlines()
        links = [line for line in conf if line.startswith("sentinel ")]
        assert "sentinel sentinel-user pyfilter-sentinel-peer" in links, links
        assert not [line for line in links if ADMIN in line], f"sentinel {port} links with the admin password"
        peers = [c for c in servers.admin(port).client_list() if c["name"].endswith("-cmd")]
        assert len(peers) == 2 and {c["user"] for c in peers} == {"pyfilter-sentinel-peer"}, peers
        peer = servers.client(port, "pyfilter-sentinel-peer", PEER)
        assert peer.ping()
        for call in (lambda: peer.sentinel_masters(), lambda: peer.sentinel_failover("pyfilter"),
                     lambda: peer.sentinel_set("pyfilter", "down-after-milliseconds", 1),
                     lambda: peer.execute_command("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "no"),
                     lambda: peer.execute_command("SENTINEL", "CONFIG", "GET", "*"),
                     lambda: peer.sentinel_remove("pyfilter"), lambda: peer.sentinel_reset("pyfilter"),
                     lambda: peer.execute_command("ACL", "LIST"), lambda: peer.publish("other", "x")):
            assert refused(call), f"sentinel {port} let the sentinels' user do more than talk Sentinel"
    for port in servers.data:
        with pytest.raises(redis.AuthenticationError):
            servers.client(port, "pyfilter-sentinel-peer", PEER).get(KEYS.active_bans)


def admin_env(servers: Servers, tmp_path: Path) -> dict[str, str]:
    """`pyfilter server`'s environment, as the admin service has it."""
    (tmp_path / "none.yaml").write_text("{}\n")
    return {"PYFILTER_CONFIG": str(tmp_path / "none.yaml"), "PYFILTER_REDIS_URL": servers.url(),
            "PYFILTER_REDIS_PASSWORD": ADMIN, "PYFILTER_REDIS_CA": str(servers.ca),
            **{server.ROLE_PASSWORDS[r]: p for r, p in ROLES.items()}}


def add_host(servers: Servers, env: dict[str, str], host: str, expect: int = 0) -> tuple[str, str]:
    """`pyfilter server add-host HOST`: the agent's URL and the host's password."""
    public = "rediss+sentinel://127.0.0.1:" + ",127.0.0.1:".join(map(str, servers.sentinels)) + "/pyfilter/0"
    added = cli("server", "add-host", host, "--url", public, env=env)
    assert added.returncode == expect, added.stderr
    url = dict(line.split("=", 1) for line in added.stdout.splitlines())["PYFILTER_REDIS_URL"]
    assert url.startswith(f"rediss+sentinel://pyfilter-host-{host}:")
    return url, url.split("@")[0].rsplit(":", 1)[1]


def test_add_host_and_remove_host_change_every_node_and_a_node_that_missed_one_catches_up(servers, users, tmp_path):
    env = admin_env(servers, tmp_path)
    url, password = add_host(servers, env, "web3")
    for port in servers.data + servers.sentinels:
        assert servers.client(port, "pyfilter-host-web3", password).ping()

    # The agent's own client, as the collector runs it, from the printed URL and the CA.
    async def commit() -> None:
        client = connect(RedisConfig(url=url, prefix=KEYS.prefix, tls_ca_file=str(servers.ca), wait_replicas=1))
        batch = Batch([messages.Line("auth:1:2:0", "a line")], checkpoint={"offset": b"9"})
        await Committer(client, KEYS, "web3", maxlen=1000).commit("auth", batch, Stats())
        await client.aclose()
    asyncio.run(commit())
    assert len(servers.admin(servers.primary()).xrange(KEYS.lines("web3"))) == 1

    # A replica frozen while web3 is removed: named, and its users left as they were...
    frozen = [p for p in servers.data if p != servers.primary()][0]
    os.kill(servers.procs[frozen].pid, signal.SIGSTOP)
    try:
        removed = cli("server", "remove-host", "web3", env=env)
    finally:
        os.kill(servers.procs[frozen].pid, signal.SIGCONT)
    assert removed.returncode == 2 and f"127.0.0.1:{frozen}" in removed.stderr, removed.stderr
    for port in servers.data + servers.sentinels:
        if port != frozen:
            with pytest.raises(redis.AuthenticationError):
                servers.client(port, "pyfilter-host-web3", password).ping()
    assert servers.client(frozen, "pyfilter-host-web3", password).ping(), "the frozen replica changed"
    # ...until `pyfilter server init` (make server) makes every node's users the primary's.
    synced = cli("server", "init", env=env)
    assert synced.returncode == 0, synced.stderr
    with pytest.raises(redis.AuthenticationError):
        servers.client(frozen, "pyfilter-host-web3", password).ping()
    assert users_of(frozen, servers) == users_of(servers.primary(), servers), \
        "the replica's users (names, passwords and rules) are not the primary's"


def users_of(port: int, servers: Servers) -> dict[str, set]:
    """A node's users and their rules, as sets: Redis lists the same rules in the order they were given."""
    def rule(text: str):
        return frozenset(text.strip("()").split()) if text.startswith("(") else text
    return {user: {rule(r) for r in rules}
            for user, rules in map(acl.parse_acl_list_line, servers.admin(port).acl_list())}


def test_a_replica_and_a_sentinel_down_during_a_change_take_the_users_when_they_start_again(
        servers, users, tmp_path):
    """Stop a replica and a sentinel; add a host and remove another; start them again: before
    they serve anyone they hold the users of now (the replica from the primary, the sentinel
    from another sentinel), with no `pyfilter server init`; a failover to that replica keeps them."""
    env = admin_env(servers, tmp_path)
    _, gone = add_host(servers, env, "web6")
    primary = servers.primary()
    replica, other = [p for p in servers.data if p != primary]
    sentinel = servers.sentinels[2]
    for port in (replica, sentinel):
        servers.stop_one(port)
    _, new = add_host(servers, env, "web7", expect=2)
    removed = cli("server", "remove-host", "web6", env=env)
    assert removed.returncode == 2 and f"127.0.0.1:{replica}" in removed.stderr \
        and f"sentinel 127.0.0.1:{sentinel}" in removed.stderr, removed.stderr

    servers.start_data(replica, replica_of=primary)
    servers.start_sentinel(sentinel)
    for port in (replica, sentinel):
        servers.until(lambda: servers.admin(port).ping(), f"{port} to answer again")
        # Right from its first answer: the users were in place before it listened.
        assert servers.client(port, "pyfilter-host-web7", new).ping()
        with pytest.raises(redis.AuthenticationError):
            servers.client(port, "pyfilter-host-web6", gone).ping()
    assert users_of(replica, servers) == users_of(primary, servers)

    # A failover to that replica (the other one may not be chosen), through the restarted sentinel.
    servers.admin(other).config_set("replica-priority", 0)
    try:
        def ready() -> bool:
            listed = {int(r["port"]): r for r in servers.admin(sentinel).sentinel_slaves("pyfilter")}
            return (listed[other]["slave-priority"] == 0 and listed[replica]["master-link-status"] == "ok"
                    and not {"s_down", "disconnected"} & set(listed[replica]["flags"].split(",")))
        servers.until(ready, "the restarted sentinel to see the restarted replica following", timeout=60)
        servers.admin(sentinel).sentinel_failover("pyfilter")
        servers.until(lambda: servers.primary() == replica, "the restarted replica to be promoted", timeout=60)
    finally:
        servers.admin(other).config_set("replica-priority", 100)
    web7 = servers.client(replica, "pyfilter-host-web7", new)
    servers.until(lambda: web7.xadd(KEYS.lines("web7"), {"m": "x"}), "the new primary to take writes")
    assert refused(lambda: web7.xadd(KEYS.lines("web1"), {"m": "x"}))
    with pytest.raises(redis.AuthenticationError):
        servers.client(replica, "pyfilter-host-web6", gone).ping()


def test_after_a_failover_the_promoted_replica_knows_every_user(servers, users):
    """Kill the primary (SIGKILL): the sentinels promote a replica, which already has
    the users; a host's collector, through the sentinels with its own user, commits
    on the new primary and is still refused what is not its part; the old primary,
    started again, rejoins as a replica over the replication link's user."""
    old = servers.primary()
    os.kill(servers.procs[old].pid, signal.SIGKILL)
    servers.procs[old].wait(10)
    servers.until(lambda: servers.primary() != old, "the sentinels to promote a replica")
    new = servers.primary()
    servers.until(lambda: servers.admin(new).info("replication")["connected_slaves"] == 1,
                  "the other replica to follow the new primary")

    async def commit() -> None:
        client = connect(servers.config("pyfilter-host-web1", users["pyfilter-host-web1"]))
        batch = Batch([messages.Line("auth:1:2:5", "after the failover")], checkpoint={"offset": b"42"})
        # The collector retries until the promoted replica takes the batch; a user it did not
        # know would be refused (a connection error, retried too) until the bound here.
        await asyncio.wait_for(Committer(client, KEYS, "web1", maxlen=1000).commit("auth", batch, Stats()), 60)
        await client.aclose()
    asyncio.run(commit())
    assert servers.admin(new).hget(KEYS.checkpoint("web1", "auth"), "offset") == b"42"
    for port in servers.sentinels:  # the sentinels agreed as their own user, refused nothing on the way
        assert not [e for e in servers.admin(port).acl_log() if e["client-info"]["name"].startswith("sentinel-")]
    a_host_does_its_part_only(servers, users, new)

    servers.start_data(old, replica_of=None)  # as compose restarts it: a primary, until Sentinel says otherwise
    servers.until(lambda: servers.admin(old).info("replication").get("master_link_status") == "up",
                  "the old primary to rejoin as a replica", timeout=60)
    assert servers.admin(old).info("replication")["master_port"] == servers.primary()
    a_host_does_its_part_only(servers, users, old)
