"""A Redis of the command's own: redis-server on a unix socket in a temporary folder,
started for one run and removed after it (`pyfilter replay`). Nothing listens on
the network, nothing is written to disk, and no other client knows the socket.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 10.0


class NoRedisServer(Exception):
    """redis-server is not on PATH or does not start."""


@contextlib.contextmanager
def running() -> Iterator[str]:
    """The URL (unix://...) of a fresh, empty redis-server, stopped and removed on exit."""
    server = shutil.which("redis-server")
    if server is None:
        raise NoRedisServer("redis-server is not on PATH (Debian: apt-get install redis-server; "
                            "the pyfilter image has it)")
    with tempfile.TemporaryDirectory(prefix="pyfilter-replay-") as folder:
        sock = Path(folder) / "redis.sock"
        proc = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
             "--dir", folder, "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
             # Nobody reads its latency histograms or slow log: not kept, for each of the
             # millions of commands the ledger's functions run.
             "--latency-tracking", "no", "--slowlog-log-slower-than", "-1",
             # A window's hash or sorted set as a hash table past 16 members, not a
             # listpack searched from its start up to 128 (the default): a replay has
             # memory to spare, and its Redis ran 4.6% fewer instructions.
             "--hash-max-listpack-entries", "16", "--zset-max-listpack-entries", "16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            _wait_for(sock, proc)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for(sock: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NoRedisServer(f"redis-server exited at start (status {proc.returncode})")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise NoRedisServer(f"redis-server did not answer within {START_TIMEOUT:.0f} s")
