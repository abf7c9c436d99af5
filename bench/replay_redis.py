"""What `pyfilter replay`'s own Redis does on the mixed benchmark log.

    .venv/bin/python -m bench.replay_redis [--lines N] [--span S] [--kind NAME]
                                           [--redis-server PATH] [--callgrind]

Replays the log in this process, as `pyfilter replay` does, and reads its Redis
before it stops: CPU, memory, the commands the ledger's functions ran. Beside
it, this process's CPU (matching, grouping, packing) and the bans. `--kind`
picks sshd's windows as bench.replay_kinds names them. `--redis-server` runs
another build (one with symbols, for `perf record -g -- ...` then
`perf report --comm redis-server`); `--callgrind` runs it under valgrind and
prints its instruction count, which this machine's load does not move (about
80 s for 200,000 lines). Numbers go to docs/benchmarks.md ("What if: each
window kind").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import logs
from bench.replay_kinds import KINDS, write_config
from pyfilter.cli import matching, ownredis, replay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--span", type=float, default=1800.0, help="seconds of log (the mixed log's: 1800)")
    parser.add_argument("--kind", choices=list(KINDS), default="shipped (both)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server"), help="the redis-server to run")
    parser.add_argument("--callgrind", action="store_true", help="count its instructions (valgrind)")
    args = parser.parse_args()
    if args.callgrind and not shutil.which("valgrind"):
        print("bench: valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyfilter-replay-redis-"))
    try:
        log = logs.write_mixed(work / "mixed.log", lines=args.lines, span=args.span)
        config = write_config(work / "replay.yaml", args.kind)
        _server_on_path(work, args.redis_server, work / "callgrind.out" if args.callgrind else None)
        print(f"mixed: {log.lines:,} lines, {log.failures:,} failures; sshd {args.kind}", flush=True)
        _report(*_replayed(config, log.path))
        if args.callgrind:
            _print_instructions(work / "callgrind.out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _server_on_path(work: Path, server: str, callgrind: Path | None) -> None:
    """The redis-server replay starts (ownredis: the first on PATH) is `server`, under
    valgrind when `callgrind` names its output."""
    folder = work / "bin"
    folder.mkdir()
    wrapper = folder / "redis-server"
    under = f"valgrind --tool=callgrind --callgrind-out-file={callgrind} " if callgrind else ""
    wrapper.write_text(f'#!/bin/sh\nexec {under}"{server}" "$@" 2>/dev/null\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    if callgrind:
        ownredis.START_TIMEOUT = 60.0  # valgrind starts it slowly


def _replayed(config: Path, path: Path) -> tuple:
    """The replay's outcome, its wall and CPU time here, and its Redis's INFO read at its end."""
    info: dict = {}
    decide_all = replay._decide_all

    async def and_read_redis(detector, steps, outcome) -> None:
        await decide_all(detector, steps, outcome)
        info.update(await detector.client.info("all"))

    replay._decide_all = and_read_redis
    try:
        settings = matching.settings(str(config))
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcome = asyncio.run(replay.replay(settings, replay.logs_of(settings, [str(path)], None, None),
                                            logs.HOST, None))
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        replay._decide_all = decide_all
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return outcome, wall, cpu, info


def _report(outcome, wall: float, cpu: float, info: dict) -> None:
    calls = {k.removeprefix("cmdstat_"): v for k, v in info.items() if k.startswith("cmdstat_")}
    inner = sum(v["usec"] for name, v in calls.items() if name != "fcall") / 1e6
    print(f"replay: {wall:.2f} s wall, {cpu:.2f} s CPU here; {len(outcome.bans):,} bans, "
          f"{outcome.failures:,} failures")
    print(f"its redis: {info['used_cpu_user'] + info['used_cpu_sys']:.2f} s CPU, {info['used_memory_human']}, "
          f"functions {calls.get('fcall', {}).get('usec', 0) / 1e6:.2f} s, the commands in them {inner:.2f} s")
    redis_cpu, cores = info["used_cpu_user"] + info["used_cpu_sys"], os.cpu_count() or 1
    # Each side runs on one thread, and both on this machine's cores: the least wall time any overlap allows.
    print(f"least wall on {cores} cores: {max(cpu, redis_cpu, (cpu + redis_cpu) / cores):.2f} s")
    ranked = sorted(((name, v["calls"]) for name, v in calls.items() if name != "fcall"), key=lambda c: -c[1])
    print(f"commands: {sum(n for _, n in ranked):,} (" + ", ".join(f"{name} {n:,}" for name, n in ranked[:10]) + ")")


def _print_instructions(out: Path) -> None:
    annotated = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True).stdout
    total = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotated)
    print(f"its redis: {total.group(1) if total else '?'} instructions (callgrind)")


if __name__ == "__main__":
    sys.exit(main())
