"""The collector follows real journal files: by cursor, from the start of the rules'
window, only the identifiers its rules read.

systemd-journal-remote writes real `.journal` files from journal export
format, so no running journald is needed (tests/journal_files.py).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.journal_files import MISSING, write_journal

from .test_collector_support import Collector, settle, stream_lines, texts, wait_for

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def append(folder: Path, *entries: tuple[str, str], at: float | None = None) -> None:
    """Write (identifier, message) entries into the journal folder, as journald would."""
    # A new file per call is what a rotating journald leaves too.
    write_journal(folder / f"part-{time.monotonic_ns()}.journal", list(entries), at)


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


def test_journal_is_read_from_the_start_of_the_window_for_the_rules_identifiers(tmp_path, redis_url):
    journal = tmp_path / "journal"
    append(journal, *sshd(3, "two hours ago"), at=time.time() - 7200)
    append(journal, *sshd(3, "a minute ago"), ("cron", "a minute ago"), at=time.time() - 60)
    source = {"name": "journal", "type": "journal", "paths": [str(journal)]}
    with Collector(tmp_path, redis_url, [source], rules={"sshd": {"findtime": "10m"}}).start() as c:
        wait_for_entries(redis_url, sshd(3, "a minute ago"))
        append(journal, *sshd(2, "live"), ("postfix/smtpd", "live"))
        wait_for_entries(redis_url, sshd(2, "live"))
        settle()
        assert c.stop() == 0
    assert sorted(messages(redis_url)) == sorted(
        f"web1 sshd[4242]: {m}" for _, m in sshd(3, "a minute ago") + sshd(2, "live"))


def test_glob_programs_read_every_identifier_they_match(tmp_path, redis_url):
    journal = tmp_path / "journal"
    entries = [("postfix/smtpd", "one"), ("postfix-out/smtpd", "two"), ("postfix/qmgr", "not read")]
    append(journal, *entries, at=time.time() - 60)
    source = {"name": "journal", "type": "journal", "paths": [str(journal)]}
    with Collector(tmp_path, redis_url, [source], rules={"postfix": {}}).start() as c:
        wait_for_entries(redis_url, entries[:2])
        append(journal, ("postfix/smtpd", "live"), ("postfix/qmgr", "live"))
        wait_for_entries(redis_url, [("postfix/smtpd", "live")])
        settle()
        assert c.stop() == 0
    assert not any("qmgr" in m for m in messages(redis_url))


def test_unreadable_journal_is_reported_and_the_rule_named(tmp_path, redis_url):
    journal = tmp_path / "journal"
    append(journal, *sshd(1, "x"))
    for f in journal.iterdir():  # a journald file: 0640, another owner and group
        os.chown(f, 12345, 12345)
        f.chmod(0o640)
    sources = [{"name": "journal", "type": "journal", "paths": [str(journal)]},
               {"name": "auth", "paths": [str(tmp_path / "auth.log")]}]
    collector = Collector(tmp_path, redis_url, sources, rules={"sshd": {}}).without_file_access_override()
    with collector.start() as c:
        wait_for(lambda: "collector started" in c.logs(), 10, "the collector to start")
        assert c.stop() == 0
    warning = next(line for line in c.logs().splitlines() if "no source carries" in line)
    assert "sshd is enabled but no source carries sshd lines" in warning
    assert f"{tmp_path / 'auth.log'} does not exist" in warning
    assert "not readable by the collector" in warning and "PYFILTER_JOURNAL_GID" in warning
