"""The collector follows files through everything logrotate and operators do to them."""

from __future__ import annotations

import os
import shutil
import signal
import time

import msgspec
import pytest
import redis

from pyfilter.collector.sources.tail import Position
from pyfilter.common.keys import Keys

from .test_collector_support import (
    HOST, Collector, file_source, settle, stream_lines, texts, wait_for, wait_for_lines, write,
)


@pytest.fixture
def logs(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    return folder


def test_existing_file_is_read_from_its_end(tmp_path, logs, redis_url):
    log = logs / "auth.log"
    write(log, "old 1", "old 2")
    with Collector(tmp_path, redis_url, [file_source("auth", log)]).start() as c:
        wait_for(lambda: redis.Redis.from_url(redis_url).exists(Keys().checkpoint(HOST, "auth")),
                 what="the first checkpoint")
        write(log, "new 1", "new 2")
        wait_for_lines(redis_url, ["new 1", "new 2"])
        assert c.stop() == 0
    assert texts(redis_url) == ["new 1", "new 2"]


def test_existing_file_is_read_from_its_start_with_from_start(tmp_path, logs, redis_url):
    log = logs / "auth.log"
    write(log, "old 1", "old 2")
    with Collector(tmp_path, redis_url, [file_source("auth", log, from_start=True)]).start():
        wait_for_lines(redis_url, ["old 1", "old 2"])


def test_file_that_appears_later_is_read_from_its_start(tmp_path, logs, redis_url):
    with Collector(tmp_path, redis_url, [file_source("web", logs / "*.log")]).start() as c:
        c.ready("web")
        write(logs / "access.log", "first", "second")
        wait_for_lines(redis_url, ["first", "second"])


def test_line_ids_name_source_file_identity_and_offset(tmp_path, logs, redis_url):
    log = logs / "auth.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("auth", log)]).start() as c:
        c.ready("auth")
        write(log, "a", "bb", "ccc")
        wait_for_lines(redis_url, ["a", "bb", "ccc"])
    st = os.stat(log)
    assert [line.id for line in stream_lines(redis_url)] == [
        f"auth:{st.st_dev}:{st.st_ino}:{offset}" for offset in (0, 2, 5)]


def test_rename_rotation_loses_no_lines(tmp_path, logs, redis_url):
    log = logs / "auth.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("auth", log)]).start() as c:
        c.ready("auth")
        write(log, "before 1", "before 2")
        # logrotate `create`: rename, new empty file; the daemon writes a last
        # line to the old file before it reopens.
        with open(log, "a") as old:
            os.rename(log, logs / "auth.log.1")
            write(log, "after 1")
            old.write("late line in the old file\n")
        write(log, "after 2")
        found = wait_for_lines(redis_url, ["before 1", "before 2", "late line in the old file",
                                           "after 1", "after 2"])
        settle()
    assert sorted(texts(redis_url)) == sorted(found) and len(found) == 5


def test_rotated_files_are_never_reread(tmp_path, logs, redis_url):
    log = logs / "app.log"
    write(log, "x1")
    write(logs / "app.log.1", "rotated")
    write(logs / "app.log.2.gz", "compressed")
    with Collector(tmp_path, redis_url, [file_source("app", logs / "app.log*")]).start() as c:
        c.ready()
        write(log, "x2")
        write(logs / "app.log.1", "rotated again")
        wait_for_lines(redis_url, ["x2"])
        settle()
    assert texts(redis_url) == ["x2"]


def test_copytruncate_reads_the_rest_from_the_copy(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, "one", "two")
        wait_for_lines(redis_url, ["one", "two"])
        c.proc.send_signal(signal.SIGSTOP)  # so the next lines are surely unread at the copy
        try:
            write(log, "three", "four")
            shutil.copyfile(log, logs / "app.log.1")
            os.truncate(log, 0)
            write(log, "five")
        finally:
            c.proc.send_signal(signal.SIGCONT)
        found = wait_for_lines(redis_url, ["one", "two", "three", "four", "five"])
        assert "reading the rest of a truncated file from its copy" in c.logs()
    assert len(found) == 5


def test_file_copytruncated_while_stopped_is_finished_from_the_copy(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, "one", "two")
        wait_for_lines(redis_url, ["one", "two"])
        c.kill()
    write(log, "three", "four")
    shutil.copyfile(log, logs / "app.log.1")
    os.truncate(log, 0)
    write(log, "five")
    with collector.start():
        found = wait_for_lines(redis_url, ["one", "two", "three", "four", "five"])
        settle()
    assert sorted(texts(redis_url)) == sorted(found) and len(found) == 5


def test_truncated_file_is_read_again_from_the_start(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, "a long first line", "a long second line")
        wait_for_lines(redis_url, ["a long first line", "a long second line"])
        write(log, "short", mode="w")  # truncation, then a shorter content
        wait_for_lines(redis_url, ["short"])
        # Truncated and regrown past the old length between two looks: the
        # changed first bytes give it away.
        write(log, "replaced by a longer text, longer than before", "and more", mode="w")
        wait_for_lines(redis_url, ["replaced by a longer text, longer than before", "and more"])


def test_deleted_and_recreated_file_is_followed(tmp_path, logs, redis_url):
    log = logs / "app.log"
    write(log, "old")
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, "before delete")
        wait_for_lines(redis_url, ["before delete"])
        log.unlink()
        settle(0.3)
        write(log, "recreated 1", "recreated 2")
        wait_for_lines(redis_url, ["recreated 1", "recreated 2"])
    assert "old" not in texts(redis_url)


def test_bad_bytes_do_not_stop_the_collector(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)], max_line_bytes=1024).start(metrics=True) as c:
        c.ready()
        with open(log, "ab") as f:
            f.write(b"bad utf8 \xff\xfe here\n")
            f.write(b"nul \x00 inside\n")
            f.write(b"crlf line\r\n")
            f.write(b"H" * (10 << 20) + b"\n")
            f.write(b"after the huge line\n")
        found = wait_for_lines(redis_url, ["bad utf8 \ufffd\ufffd here", "nul  inside", "crlf line",
                                           "H" * 1024, "after the huge line"], timeout=20)
        assert len(found) == 5
        assert c.metric("pyfilter_collector_cut_total") == 1
        assert c.metric("pyfilter_collector_lines_total") == 5


def test_last_line_without_newline_is_sent_after_a_timeout(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        with open(log, "a") as f:
            f.write("complete\nhalf a li")
            f.flush()
            wait_for_lines(redis_url, ["complete"])
            f.write("ne")  # the writer finishes the line in time
            f.flush()
            settle(0.3)
            f.write("\nno newline ever")
        wait_for_lines(redis_url, ["half a line", "no newline ever"], timeout=10)


def test_checkpointed_restart_resumes_exactly(tmp_path, logs, redis_url):
    log = logs / "app.log"
    write(log, "history")
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, *[f"line {i}" for i in range(1000)])
        wait_for_lines(redis_url, [f"line {i}" for i in range(1000)])
        assert c.stop() == 0
    write(log, *[f"while stopped {i}" for i in range(1000)])
    with collector.start():
        wait_for_lines(redis_url, [f"while stopped {i}" for i in range(1000)])
        settle()
    lines = stream_lines(redis_url)
    assert len(lines) == 2000 and len({line.id for line in lines}) == 2000  # no duplicates


def test_crash_and_rotations_while_down_lose_no_lines(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, "a1", "a2")
        wait_for_lines(redis_url, ["a1", "a2"])
        write(log, "a3")
        c.kill()
    # Two rotations while the collector is down.
    os.rename(log, logs / "app.log.1")
    write(log, "b1")
    os.rename(logs / "app.log.1", logs / "app.log.2")
    os.rename(log, logs / "app.log.1")
    write(log, "c1")
    write(logs / "unrelated.log", "not watched")
    with collector.start():
        found = wait_for_lines(redis_url, ["a1", "a2", "a3", "b1", "c1"])
        settle()
    assert "not watched" not in found


def test_file_checkpointed_before_its_first_read_is_read_after_a_crash(tmp_path, logs, redis_url):
    """A rotated file the collector opened and checkpointed (offset 0, nothing read,
    so no fingerprint yet) before it was killed: after the restart it is found by
    its identity and read, not given up as gone (its mtime is before SEEN, so
    nothing else would read it)."""
    log, rotated = logs / "app.log", logs / "app.log.1"
    write(rotated, "r1", "r2")
    write(log, "live")
    st = os.stat(rotated)
    now = time.time() + 10  # the last scan was after every write
    redis.Redis.from_url(redis_url).hset(Keys().checkpoint(HOST, "app"), mapping={
        "started": repr(now - 60), "seen": repr(now),
        f"{st.st_dev}:{st.st_ino}": msgspec.json.encode(Position(str(rotated), 0))})
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        wait_for_lines(redis_url, ["r1", "r2"])
        assert "is gone" not in c.logs()


def test_directory_in_place_of_a_file_is_logged_and_retried(tmp_path, logs, redis_url):
    bad, good = logs / "bad.log", logs / "good.log"
    bad.mkdir()
    good.touch()
    with Collector(tmp_path, redis_url, [file_source("bad", bad), file_source("good", good)]).start() as c:
        c.ready("good")
        write(good, "still collected")
        wait_for_lines(redis_url, ["still collected"])
        bad.rmdir()
        write(bad, "now a file")
        wait_for_lines(redis_url, ["now a file"])
        assert "is not a regular file" in c.logs()


def test_unreadable_file_is_logged_and_retried(tmp_path, logs, redis_url):
    log = logs / "app.log"
    write(log, "x")
    log.chmod(0)
    collector = Collector(tmp_path, redis_url, [file_source("app", log, from_start=True)])
    with collector.without_file_access_override().start() as c:
        wait_for(lambda: "cannot open" in c.logs(), what="the error in the log")
        log.chmod(0o644)
        wait_for_lines(redis_url, ["x"])


def test_sigterm_exits_zero(tmp_path, logs, redis_url):
    with Collector(tmp_path, redis_url, [file_source("app", logs / "app.log")]).start() as c:
        c.ready()  # running, past its start
        assert c.stop() == 0
