"""Redis memory of a 24 h slow window for many addresses, and of the same window as a sorted set.

    python -m bench.slow_memory [--addresses 1000000] [--failures 5]
    python -m bench.slow_memory --flood 200000

A private redis-server (unix socket, no persistence) is filled through the
ledger's real functions (`Windows.record`, 1,000 failures a call): each
address fails `--failures` times, in different hours of the last 24 (none in
the last 15 minutes, so the rule's fast window holds nothing), below the
threshold. Measured with `INFO memory` (used_memory) before and after:

- slow: sshd with `slow: {maxretry: 30, findtime: 24h, bucket: 1h}`, as
  filled (every line id still within the redelivery horizon: the worst
  case, all the failures counted in the last hour), and once the ids are
  gone (what their expiry does an hour after an address's last failure);
- sorted set: a sliding window of 30 in 24 h (`findtime: 24h`), which keeps
  every failure, on a fresh server.
With `--flood N`, instead: the Redis CPU per failure of bench.scaling's
flood (every address fails 4 times in 5 minutes) with and without sshd's
slow window, which counts every failure too.
docs/scaling.md ("Slow windows") has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from bench.scaling import BATCH, MAXRETRY, Servers, attack
from pyfilter.common.config import Rule, Seconds
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.detector.windows import Observed, Windows

HOUR = 3600
PREFIX = "pf:"


def rule(slow: bool) -> Rule:
    base = {"service": "sshd", "patterns": ["unused"], "maxretry": 30, "findtime": 86400, "bantime": 86400}
    if slow:
        base = {**base, "maxretry": 5, "findtime": 600, "slow": {"maxretry": 30, "findtime": 86400, "bucket": 3600}}
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def address(i: int) -> str:
    """Distinct addresses: 198.51.100.0/24, then 2001:db8::/32 (longer: keys are not flattered)."""
    return f"198.51.100.{i}" if i < 256 else f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1"


def calls(addresses: int, failures: int, now: float):
    """The attack, BATCH failures at a time: address a's k-th failure some hours ago."""
    batch: list[Observed] = []
    for a in range(addresses):
        ip = address(a)
        for k in range(failures):
            hours_ago = 1 + (a + 4 * k) % 23  # distinct hours for up to 5 failures, then again
            t = float(int(now - hours_ago * HOUR + 900 - a % 900))
            text = f"Dec  6 06:{k:02d}:00 bench sshd[{10_000 + a % 50_000}]: Failed password for invalid " \
                   f"user admin from {ip} port {1024 + a % 60_000} ssh2"
            batch.append(Observed("sshd", ip, "bench", t, f"auth:0:0:{a * failures + k}", text))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


async def fill(sock: str, slow: bool, addresses: int, failures: int) -> dict[str, float]:
    client = aioredis.Redis(unix_socket_path=sock)
    windows = Windows(client, PREFIX, {"sshd": rule(slow)})
    now = time.time()
    await Ledger(client, Keys(PREFIX)).load()  # the library is not counted as windows
    before = (await client.info("memory"))["used_memory"]
    started = time.monotonic()
    bans = 0
    for observed in calls(addresses, failures, now):
        bans += len(await windows.record(observed, time.time()))
    took = time.monotonic() - started
    filled = (await client.info("memory"))["used_memory"]
    found = {"bytes": filled - before, "seconds": took, "bans": bans, "keys": await client.dbsize()}
    if slow:
        gone = 0
        async for key in client.scan_iter(f"{PREFIX}slow-ids:*", count=10_000):
            gone += await client.unlink(key)
        found["bytes_without_ids"] = (await client.info("memory"))["used_memory"] - before
    await client.aclose()
    return found


def flood_rule(slow: bool) -> Rule:
    """bench.scaling's rule (4 failures in 10 minutes), with sshd's slow window or without."""
    base = {"service": "sshd", "patterns": ["unused"], "maxretry": MAXRETRY, "findtime": 600, "bantime": 600}
    if slow:
        base["slow"] = {"maxretry": 30, "findtime": 86400, "bucket": 3600, "bantime": 86400}
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


async def flood_cpu(sock: str, slow: bool, failures: int) -> float:
    """Redis CPU (µs) per failure of bench.scaling's flood, recorded 1,000 a call."""
    client = aioredis.Redis(unix_socket_path=sock)
    windows = Windows(client, PREFIX, {"sshd": flood_rule(slow)})
    await Ledger(client, Keys(PREFIX)).load()
    log = attack(failures, failures // MAXRETRY, time.time())
    now = max(log.times) + 1
    info = await client.info("cpu")
    before = info["used_cpu_sys"] + info["used_cpu_user"]
    for start in range(0, failures, BATCH):
        await windows.record([Observed("sshd", log.addresses[i % len(log.addresses)], "bench", log.times[i],
                                       f"auth:0:0:{i}", log.lines[i]) for i in range(start, min(start + BATCH, failures))],
                             now)
    info = await client.info("cpu")
    await client.aclose()
    return (info["used_cpu_sys"] + info["used_cpu_user"] - before) / failures * 1e6


def report(name: str, found: dict[str, float], addresses: int, failures: int) -> None:
    per = found["bytes"] / addresses
    print(f"{name}: {found['bytes'] / 2**20:,.0f} MiB for {addresses:,} addresses x {failures} failures "
          f"({per:,.0f} bytes/address; {found['keys']:,} keys; {found['bans']} bans; "
          f"filled in {found['seconds']:,.0f} s)")
    if "bytes_without_ids" in found:
        print(f"  without the ids (an hour after each address's last failure): "
              f"{found['bytes_without_ids'] / 2**20:,.0f} MiB ({found['bytes_without_ids'] / addresses:,.0f} "
              f"bytes/address)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--failures", type=int, default=5, choices=range(1, 30), metavar="1-29")
    parser.add_argument("--flood", type=int, default=0, metavar="FAILURES",
                        help="instead: Redis CPU per failure of a flood (bench.scaling's), with and without slow")
    args = parser.parse_args(argv)
    if args.flood:
        for name, slow in (("without a slow window", False), ("with sshd's slow window", True)):
            with tempfile.TemporaryDirectory() as work:
                servers = Servers(Path(work), 0)
                try:
                    us = asyncio.run(flood_cpu(servers.url.removeprefix("unix://"), slow, args.flood))
                finally:
                    servers.stop()
            print(f"{name}: {us:.1f} µs of Redis CPU per failure ({args.flood:,} failures, "
                  f"{args.flood // MAXRETRY:,} addresses)")
        return 0
    for name, slow in (("slow window (hourly buckets)", True), ("sorted-set window", False)):
        with tempfile.TemporaryDirectory() as work:
            servers = Servers(Path(work), 0)
            try:
                found = asyncio.run(fill(servers.url.removeprefix("unix://"), slow, args.addresses, args.failures))
            finally:
                servers.stop()
        report(name, found, args.addresses, args.failures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
