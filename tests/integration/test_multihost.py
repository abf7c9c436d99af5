"""Many hosts, one ban list: an attack seen on one host is dropped on all of them,
a host's user opens nothing but its part, a host cut off from Redis catches up
on exactly what it missed, a detector killed in the middle of an attack loses
no failure, and the Redis primary killed in the middle of an attack loses no
ban, unban or line.

Three "hosts" (containers, each its own network namespace) run the agent
profile from compose/agent.yml; the server profile from compose/server.yml
holds Redis, the detector and the api. Every test runs on each many-node
Redis the deployment offers, one stack per profile:
- "ha": Redis as compose/server-ha.yml runs it (a primary, two replicas,
  three sentinels, TLS only; writes confirmed by a replica);
- "cluster": as compose/server-cluster.yml runs it (a Redis Cluster of three
  primaries made by its `cluster` one-shot, TLS only, the bus too).
Each host's agent has its own Redis user, made on every node by
`pyfilter server add-host`. The primary's failover is Sentinel's alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.integration.stack import ROOT, make_log_dir, running, wait_for
from tests.integration.hosts import ATTACKER, HOSTS, ThreeHosts, ban_reaches_every_host
from tests.integration.test_identities import FORBIDDEN, KEYS
from tests.integration.test_pipeline import sshd_failures
from tests.unit.test_cluster_acl import node_free_of_host

pytestmark = pytest.mark.integration

OVERRIDE = os.path.join(os.path.dirname(__file__), "compose.multihost.yml")
# Each profile: its compose layer, its Redis services (the names its certificate carries too),
# and where `make host-credentials` tells agents to go.
PROFILES = {
    "ha": (os.path.join(os.path.dirname(__file__), "compose.multihost-ha.yml"),
           ["redis", "redis-2", "redis-3", "sentinel-1", "sentinel-2", "sentinel-3"],
           "rediss+sentinel://sentinel-1:26379,sentinel-2:26380,sentinel-3:26381/pyfilter/0"),
    "cluster": (os.path.join(os.path.dirname(__file__), "compose.multihost-cluster.yml"),
                ["redis", "redis-2", "redis-3", "cluster"], "rediss://redis:6379/0"),
}


@dataclass
class MultiHost(ThreeHosts):
    profile: str = "ha"

    def __post_init__(self) -> None:
        super().__post_init__()
        # TLS only (compose/server-ha.yml, server-cluster.yml), with a certificate naming the
        # nodes (and sentinels) as they are reached here, and the passwords `make server` generates.
        self.tls = Path(tempfile.mkdtemp(prefix="pyfilter-it-tls-")) / "tls"
        names = [n for n in PROFILES[self.profile][1] if n != "cluster"]
        subprocess.run([ROOT / "compose/tls.sh", self.tls, *names], check=True, capture_output=True)
        self.env |= {"PYFILTER_TLS_DIR": str(self.tls), "PYFILTER_REDIS_CA": str(self.tls / "ca.crt"),
                     **{f"PYFILTER_{role}_REDIS_PASSWORD": secrets.token_urlsafe(16)
                        for role in ("DETECTOR", "API", "NOTIFIER", "REPLICA", "SENTINEL", "SENTINEL_PEER")}}

    def up(self) -> None:
        """The server first; then each host's user on every node, as `make host-credentials HA=1`
        (CLUSTER=1) makes it; then the agents."""
        _, redis, public = PROFILES[self.profile]
        server = [*redis, "users", "detector", "api", "attacker", *(f"host-{h}" for h in HOSTS)]
        self.compose("up", "-d", "--wait", "--wait-timeout", "120", *server)
        for h in HOSTS:
            out = self.compose("--profile", "admin", "run", "--rm", "-T", "admin", "pyfilter", "server",
                               "add-host", f"host-{h}", "--url", public).stdout
            settings = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            assert settings.get("PYFILTER_REDIS_CLUSTER") == ("1" if self.profile == "cluster" else None)
            self.env[f"URL_{h.upper()}"] = settings["PYFILTER_REDIS_URL"]
        super().up()

    def redis_cli(self, *args: str, node: str | None = None) -> str:
        """A command as admin: with Sentinel on the current primary (or on `node`, "host port"),
        from a sentinel's container; on the cluster on the node of its key (-c), from `redis`'s."""
        if self.profile == "cluster":
            code, out = self.exec("redis", *REDIS_CLI, "-c", "-h", "redis", "-p", "6379", *args)
        else:
            where = (node or self.primary()).split()
            code, out = self.exec("sentinel-1", *REDIS_CLI, "-h", where[0], "-p", where[1], *args)
        if code != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {out}")
        return out.strip()

    def as_host(self, host: str, *command: str) -> str:
        """A Redis command with host `host`'s credentials, from inside its collector, through the
        client its services use (Sentinel's or the cluster's, which sends it to the node of its
        key, or to every node); its reply or error."""
        script = ("import asyncio, sys\n"
                  "from pyfilter.common import config\n"
                  "from pyfilter.common.redisio import connect\n"
                  "async def main():\n"
                  "    c = connect(config.load(rules=False).config.redis)\n"
                  "    try: print(await c.execute_command(*sys.argv[1:]))\n"
                  "    except Exception as e: print(type(e).__name__, e)\n"
                  "asyncio.run(main())\n")
        code, out = self.exec(f"collector-{host}", "python", "-c", script, *command)
        assert code == 0, out
        return out.strip().splitlines()[-1]

    def primary(self) -> str:
        """The primary as the sentinels give it out: "host port" ("" while they have none)."""
        code, out = self.exec("sentinel-1", *REDIS_CLI, "-p", "26379",
                              "SENTINEL", "get-master-addr-by-name", "pyfilter")
        return " ".join(out.split()) if code == 0 else ""


REDIS_CLI = ["redis-cli", "--no-auth-warning", "--tls", "--cacert", "/etc/pyfilter/tls/ca.crt"]


@pytest.fixture(scope="module", params=list(PROFILES))
def hosts(request):
    stack = MultiHost(project=f"pyfilter-mh-{request.param}-{os.getpid()}", log_dir=make_log_dir(),
                      files=[OVERRIDE, PROFILES[request.param][0]], profile=request.param)
    try:
        with running(stack):
            yield stack
    finally:
        if not os.environ.get("PYFILTER_KEEP_LOGS"):  # the hosts' logs; `running` removes log_dir
            for path in stack.logs.values():
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(stack.tls.parent, ignore_errors=True)


def test_attack_on_one_host_is_dropped_on_every_host_within_a_second(hosts):
    ban_reaches_every_host(hosts)


def test_a_hosts_user_is_refused_everything_but_its_part(hosts):
    for what, command in FORBIDDEN.items():
        assert hosts.as_host("a", *command).startswith("NoPermissionError"), what
    assert hosts.as_host("a", "XLEN", KEYS.lines("host-a")).isdigit()


def test_host_cut_off_from_redis_keeps_its_bans_and_catches_up_exactly(hosts):
    wait_for(lambda: all(ATTACKER in hosts.banned_on(h) for h in HOSTS), 30, "the first test's ban")
    net = hosts.docker.networks.get(hosts.network())
    net.disconnect(hosts.container("host-c"))
    try:
        # While C is away: an unban, a manual ban, and a new attack seen on B.
        assert hosts.api("DELETE", f"/api/v1/bans/{ATTACKER}", token=hosts.token)[0] == 200
        assert hosts.api("POST", "/api/v1/bans", {"address": "198.51.100.72", "duration": "1h"},
                         token=hosts.token)[0] == 201
        with open(hosts.logs["b"] / "auth.log", "a") as log:
            log.write(sshd_failures("198.51.100.73", 3))
        want = {"198.51.100.72", "198.51.100.73"}
        wait_for(lambda: all(hosts.banned_on(h) == want for h in "ab"), 30,
                 "hosts A and B to apply the changes")
        time.sleep(2)  # give C every chance to (wrongly) change while cut off
        assert hosts.banned_on("c") == {ATTACKER}, "host C changed its kernel while cut off"
    finally:
        net.connect(hosts.container("host-c"))

    wait_for(lambda: hosts.banned_on("c") == {"198.51.100.72", "198.51.100.73"}, 60,
             "host C to catch up after reconnecting")
    assert hosts.tcp_connects("attacker", HOSTS["c"], 8080)


def one_failure(address: str, n: int) -> str:
    """One sshd failure, its own connection (pid): exactly one entry in the address's window.
    Each address tries its own account, so sshd's per-account window (which would rightly
    ban the counted addresses too: many addresses on root) stays out of this test."""
    return (f"{datetime.now(timezone.utc).isoformat(timespec='microseconds')} target sshd[{7000 + n}]: "
            f"Failed password for user-{address.replace(':', '-')} from {address} port {40000 + n} ssh2\n")


BANNED = [f"198.51.100.{i}" for i in range(160, 190)]  # 5 failures each: maxretry, banned
COUNTED = [f"198.51.100.{i}" for i in range(190, 220)]  # 4 each: counted, not banned
ROUNDS = 5


KILLED_BANNED = [f"198.51.100.{i}" for i in range(128, 144)]  # 5 failures each: banned
KILLED_COUNTED = [f"198.51.100.{i}" for i in range(144, 160)]  # 4 each: counted, not banned


def test_detector_killed_mid_attack_loses_no_failure(hosts):
    """Three hosts' logs take one failure per address per round, spread over the hosts;
    the detector is killed (SIGKILL) after round 2, holding what it read, and started
    again after round 3. Every ban reaches every host's kernel, nothing else is banned,
    and each spared window holds exactly the failures written."""
    detector = hosts.container("detector")

    def attack(r: int) -> None:
        for n, address in enumerate(KILLED_BANNED + (KILLED_COUNTED if r < ROUNDS - 1 else [])):
            with open(hosts.logs["abc"[(n + r) % 3]] / "auth.log", "a") as log:
                log.write(one_failure(address, 5000 + r * 100 + n))
    for r in range(ROUNDS):
        attack(r)
        time.sleep(1.0)
        if r == 1:
            detector.kill()
        if r == 2:
            detector.start()
    wait_for(lambda: all(hosts.banned_on(h) >= set(KILLED_BANNED) for h in HOSTS), 120,
             "every banned address in every host's kernel")
    for h in HOSTS:
        assert not hosts.banned_on(h) & set(KILLED_COUNTED), f"host {h} banned an address that failed 4 times"
    windows = {a: int(hosts.redis_cli("ZCARD", f"pyfilter:window:sshd:{{{a}}}")) for a in KILLED_COUNTED}
    assert windows == {a: ROUNDS - 1 for a in KILLED_COUNTED}, "a window does not hold exactly the lines written"


@pytest.mark.profiles("ha")  # the cluster profile's primaries have no replicas to fail over to
def test_primary_killed_mid_attack_loses_no_ban_no_unban_and_counts_each_line_once(hosts):
    """Three hosts' logs take one failure per address per round, spread over the
    hosts; the Redis primary is killed (SIGKILL) after round 2, and an unban is
    asked for while the sentinels fail over. Every ban reaches every host's
    kernel, the unban holds, and each window holds exactly the failures written."""
    wait_for(lambda: all(hosts.banned_on(h) >= {"198.51.100.72"} for h in HOSTS), 60, "the earlier manual ban")
    old = hosts.primary()
    assert old.split()[0] == "redis"
    hosts.redis_cli("SET", "ha-probe", "1")
    wait_for(lambda: hosts.redis_cli("WAIT", "2", "1000") == "2", 30, "both replicas to hold the writes")

    killed = threading.Event()
    def attack():
        for r in range(ROUNDS):
            for n, address in enumerate(BANNED + (COUNTED if r < ROUNDS - 1 else [])):
                with open(hosts.logs["abc"[(n + r) % 3]] / "auth.log", "a") as log:
                    log.write(one_failure(address, r * 1000 + n))
            if r == 1:
                hosts.container("redis").kill()
                killed.set()
            time.sleep(1.0)
    writer = threading.Thread(target=attack)
    writer.start()
    try:
        assert killed.wait(60)
        started = time.monotonic()
        # Just after the kill: an unban, and a probe attack whose ban says when bans flow again.
        # The api's first request may wait on its connection to the killed primary: give it time.
        wait_for(lambda: hosts.api("DELETE", "/api/v1/bans/198.51.100.72", token=hosts.token, timeout=60)[0] == 200,
                 120, "the api to take the unban (503 while Redis fails over)", interval=0.2)
        unbanned = time.monotonic() - started
        with open(hosts.logs["b"] / "auth.log", "a") as log:
            log.write("".join(one_failure("198.51.100.240", 9000 + i) for i in range(5)))
        promoted = wait_for(lambda: (p := hosts.primary()) and p != old and p, 120, "a new primary")
        failover = time.monotonic() - started
        wait_for(lambda: all("198.51.100.240" in hosts.banned_on(h) for h in HOSTS), 120,
                 "the probe's ban on every host")
        flowing = time.monotonic() - started
    finally:
        writer.join()
    print(f"\nprimary killed: sentinels named {promoted!r} after {failover:.1f} s; a ban written "
          f"after the kill reached every host's kernel after {flowing:.1f} s; the api took the unban "
          f"after {unbanned:.1f} s")

    wait_for(lambda: all(hosts.banned_on(h) >= set(BANNED) for h in HOSTS), 120,
             "every banned address in every host's kernel")
    for h in HOSTS:
        banned = hosts.banned_on(h)
        assert "198.51.100.72" not in banned, f"the unban was lost on host {h}"
        assert not banned & set(COUNTED), f"host {h} banned an address that failed 4 times"
    assert hosts.redis_cli("ZSCORE", "pyfilter:bans:active", "198.51.100.72") == ""
    windows = {a: int(hosts.redis_cli("ZCARD", f"pyfilter:window:sshd:{{{a}}}")) for a in COUNTED}
    assert windows == {a: ROUNDS - 1 for a in COUNTED}, "a window does not hold exactly the lines written"

    # The old primary comes back as a replica of the new one.
    hosts.container("redis").start()

    def rejoined() -> bool:
        try:
            return "role:slave" in hosts.redis_cli("INFO", "replication", node="redis 6379")
        except RuntimeError:  # not listening yet: redis-start.sh sets up its files first
            return False
    wait_for(rejoined, 60, "the old primary to rejoin as a replica")


@pytest.mark.profiles("ha")  # the cluster's variant below: it has no sentinel
def test_a_node_and_a_sentinel_down_during_add_and_remove_host_take_the_users_when_they_start(hosts):
    """A replica and a sentinel stopped while a host is added and another removed take
    the users of now when their containers start again (compose/redis-start.sh from
    the primary, compose/sentinel.sh from another sentinel), with no `make server`."""
    sentinels = PROFILES["ha"][2]
    def server(*args: str) -> int:
        return hosts.compose("--profile", "admin", "run", "--rm", "-T", "admin", "pyfilter", "server",
                             *args, check=False).returncode

    replica = next(n for n in ("redis", "redis-2", "redis-3") if n != hosts.primary().split()[0])
    where = {"redis": "redis 6379", "redis-2": "redis-2 6380", "redis-3": "redis-3 6381"}[replica]
    assert server("add-host", "host-e", "--url", sentinels) == 0
    for service in (replica, "sentinel-3"):
        hosts.container(service).stop()
    try:
        assert server("add-host", "host-d", "--url", sentinels) == 2  # named: not on the stopped two
        assert server("remove-host", "host-e") == 2
    finally:
        for service in (replica, "sentinel-3"):
            hosts.container(service).start()

    def users(node: str) -> set[str] | None:
        try:
            return set(hosts.redis_cli("ACL", "USERS", node=node).split())
        except RuntimeError:  # not listening yet
            return None
    for node in (where, "sentinel-3 26381"):
        listed = wait_for(lambda: users(node), 60, f"{node} to answer again")
        assert "pyfilter-host-host-d" in listed and "pyfilter-host-host-e" not in listed, f"{node}: {listed}"


@pytest.mark.profiles("cluster")
def test_a_cluster_node_down_during_add_and_remove_host_takes_the_users_when_it_starts(hosts):
    """A node (not `redis`, the users' owner) stopped while a host is added and another
    removed takes the users of now when its container starts again (compose/redis-start.sh
    from `redis`), with no `make server`. The node holds none of the keys they write, and
    the others do not mark it failed meanwhile (their cluster-node-timeout raised for the
    test: else every command is CLUSTERDOWN after 15 s, test_cluster_acl's own case)."""
    def owner(key: str) -> str:
        return next(node for node, ranges in slots.items() if any(a <= key_slot(key.encode()) <= b for a, b in ranges))
    slots = cluster_slots(hosts.redis_cli("CLUSTER", "NODES"))
    gone, down = node_free_of_host(owner, ["redis-2", "redis-3"])
    public = PROFILES["cluster"][2]
    ports = {"redis": "6379", "redis-2": "6380", "redis-3": "6381"}

    def on(node: str, *command: str) -> str:
        code, out = hosts.exec("redis", *REDIS_CLI, "-h", node, "-p", ports[node], *command)
        return out if code == 0 else ""

    def node_timeout(ms: int) -> None:
        for node in ports.keys() - {down}:
            assert "OK" in on(node, "CONFIG", "SET", "cluster-node-timeout", str(ms)), node

    def server(script: str) -> subprocess.CompletedProcess:
        return hosts.compose("--profile", "admin", "run", "--rm", "-T", "admin", "sh", "-c", script, check=False)
    assert server(f"pyfilter server add-host {gone} --url {public}").returncode == 0
    node_timeout(600_000)
    try:
        hosts.container(down).stop()
        try:
            changed = server(f"pyfilter server add-host host-d --url {public}; echo added $?; "
                             f"pyfilter server remove-host {gone}; echo removed $?")
            assert "added 2" in changed.stdout and "removed 2" in changed.stdout, changed.stdout + changed.stderr
        finally:
            hosts.container(down).start()

        def users() -> set[str] | None:
            out = on(down, "ACL", "USERS")
            return set(out.split()) if "default" in out.split() else None  # else not listening yet
        listed = wait_for(users, 60, f"{down} to answer again")
        assert "pyfilter-host-host-d" in listed and f"pyfilter-host-{gone}" not in listed, f"{down}: {listed}"
        wait_for(lambda: "cluster_state:ok" in hosts.redis_cli("CLUSTER", "INFO"), 60, "the cluster to work again")
    finally:
        node_timeout(15_000)  # compose's, Redis's default


def cluster_slots(listing: str) -> dict[str, list[tuple[int, int]]]:
    """Each primary's slot ranges, by the name it gives out, from a CLUSTER NODES reply."""
    slots = {}
    for line in listing.splitlines():
        fields = line.split()
        name = fields[1].split(",", 1)[1]
        slots[name] = [tuple(map(int, r.split("-"))) if "-" in r else (int(r), int(r))
                       for r in fields[8:] if not r.startswith("[")]
    return slots
