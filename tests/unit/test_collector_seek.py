"""A log met for the first time is read from its first line inside the window (real files)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pyfilter.collector.sources import seek

from .test_collector_support import Collector, settle, texts, wait_for_lines, write

NOW = time.time()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")


def start_of(path: Path, since: float, tz: str | None = "UTC") -> str:
    """The line reading would start with."""
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = seek.recent_start(fd, os.fstat(fd).st_size, since, tz, NOW)
        return os.pread(fd, 200, offset).split(b"\n")[0].decode()
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def three_days(tmp_path_factory) -> tuple[Path, list[float]]:
    """Three days of sshd lines, 2.5 s apart, with undated continuation lines among them."""
    path = tmp_path_factory.mktemp("seek") / "auth.log"
    times = [NOW - 3 * 86400 + 2.5 * i for i in range(int(3 * 86400 / 2.5))]
    with open(path, "w") as f:
        for i, t in enumerate(times):
            f.write(f"{iso(t)} web1 sshd[{i}]: Failed password for root from 198.51.100.{i % 250} port 22 ssh2\n")
            if i % 97 == 0:
                f.write("    a continuation line, no time\n")
    return path, times


@pytest.mark.parametrize("back", [10, 60, 600, 3600, 86400])
def test_reading_starts_at_the_first_line_of_the_window(three_days, back):
    path, times = three_days
    since = NOW - back
    first = next(i for i, t in enumerate(times) if int(t) >= since)  # times are read to the second
    assert start_of(path, since).startswith(f"{iso(times[first])} web1 sshd[{first}]: ")


def test_a_window_longer_than_the_log_reads_it_whole(three_days):
    path, times = three_days
    assert start_of(path, NOW - 7 * 86400).startswith(iso(times[0]))


def test_a_huge_log_is_searched_not_read(tmp_path):
    path = tmp_path / "big.log"
    lines, now = 500_000, int(NOW)  # a line a second, 40 MB
    with open(path, "w") as f:
        f.writelines(f"{iso(now - lines + i)} web1 sshd[1]: Accepted publickey for deploy from 198.51.100.1\n"
                     for i in range(lines))
    fd = os.open(path, os.O_RDONLY)
    read = []
    found = seek.first_at_or_after(fd, os.fstat(fd).st_size, now - 300,
                                   lambda line: read.append(line) or seek.line_time(line, "UTC", now))
    os.close(fd)
    assert found == (lines - 300) * len(open(path).readline())
    assert len(read) < 3000  # lines looked at, of half a million


def test_syslog_times_without_a_year_or_zone_are_read_in_the_source_zone(tmp_path):
    zone = ZoneInfo("America/New_York")
    path = tmp_path / "auth.log"
    local = [datetime.fromtimestamp(NOW - back, zone) for back in (7200, 3000, 1200, 300, 30)]
    write(path, *(f"{d:%b} {d.day:2d} {d:%H:%M:%S} web1 sshd[{i}]: line {i}" for i, d in enumerate(local)))
    assert start_of(path, NOW - 600, "America/New_York").endswith("sshd[3]: line 3")
    # Read as UTC, the same lines are five hours off, and the start with them.
    assert not start_of(path, NOW - 600, "UTC").endswith("sshd[3]: line 3")


def test_access_logs_are_read_by_the_time_after_the_address(tmp_path):
    path = tmp_path / "access.log"
    stamps = [datetime.fromtimestamp(NOW - back, timezone.utc) for back in (900, 400, 100)]
    write(path, *(f'198.51.100.{i} - alice [{d:%d/%b/%Y:%H:%M:%S} +0000] "GET / HTTP/1.1" 401 10'
                  for i, d in enumerate(stamps)))
    assert start_of(path, NOW - 600).startswith("198.51.100.1 - alice")


def test_a_log_with_nothing_recent_or_no_times_is_read_from_its_end(tmp_path):
    old = tmp_path / "old.log"
    write(old, f"{iso(NOW - 7200)} web1 sshd[1]: old", f"{iso(NOW - 3600)} web1 sshd[1]: old")
    timeless = tmp_path / "timeless.log"
    write(timeless, *(f"line {i} without a time" for i in range(100_000)))
    for path in (old, timeless):
        fd = os.open(path, os.O_RDONLY)
        assert seek.recent_start(fd, os.fstat(fd).st_size, NOW - 600, "UTC", NOW) == os.fstat(fd).st_size
        os.close(fd)


def test_failures_written_before_the_start_are_collected(tmp_path, redis_url):
    log = tmp_path / "auth.log"
    lines = [f"{iso(time.time() - back)} web1 sshd[{back}]: Failed password for root from 198.51.100.7 "
             f"port 22 ssh2" for back in (7200, 1800, 300, 60)]
    write(log, *lines)
    source = {"name": "auth", "paths": [str(log)]}
    with Collector(tmp_path, redis_url, [source], rules={"sshd": {"findtime": "10m"}}).start() as c:
        wait_for_lines(redis_url, lines[2:])
        write(log, "after the start")
        wait_for_lines(redis_url, ["after the start"])
        settle()
        assert c.stop() == 0
    assert texts(redis_url) == [*lines[2:], "after the start"]
    # Started again, it resumes where it was: nothing twice.
    with Collector(tmp_path, redis_url, [source], rules={"sshd": {"findtime": "10m"}}).start() as c:
        write(log, "after the restart")
        wait_for_lines(redis_url, ["after the restart"])
        assert c.stop() == 0
    assert texts(redis_url) == [*lines[2:], "after the start", "after the restart"]

