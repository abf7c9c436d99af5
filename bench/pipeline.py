"""PyFilter end to end, without containers: log file -> Redis -> detectors -> ban decisions.

A private `redis-server` listens on a unix socket in a temporary folder; N
detectors (`python -m pyfilter.detector`) share its consumer group, and the
log goes into the lines stream either through the real collector
(`python -m pyfilter.collector`, the file read from its start) or, with
`feed="direct"`, from this process in the collector's format (1,000 lines an
entry). The clock runs from the moment the collector starts (or the first
entry is written) until every address that must be banned has a ban:
the window script writes the ban record, `bans:active` and the decision in one
step, so a full `bans:active` means every decision is in the stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

from bench.logs import sshd_as_fail2ban
from bench.procs import Usage, alive, stop, wait_until
from pyfilter.common import messages
from pyfilter.common.keys import DETECT_GROUP, Keys

REPO = Path(__file__).resolve().parents[1]
HOST = "bench"
SOURCE = "auth"
BATCH = 1000


@dataclass
class PipelineResult:
    detectors: int
    feed: str
    seconds: float | None  # start -> last expected ban; None: timed out
    drained: float | None  # start -> every line read and acknowledged
    banned: int
    decisions: int
    usage: dict[str, Usage] = field(default_factory=dict)  # per process, after stopping

    @property
    def peak_mb(self) -> float:
        return sum(u.peak_mb for u in self.usage.values())


def missing() -> str | None:
    from shutil import which

    if which("redis-server") is None:
        return "redis-server not found (apt-get install -y redis-server)"
    return None


def _config(work: Path, log: Path, maxretry: int, findtime: int, bantime: int) -> Path:
    path = work / "pyfilter.yaml"
    path.write_text(yaml.safe_dump({
        "host": HOST,
        "catalog_dir": str(REPO / "config" / "rules"),
        "redis": {"url": f"unix://{work}/redis.sock"},
        "collector": {"batch_lines": BATCH, "sources": [
            {"name": SOURCE, "paths": [str(log)], "from_start": True}]},
        "rules": {"sshd": sshd_as_fail2ban(maxretry, findtime, bantime)},
    }))
    return path


def _spawn(module: str, env: dict[str, str], work: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=work,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))


def _feed_direct(client: redis.Redis, keys: Keys, log: Path) -> None:
    """Write the log into the stream the way the collector does, 1,000 lines an entry."""
    encode, offset, lines = messages.encode, 0, []
    pipe = client.pipeline(transaction=False)
    with open(log, "rb") as f:
        for raw in f:
            lines.append(messages.Line(f"{SOURCE}:0:0:{offset}", raw.decode("utf-8", "replace").rstrip("\n")))
            offset += len(raw)
            if len(lines) == BATCH:
                pipe.xadd(keys.lines(HOST), {b"m": encode(messages.LineBatch(HOST, SOURCE, lines, time.time()))})
                lines = []
                if len(pipe) >= 50:
                    pipe.execute()
    if lines:
        pipe.xadd(keys.lines(HOST), {b"m": encode(messages.LineBatch(HOST, SOURCE, lines, time.time()))})
    pipe.execute()


def _collector_done(client: redis.Redis, keys: Keys, size: int) -> bool:
    """The collector's checkpoint of the log is at its end (every line is in the stream)."""
    import msgspec

    for name, value in client.hgetall(keys.checkpoint(HOST, SOURCE)).items():
        if b":" in name:
            try:
                if msgspec.json.decode(value).get("offset", 0) >= size:
                    return True
            except (msgspec.DecodeError, AttributeError):
                pass
    return False


def run(log: Path, expected: set[str], work: Path, *, detectors: int, feed: str = "collector",
        maxretry: int, findtime: int, bantime: int, timeout: float) -> PipelineResult:
    work.mkdir(parents=True, exist_ok=True)
    keys = Keys()
    config = _config(work, log, maxretry, findtime, bantime)
    started_redis = time.perf_counter()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(work / "redis.sock"), "--save", "",
         "--appendonly", "no", "--dir", str(work)], stdout=open(work / "redis.log", "w"))
    procs: dict[str, tuple[subprocess.Popen, float]] = {"redis": (server, started_redis)}
    client = redis.Redis(unix_socket_path=str(work / "redis.sock"))
    result = PipelineResult(detectors, feed, None, None, 0, 0)
    try:
        if not wait_until(lambda: ping(client), 10):
            raise RuntimeError(f"redis-server did not start; see {work}/redis.log")
        client.sadd(keys.hosts, HOST)  # whose stream the detectors read (the collector would list it too)
        env = {**os.environ, "PYFILTER_CONFIG": str(config), "PYFILTER_REDIS_URL": f"unix://{work}/redis.sock",
               "PYFILTER_HOST": HOST, "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(work / "beat")}
        for i in range(detectors):
            name = f"detector-{i + 1}"  # replicas on one host need their own consumer names
            procs[name] = (_spawn("pyfilter.detector", {**env, "PYFILTER_CONSUMER": name}, work, name),
                           time.perf_counter())
        # Detectors are ready once each has joined the group (their first read).
        ready = lambda: consumers(client, keys) >= detectors  # noqa: E731
        if not wait_until(ready, 30):
            raise RuntimeError(f"detectors did not start; see {work}/detector-*.log")

        start = time.perf_counter()
        if feed == "collector":
            procs["collector"] = (_spawn("pyfilter.collector", env, work, "collector"), start)
        else:
            _feed_direct(client, keys, log)
        size = log.stat().st_size
        fed = feed != "collector"
        while True:
            if result.seconds is None and client.zcard(keys.active_bans) >= len(expected):
                result.seconds = time.perf_counter() - start
            if not fed:
                fed = _collector_done(client, keys, size)
            if fed and result.drained is None and _drained(client, keys):
                result.drained = time.perf_counter() - start
            if result.seconds is not None and result.drained is not None:
                break
            if time.perf_counter() - start > timeout:
                break
            for name, (proc, _) in procs.items():
                if not alive(proc):
                    raise RuntimeError(f"{name} exited early; see {work}/{name}.log")
            time.sleep(0.01)
        banned = {a.decode() for a in client.zrange(keys.active_bans, 0, -1)}
        result.banned = len(banned & expected)
        if banned - expected:
            raise RuntimeError(f"{len(banned - expected)} addresses banned that should not be, "
                               f"e.g. {sorted(banned - expected)[:3]}")
        result.decisions = client.xlen(keys.decisions)
    finally:
        client.close()
        # Redis last: the others may still be writing to it.
        for name, (proc, started) in sorted(procs.items(), key=lambda kv: kv[0] == "redis"):
            result.usage[name] = stop(proc, started)
    return result


def ping(client: redis.Redis) -> bool:
    """Whether Redis answers (False while it starts)."""
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def consumers(client: redis.Redis, keys: Keys) -> int:
    """How many detectors have joined the lines stream's group."""
    try:
        return len(client.xinfo_consumers(keys.lines(HOST), DETECT_GROUP))
    except redis.ResponseError:
        return 0  # no stream or group yet


def _drained(client: redis.Redis, keys: Keys) -> bool:
    """No entry left in the stream and none read but unacknowledged."""
    if client.xlen(keys.lines(HOST)):
        return False
    groups = client.xinfo_groups(keys.lines(HOST))
    return all(g["pending"] == 0 for g in groups)
