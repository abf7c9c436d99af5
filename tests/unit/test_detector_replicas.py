"""Replicas are interchangeable: 1 or 3 detectors, one killed midway, the same bans.

Real detector processes against a real Redis. Three hosts' lines streams are
filled the way their collectors fill them (on the 3-primary Cluster each
stream is on a primary of its own); the victim replica is frozen (SIGSTOP)
while it holds unacknowledged batches, then killed (SIGKILL), so its batches
must be claimed and finished by the others.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

from pyfilter.common import messages, whitelist
from pyfilter.common.addresses import parse_network
from pyfilter.common.keys import DETECT_GROUP, Keys
from tests.conftest import CLUSTER_URLS, aclient

def sync_client(url: str):
    return redis.RedisCluster.from_url(url) if url in CLUSTER_URLS else redis.Redis.from_url(url)


REPO = Path(__file__).resolve().parents[2]
KEYS = Keys("rep:")
BATCH = 100
# Their streams' slots are on three different primaries of the test cluster
# (rep:lines:h1 16181, h2 3926, h3 8055).
HOSTS = ("h1", "h2", "h3")
STREAMS = [KEYS.lines(h) for h in HOSTS]


def attack_log() -> list[str]:
    """Interleaved sshd lines: 60 addresses fail 6 times (banned), 60 fail 3 times (not),
    among 24,000 lines of noise (so replicas are busy long enough to be killed mid-work)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    banned = [f"198.51.100.{i}" for i in range(1, 31)] + [f"2001:db8::{i:x}" for i in range(1, 31)]
    spared = [f"198.51.100.{i}" for i in range(101, 131)] + [f"2001:db8:1::{i:x}" for i in range(1, 31)]
    lines = []
    for round_ in range(6):
        for n, address in enumerate(banned + (spared if round_ < 3 else [])):
            lines.append(f"{now} host sshd[{1000 + n}]: Failed password for invalid user u{round_} "
                         f"from {address} port {40000 + n} ssh2")
        for n in range(4000):
            lines.append(f"{now} host sshd[{9000 + n}]: Accepted publickey for deploy from 198.51.100.250 "
                         f"port 22 ssh2: ED25519 SHA256:x")
    return lines


def probing_log() -> list[str]:
    """nginx access lines: 60 addresses ask 22 different missing paths (banned by web-probing,
    20 within a minute), 60 ask 6 different ones 5 times each (30 404s, 6 values: not), among
    24,000 lines of found pages."""
    now = datetime.now(timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
    banned = [f"198.51.100.{i}" for i in range(1, 31)] + [f"2001:db8::{i:x}" for i in range(1, 31)]
    spared = [f"198.51.100.{i}" for i in range(101, 131)] + [f"2001:db8:1::{i:x}" for i in range(1, 31)]
    lines = []
    for round_ in range(22):
        for address in banned:
            lines.append(f'{address} - - [{now}] "GET /scan/{round_}/x.php HTTP/1.1" 404 153 "-" "-"')
        for address in spared:
            lines.append(f'{address} - - [{now}] "GET /old/{round_ % 6} HTTP/1.1" 404 153 "-" "Mozilla/5.0"')
        for n in range(1100):
            lines.append(f'198.51.100.250 - - [{now}] "GET /page/{n} HTTP/1.1" 200 5120 "-" "Mozilla/5.0"')
    return lines


def feed(client: redis.Redis, lines: list[str]) -> None:
    """The lines in batches, dealt to the hosts in turn (each host's own line ids)."""
    for n, start in enumerate(range(0, len(lines), BATCH)):
        host = n % len(HOSTS)
        chunk = [messages.Line(f"auth:1:{2 + host}:{i * 200}", text)
                 for i, text in enumerate(lines[start:start + BATCH], start)]
        batch = messages.LineBatch(host=HOSTS[host], source="auth", lines=chunk, read_at=time.time())
        client.xadd(STREAMS[host], {"m": messages.encode(batch)})


def start_detector(config: Path, url: str) -> subprocess.Popen:
    name = f"replica-{time.time_ns()}"
    env = {**os.environ, "PYFILTER_CONFIG": str(config), "PYFILTER_REDIS_URL": url,
           "PYFILTER_REDIS_CLUSTER": "yes" if url in CLUSTER_URLS else "no",
           "PYFILTER_CONSUMER": name, "PYFILTER_METRICS_PORT": "0",
           "PYFILTER_HOST": "h1", "PYFILTER_HEARTBEAT": str(config.parent / f"hb-{time.time_ns()}")}
    log = open(config.parent / "detectors.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "pyfilter.detector"], env=env, stderr=log)
    proc.consumer = name
    return proc


def drained(client: redis.Redis) -> bool:
    return not any(client.xlen(s) for s in STREAMS) and pending(client) == 0


def pending(client: redis.Redis) -> int:
    return sum(g["pending"] for s in STREAMS for g in client.xinfo_groups(s))


def grouped(client: redis.Redis) -> bool:
    """Every host's stream has the detectors' group."""
    return all(client.exists(s) and client.xinfo_groups(s) for s in STREAMS)


def wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def decided(client: redis.Redis) -> set[tuple[str, str]]:
    return {(d.address, d.rule) for d in (messages.decode_decision(f[b"m"])
                                          for _, f in client.xrange(KEYS.decisions))}


def write_config(tmp_path: Path, rule: str = "sshd", extra: str = "") -> Path:
    config = tmp_path / "pyfilter.yaml"
    config.write_text(f"""
redis: {{prefix: "rep:"}}
catalog_dir: {REPO / "config" / "rules"}
detector: {{claim_idle: 2s}}
rules:
  {rule}: {{}}
{extra}""")
    return config


def freeze_while_holding(client: redis.Redis, victim: subprocess.Popen) -> None:
    """SIGSTOP the victim at a moment it holds batches it has not acknowledged."""
    consumer = victim.consumer
    while True:
        victim.send_signal(signal.SIGSTOP)
        held = [c for s in STREAMS for c in client.xinfo_consumers(s, DETECT_GROUP)
                if c["name"].decode() == consumer and c["pending"] > 0]
        if held:
            return
        assert not drained(client), "the victim finished everything before it could be caught"
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.005)


def run_replicas(url: str, config: Path, replicas: int, kill_one: bool,
                 keep_data: bool = False, log=attack_log) -> set[tuple[str, str]]:
    client = sync_client(url)
    if not keep_data:
        client.flushall()
    client.sadd(KEYS.hosts, *HOSTS)
    # With a victim, it starts alone so the batches it will die holding are its own.
    procs = [start_detector(config, url) for _ in range(1 if kill_one else replicas)]
    try:
        wait(lambda: grouped(client), 60, "the detectors' consumer group", config.parent / "detectors.log")
        feed(client, log())
        if kill_one:
            victim = procs[0]
            freeze_while_holding(client, victim)
            procs += [start_detector(config, url) for _ in range(replicas - 1)]
            time.sleep(0.5)  # the others are running; now the victim dies
            victim.kill()
            victim.wait()
        wait(lambda: drained(client), 60, "every batch to be processed", config.parent / "detectors.log")
        return decided(client)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def test_one_and_three_replicas_with_one_killed_decide_the_same_bans(any_redis_url, tmp_path):
    """On a single Redis and on a 3-primary Redis Cluster."""
    redis_url = any_redis_url
    config = write_config(tmp_path)
    expected = {(f"198.51.100.{i}", "sshd") for i in range(1, 31)} | \
               {(f"2001:db8::{i:x}", "sshd") for i in range(1, 31)}
    one = run_replicas(redis_url, config, replicas=1, kill_one=False)
    three = run_replicas(redis_url, config, replicas=3, kill_one=True)
    assert one == expected
    assert three == expected


def test_per_network_bans_are_the_same_with_one_and_three_replicas_with_one_killed(any_redis_url, tmp_path):
    """The per-network kind: the 30 banned addresses of 198.51.100.0/24, and of 2001:db8::/64,
    ban their network once (the /48 sees one /64: no)."""
    config = write_config(tmp_path, extra="network: {enabled: true, threshold: 10}\n")
    expected = {(f"198.51.100.{i}", "sshd") for i in range(1, 31)} | \
               {(f"2001:db8::{i:x}", "sshd") for i in range(1, 31)} | \
               {("198.51.100.0/24", "network"), ("2001:db8::/64", "network")}
    one = run_replicas(any_redis_url, config, replicas=1, kill_one=False)
    three = run_replicas(any_redis_url, config, replicas=3, kill_one=True)
    assert one == expected
    assert three == expected


def test_one_and_three_replicas_decide_the_same_distinct_window_bans(any_redis_url, tmp_path):
    """The distinct window (web-probing): the same bans with one replica, and with three
    of which one is killed while it holds batches; each ban is decided by that window."""
    config = write_config(tmp_path, "web-probing")
    expected = {(f"198.51.100.{i}", "web-probing") for i in range(1, 31)} | \
               {(f"2001:db8::{i:x}", "web-probing") for i in range(1, 31)}
    redis_url = any_redis_url  # a single Redis and a 3-primary Redis Cluster
    one = run_replicas(redis_url, config, replicas=1, kill_one=False, log=probing_log)
    three = run_replicas(redis_url, config, replicas=3, kill_one=True, log=probing_log)
    assert one == expected
    assert three == expected
    client = sync_client(redis_url)
    windows = {messages.decode_record(client.get(KEYS.ban(a))).window for a, _ in expected}
    assert windows == {"distinct"}


def test_a_stopped_detector_finishes_what_it_took(any_redis_url, tmp_path):
    """SIGTERM while busy: the detector finishes the reads it already took
    (including the one it asked for ahead and, on Cluster, what the other
    primaries' reads still brought) and leaves nothing pending."""
    redis_url = any_redis_url
    config = write_config(tmp_path)
    client = sync_client(redis_url)
    client.flushall()
    client.sadd(KEYS.hosts, *HOSTS)
    first = start_detector(config, redis_url)
    log = config.parent / "detectors.log"
    wait(lambda: grouped(client), 60, "the consumer group", log)
    feed(client, attack_log() * 4)
    wait(lambda: pending(client) > 0, 30, "the detector to take work", log)
    first.terminate()
    assert first.wait(30) == 0
    assert pending(client) == 0, log.read_text()[-3000:]
    assert sum(client.xlen(s) for s in STREAMS) > 0, "the detector finished every stream before it was stopped"
    second = start_detector(config, redis_url)  # the rest, for the same bans as without a stop
    try:
        wait(lambda: drained(client), 60, "every batch to be processed", log)
    finally:
        second.terminate()
        second.wait(10)
    # Four rounds of the log: the "spared" addresses fail 12 times too.
    everyone = [f"198.51.100.{i}" for i in [*range(1, 31), *range(101, 131)]] + \
        [f"2001:db8::{i:x}" for i in range(1, 31)] + [f"2001:db8:1::{i:x}" for i in range(1, 31)]
    assert decided(client) == {(a, "sshd") for a in everyone}


def test_detector_does_not_count_an_operator_whitelisted_network(redis_url, tmp_path):
    async def add():
        client = aclient(redis_url)
        await whitelist.add(client, KEYS, parse_network("198.51.100.0/28"))
        await client.aclose()
    asyncio.run(add())
    decided_bans = run_replicas(redis_url, write_config(tmp_path), replicas=1, kill_one=False,
                                keep_data=True)
    assert not any(a.startswith("198.51.100.") and int(a.rsplit(".", 1)[1]) < 16
                   for a, _ in decided_bans)
    assert ("198.51.100.20", "sshd") in decided_bans
