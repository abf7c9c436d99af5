"""Liveness for services without an HTTP port.

A service calls `beat()` from its main loop. The container's health check
(compose/docker-compose.yml) succeeds while the beat file was touched in the
last 30 seconds: `find FILE -newermt '-30 seconds'`, a shell and one small
program instead of a Python interpreter, since it runs every few seconds for
as long as the stack is up. A loop that hangs (Redis gone, kernel call stuck)
turns the container unhealthy.
"""

from __future__ import annotations

import os
from pathlib import Path

BEAT_FILE = Path(os.environ.get("PYFILTER_HEARTBEAT", "/tmp/pyfilter.heartbeat"))


def beat() -> None:
    BEAT_FILE.touch()
