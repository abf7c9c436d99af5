"""Fixtures shared by every test: a real Redis server, never a mock."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start redis-server on a unix socket in `directory`; return (process, url)."""
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; `make dev` does it)")
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(directory), "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture
def redis_url(tmp_path: Path):
    """URL of a fresh, empty redis-server of our own for this test."""
    proc, url = start_redis(tmp_path)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def catalog():
    """The shipped rule catalog (config/rules), loaded as the services load it."""
    from pyfilter.common.config import load_catalog

    return load_catalog(Path(__file__).resolve().parents[1] / "config" / "rules")
