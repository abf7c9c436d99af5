"""How far one Redis goes: failures/s and decisions/s with 1, 2 and 3 detectors.

    python -m bench.scaling [--failures 200000] [--addresses 50000] [--detectors 1,2,3]
                            [--clients 1,2,3] [--shards 0,1,3] [--network]

A private `redis-server` on a unix socket (no persistence), or with
`--shards N` a private Redis Cluster of N primaries on loopback TCP (no
replicas, no persistence; the detectors in cluster mode, `PYFILTER_REDIS_CLUSTER`:
windows hashed by address, three calls per crossing), and an attack
where every line is a failure: `--failures` sshd `Failed password` lines from
`--addresses` addresses (all of 198.51.100.0/24, the rest from 2001:db8::/32),
each address failing exactly `maxretry` times, interleaved the way parallel
bots arrive (address 1, 2, ... N, then 1, 2, ... again), all within one
findtime, so every address is banned: failures / maxretry decisions.

Pipeline runs: N detector processes (`python -m pyfilter.detector`, one
consumer name each) wait on the lines stream; the whole log, encoded
beforehand as `LineBatch` entries of 1,000 lines (what the collector writes),
is added in one go, and the clock runs until every address is banned and
every entry is acknowledged. Measured: failures/s, decisions/s, CPU seconds
of Redis (every primary) and of the detectors (utime + stime from
/proc/PID/stat over the run), and Redis commands/s (`total_commands_processed` of INFO stats, which
counts the commands a script runs).

Script runs: the window script alone, `Windows.record` in a tight loop over
the same failures (1,000 a call, already matched, no stream), from 1, 2 and 3
client processes at once: the ceiling of one Redis for this work, and its
cost per failure in Redis CPU time.

`--shards` is a list: 0 is the single Redis, N a cluster of N primaries;
every run above is made on each.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis
import yaml

from bench.pipeline import consumers, ping
from bench.procs import alive, stop, wait_until
from pyfilter.common import messages
from pyfilter.common.config import Rule, Seconds
from pyfilter.common.keys import Keys

REPO = Path(__file__).resolve().parents[1]
HOST = "bench"
SOURCE = "auth"
BATCH = 1000
MAXRETRY = 4
FINDTIME = 600
BANTIME = 600
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Attack:
    lines: list[str]  # the log, oldest first
    addresses: list[str]
    times: list[float]  # each line's time, as the log says it (whole seconds)


def attack(failures: int, addresses: int, end: float) -> Attack:
    """`failures` lines, address i % addresses on line i, spread over the last 5 minutes."""
    assert failures % addresses == 0 and failures // addresses == MAXRETRY, \
        f"every address must fail exactly maxretry ({MAXRETRY}) times"
    addrs = [f"198.51.100.{i}" for i in range(256)]
    addrs += [f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1" for i in range(addresses - 256)]
    span = 300.0
    lines, times = [], []
    for i in range(failures):
        t = int(end - span + span * i / failures)
        stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(t))
        lines.append(f"{stamp} {HOST} sshd[{10_000 + i % 50_000}]: Failed password for root "
                     f"from {addrs[i % addresses]} port {1024 + i % 60_000} ssh2")
        times.append(float(t))
    return Attack(lines, addrs, times)


def entries(log: Attack) -> list[bytes]:
    """The log as the collector writes it: LineBatch entries of 1,000 lines."""
    out, offset = [], 0
    for start in range(0, len(log.lines), BATCH):
        batch = []
        for text in log.lines[start:start + BATCH]:
            batch.append(messages.Line(f"{SOURCE}:0:0:{offset}", text))
            offset += len(text) + 1
        out.append(messages.encode(messages.LineBatch(HOST, SOURCE, batch, time.time())))
    return out


# --- processes and their CPU time ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


class Servers:
    """The Redis of one run: one redis-server on a unix socket (`shards` 0), or a
    Redis Cluster of `shards` primaries on loopback TCP; either without persistence."""

    def __init__(self, work: Path, shards: int):
        self.shards = shards
        self.procs: list[subprocess.Popen] = []
        common = ["--save", "", "--appendonly", "no"]
        if not shards:
            sock = work / "redis.sock"
            self.url = f"unix://{sock}"
            self._start(work, ["--port", "0", "--unixsocket", str(sock), *common])
            self.nodes = [redis.Redis(unix_socket_path=str(sock))]
        else:
            ports = free_ports(shards)
            self.url = f"redis://127.0.0.1:{ports[0]}"
            for port in ports:
                node = work / f"node-{port}"
                node.mkdir(parents=True, exist_ok=True)
                self._start(node, ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                   "--cluster-config-file", str(node / "nodes.conf"), *common])
            self.nodes = [redis.Redis(port=port) for port in ports]
        for node in self.nodes:
            if not wait_until(lambda: ping(node), 10):
                raise RuntimeError(f"redis-server did not start; see {work}/**/redis.log")
        if shards:
            self._form_cluster(ports)

    def _start(self, work: Path, args: list[str]) -> None:
        self.procs.append(subprocess.Popen(["redis-server", *args, "--dir", str(work)],
                                           stdout=open(work / "redis.log", "w")))

    def _form_cluster(self, ports: list[int]) -> None:
        """Each primary takes an equal share of the slots, then they meet. (By hand:
        `redis-cli --cluster create` wants three primaries at least.)"""
        for i, node in enumerate(self.nodes):
            node.execute_command("CLUSTER ADDSLOTSRANGE", i * 16384 // len(ports), (i + 1) * 16384 // len(ports) - 1)
            node.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
        for port in ports[1:]:
            self.nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        if not wait_until(lambda: all(n.cluster("info")["cluster_state"] == "ok"
                                      and int(n.cluster("info")["cluster_known_nodes"]) == len(ports)
                                      for n in self.nodes), 30):
            raise RuntimeError(f"the {len(ports)}-primary cluster did not reach cluster_state:ok")

    @property
    def name(self) -> str:
        return f"cluster of {self.shards}" if self.shards else "one, unix socket"

    def client(self) -> redis.Redis | redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url) if self.shards else redis.Redis.from_url(self.url)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def commands(self) -> int:
        """Commands run so far, on every primary (counting those a script runs)."""
        return sum(int(n.info("stats")["total_commands_processed"]) for n in self.nodes)

    def peak_mb(self) -> float:
        return sum(n.info("memory")["used_memory_peak"] for n in self.nodes) / 2**20

    def stop(self) -> None:
        for node in self.nodes:
            node.close()
        for proc in self.procs:
            stop(proc, 0.0)


def free_ports(n: int) -> list[int]:
    """Loopback ports free now, each with its cluster bus port (port + 10000) free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class Run:
    kind: str  # "pipeline" or "script"
    redis: str  # Servers.name
    workers: int  # detectors, or script client processes
    seconds: float
    failures: int
    decisions: int
    redis_cpu: float
    workers_cpu: float
    commands: int
    redis_mb: float

    @property
    def failures_per_s(self) -> float:
        return self.failures / self.seconds

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds

    @property
    def redis_busy(self) -> float:
        """Share of one core Redis used during the run (1.0: saturated)."""
        return self.redis_cpu / self.seconds

    @property
    def redis_us_per_failure(self) -> float:
        return 1e6 * self.redis_cpu / self.failures

    @property
    def workers_us_per_failure(self) -> float:
        return 1e6 * self.workers_cpu / self.failures

    @property
    def failures_per_cpu_s(self) -> float:
        """Failures per CPU second of Redis and workers together: what each core
        adds while neither one Redis process nor one worker is the bottleneck."""
        return self.failures / (self.redis_cpu + self.workers_cpu)


# --- pipeline: the real detectors ------------------------------------------------------------


WIDENING = False  # --network


def _config(work: Path, servers: Servers) -> Path:
    path = work / "pyfilter.yaml"
    path.write_text(yaml.safe_dump({
        "host": HOST,
        "catalog_dir": str(REPO / "config" / "rules"),
        "redis": {"url": servers.url, "cluster": bool(servers.shards)},
        "rules": {"sshd": {"maxretry": MAXRETRY, "findtime": FINDTIME, "bantime": BANTIME}},
        "network": {"enabled": WIDENING},
    }))
    return path


def pipeline(failures: int, addresses: int, detectors: int, work: Path, timeout: float, shards: int) -> Run:
    # The log ends now: detectors judge lines by the clock, and a log written
    # for an earlier run would be partly older than findtime by this one.
    log = attack(failures, addresses, time.time())
    batches = entries(log)
    work.mkdir(parents=True, exist_ok=True)
    keys = Keys()
    servers = Servers(work, shards)
    client = servers.client()
    client.sadd(keys.hosts, HOST)  # whose lines stream the detectors read
    env = {**os.environ, "PYFILTER_CONFIG": str(_config(work, servers)), "PYFILTER_HOST": HOST,
           "PYFILTER_REDIS_URL": servers.url, "PYFILTER_REDIS_CLUSTER": "1" if shards else "0",
           "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(work / "beat")}
    procs: dict[str, tuple[subprocess.Popen, float]] = {}
    try:
        for i in range(detectors):
            name = f"detector-{i + 1}"
            proc = subprocess.Popen([sys.executable, "-m", "pyfilter.detector"], cwd=work,
                                    env={**env, "PYFILTER_CONSUMER": name},
                                    stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
            procs[name] = (proc, time.perf_counter())

        if not wait_until(lambda: consumers(client, keys) >= detectors, 60):
            raise RuntimeError(f"detectors did not start; see {work}/detector-*.log")
        time.sleep(0.5)  # let their start-up work settle before the clock starts
        pids = [p.pid for p, _ in procs.values()]
        cpu0, redis0, cmd0 = sum(map(cpu_seconds, pids)), servers.cpu(), servers.commands()
        start = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i, entry in enumerate(batches, 1):
            pipe.xadd(keys.lines(HOST), {b"m": entry})
            if i % 50 == 0:
                pipe.execute()
        pipe.execute()
        expected = len(log.addresses)
        while True:
            if client.zcard(keys.active_bans) >= expected and _drained(client, keys):
                break
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{detectors} detector(s): not done within {timeout:.0f} s "
                                   f"({client.zcard(keys.active_bans)} of {expected} banned)")
            for name, (proc, _) in procs.items():
                if not alive(proc):
                    raise RuntimeError(f"{name} exited early; see {work}/{name}.log")
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        run = Run("pipeline", servers.name, detectors, seconds, len(log.lines), client.xlen(keys.decisions),
                  servers.cpu() - redis0, sum(map(cpu_seconds, pids)) - cpu0,
                  servers.commands() - cmd0, servers.peak_mb())
    finally:
        client.close()
        for proc, started in procs.values():
            stop(proc, started)
        servers.stop()
    return run


def _drained(client: redis.Redis, keys: Keys) -> bool:
    """Every entry read and acknowledged (detectors delete what they acknowledge)."""
    info = client.xinfo_groups(keys.lines(HOST))
    return bool(info) and info[0]["pending"] == 0 and (info[0].get("lag") or 0) == 0


# --- the window script alone ------------------------------------------------------------------


def _rule() -> Rule:
    base = dict(service="sshd", sources=[SOURCE], patterns=["unused"], maxretry=MAXRETRY,
                findtime=FINDTIME, bantime=BANTIME)
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def _script_client(url: str, cluster: bool, log: Attack, part: int, parts: int, now: float,
                   ready, go, done) -> None:
    """Record this client's share of the batches with Windows.record, one call after another."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from pyfilter.common.config import NetworkConfig
    from pyfilter.common.network import Widening
    from pyfilter.detector.windows import Observed, Windows

    n = len(log.lines)
    calls = []
    for b, start in enumerate(range(0, n, BATCH)):
        if b % parts != part:
            continue
        calls.append([Observed("sshd", log.addresses[i % len(log.addresses)], HOST, log.times[i],
                               f"{SOURCE}:0:0:{i}", log.lines[i]) for i in range(start, min(start + BATCH, n))])

    async def main() -> None:
        client = RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
        widening = Widening(NetworkConfig(enabled=True)) if WIDENING else None
        windows = Windows(client, "", {"sshd": _rule()}, widening)
        await windows.record(calls[0][:1], now)  # load the script (one failure: no ban yet)
        ready.put(True)
        go.wait()
        cpu = cpu_seconds(os.getpid())
        for observed in calls:
            await windows.record(observed, now)
        done.put(cpu_seconds(os.getpid()) - cpu)
        await client.aclose()

    asyncio.run(main())


def script(log: Attack, clients: int, work: Path, shards: int) -> Run:
    """Windows.record from `clients` processes at once over the same failures."""
    work.mkdir(parents=True, exist_ok=True)
    servers = Servers(work, shards)
    client = servers.client()
    ctx = multiprocessing.get_context("fork")
    ready, go, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    now = max(log.times) + 1
    workers = [ctx.Process(target=_script_client,
                           args=(servers.url, bool(shards), log, i, clients, now, ready, go, done))
               for i in range(clients)]
    try:
        for w in workers:
            w.start()
        for _ in workers:  # each has its batches built and the script loaded
            ready.get(timeout=120)
        time.sleep(0.3)
        redis0, cmd0 = servers.cpu(), servers.commands()
        start = time.perf_counter()
        go.set()
        cpu = sum(done.get(timeout=600) for _ in workers)
        seconds = time.perf_counter() - start
        for w in workers:
            w.join()
        banned = client.zcard(Keys("").active_bans)
        if banned < len(log.addresses):  # (with --network, their networks too)
            raise RuntimeError(f"script run banned {banned} of {len(log.addresses)}")
        run = Run("script", servers.name, clients, seconds, len(log.lines), client.xlen(Keys("").decisions),
                  servers.cpu() - redis0, cpu, servers.commands() - cmd0, servers.peak_mb())
    finally:
        client.close()
        for w in workers:
            if w.is_alive():
                w.kill()
        servers.stop()
    return run


# --- report ------------------------------------------------------------------------------------


def table(runs: list[Run]) -> str:
    head = ("| run | Redis | processes | seconds | failures/s | decisions/s | Redis CPU s (busy) "
            "| Redis µs/failure | client µs/failure | failures per CPU s | Redis commands/s | Redis peak MiB |")
    rows = [head, "|" + "---|" * 12]
    for r in runs:
        what = "detectors" if r.kind == "pipeline" else "`Windows.record` clients"
        rows.append(f"| {r.kind} | {r.redis} | {r.workers} {what} | {r.seconds:.2f} | {r.failures_per_s:,.0f} "
                    f"| {r.decisions_per_s:,.0f} | {r.redis_cpu:.2f} ({r.redis_busy:.0%}) "
                    f"| {r.redis_us_per_failure:.1f} | {r.workers_us_per_failure:.1f} "
                    f"| {r.failures_per_cpu_s:,.0f} | {r.commands / r.seconds:,.0f} | {r.redis_mb:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=50_000)
    parser.add_argument("--detectors", default="1,2,3", help="detector counts to run (default 1,2,3)")
    parser.add_argument("--clients", default="1,2,3", help="script client counts (default 1,2,3)")
    parser.add_argument("--shards", default="0",
                        help="0: one Redis (unix socket); N: a Redis Cluster of N primaries (default 0)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--work", type=Path, help="keep logs here (default: a temporary folder)")
    parser.add_argument("--network", action="store_true",
                        help="per-network widening on, with its defaults (docs/rules.md, \"Per network\")")
    args = parser.parse_args(argv)
    global WIDENING
    WIDENING = args.network

    log = attack(args.failures, args.addresses, time.time())  # the script runs' (they pass the clock)
    print(f"# {len(log.lines):,} failures from {len(log.addresses):,} addresses, "
          f"entries of {BATCH} lines; maxretry {MAXRETRY}", flush=True)
    print(f"# {socket.gethostname()}: {os.cpu_count()} CPUs, "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyfilter-scaling-") as tmp:
        work = args.work or Path(tmp)
        for shards in (int(x) for x in args.shards.split(",") if x):
            for n in (int(x) for x in args.detectors.split(",") if x):
                runs.append(pipeline(args.failures, args.addresses, n, work / f"pipeline-{shards}-{n}", args.timeout, shards))
                print(table(runs[-1:]).splitlines()[-1], flush=True)
            for n in (int(x) for x in args.clients.split(",") if x):
                runs.append(script(log, n, work / f"script-{shards}-{n}", shards))
                print(table(runs[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
