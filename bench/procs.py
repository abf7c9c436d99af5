"""Child processes for the benchmarks: their time and peak memory, from the kernel.

`os.wait4` returns the resource usage of exactly one child once it has
exited: CPU time and peak resident set (`ru_maxrss`, the same number as
VmHWM in /proc/PID/status and "Maximum resident set size" of /usr/bin/time -v).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Usage:
    wall: float  # seconds from start to exit
    cpu: float  # user + system seconds
    peak_mb: float  # peak resident set, MiB

    def __add__(self, other: "Usage") -> "Usage":
        # Processes that run side by side: the longer wall time, summed CPU and memory.
        return Usage(max(self.wall, other.wall), self.cpu + other.cpu, self.peak_mb + other.peak_mb)


def alive(proc: subprocess.Popen) -> bool:
    """Whether `proc` still runs, without reaping it (its usage stays readable)."""
    if proc.returncode is not None:
        return False
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def finish(proc: subprocess.Popen, started: float, grace: float = 20.0) -> Usage:
    """Wait for `proc` to exit (SIGKILL after `grace` seconds) and return its usage."""
    if proc.returncode is not None:  # reaped elsewhere: its usage is gone
        return Usage(time.perf_counter() - started, float("nan"), float("nan"))
    deadline = time.monotonic() + grace
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024)


def stop(proc: subprocess.Popen, started: float, grace: float = 20.0) -> Usage:
    """SIGTERM, then `finish`."""
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    return finish(proc, started, grace)


def wait_until(ready: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
