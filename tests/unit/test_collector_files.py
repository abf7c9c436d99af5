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
    HOST, Collector, file_source, position, settle, stream_lines, texts, wait_for, wait_for_lines, write,
)


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


def test_line_ids_name_source_file_identity_generation_and_offset(tmp_path, logs, redis_url):
    log = logs / "auth.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("auth", log)]).start() as c:
        c.ready("auth")
        write(log, "a", "bb", "ccc")
        wait_for_lines(redis_url, ["a", "bb", "ccc"])
    st, gen = os.stat(log), position(redis_url, "auth", log)["gen"]
    assert gen
    assert [line.id for line in stream_lines(redis_url)] == [
        f"auth:{st.st_dev}:{st.st_ino}:{gen}:{offset}" for offset in (0, 2, 5)]


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


def test_truncated_file_starts_a_new_generation(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, "same text", "same text")
        wait_for(lambda: position(redis_url, "app", log)["offset"] == log.stat().st_size, what="both lines")
        before = position(redis_url, "app", log)["gen"]
        os.truncate(log, 0)
        write(log, "new text")
        wait_for(lambda: len(stream_lines(redis_url)) == 3, what="the line after the truncation")
    ids = [line.id for line in stream_lines(redis_url)]
    after, prefix = position(redis_url, "app", log)["gen"], f"app:{log.stat().st_dev}:{log.stat().st_ino}"
    assert after != before
    assert ids == [f"{prefix}:{before}:0", f"{prefix}:{before}:10", f"{prefix}:{after}:0"]


def test_restart_resumes_in_the_same_generation(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, "one")
        wait_for_lines(redis_url, ["one"])
        gen = position(redis_url, "app", log)["gen"]
        c.kill()
    write(log, "two")
    with collector.start():
        wait_for_lines(redis_url, ["two"])
    assert [line.id.split(":")[-2] for line in stream_lines(redis_url)] == [gen, gen]


def test_checkpoint_from_before_generations_still_loads(tmp_path, logs, redis_url):
    """A checkpoint an older collector wrote (no `gen`): read on where it stopped, ids
    in their old form (a line sent again keeps its id), until the file is truncated."""
    log = logs / "app.log"
    write(log, "read before the upgrade")
    st = log.stat()
    redis.Redis.from_url(redis_url).hset(Keys().checkpoint(HOST, "app"), mapping={
        "started": "1", "seen": repr(st.st_mtime + 10),
        f"{st.st_dev}:{st.st_ino}": f'{{"path":"{log}","offset":{st.st_size}}}'})
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        write(log, "after the upgrade")
        wait_for_lines(redis_url, ["after the upgrade"])
        os.truncate(log, 0)
        write(log, "after a truncation")
        wait_for_lines(redis_url, ["after the upgrade", "after a truncation"])
        assert c.stop() == 0
    old, new = stream_lines(redis_url)
    identity = f"app:{st.st_dev}:{st.st_ino}"
    assert old.id == f"{identity}:{st.st_size}"
    assert new.id == f"{identity}:{position(redis_url, 'app', log)['gen']}:0"


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
        assert "is a directory, not a regular file" in c.logs()


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


def point_link(link, target) -> None:
    """`ln -sfn`: a new link renamed over the old one, so the path never vanishes."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.rename(tmp, link)


def test_symlinked_log_whose_target_is_replaced_loses_no_lines(tmp_path, logs, redis_url):
    targets = tmp_path / "targets"
    targets.mkdir()
    link = logs / "current.log"
    (targets / "app-1.log").touch()
    point_link(link, targets / "app-1.log")
    collector = Collector(tmp_path, redis_url, [file_source("app", link)])
    with collector.start() as c:
        c.ready()
        write(targets / "app-1.log", "one")
        wait_for_lines(redis_url, ["one"])
        write(targets / "app-2.log", "two")
        point_link(link, targets / "app-2.log")
        write(targets / "app-1.log", "late line in the old target")
        wait_for_lines(redis_url, ["two", "late line in the old target"])
        c.kill()
    # Replaced again while the collector is down, with lines left unread in the old target.
    write(targets / "app-2.log", "three, never read before the switch")
    write(targets / "app-3.log", "four")
    point_link(link, targets / "app-3.log")
    with collector.start():
        found = wait_for_lines(redis_url, ["three, never read before the switch", "four"])
        settle()
    assert sorted(found) == sorted(["one", "two", "late line in the old target",
                                    "three, never read before the switch", "four"])


def test_copy_being_read_at_a_crash_is_resumed_not_read_again(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, "one", "two")
        wait_for_lines(redis_url, ["one", "two"])
        c.proc.send_signal(signal.SIGSTOP)  # so "three" is read from the copy
        try:
            write(log, "three")
            shutil.copyfile(log, logs / "app.log.1")
            os.truncate(log, 0)
        finally:
            c.proc.send_signal(signal.SIGCONT)
        wait_for_lines(redis_url, ["three"])
        c.kill()  # the copy is still followed, under its rotated name
    write(log, "four")
    with collector.start():
        wait_for_lines(redis_url, ["four"])
        settle()
    assert sorted(texts(redis_url)) == ["four", "one", "three", "two"]


@pytest.mark.parametrize("after", [[], ["b1"]])
def test_copytruncate_before_the_first_read_loses_nothing(tmp_path, logs, redis_url, after):
    """The file was empty at the last look: nothing read, no first bytes to tell a truncation by."""
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        c.proc.send_signal(signal.SIGSTOP)
        try:
            write(log, "a1", "a2")
            shutil.copyfile(log, logs / "app.log.1")
            os.truncate(log, 0)
            write(log, *after)
        finally:
            c.proc.send_signal(signal.SIGCONT)
        found = wait_for_lines(redis_url, ["a1", "a2", *after])
        settle()
    assert sorted(texts(redis_url)) == sorted(found) and len(found) == 2 + len(after)


def test_link_targets_never_seen_while_the_collector_was_down_are_read(tmp_path, logs, redis_url):
    """Two replacements of the link's target while down: the middle target was never its target
    while the collector looked, and only its name (`app-2.log` beside `app-3.log`) gives it away."""
    targets = tmp_path / "targets"
    targets.mkdir()
    link = logs / "current.log"
    (targets / "app-1.log").touch()
    point_link(link, targets / "app-1.log")
    collector = Collector(tmp_path, redis_url, [file_source("app", link)])
    with collector.start() as c:
        c.ready()
        write(targets / "app-1.log", "r1")
        wait_for_lines(redis_url, ["r1"])
        c.kill()
    for n in (2, 3):
        write(targets / f"app-{n}.log", f"r{n}")
        point_link(link, targets / f"app-{n}.log")
        write(targets / f"app-{n - 1}.log", f"late {n - 1}")
    write(targets / "unrelated.log", "another program's log")
    with collector.start():
        wait_for_lines(redis_url, ["r1", "late 1", "r2", "late 2", "r3"])
        settle()
    assert sorted(texts(redis_url)) == ["late 1", "late 2", "r1", "r2", "r3"]
