"""The api's reads at a million bans: latency of each read, /healthz under load, memory.

    python -m bench.api_reads [--records 1000000] [--active 100000] [--write docs/benchmarks.md]

1. A private redis-server (unix socket, no persistence) is seeded through the
   ledger (`Ledger.ban` in calls of 10,000 bans, `Ledger.prune` after each
   100,000): `--records` bans of addresses in 2001:db8::/32, of which
   `--active` are in force. Past bans are spread over the last 30 days (an hour
   each; some addresses banned again), the ones in force over the last day;
   rules, hosts and countries vary, and one ban in ten has no country (as the
   detector writes them), which the api looks up once.
2. The real api (`python -m pyfilter.api`) serves it on 127.0.0.1.
3. Each read is sent --requests times, one after the other on one keep-alive
   connection (after a warm-up), for its p50 and p99; then 16 threads send
   heavy reads (1,000-ban pages, the history, a year of stats, the status, a
   search the index cannot answer alone) for --load seconds while /healthz is
   timed every 20 ms. The api's resident memory is read before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bench.report import machine
from pyfilter.common import messages
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan

DAY = 86400
RULES = ["sshd", "nginx-http-auth", "postfix", "dovecot", "recidive", "apache-auth", "vsftpd", "manual"]
HOSTS = [f"web-{i}" for i in range(1, 6)]
COUNTRIES = ["NL", "US", "CN", "RU", "BR", "DE", "FR", "IN", "VN", "KR", "GB", "ID", "UA", "TR", "IR"]
CALL = 10_000  # bans per Ledger.ban call (20 function calls in one round trip)
BEGIN, END = "<!-- bench/api_reads.py: begin -->", "<!-- bench/api_reads.py: end -->"
HEALTH_BUDGET_MS = 100
READ_BUDGET_MS = 50


def address(rng: random.Random) -> str:
    return f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"


def ban(rng: random.Random, addr: str, at: float, duration: int) -> NewBan:
    rule = rng.choice(RULES)
    return NewBan(messages.BanRecord(
        address=addr, rule=rule, host=rng.choice(HOSTS), origin="manual" if rule == "manual" else "detector",
        banned_at=at, duration=duration, expires_at=None if duration < 0 else at + duration,
        failures=5, first_failure=at - 60, last_failure=at, reason=f"5 failures of {rule}",
        lines=[f"Failed password for root from {addr} port {40000 + i} ssh2" for i in range(3)],
        country=None if rng.random() < 0.1 else rng.choice(COUNTRIES)))


async def seed(url: str, records: int, active: int, now: float, rng: random.Random) -> tuple[float, list[str]]:
    """Write the bans through the ledger; returns the time it took and some addresses of each kind."""
    client = aioredis.from_url(url)
    ledger = Ledger(client, Keys())
    await ledger.load()
    started = time.perf_counter()
    past = records - active
    pool = [address(rng) for _ in range(max(1, past * 4 // 5))]  # a fifth of past bans are repeats
    times = sorted(now - 30 * DAY + rng.random() * 28 * DAY for _ in range(past))
    for i in range(0, past, CALL):
        await ledger.ban([ban(rng, rng.choice(pool), at, 3600) for at in times[i:i + CALL]])
        if (i // CALL) % 10 == 9:
            await ledger.prune(now)
    await ledger.prune(now)
    in_force = [address(rng) if rng.random() < 0.8 else rng.choice(pool) for _ in range(active)]
    times = sorted(now - DAY + rng.random() * (DAY - 60) for _ in range(active))
    for i in range(0, active, CALL):
        await ledger.ban([ban(rng, a, at, -1 if rng.random() < 0.1 else 30 * DAY)
                          for a, at in zip(in_force[i:i + CALL], times[i:i + CALL])])
    took = time.perf_counter() - started
    await client.aclose()
    return took, [*rng.sample(in_force, 200), *rng.sample(pool, 200)]


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    sock = work / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    client = redis.Redis(unix_socket_path=str(sock))
    for _ in range(250):
        try:
            client.ping()
            return proc, f"unix://{sock}"
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def start_api(work: Path, redis_url: str) -> tuple[subprocess.Popen, int]:
    with socket_for_port() as port:
        pass
    config = work / "pyfilter.yaml"
    config.write_text(f"host: bench\nredis: {{url: '{redis_url}'}}\napi: {{listen: 127.0.0.1, port: {port}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFILTER_")}
    env.update(PYFILTER_CONFIG=str(config), PYFILTER_API_TOKEN="bench-token")
    proc = subprocess.Popen([sys.executable, "-m", "pyfilter.api"], env=env,
                            stdout=open(work / "api.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(http.client.HTTPConnection("127.0.0.1", port, timeout=2), "/healthz")
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the api did not start; see {work}/api.log")


class socket_for_port:
    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    """One GET on a kept-alive connection: (milliseconds, body); any status but 200 fails,
    but a 404 of one address (a past ban whose history entries were trimmed away)."""
    started = time.perf_counter()
    conn.request("GET", path, headers={"Host": "127.0.0.1"})
    response = conn.getresponse()
    body = response.read()
    took = (time.perf_counter() - started) * 1000
    if response.status != 200 and not (response.status == 404 and path.startswith("/api/v1/bans/")):
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return took, body


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reads(port: int, sample: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Each read measured: its name -> the paths to send (cycled)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    # Follow the pages of the whole list to have cursors of pages deep inside it.
    cursors, path = [], "/api/v1/bans?limit=100"
    for _ in range(50):
        _, body = get(conn, path)
        cursor = re.search(rb'"next":"([^"]+)"', body)
        if not cursor:
            break
        cursors.append(cursor.group(1).decode())
        path = f"/api/v1/bans?limit=100&cursor={cursor.group(1).decode()}"
    prefixes = [f"2001:db8:{rng.getrandbits(8) << 8:x}::/40" for _ in range(50)]
    quote = urllib.parse.quote
    return {
        "`GET /bans?limit=100` (first page)": ["/api/v1/bans?limit=100"],
        "`GET /bans?limit=100&cursor=...` (pages 2-50)": [f"/api/v1/bans?limit=100&cursor={c}" for c in cursors],
        "`GET /bans?prefix=2001:db8:XX00::/40&limit=100`": [f"/api/v1/bans?limit=100&prefix={quote(p)}"
                                                            for p in prefixes],
        "`GET /bans?rule=sshd&limit=100`": ["/api/v1/bans?rule=sshd&limit=100"],
        "`GET /bans?country=NL&limit=100`": ["/api/v1/bans?country=NL&limit=100"],
        "`GET /bans?rule=sshd&host=web-3&limit=100`": ["/api/v1/bans?rule=sshd&host=web-3&limit=100"],
        "`GET /bans?all=1&limit=100` (history)": ["/api/v1/bans?all=1&limit=100"],
        "`GET /bans/{address}` (200 in force or past; 404 past, trimmed)": [f"/api/v1/bans/{quote(a, safe='')}" for a in sample],
        "`GET /stats` (10 days)": ["/api/v1/stats"],
        "`GET /stats?days=366`": ["/api/v1/stats?days=366"],
        "`GET /status`": ["/api/v1/status"],
    }


def measure(port: int, paths: list[str], count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path in paths[:20]:
        get(conn, path)  # warm-up
    return [get(conn, paths[i % len(paths)])[0] for i in range(count)]


HEAVY = ["/api/v1/bans?limit=1000", "/api/v1/bans?limit=1000&all=1", "/api/v1/stats?days=366",
         "/api/v1/status", "/api/v1/bans?country=NL&host=web-3&limit=1000"]


def under_load(port: int, seconds: float, threads: int = 16) -> tuple[list[float], list[float]]:
    """/healthz timings while `threads` clients send heavy reads; and the heavy reads' timings."""
    stop = threading.Event()
    heavy: list[float] = []
    errors: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n
        while not stop.is_set():
            try:
                heavy.append(get(conn, HEAVY[i % len(HEAVY)])[0])
            except Exception as exc:  # reported below; the run goes on
                errors.append(str(exc))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i += 1

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # every client under way
    health: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health.append(get(conn, "/healthz")[0])
        time.sleep(0.02)
    stop.set()
    for w in workers:
        w.join(120)
    if errors:
        raise RuntimeError(f"{len(errors)} heavy reads failed, e.g. {errors[0]}")
    return health, heavy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--active", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300, help="per read (default 300)")
    ap.add_argument("--load", type=float, default=20.0, help="seconds of 16 parallel heavy reads")
    ap.add_argument("--write", type=Path, help="put the results into this Markdown file")
    args = ap.parse_args(argv)
    rng = random.Random(16)
    work = Path(tempfile.mkdtemp(prefix="pyfilter-api-reads-"))
    redis_proc, url = start_redis(work)
    api = None
    try:
        now = time.time()
        print(f"seeding {args.records:,} bans ({args.active:,} in force) through the ledger...", flush=True)
        took, sample = asyncio.run(seed(url, args.records, args.active, now, rng))
        info = redis.Redis.from_url(url).info("memory")
        print(f"seeded in {took:.0f} s; Redis uses {info['used_memory'] / 2**20:.0f} MB", flush=True)
        api, port = start_api(work, url)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        get(conn, "/api/v1/bans?country=NL&limit=1")  # the countries still to look up, looked up once
        rss_start = rss_mb(api.pid)
        rows = []
        for name, paths in reads(port, sample, rng).items():
            timings = measure(port, paths, args.requests)
            rows.append((name, percentile(timings, 50), percentile(timings, 99), max(timings)))
            print(f"{name}: p50 {rows[-1][1]:.1f} ms, p99 {rows[-1][2]:.1f} ms", flush=True)
        rss_before = rss_mb(api.pid)
        health, heavy = under_load(port, args.load)
        rss_after = rss_mb(api.pid)
        print(f"/healthz under 16 heavy readers: p50 {percentile(health, 50):.1f} ms, "
              f"p99 {percentile(health, 99):.1f} ms, max {max(health):.1f} ms; "
              f"heavy reads {len(heavy) / args.load:.0f}/s; RSS {rss_before:.0f} -> {rss_after:.0f} MB", flush=True)
        lines = report(args, took, info["used_memory"] / 2**20, rows, health, heavy, rss_start, rss_before,
                       rss_after)
        print("\n".join(lines))
        if args.write:
            write_doc(args.write, lines)
        worst = max(p99 for _, _, p99, _ in rows if "history" not in name)
        return 0 if worst < READ_BUDGET_MS and percentile(health, 99) < HEALTH_BUDGET_MS else 1
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        redis_proc.terminate()
        redis_proc.wait(10)


def report(args, took: float, redis_mb: float, rows, health, heavy, rss_start, rss_before, rss_after) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    argv = " ".join(sys.argv[1:])
    lines = [
        f"- Measured {when} with `python -m bench.api_reads {argv}`".rstrip() + " (part of `make bench`);",
        f"  {machine()}; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Seeded {args.records:,} bans ({args.active:,} in force) through the ledger in {took:.0f} s "
        f"({args.records / took:,.0f} bans/s); Redis then used {redis_mb:.0f} MB",
        "",
        f"| read ({args.requests} requests each, one after the other) | p50 ms | p99 ms | max ms |",
        "|---|--:|--:|--:|",
        *(f"| {name} | {p50:.1f} | {p99:.1f} | {top:.1f} |" for name, p50, p99, top in rows),
        "",
        f"- 16 clients sending heavy reads for {args.load:.0f} s ({', '.join(f'`{p[7:]}`' for p in HEAVY)}): "
        f"{len(heavy) / args.load:.0f} reads/s, p50 {percentile(heavy, 50):.0f} ms, p99 {percentile(heavy, 99):.0f} ms;",
        f"  `/healthz` meanwhile ({len(health)} requests): p50 {percentile(health, 50):.1f} ms, "
        f"p99 {percentile(health, 99):.1f} ms, max {max(health):.1f} ms (budget {HEALTH_BUDGET_MS} ms)",
        f"- api resident memory: {rss_start:.0f} MB after start, {rss_before:.0f} MB after the reads above, "
        f"{rss_after:.0f} MB after the 16 heavy readers",
    ]
    return lines


def write_doc(path: Path, lines: list[str]) -> None:
    """Replace the generated part of the doc's "Reads at a million bans" section."""
    text = path.read_text()
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Reads at a million bans\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
