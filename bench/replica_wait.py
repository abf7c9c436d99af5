"""What waiting for a replica (WAIT, `redis.wait_replicas`) costs the writes that use it.

    python -m bench.replica_wait [--batches 300] [--calls 300]

A private primary and one replica (`redis-server`, loopback TCP, no
persistence). Timed with `wait_replicas` 0 (no WAIT sent) and 1, alternating
and three times each: the collector's commit of 1,000-line batches with their
checkpoint (`Committer.commit`), and the ledger's `record_failures` with 100
failures of 100 new addresses a call (windows start empty each run).
Prints milliseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import tempfile
import time

import redis

from pyfilter.collector.checkpoints import Committer
from pyfilter.collector.sources.base import Batch, Stats
from pyfilter.common.config import RedisConfig, Rule
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.messages import Line
from pyfilter.common.redisio import connect
from pyfilter.detector.windows import Observed, Windows

KEYS = Keys("bench:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, folder: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
                             "--save", "", "--appendonly", "no", *extra], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


async def commits(url: str, replicas: int, batches: int) -> float:
    client = connect(RedisConfig(url=url, prefix=KEYS.prefix, wait_replicas=replicas))
    committer = Committer(client, KEYS, "bench", maxlen=10_000_000)
    lines = [Line(f"auth:1:2:{i}", f"Nov 21 23:23:04 bench sshd[{i}]: Failed password for root "
                  f"from 198.51.100.{i % 256} port 1024 ssh2") for i in range(1000)]
    stats = Stats()
    started = time.perf_counter()
    for n in range(batches):
        await committer.commit("auth", Batch(lines, checkpoint={"offset": str(n).encode()}), stats)
    elapsed = time.perf_counter() - started
    await client.delete(KEYS.lines("bench"))
    await client.aclose()
    return elapsed / batches * 1000


async def records(url: str, replicas: int, calls: int) -> float:
    client = connect(RedisConfig(url=url, prefix=KEYS.prefix, wait_replicas=replicas))
    await client.flushall()
    await Ledger(client, KEYS).load()
    rule = Rule(service="sshd", patterns=["x"], maxretry=1_000_000, findtime=3600)
    windows = Windows(client, KEYS.prefix, {"sshd": rule})
    started = time.perf_counter()
    for n in range(calls):
        now = time.time()
        await windows.record([Observed("sshd", f"2001:db8::{n:x}:{i:x}", "bench", now, f"auth:{n}:{i}",
                                       "failed") for i in range(100)], now)
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as primary_dir, tempfile.TemporaryDirectory() as replica_dir:
        primary_port, replica_port = free_port(), free_port()
        procs = [start(primary_port, primary_dir),
                 start(replica_port, replica_dir, "--replicaof", "127.0.0.1", str(primary_port))]
        try:
            url = f"redis://127.0.0.1:{primary_port}/0"
            results: dict[tuple[str, int], list[float]] = {}
            for _ in range(3):
                for replicas in (0, 1):
                    results.setdefault(("commit", replicas), []).append(
                        asyncio.run(commits(url, replicas, args.batches)))
                    results.setdefault(("record_failures", replicas), []).append(
                        asyncio.run(records(url, replicas, args.calls)))
            for (what, replicas), ms in results.items():
                print(f"{what:16} wait_replicas={replicas}: " + ", ".join(f"{m:.2f} ms" for m in ms) + " per call")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
