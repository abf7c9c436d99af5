"""The whole pipeline on a 3-primary Redis Cluster, end to end, with real processes.

Two hosts, web1 and web2, each with a collector tailing its own auth.log
(their lines streams are on two different primaries) and an enforcer whose
nftables sets are in a network namespace the test made (it reaches the
cluster's loopback ports through `netns.loopback_relay`). Three detectors
share the work; the first is frozen while it holds unacknowledged batches,
then killed, and web1's collector is killed mid-attack and restarted.

Every attacker's failures are split over both hosts' logs. In the end each
banned address is in both hosts' kernel sets, no spared one is, every
address was decided once, and each window counted exactly the failures
written (a banned one's count is in its ban record): none lost, none
counted twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
import redis
import yaml

from pyfilter.common import messages
from pyfilter.common.keys import DETECT_GROUP, Keys
from pyfilter.enforcer.backends.nftables import NftablesBackend
from tests import processes
from tests.unit.netns import loopback_relay, new_netns, run_backend

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 (network namespaces for the enforcers)")

REPO = Path(__file__).resolve().parents[2]
KEYS = Keys()
HOSTS = ("web1", "web2")  # pyfilter:lines:web1 is in slot 4474 (first primary), web2 in 8473 (second)
STREAMS = [KEYS.lines(h) for h in HOSTS]
MAXRETRY = 4
BANNED = [f"2001:db8:c1::{i:x}" for i in range(1, 101)] + [f"198.51.100.{i}" for i in range(1, 51)]
SPARED = [f"198.51.100.{i}" for i in range(101, 151)]  # one failure short of a ban
NOISE = 3000  # lines per host and round that are no failure: keeps the detectors busy


@pytest.fixture
def cluster(redis_cluster):
    url, ports = redis_cluster
    for port in ports:
        redis.Redis(port=port).flushall()
    return url, ports


def write_config(folder: Path, url: str, log: Path, wait_replicas: int = 0) -> Path:
    config = folder / "pyfilter.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": url, "cluster": True, "wait_replicas": wait_replicas, "wait_timeout_ms": 500},
        "catalog_dir": str(REPO / "config" / "rules"),
        "detector": {"claim_idle": "2s"},
        "enforcer": {"backend": "nftables", "reconcile_interval": "1h"},
        "collector": {"poll_interval": 0.05, "sources": [{"name": "auth", "type": "file", "paths": [str(log)]}]},
        # Without sshd's per-account window: the attack is many addresses on root, and the
        # addresses meant to be spared here would be banned by it (rightly).
        "rules": {"sshd": {"maxretry": MAXRETRY, "findtime": "1h", "bantime": "1h", "per_account": False}},
    }))
    return config


class Host:
    """One protected host: its log, its config, its collector and its enforcer's namespace."""

    def __init__(self, name: str, folder: Path, url: str, wait_replicas: int = 0):
        self.name, self.folder = name, folder
        folder.mkdir()
        self.log = folder / "auth.log"
        self.log.touch()
        self.config = write_config(folder, url, self.log, wait_replicas)
        self.collector: subprocess.Popen | None = None
        self.enforcer: subprocess.Popen | None = None
        self.netns = ""

    def env(self, service: str) -> dict:
        return {**os.environ, "PYFILTER_CONFIG": str(self.config), "PYFILTER_HOST": self.name,
                "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(self.folder / f"hb-{service}")}

    def start_collector(self) -> None:
        self.collector = spawn([sys.executable, "-m", "pyfilter.collector"], self.env("collector"),
                               self.folder / "collector.log")

    def start_enforcer(self) -> None:
        self.enforcer = spawn(["ip", "netns", "exec", self.netns, sys.executable, "-m", "pyfilter.enforcer"],
                              self.env("enforcer"), self.folder / "enforcer.log")

    def kernel(self) -> set[str]:
        """What this host's nftables sets hold (read inside its namespace)."""
        async def listed(backend):
            return set(await backend.list())
        return run_backend(self.netns, NftablesBackend, listed, init=False)

    def read_to_the_end(self, client) -> bool:
        st = self.log.stat()
        saved = client.hget(KEYS.checkpoint(self.name, "auth"), f"{st.st_dev}:{st.st_ino}")
        return saved is not None and msgspec.json.decode(saved)["offset"] == st.st_size


def spawn(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=out)


def start_detector(config: Path, folder: Path) -> subprocess.Popen:
    name = f"detector-{time.time_ns()}"
    env = {**os.environ, "PYFILTER_CONFIG": str(config), "PYFILTER_CONSUMER": name,
           "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(folder / f"hb-{name}")}
    proc = spawn([sys.executable, "-m", "pyfilter.detector"], env, folder / "detectors.log")
    proc.consumer = name
    return proc


def outcome(client: redis.RedisCluster, hosts: list[Host]) -> tuple[list[set[str]], list[messages.Decision], dict[str, int]]:
    """What a run left: each host's kernel set, the decisions, and the failures counted per
    address (a window that banned is emptied: its count is in the ban record)."""
    kernels = [h.kernel() for h in hosts]
    decisions = [messages.decode_decision(f[b"m"]) for _, f in client.xrange(KEYS.decisions)]
    counted = {a: messages.decode_record(client.get(KEYS.ban(a))).failures for a in BANNED}
    counted |= {a: client.zcard(KEYS.window("sshd", a)) for a in SPARED}
    return kernels, decisions, counted


def attack_round(hosts: list[Host], n: int) -> dict[str, int]:
    """Round n: every attacker still due fails once, in the log of host n % 2;
    both logs get their noise. Returns the failures written, by address."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    due = BANNED + (SPARED if n <= MAXRETRY - 1 else [])
    target = hosts[n % 2]
    for host in hosts:
        lines = [f"{stamp} {host.name} sshd[{20000 + i}]: Accepted publickey for deploy from 198.51.100.250 "
                 f"port {30000 + i} ssh2: ED25519 SHA256:x" for i in range(NOISE)]
        if host is target:
            lines += [f"{stamp} {host.name} sshd[{10000 * n + i}]: Failed password for root from {address} "
                      f"port {40000 + i} ssh2" for i, address in enumerate(due)]
        with host.log.open("a") as f:
            f.write("".join(line + "\n" for line in lines))
    return dict.fromkeys(due, 1)


def wait(predicate, what: str, logs: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def pending(client) -> int:
    return sum(g["pending"] for s in STREAMS if client.exists(s) for g in client.xinfo_groups(s))


def drained(client) -> bool:
    return not any(client.xlen(s) for s in STREAMS) and pending(client) == 0


def freeze_while_holding(client, victim: subprocess.Popen) -> None:
    """SIGSTOP the victim at a moment it holds batches it has not acknowledged."""
    while True:
        victim.send_signal(signal.SIGSTOP)
        if any(c["name"].decode() == victim.consumer and c["pending"] > 0
               for s in STREAMS if client.exists(s) for c in client.xinfo_consumers(s, DETECT_GROUP)):
            return
        assert not drained(client), "the victim finished everything before it could be caught"
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.005)


def test_two_hosts_three_detectors_one_killed_ban_in_both_kernels_on_cluster(cluster, tmp_path):
    url, ports = cluster
    client = redis.RedisCluster.from_url(url)
    hosts = [Host(name, tmp_path / name, url) for name in HOSTS]
    logs = [p for h in hosts for p in (h.folder / "collector.log", h.folder / "enforcer.log")]
    logs.append(tmp_path / "detectors.log")
    detectors: list[subprocess.Popen] = []
    written: dict[str, int] = {}
    with new_netns() as ns1, new_netns() as ns2, loopback_relay(ns1, ports), loopback_relay(ns2, ports):
        hosts[0].netns, hosts[1].netns = ns1, ns2
        try:
            for host in hosts:
                host.start_enforcer()
                host.start_collector()
            wait(lambda: all(client.exists(KEYS.decisions_read(h)) for h in HOSTS), "the enforcers' positions", logs)
            wait(lambda: all(client.hexists(KEYS.checkpoint(h, "auth"), "seen") for h in HOSTS),
                 "the collectors' first look at their logs", logs)
            for n in (1, 2):
                for address, count in attack_round(hosts, n).items():
                    written[address] = written.get(address, 0) + count
            wait(lambda: all(h.read_to_the_end(client) for h in hosts), "both logs read", logs)

            # One detector takes a backlog, is frozen holding some of it, two more start, it dies.
            victim = start_detector(hosts[0].config, tmp_path)
            detectors.append(victim)
            wait(lambda: pending(client) > 0, "the first detector to take work", logs)
            freeze_while_holding(client, victim)
            detectors += [start_detector(hosts[0].config, tmp_path) for _ in range(2)]
            time.sleep(0.5)
            victim.kill()
            victim.wait()

            # web1's collector dies between rounds and comes back.
            hosts[0].collector.kill()
            hosts[0].collector.wait()
            hosts[0].start_collector()
            for n in (3, 4):
                for address, count in attack_round(hosts, n).items():
                    written[address] = written.get(address, 0) + count
            wait(lambda: all(h.read_to_the_end(client) for h in hosts), "both logs read after the restart", logs)
            wait(lambda: drained(client), "every batch processed", logs)

            wanted = set(BANNED)
            wait(lambda: all(wanted <= h.kernel() for h in hosts), "every ban in both hosts' kernel sets", logs)
            kernels, decisions, counted = outcome(client, hosts)
        finally:
            processes.stop([*detectors, *(p for h in hosts for p in (h.collector, h.enforcer) if p)])
    assert kernels[0] == kernels[1] == wanted
    assert sorted(d.address for d in decisions if d.action == "ban") == sorted(BANNED)
    assert counted == written == {**dict.fromkeys(BANNED, MAXRETRY), **dict.fromkeys(SPARED, MAXRETRY - 1)}
