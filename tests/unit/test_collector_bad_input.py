"""A source pointed at something that is not a log, or a log edited under it.

Each gets one clear warning, however many times the collector looks, and
nothing else stops: the other files of the source and the other sources go on.
"""

from __future__ import annotations

import os

import pytest

from pyfilter.collector.sources.tail import REWRITTEN, SHRANK, TRUNCATED, how_changed

from .test_collector_support import Collector, file_source, settle, wait_for, wait_for_lines, write


@pytest.mark.parametrize("size, read, head_same, change", [
    (120, 100, True, None),  # appended to
    (100, 100, True, None),  # unchanged
    (0, 100, False, TRUNCATED),  # emptied
    (30, 100, False, TRUNCATED),  # emptied, then written again (copytruncate)
    (60, 100, True, SHRANK),  # cut short, or lines taken out by an editor
    (100, 100, False, REWRITTEN),  # written over from its start
    (150, 100, False, REWRITTEN),
])
def test_what_happened_to_a_file_is_told_from_its_size_and_first_bytes(size, read, head_same, change):
    assert how_changed(size, read, head_same) == change


@pytest.mark.parametrize("size, read", [(100, 100), (150, 100)])
def test_a_file_whose_last_line_read_changed_was_written_over_whatever_its_first_bytes(size, read):
    assert how_changed(size, read, head_same=True, back_same=False) == REWRITTEN


def said_once(logs_text: str, what: str) -> bool:
    return logs_text.count(what) == 1


def test_fifo_is_refused_once_and_the_other_files_go_on(tmp_path, logs, redis_url):
    os.mkfifo(logs / "pipe.log")
    good = logs / "app.log"
    good.touch()
    with Collector(tmp_path, redis_url, [file_source("app", logs / "*.log")]).start() as c:
        c.ready()
        write(good, "still collected")
        wait_for_lines(redis_url, ["still collected"])
        settle(1.0)  # twenty looks at the paths
        assert said_once(c.logs(), "is a named pipe (FIFO), not a regular file")
        write(good, "and more")
        wait_for_lines(redis_url, ["still collected", "and more"])


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_is_refused_once_and_the_other_sources_go_on(tmp_path, logs, redis_url, device):
    good = logs / "app.log"
    good.touch()
    sources = [file_source("device", device, from_start=True), file_source("app", good)]
    with Collector(tmp_path, redis_url, sources).start() as c:
        c.ready()
        write(good, "still collected")
        wait_for_lines(redis_url, ["still collected"])
        settle(1.0)
        assert said_once(c.logs(), "is a character device, not a regular file")


def test_fifo_put_in_place_of_a_followed_log_does_not_block(tmp_path, logs, redis_url):
    """The log's path becomes a FIFO between two looks: opening it must not wait for a writer."""
    log, other = logs / "app.log", logs / "other.log"
    log.touch()
    other.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log), file_source("other", other)]).start() as c:
        c.ready()
        write(log, "before")
        wait_for_lines(redis_url, ["before"])
        log.unlink()
        os.mkfifo(log)
        wait_for(lambda: "is a named pipe (FIFO)" in c.logs(), what="the FIFO to be refused")
        write(other, "still collected")
        wait_for_lines(redis_url, ["before", "still collected"])


def test_file_cut_short_is_said_once_and_read_again(tmp_path, logs, redis_url):
    log, other = logs / "app.log", logs / "other.log"
    other.touch()
    first = [f"line {i:03d} of a log that will be cut" for i in range(60)]
    write(log, *first)
    cut = sum(len(line) + 1 for line in first[:40])  # past the first bytes the collector fingerprints
    with Collector(tmp_path, redis_url, [file_source("app", log, from_start=True),
                                         file_source("other", other)]).start() as c:
        wait_for_lines(redis_url, first)
        os.truncate(log, cut)  # `truncate -s`, an editor: shorter, not emptied
        write(log, "written after the cut")
        wait_for_lines(redis_url, ["written after the cut"])
        write(other, "the other source goes on")
        wait_for_lines(redis_url, ["the other source goes on"])
        settle(1.0)
        assert said_once(c.logs(), "got shorter than what was read without being emptied")


def test_log_rewritten_in_place_is_said_once_and_read_again(tmp_path, logs, redis_url):
    log = logs / "app.log"
    write(log, *(f"original line {i}" for i in range(10)))
    with Collector(tmp_path, redis_url, [file_source("app", log, from_start=True)]).start() as c:
        wait_for_lines(redis_url, [f"original line {i}" for i in range(10)])
        fd = os.open(log, os.O_WRONLY)  # written over from its start, as long as before
        try:
            os.pwrite(fd, "".join(f"REWRITTEN line {i}\n" for i in range(10)).encode(), 0)
        finally:
            os.close(fd)
        wait_for_lines(redis_url, [f"REWRITTEN line {i}" for i in range(10)])
        write(log, "appended after")
        wait_for_lines(redis_url, ["appended after"])
        settle(1.0)
        assert said_once(c.logs(), "has new bytes where it was read (its first bytes, or the last line read)")


def write_over(path, *lines: str) -> None:
    """Write over a file from its start, never making it shorter on the way (no truncation to see)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, "".join(line + "\n" for line in lines).encode(), 0)
    finally:
        os.close(fd)


# Longer than the first bytes that fingerprint a file (tail.HEAD): only the
# last line read tells the file rewritten under the same start.
BANNER = "# app log, format 3: " + "=" * 1100


@pytest.mark.parametrize("when", ["while read", "while the collector was stopped"])
def test_log_rewritten_in_place_under_the_same_first_kib_is_read_again(tmp_path, logs, redis_url, when):
    log = logs / "app.log"
    write(log, BANNER, *(f"original line {i}" for i in range(10)))
    collector = Collector(tmp_path, redis_url, [file_source("app", log, from_start=True)])
    with collector.start():
        wait_for_lines(redis_url, [f"original line {i}" for i in range(10)])
        if when != "while read":
            collector.kill()
        write_over(log, BANNER, *(f"REWRITTEN line {i:02}" for i in range(10)))  # longer than before
        if when != "while read":
            collector.start()
        wait_for_lines(redis_url, [f"REWRITTEN line {i:02}" for i in range(10)])
        write(log, "appended after")
        wait_for_lines(redis_url, ["appended after"])
        settle(1.0)
        assert said_once(collector.logs(), "edited in place, not rotated")
