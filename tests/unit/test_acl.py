"""Redis users against a real redis-server started the way the stacks start it
(compose/redis-start.sh, compose/redis.conf), with the users `pyfilter server`
makes: every forbidden action answers NOPERM, and the services do their work
with their own users only (docs/security.md says which test proves what)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from pyfilter.cli import server_users as server
from pyfilter.common import acl, hosts, messages
from pyfilter.common.config import Config, Rule, Seconds, Settings
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keys()
ADMIN = "admin-password"
ROLES = {"detector": "detector-pw", "api": "api-pw", "notifier": "notifier-pw"}
ATTACKER = "198.51.100.7"


class Redis:
    """redis-server started by the stacks' own start script."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.sock = directory / "redis.sock"
        self.url = f"unix://{self.sock}"

    def start(self, password: str = ADMIN) -> subprocess.CompletedProcess | None:
        env = {**os.environ, "PYFILTER_REDIS_PASSWORD": password, "PYFILTER_REDIS_DATA": str(self.dir),
               "PYFILTER_REDIS_CONF": str(ROOT / "compose/redis.conf")}
        self.proc = subprocess.Popen(
            ["sh", str(ROOT / "compose/redis-start.sh"), "--port", "0", "--unixsocket", str(self.sock),
             "--unixsocketperm", "700", "--dir", str(self.dir), "--appendonly", "no", "--save", ""],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "",
                                                   self.proc.stderr.read().decode())
            try:
                redis.Redis.from_url(self.url, password=password).ping()
                return None
            except (redis.ConnectionError, AuthenticationError):
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def client(self, user: str | None, password: str) -> redis.Redis:
        return redis.Redis.from_url(self.url, username=user, password=password)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One server with its service users and two hosts, web1 and web2."""
    server_ = Redis(tmp_path_factory.mktemp("acl"))
    assert server_.start() is None

    async def setup():
        admin = aioredis.Redis.from_url(server_.url, password=ADMIN)
        await server.init(admin, KEYS, ROLES)
        passwords = {h: await server.add_host(admin, KEYS, h) for h in ("web1", "web2")}
        await admin.aclose()
        return passwords
    server_.hosts = asyncio.run(setup())
    yield server_
    server_.stop()


def agent(deployment, host: str = "web1") -> redis.Redis:
    return deployment.client(acl.host_user(host), deployment.hosts[host])


def role(deployment, name: str) -> redis.Redis:
    return deployment.client(acl.role_user(name), ROLES[name])


def settings(deployment, user: str, password: str, host: str = "web1", rules: dict | None = None) -> Settings:
    config = Config(host=host)
    config.redis.url, config.redis.username, config.redis.password = deployment.url, user, password
    return Settings(config=config, rules=rules or {}, path="test")


def sshd() -> dict[str, Rule]:
    rule = msgspec.convert({"service": "sshd", "sources": ["auth"], "maxretry": 3,
                            "patterns": [r"Failed password for \S+ from <HOST> port \d+"]},
                           Rule, dec_hook=lambda t, v: Seconds(v))
    return {"sshd": rule}


def ban_record(address: str) -> messages.BanRecord:
    now = time.time()
    return messages.BanRecord(address=address, rule="manual", host="x", origin="manual",
                              banned_at=now, duration=600, expires_at=now + 600)


# What an agent must not do, each tried with web1's user.
AGENT_FORBIDDEN = {
    "append to another host's lines": ("XADD", KEYS.lines("web2"), "*", "m", "x"),
    "read another host's lines": ("XRANGE", KEYS.lines("web2"), "-", "+"),
    "write a decision": ("XADD", KEYS.decisions, "*", "m", "x"),
    "read the decisions through a group (a write)": ("XREADGROUP", "GROUP", "g", "c", "STREAMS", KEYS.decisions, ">"),
    "make a group on the decisions": ("XGROUP", "CREATE", KEYS.decisions, "g", "$"),
    "ban or unban through the ledger": ("FCALL", "pyfilter_v1_unban", "1", KEYS.active_bans),
    "run a script": ("EVAL", "return 1", "0"),
    "replace the ledger": ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\nredis.register_function('f', function() end)"),
    "read a ban record": ("GET", KEYS.ban(ATTACKER)),
    "read a window": ("ZRANGE", KEYS.window("sshd", ATTACKER), "0", "-1"),
    "write a window": ("ZADD", KEYS.window("sshd", ATTACKER), "1", "x"),
    "drop the active bans": ("DEL", KEYS.active_bans),
    "add an active ban": ("ZADD", KEYS.active_bans, "1e12", ATTACKER),
    "whitelist": ("SADD", KEYS.whitelist, "198.51.100.0/24"),
    "unwhitelist": ("SREM", KEYS.whitelist, "192.0.2.0/24"),
    "list another host": ("SADD", KEYS.hosts, "ghost"),
    "publish another host's addresses": ("HSET", KEYS.own_addresses("web2"), "host", ATTACKER),
    "move another host's position": ("SET", KEYS.decisions_read("web2"), "0-0"),
    "write another host's status": ("SET", KEYS.status("enforcer", "web2"), "x"),
    "write another host's checkpoint": ("HSET", KEYS.checkpoint("web2", "auth"), "f", "1"),
    "read the history": ("XRANGE", KEYS.ban_history, "-", "+"),
    "read the whitelist notes": ("HGETALL", KEYS.whitelist_notes),
    "config set": ("CONFIG", "SET", "appendonly", "no"),
    "config get": ("CONFIG", "GET", "requirepass"),
    "acl list": ("ACL", "LIST"),
    "acl setuser": ("ACL", "SETUSER", acl.host_user("web1"), "+@all"),
    "flushall": ("FLUSHALL",),
    "keys": ("KEYS", "*"),
    "scan": ("SCAN", "0"),
    "shutdown": ("SHUTDOWN", "NOSAVE"),
    "close others' connections": ("CLIENT", "KILL", "USER", "default"),
    "list others' connections": ("CLIENT", "LIST"),
    "monitor": ("MONITOR",),
    "subscribe": ("SUBSCRIBE", "x"),
    "a key outside PyFilter": ("SET", "other-app:key", "x"),
}


@pytest.mark.parametrize("what", sorted(AGENT_FORBIDDEN))
def test_an_agent_is_refused(deployment, what):
    client = agent(deployment)
    with pytest.raises(NoPermissionError):
        client.execute_command(*AGENT_FORBIDDEN[what])
    client.close()


def test_an_agent_sends_its_lines_keeps_its_checkpoint_and_applies_bans(deployment):
    """The real collector's commit and the real enforcer, with web1's user only."""
    from pyfilter.collector.checkpoints import Committer
    from pyfilter.collector.sources.base import Batch, Stats
    from pyfilter.enforcer.backends.log_only import LogOnlyBackend
    from pyfilter.enforcer.main import Enforcer

    user, password = acl.host_user("web1"), deployment.hosts["web1"]

    async def go():
        client = aioredis.Redis.from_url(deployment.url, username=user, password=password)
        batch = Batch([messages.Line("auth:1:1:0", "x")], checkpoint={"1:1": b"2"}, own=["172.30.0.0/16"])
        await Committer(client, KEYS, "web1", 100_000).commit("auth", batch, Stats())
        admin = aioredis.Redis.from_url(deployment.url, password=ADMIN)
        kernel = LogOnlyBackend()
        enforcer = Enforcer(settings(deployment, user, password), kernel)
        await enforcer.backend.init()
        await enforcer.start()
        await Ledger(admin, KEYS).ban([NewBan(ban_record("198.51.100.9"))])
        await enforcer.consume()
        await enforcer.publish_status()
        state = (await kernel.list(), await admin.xlen(KEYS.lines("web1")),
                 await admin.hget(KEYS.checkpoint("web1", "auth"), "1:1"),
                 await admin.get(KEYS.decisions_read("web1")) is not None,
                 await admin.exists(KEYS.status("enforcer", "web1")),
                 {str(a) for a in await hosts.load(admin, KEYS)})
        await enforcer.client.aclose()
        await client.aclose()
        await admin.aclose()
        return state
    kernel, length, checkpoint, positioned, reported, own = asyncio.run(go())
    assert "198.51.100.9" in kernel
    assert length == 1 and checkpoint == b"2" and positioned and reported
    assert "172.30.0.0/16" in own


def test_the_detector_counts_an_agents_lines_and_bans_with_its_own_user(deployment):
    from pyfilter.detector.main import Detector

    async def go():
        stream = KEYS.lines("web1")
        client = aioredis.Redis.from_url(deployment.url, username=acl.host_user("web1"),
                                         password=deployment.hosts["web1"])
        lines = [messages.Line(f"auth:2:2:{i}", f"sshd[1]: Failed password for root from {ATTACKER} port 22")
                 for i in range(3)]
        await client.xadd(stream, {"m": messages.encode(messages.LineBatch("web1", "auth", lines, time.time()))})
        d = Detector(settings(deployment, acl.role_user("detector"), ROLES["detector"], "server", sshd()))
        await d.resume()
        while await client.xlen(stream):
            await d.step()
            await d.settle()
        await d.forget_read()
        await d.client.aclose()
        await client.aclose()
        admin = aioredis.Redis.from_url(deployment.url, password=ADMIN)
        score = await admin.zscore(KEYS.active_bans, ATTACKER)
        await admin.aclose()
        return score
    assert asyncio.run(go()) is not None


@pytest.mark.parametrize("name, command", [
    ("detector", ("SADD", KEYS.whitelist, "198.51.100.0/24")),
    ("detector", ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\nredis.register_function('f', function() end)")),
    ("detector", ("CONFIG", "SET", "appendonly", "no")),
    ("detector", ("HSET", KEYS.own_addresses("web1"), "host", ATTACKER)),
    ("detector", ("SET", "other-app:key", "x")),
    ("api", ("XADD", KEYS.lines("web1"), "*", "m", "x")),
    ("api", ("ZADD", KEYS.window("sshd", ATTACKER), "1", "x")),
    ("api", ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\nredis.register_function('f', function() end)")),
    ("api", ("ACL", "LIST")),
    ("api", ("KEYS", "*")),
    ("api", ("SCAN", "0")),
    ("api", ("DEL", KEYS.checkpoint("web1", "auth"))),
    ("notifier", ("XADD", KEYS.decisions, "*", "m", "x")),
    ("notifier", ("XGROUP", "DESTROY", KEYS.decisions, "notify")),
    ("notifier", ("SADD", KEYS.whitelist, "198.51.100.0/24")),
    ("notifier", ("ZADD", KEYS.window("sshd", ATTACKER), "1", "x")),
])
def test_a_service_user_is_refused_what_is_not_its_part(deployment, name, command):
    client = role(deployment, name)
    with pytest.raises(NoPermissionError):
        client.execute_command(*command)
    client.close()


def test_the_api_bans_unbans_and_whitelists_with_its_user(deployment):
    from pyfilter.common import whitelist
    from pyfilter.common.addresses import parse_network

    async def go():
        client = aioredis.Redis.from_url(deployment.url, username=acl.role_user("api"), password=ROLES["api"])
        ledger = Ledger(client, KEYS)
        await ledger.ban([NewBan(ban_record("198.51.100.20"))])
        banned = await client.zscore(KEYS.active_bans, "198.51.100.20")
        await ledger.unban(["198.51.100.20"], "api", "test")
        await whitelist.add(client, KEYS, parse_network("198.51.100.240/28"))
        state = banned, await client.zscore(KEYS.active_bans, "198.51.100.20"), await client.smembers(KEYS.whitelist)
        await client.aclose()
        return state
    banned, after, listed = asyncio.run(go())
    assert banned is not None and after is None and b"198.51.100.240/28" in listed


def test_the_notifier_reads_decisions_through_its_group(deployment):
    client = role(deployment, "notifier")
    client.xgroup_create(KEYS.decisions, "notify", id="0", mkstream=True)
    assert client.xreadgroup("notify", "n", {KEYS.decisions: ">"}, count=1)
    client.close()


def test_removing_a_host_revokes_it_alone_and_users_survive_a_restart(deployment):
    web1, web2 = agent(deployment, "web1"), agent(deployment, "web2")
    assert web2.ping() and web1.ping()

    async def remove():
        admin = aioredis.Redis.from_url(deployment.url, password=ADMIN)
        removed = await server.remove_host(admin, KEYS, "web2")
        await admin.aclose()
        return removed
    assert asyncio.run(remove())
    with pytest.raises(redis.ConnectionError):  # Redis closed its connection...
        web2.xadd(KEYS.lines("web2"), {"m": "x"})
    with pytest.raises(AuthenticationError):  # ...and it cannot come back
        agent(deployment, "web2").ping()
    assert web1.xadd(KEYS.lines("web1"), {"m": "x"})

    deployment.stop()
    assert deployment.start() is None
    assert agent(deployment, "web1").xlen(KEYS.lines("web1")) is not None
    with pytest.raises(NoPermissionError):
        agent(deployment, "web1").xadd(KEYS.decisions, {"m": "x"})
    with pytest.raises(AuthenticationError):
        agent(deployment, "web2").ping()
    assert not redis.Redis.from_url(deployment.url, password=ADMIN).sismember(KEYS.hosts, "web2")


def test_redis_never_starts_without_a_password_nor_answers_without_one(tmp_path, deployment):
    refused = Redis(tmp_path).start(password="")
    assert refused is not None and refused.returncode == 1
    assert "PYFILTER_REDIS_PASSWORD is empty" in refused.stderr
    with pytest.raises((AuthenticationError, ResponseError)):
        redis.Redis.from_url(deployment.url).ping()
    with pytest.raises(AuthenticationError):
        redis.Redis.from_url(deployment.url, password="wrong").ping()


def test_every_key_a_service_writes_is_writable_by_one_of_the_users():
    """A new key needs its rule in acl.py (the hosts set is the admin's alone)."""
    import fnmatch

    patterns = [part[1:] for rules in [acl.agent(KEYS, "web1"), *(acl.rules_of(KEYS, r) for r in acl.ROLES)]
                for rule in rules for part in rule.strip("()").split() if part.startswith("~")]
    samples = [KEYS.lines("web1"), KEYS.decisions, KEYS.checkpoint("web1", "auth"), KEYS.window("sshd", ATTACKER),
               KEYS.window_lines("sshd", ATTACKER), KEYS.window_state("sshd", ATTACKER),
               KEYS.window_conns("sshd", ATTACKER), KEYS.ban(ATTACKER), KEYS.active_bans, KEYS.ban_scopes,
               KEYS.ban_history, KEYS.ban_count(ATTACKER), KEYS.whitelist, KEYS.whitelist_notes,
               KEYS.own_addresses("web1"), KEYS.notify_queue("mail"), KEYS.notify_items("mail"),
               KEYS.notify_hold("mail"), KEYS.status("collector", "web1"), KEYS.status_seen("web1"),
               KEYS.counts("web1", 1), KEYS.decisions_read("web1"),
               KEYS.network_units, KEYS.network_seen, KEYS.network_members, KEYS.ban("198.51.100.0/24")]
    assert [k for k in samples if not any(fnmatch.fnmatchcase(k, p) for p in patterns)] == []
