"""Waiting on, and stopping, the servers and services a test started as processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable

import redis


def until(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll `predicate` until it is true; a Redis error (a node still starting or
    failing over) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(procs: Iterable[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM each process still running; SIGKILL one that is not gone after `grace` s."""
    procs = [p for p in procs if p.poll() is None]
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
