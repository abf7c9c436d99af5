"""The idle stack's cost: CPU and memory of each container, read from its cgroup.

    .venv/bin/python bench/idle.py [--seconds 60] [--settle 30] [--running PROJECT]
                                   [--write docs/benchmarks.md]

Brings up the default stack (compose/docker-compose.yml, plus compose/airgapped.yml
when PYFILTER_AIRGAPPED=1) under a project of its own with the host's log, journal
and containers folders as `make up` mounts them, sends it nothing, lets it settle,
then samples each container's cgroup over `--seconds` and takes it down again.
`--running PROJECT` measures a stack that is already up (`make up`: `pyfilter`).

- CPU: the cgroup's CPU time (v1 `cpuacct.usage`, v2 `cpu.stat` usage_usec),
  first sample to last, as % of one core. Health checks run inside the
  container's cgroup, so they count.
- Memory: what `docker stats` shows as usage: the cgroup's usage less its
  inactive page cache (v1 `memory.usage_in_bytes` - `total_inactive_file`,
  v2 `memory.current` - `inactive_file`), MB (10^6 bytes; `docker stats` shows MiB), the mean of the samples (the
  highest one is printed too).
- Outside the containers, for reference: the CPU of their containerd shims,
  which start each health check's `runc exec` (children included).

Targets (issue 13): under 1 % of one core and at most 150 MB in all.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
CPU_TARGET = 1.0  # % of one core, the whole stack
MEMORY_TARGET = 150.0  # MB, the whole stack
SAMPLE_EVERY = 5.0  # s between memory samples
MB = 1000 * 1000  # the target's unit; `docker stats` shows MiB (1.048576 MB)
BEGIN, END = "<!-- bench/idle.py: begin -->", "<!-- bench/idle.py: end -->"


# ---- cgroups ----

def _mounts() -> dict[str, str]:
    """Controller ("cpuacct", "memory"; "" for cgroup v2) -> where its hierarchy is mounted."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup2":
            found.setdefault("", where)
        elif kind == "cgroup":
            for option in options.split(","):
                found.setdefault(option, where)
    return found


@dataclass
class Cgroup:
    """The files of one process's cgroup: v1 (a folder per controller) or v2 (one folder)."""

    cpu_dir: Path
    memory_dir: Path
    v2: bool

    @classmethod
    def of(cls, pid: int) -> "Cgroup":
        paths: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
        mounts = _mounts()
        if "cpuacct" in paths and "memory" in paths:
            return cls(Path(mounts["cpuacct"] + paths["cpuacct"]),
                       Path(mounts["memory"] + paths["memory"]), v2=False)
        where = Path(mounts[""] + paths[""])
        return cls(where, where, v2=True)

    def cpu_seconds(self) -> float:
        if self.v2:
            stat = _stat(self.cpu_dir / "cpu.stat")
            return stat["usage_usec"] / 1e6
        return int((self.cpu_dir / "cpuacct.usage").read_text()) / 1e9

    def anonymous_bytes(self) -> int:
        """The part of it that is the processes' own (no page cache, which the first reader is charged)."""
        stat = _stat(self.memory_dir / "memory.stat")
        return stat["anon"] if self.v2 else stat["total_rss"]

    def memory_bytes(self) -> int:
        """Usage as `docker stats` counts it: less the page cache the kernel may drop first."""
        stat = _stat(self.memory_dir / "memory.stat")
        if self.v2:
            usage, inactive = int((self.memory_dir / "memory.current").read_text()), stat["inactive_file"]
        else:
            usage = int((self.memory_dir / "memory.usage_in_bytes").read_text())
            inactive = stat.get("total_inactive_file", 0)
        return usage - inactive if inactive < usage else usage


def _stat(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its children it has waited for (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# ---- the stack ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The default stack under a project of its own, as `make up` would run it on this host."""

    def __init__(self, project: str):
        self.project = project
        files = ["compose/docker-compose.yml"]
        if os.environ.get("PYFILTER_AIRGAPPED") == "1":
            files.append("compose/airgapped.yml")
        self.files = [arg for f in files for arg in ("-f", str(REPO / f))]
        log_dir = os.environ.get("PYFILTER_LOG_DIR", "/var/log")
        gid = subprocess.run([REPO / "compose/journal-gid.sh", log_dir],
                             capture_output=True, text=True).stdout.strip()
        self.env = {**os.environ, "PYFILTER_API_PORT": str(free_port()),
                    "PYFILTER_API_TOKEN": secrets.token_urlsafe(24),
                    "PYFILTER_REDIS_PASSWORD": secrets.token_urlsafe(16)}
        if gid:
            self.env["PYFILTER_JOURNAL_GID"] = gid

    def compose(self, *args: str) -> None:
        done = subprocess.run(["docker", "compose", "-p", self.project, *self.files, *args],
                              env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"docker compose {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def up(self) -> None:
        self.compose("up", "-d", "--wait", "--wait-timeout", "120")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans")


# ---- sampling ----

@dataclass
class Service:
    name: str
    cgroup: Cgroup
    shim: int  # pid of the containerd shim that runs the container (and its health checks)
    cpu: list[float] = field(default_factory=list)  # CPU seconds at each sample
    shim_cpu: list[float] = field(default_factory=list)
    memory: list[int] = field(default_factory=list)  # bytes at each sample
    anonymous: list[int] = field(default_factory=list)


def services(project: str) -> list[Service]:
    client = docker.from_env()
    found = []
    for c in client.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
        pid = c.attrs["State"]["Pid"]
        name = c.labels.get("com.docker.compose.service", c.name)
        number = c.labels.get("com.docker.compose.container-number", "1")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        found.append(Service(name if number == "1" else f"{name}-{number}", Cgroup.of(pid), ppid))
    if not found:
        sys.exit(f"no running container in compose project {project!r}")
    return sorted(found, key=lambda s: s.name)


def sample(stack: list[Service], seconds: float) -> float:
    """Read every cgroup each SAMPLE_EVERY seconds for `seconds`; return the wall time."""
    started = time.monotonic()
    while True:
        for s in stack:
            s.cpu.append(s.cgroup.cpu_seconds())
            s.memory.append(s.cgroup.memory_bytes())
            s.anonymous.append(s.cgroup.anonymous_bytes())
            s.shim_cpu.append(process_cpu_seconds(s.shim))
        elapsed = time.monotonic() - started
        if elapsed >= seconds - 0.01:
            return elapsed
        time.sleep(min(SAMPLE_EVERY, seconds - elapsed))


@dataclass
class Row:
    name: str
    cpu_pct: float
    mem_mb: float
    mem_max_mb: float
    anon_mb: float
    shim_pct: float


def rows(stack: list[Service], wall: float) -> list[Row]:
    def mean(xs: list[int]) -> float:
        return sum(xs) / len(xs) / MB

    return [Row(s.name, 100 * (s.cpu[-1] - s.cpu[0]) / wall, mean(s.memory), max(s.memory) / MB,
                mean(s.anonymous), 100 * (s.shim_cpu[-1] - s.shim_cpu[0]) / wall) for s in stack]


def table(result: list[Row]) -> list[str]:
    def total(name: str) -> float:
        return sum(getattr(r, name) for r in result)

    out = ["| service | CPU, % of one core | memory MB (mean) | memory MB (highest) "
           "| of it anonymous, MB | its shim, % of one core |",
           "|---|--:|--:|--:|--:|--:|"]
    out += [f"| {r.name} | {r.cpu_pct:.2f} | {r.mem_mb:.1f} | {r.mem_max_mb:.1f} | {r.anon_mb:.1f} "
            f"| {r.shim_pct:.2f} |" for r in result]
    out.append(f"| **all** | **{total('cpu_pct'):.2f}** (target < {CPU_TARGET:g}) | **{total('mem_mb'):.1f}** "
               f"(target <= {MEMORY_TARGET:g}) | {total('mem_max_mb'):.1f} | {total('anon_mb'):.1f} "
               f"| {total('shim_pct'):.2f} |")
    return out


def write_doc(path: Path, lines: list[str]) -> None:
    """Replace the generated part of the doc's "Idle cost" section (between the markers)."""
    text = path.read_text()
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Idle cost\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to sample (default 60)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="wait this long after the stack is healthy before sampling (default 30)")
    ap.add_argument("--running", metavar="PROJECT", help="measure this compose project, already up")
    ap.add_argument("--project", default=f"pyfilter-idle-{os.getpid()}",
                    help="project name of the stack brought up (default pyfilter-idle-PID)")
    ap.add_argument("--write", type=Path, metavar="DOC",
                    help=f"put the table in DOC's 'Idle cost' section (e.g. {DOC.relative_to(REPO)})")
    args = ap.parse_args(argv)

    stack = None if args.running else Stack(args.project)
    try:
        if stack:
            print(f"bringing up the default stack as {args.project!r}", flush=True)
            stack.up()
        print(f"settling {args.settle:g} s, then sampling {args.seconds:g} s", flush=True)
        time.sleep(args.settle)
        measured = services(args.running or args.project)
        wall = sample(measured, args.seconds)
    finally:
        if stack:
            stack.down()

    result = rows(measured, wall)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    kind = "v2" if measured[0].cgroup.v2 else "v1"
    lines = [f"- Measured {when} over {wall:.0f} s after {args.settle:g} s of settling, cgroup {kind}; "
             f"{os.cpu_count()} cores, Linux {platform.release()}; load average after: {load}",
             "", *table(result)]
    print("\n".join(lines))
    cpu, mem = sum(r.cpu_pct for r in result), sum(r.mem_mb for r in result)
    verdict = [f"CPU {cpu:.2f} % of one core: {'under' if cpu < CPU_TARGET else 'OVER'} the target",
               f"memory {mem:.1f} MB: {'within' if mem <= MEMORY_TARGET else 'OVER'} the target"]
    print("\n".join(verdict))
    if args.write:
        write_doc(args.write, lines)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
