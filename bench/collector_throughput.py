"""How fast the collector moves a log file into Redis.

Writes a 500,000-line sshd-like log (~100 bytes a line), starts a private
redis-server and `python -m pyfilter.collector` with `from_start: true`, and
times until the file's checkpoint reaches its end (every line is then in the
stream). Prints lines/s, from the collector's start and from its first batch.

    .venv/bin/python bench/collector_throughput.py [--lines N] [--batch N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import redis
import yaml

from pyfilter.common.keys import Keys


def write_log(path: Path, count: int) -> int:
    users = ["root", "admin", "oracle", "test", "ubuntu", "git"]
    with open(path, "w") as f:
        for i in range(count):
            ip = f"203.0.{(i // 250) % 250}.{i % 250}"
            if i % 2:
                f.write(f"Jan 12 10:{(i // 60) % 60:02d}:{i % 60:02d} web1 sshd[{1000 + i % 9000}]: "
                        f"Failed password for invalid user {users[i % 6]} from {ip} port {20000 + i % 40000} ssh2\n")
            else:
                f.write(f"Jan 12 10:{(i // 60) % 60:02d}:{i % 60:02d} web1 sshd[{1000 + i % 9000}]: "
                        f"Connection closed by authenticating user {users[i % 6]} {ip} port 22 [preauth]\n")
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000, help="collector.batch_lines")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pyfilter-bench-"))
    sock = work / "redis.sock"
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                               "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    collector = None
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        log = work / "auth.log"
        size = write_log(log, args.lines)
        config = work / "pyfilter.yaml"
        config.write_text(yaml.safe_dump({"collector": {"batch_lines": args.batch, "sources": [
            {"name": "sshd", "paths": [str(log)], "from_start": True}]}}))
        env = {**os.environ, "PYFILTER_CONFIG": str(config), "PYFILTER_REDIS_URL": f"unix://{sock}",
               "PYFILTER_HOST": "bench", "PYFILTER_METRICS_PORT": "0",
               "PYFILTER_HEARTBEAT": str(work / "heartbeat")}
        key = Keys().checkpoint("bench", "sshd")
        start = time.perf_counter()
        collector = subprocess.Popen([sys.executable, "-m", "pyfilter.collector"], env=env,
                                     stderr=subprocess.DEVNULL)
        first = None
        while True:
            if first is None and client.xlen(Keys().lines("bench")):
                first = time.perf_counter()
            offsets = [msgspec.json.decode(v).get("offset", 0)
                       for k, v in client.hgetall(key).items() if b":" in k]
            if offsets and max(offsets) >= size:
                break
            if time.perf_counter() - start > 300:
                print("timed out", file=sys.stderr)
                return 1
            time.sleep(0.01)
        end = time.perf_counter()
        lines = sum(len(msgspec.msgpack.decode(f[b"m"])["lines"]) for _, f in client.xrange(Keys().lines("bench")))
        assert lines == args.lines, f"{lines} lines in the stream, {args.lines} written"
        print(f"{args.lines} lines, {size / 1e6:.1f} MB, batch_lines {args.batch}")
        print(f"from process start: {end - start:.2f} s, {args.lines / (end - start):,.0f} lines/s")
        print(f"from first batch:   {end - first:.2f} s, {args.lines / (end - first):,.0f} lines/s")
        return 0
    finally:
        if collector is not None:
            collector.terminate()
            collector.wait(15)
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
