"""Real systemd journal files for tests, written by systemd-journal-remote.

journal-remote turns journal export format into a `.journal` file as
journald writes them, so no running journald is needed
(apt-get install systemd-journal-remote; .ci/run does it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

JOURNAL_REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote",
                                   "/usr/lib/systemd/systemd-journal-remote") if Path(p).exists()), None)
MISSING = ("needs journalctl and systemd-journal-remote (apt-get install systemd-journal-remote)"
           if JOURNAL_REMOTE is None or shutil.which("journalctl") is None else None)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


def write_journal(path: Path, entries: list[tuple[str, str]], at: float | None = None,
                  host: str = "web1", pid: int = 4242) -> None:
    """Append (identifier, message) entries to the journal file `path` (created if
    need be; its name must end in .journal), stamped `at` (default now), a
    microsecond apart."""
    first = int((time.time() if at is None else at) * 1e6)
    export = "".join(
        f"__REALTIME_TIMESTAMP={first + i}\n__MONOTONIC_TIMESTAMP={first + i}\n_BOOT_ID={BOOT_ID}\n"
        f"_HOSTNAME={host}\nSYSLOG_IDENTIFIER={ident}\n_PID={pid}\nMESSAGE={message}\n\n"
        for i, (ident, message) in enumerate(entries))
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([JOURNAL_REMOTE, "-o", str(path), "-"], input=export.encode(),
                   check=True, capture_output=True)
