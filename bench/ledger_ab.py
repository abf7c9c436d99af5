"""Two versions' window calls taking turns on one Redis: Redis CPU per failure of each.

    python -m bench.ledger_ab OLD_WORKTREE NEW_WORKTREE [--failures 200000] [--addresses 50000]

Wall-clock runs on a busy machine differ more between rounds than two versions
differ; here each version's `Windows.record` (run from its own worktree and
venv, `WORKTREE/.venv/bin/python`) records the `bench.scaling` attack, 1,000
failures a call, the two taking turns call by call on one redis-server (unix
socket, no persistence), and the Redis CPU of each call is read from
`INFO cpu` around it. The versions must load differently named libraries
(`pyfilter_vN`), else each would replace the other's; they write under
different prefixes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(sock: str, prefix: str, failures: int, addresses: int) -> None:
    """One version: one call per line on stdin, printing the Redis CPU it took."""
    import redis.asyncio as aioredis

    from bench.scaling import BATCH, HOST, SOURCE, _rule, attack
    from pyfilter.detector.windows import Observed, Windows

    log = attack(failures, addresses, time.time())
    now = max(log.times) + 1
    calls = [[Observed("sshd", log.addresses[i % addresses], HOST, log.times[i], f"{SOURCE}:0:0:{i}",
                       log.lines[i]) for i in range(start, min(start + BATCH, failures))]
             for start in range(0, failures, BATCH)]

    async def cpu(client) -> float:
        info = await client.info("cpu")
        return info["used_cpu_sys"] + info["used_cpu_user"]

    async def main() -> None:
        client = aioredis.Redis(unix_socket_path=sock)
        windows = Windows(client, prefix, {"sshd": _rule()})
        await windows.record(calls[0][:1], now - 10_000)  # loads the library; too old to count
        print("ready", flush=True)
        for observed in calls:
            sys.stdin.readline()
            before = await cpu(client)
            await windows.record(observed, now)
            print(await cpu(client) - before, flush=True)
        await client.aclose()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--failures", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=50_000)
    args = parser.parse_args(argv)
    sides = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory(prefix="pyfilter-ledger-ab-") as tmp:
        sock = f"{tmp}/redis.sock"
        server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                                   "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            # This file runs in each worktree's venv, importing that worktree's code.
            procs = {name: subprocess.Popen([str(tree / ".venv/bin/python"), __file__, "--worker", sock, f"{name}:",
                                             str(args.failures), str(args.addresses)],
                                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                     for name, tree in sides.items()}
            for p in procs.values():
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker did not start")
            spent: dict[str, list[float]] = {name: [] for name in procs}
            for i in range(-(-args.failures // 1000)):
                for name in (list(procs) if i % 2 == 0 else list(reversed(procs))):  # who goes first alternates
                    procs[name].stdin.write("go\n")
                    procs[name].stdin.flush()
                    spent[name].append(float(procs[name].stdout.readline()))
            for p in procs.values():
                p.wait(60)
        finally:
            server.terminate()
            server.wait(10)
    for name, s in spent.items():
        print(f"{name} ({sides[name]}): Redis CPU {sum(s):.2f} s = {1e6 * sum(s) / args.failures:.1f} µs/failure, "
              f"median call {1e3 * statistics.median(s):.1f} ms")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        raise SystemExit(0)
    raise SystemExit(main())
