"""Helpers for the collector tests: run the real collector, read the real stream.

No tests here; the collector tests import these.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from pyfilter.common.keys import Keys
from pyfilter.common.messages import Line, decode_batch

HOST = "testhost"


CATALOG = Path(__file__).resolve().parents[2] / "config" / "rules"


class Collector:
    """`python -m pyfilter.collector` as a subprocess, with a config file of its own.

    `rules` enables catalog rules (with overrides) as in pyfilter.yaml; without
    them the collector follows every source as configured, from its end.
    """

    def __init__(self, tmp: Path, redis_url: str, sources: list[dict], rules: dict | None = None,
                 **collector):
        self.tmp, self.redis_url = tmp, redis_url
        self.sources = [source["name"] for source in sources]
        self.config = tmp / "pyfilter.yaml"
        settings = {"poll_interval": 0.05, "batch_lines": 500, **collector, "sources": sources}
        self.maxlen = settings.pop("lines_maxlen", 1_000_000)
        self.config.write_text(yaml.safe_dump({
            "redis": {"url": redis_url, "lines_maxlen": self.maxlen},
            "collector": settings,
            "catalog_dir": str(CATALOG),
            "rules": rules or {},
        }))
        self.log = tmp / "collector.log"
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.prefix: list[str] = []

    def without_file_access_override(self) -> "Collector":
        """Run it without root's power to read any file, as the service runs in its container."""
        if os.geteuid() == 0:
            self.prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        return self

    def start(self, metrics: bool = False) -> "Collector":
        if metrics:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.metrics_port = s.getsockname()[1]
        env = {**os.environ, "PYFILTER_CONFIG": str(self.config), "PYFILTER_REDIS_URL": self.redis_url,
               "PYFILTER_HOST": HOST, "PYFILTER_METRICS_PORT": str(self.metrics_port),
               "PYFILTER_HEARTBEAT": str(self.tmp / "heartbeat")}
        client = redis.Redis.from_url(self.redis_url)
        self.seen_before = {name: client.hget(Keys().checkpoint(HOST, name), "seen")
                            for name in self.sources}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "pyfilter.collector"],
                                         env=env, stderr=out, stdout=out)
        return self

    def ready(self, source: str = "app", timeout: float = 10.0) -> None:
        """Wait until the file source has looked at its paths once since start.

        Its first batch after a start carries the time of that look ("seen"):
        from then on, lines written are lines it must deliver.
        """
        client = redis.Redis.from_url(self.redis_url)
        key = Keys().checkpoint(HOST, source)
        wait_for(lambda: client.hget(key, "seen") not in (None, self.seen_before.get(source)),
                 timeout, f"the collector's first look at source {source!r}")

    def first_run_recorded(self, source: str, timeout: float = 10.0) -> None:
        """Wait until a new source has recorded its start (where "from the end" is)."""
        client = redis.Redis.from_url(self.redis_url)
        wait_for(lambda: client.hexists(Keys().checkpoint(HOST, source), "started"),
                 timeout, f"source {source!r} to record its start")

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to flush anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM: the orderly way; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def logs(self) -> str:
        return self.log.read_text()

    def metric(self, name: str) -> float:
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read()
        total = 0.0
        for row in body.decode().splitlines():
            if row.startswith(name + "{") or row.startswith(name + " "):
                total += float(row.rsplit(" ", 1)[1])
        return total

    def __enter__(self) -> "Collector":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def file_source(name: str, *paths: Path | str, from_start: bool = False) -> dict:
    return {"name": name, "type": "file", "paths": [str(p) for p in paths], "from_start": from_start}


def stream_lines(redis_url: str) -> list[Line]:
    """Every line in the stream, in stream order."""
    client = redis.Redis.from_url(redis_url)
    lines: list[Line] = []
    last = "-"
    while True:
        entries = client.xrange(Keys().lines(HOST), min=last, count=1000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            return lines
        for _entry_id, fields in entries:
            assert list(fields) == [b"m"], f"stream entry with fields {list(fields)}"
            lines += decode_batch(fields[b"m"]).lines
        last = entries[-1][0]


def position(redis_url: str, source: str, path: Path | str) -> dict | None:
    """The checkpoint's position of the file at `path` (offset, generation...), None if none."""
    st = os.stat(path)
    saved = redis.Redis.from_url(redis_url).hget(Keys().checkpoint(HOST, source), f"{st.st_dev}:{st.st_ino}")
    return None if saved is None else json.loads(saved)


def texts(redis_url: str) -> list[str]:
    return [line.text for line in stream_lines(redis_url)]


def wait_for(check, timeout: float = 10.0, what: str = "condition"):
    """Poll `check()` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_for_lines(redis_url: str, expected, timeout: float = 10.0) -> list[str]:
    """Wait until every expected text is in the stream; return all texts."""
    want = set(expected)
    found: list[str] = []

    def check():
        found[:] = texts(redis_url)
        return want <= set(found)

    try:
        wait_for(check, timeout, "lines in the stream")
    except AssertionError:
        missing = sorted(want - set(found))
        raise AssertionError(f"{len(missing)} lines missing, e.g. {missing[:5]}") from None
    return found


def settle(seconds: float = 0.5) -> None:
    """Give the collector time to act on something it should ignore."""
    time.sleep(seconds)


def write(path: Path, *lines: str, mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write("".join(line + "\n" for line in lines))
