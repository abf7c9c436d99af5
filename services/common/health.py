"""Liveness for services without an HTTP port.

A service calls `beat()` from its main loop; the container health check runs
`python -m pyfilter.common.health` which succeeds while the last beat is fresh.
A loop that hangs (Redis gone, kernel call stuck) turns the container unhealthy.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

BEAT_FILE = Path(os.environ.get("PYFILTER_HEARTBEAT", "/tmp/pyfilter.heartbeat"))
MAX_AGE = 30.0


def beat() -> None:
    BEAT_FILE.touch()


def main() -> int:
    try:
        age = time.time() - BEAT_FILE.stat().st_mtime
    except FileNotFoundError:
        print("no heartbeat yet", file=sys.stderr)
        return 1
    if age > MAX_AGE:
        print(f"last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
