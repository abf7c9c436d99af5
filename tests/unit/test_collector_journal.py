"""The collector follows a real journal file and resumes by cursor.

systemd-journal-remote writes real `.journal` files from journal export
format, so no running journald is needed (apt-get install systemd-journal-remote).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .test_collector_support import Collector, settle, stream_lines, texts, wait_for

JOURNAL_REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote",
                                   "/usr/lib/systemd/systemd-journal-remote") if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(
    JOURNAL_REMOTE is None or shutil.which("journalctl") is None,
    reason="needs journalctl and systemd-journal-remote (apt-get install systemd-journal-remote)")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


def append(folder: Path, *entries: tuple[str, str]) -> None:
    """Write (identifier, message) entries into the journal folder, as journald would."""
    now = int(time.time() * 1e6)
    export = "".join(
        f"__REALTIME_TIMESTAMP={now + i}\n__MONOTONIC_TIMESTAMP={now + i}\n_BOOT_ID={BOOT_ID}\n"
        f"_HOSTNAME=web1\nSYSLOG_IDENTIFIER={ident}\n_PID=4242\nMESSAGE={message}\n\n"
        for i, (ident, message) in enumerate(entries))
    # journalctl reads the folder's files; a new file per call is what a
    # rotating journald leaves too.
    out = folder / f"part-{time.monotonic_ns()}.journal"
    subprocess.run([JOURNAL_REMOTE, "-o", str(out), "-"], input=export.encode(),
                   check=True, capture_output=True)


def sshd(n: int, tag: str) -> list[tuple[str, str]]:
    return [("sshd", f"Failed password for root from 198.51.100.{i} port 22 ssh2 {tag}") for i in range(n)]


def test_journal_is_followed_and_resumed_by_cursor(tmp_path, redis_url):
    journal = tmp_path / "journal"
    journal.mkdir()
    append(journal, *sshd(3, "history"))
    source = {"name": "sshd-journal", "type": "journal", "paths": [str(journal)],
              "match": ["SYSLOG_IDENTIFIER=sshd"]}
    collector = Collector(tmp_path, redis_url, [source])
    with collector.start() as c:
        c.first_run_recorded("sshd-journal")
        append(journal, *sshd(5, "live"), ("cron", "not sshd"))
        wait_for_entries(redis_url, sshd(5, "live"))
        assert c.stop() == 0
    assert not any("history" in t or "not sshd" in t for t in messages(redis_url))

    append(journal, *sshd(4, "while stopped"))
    with collector.start() as c:
        wait_for_entries(redis_url, sshd(4, "while stopped"))
        append(journal, *sshd(2, "after restart"))
        wait_for_entries(redis_url, sshd(2, "after restart"))
        settle()
        assert c.stop() == 0
    lines = stream_lines(redis_url)
    assert len(lines) == 11 and len({line.id for line in lines}) == 11  # nothing twice
    assert all(line.id.startswith("s=") for line in lines)  # journal cursors
    # Read like an RFC 3339 syslog line, so file rules match journal lines.
    stamp, rest = lines[0].text.split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp)
    assert rest == "web1 sshd[4242]: Failed password for root from 198.51.100.0 port 22 ssh2 live"


def test_journal_crash_loses_no_entry(tmp_path, redis_url):
    journal = tmp_path / "journal"
    journal.mkdir()
    source = {"name": "j", "type": "journal", "paths": [str(journal)], "from_start": True}
    collector = Collector(tmp_path, redis_url, [source], batch_lines=10)
    with collector.start() as c:
        append(journal, *sshd(50, "first"))
        wait_for_entries(redis_url, sshd(50, "first"))
        c.kill()
    append(journal, *sshd(50, "second"))
    with collector.start():
        wait_for_entries(redis_url, sshd(50, "second"))
    assert len(set(messages(redis_url))) == 100


def messages(redis_url: str) -> list[str]:
    """Line texts without their leading timestamp."""
    return [text.split(" ", 1)[1] for text in texts(redis_url)]


def wait_for_entries(redis_url: str, entries: list[tuple[str, str]]) -> None:
    want = {f"web1 {ident}[4242]: {message}" for ident, message in entries}
    wait_for(lambda: want <= set(messages(redis_url)), 15, f"{len(want)} journal entries")
