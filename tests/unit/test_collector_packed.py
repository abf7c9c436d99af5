"""Rotated files compressed before the collector read them to their end (logrotate `compress`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import redis

from pyfilter.collector.sources.tail import Position, fingerprint
from pyfilter.common.keys import Keys

from .test_collector_support import HOST, Collector, file_source, settle, stream_lines, wait_for_lines, write


@contextlib.contextmanager
def sent(tmp_path, redis_url: str, log: Path, *texts: str) -> Iterator[Collector]:
    """A collector following `log` (made empty here) once it has sent `texts`; it runs until the block ends."""
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start():
        collector.ready()
        write(log, *texts)
        wait_for_lines(redis_url, list(texts))
        yield collector


def rotate_and_compress(log, keep: int = 5) -> None:
    """logrotate with `compress`: older copies move up, the log becomes `.1.gz`, a new one is made.
    gzip keeps the file's modification time, as logrotate's does."""
    for n in range(keep, 0, -1):
        if os.path.exists(f"{log}.{n}.gz"):
            os.rename(f"{log}.{n}.gz", f"{log}.{n + 1}.gz")
    os.rename(log, f"{log}.1")
    log.touch()
    subprocess.run(["gzip", f"{log}.1"], check=True)


def test_rest_of_a_file_compressed_while_stopped_is_read_from_its_archive(tmp_path, logs, redis_url):
    log = logs / "app.log"
    with sent(tmp_path, redis_url, log, "a1", "a2") as collector:
        collector.kill()
    write(log, "a3 written before the rotation, never read")
    rotate_and_compress(log)
    write(log, "b1")
    with collector.start():
        wait_for_lines(redis_url, ["a3 written before the rotation, never read", "b1"])
        settle()
    lines = stream_lines(redis_url)
    assert [line.text for line in lines].count("a1") == 1
    # The rest starts where the checkpoint stopped, in the archive's identity (the
    # file's inode is free again: the next file made may take it).
    packed = os.stat(f"{log}.1.gz")
    a3 = next(line for line in lines if line.text.startswith("a3"))
    assert a3.id.startswith(f"app:{packed.st_dev}:{packed.st_ino}:") and a3.id.endswith(":6")


def test_files_rotated_and_compressed_while_stopped_are_read_whole(tmp_path, logs, redis_url):
    log = logs / "app.log"
    with sent(tmp_path, redis_url, log, "a1") as collector:
        collector.kill()
    write(log, "a2")
    rotate_and_compress(log)
    write(log, "b1 in a file only ever seen compressed", "b2")
    rotate_and_compress(log)
    write(log, "c1")
    write(logs / "app.log.7.gz", "an old archive")  # not gzip at all: left alone
    with collector.start():
        found = wait_for_lines(redis_url, ["a1", "a2", "b1 in a file only ever seen compressed", "b2", "c1"])
        settle()
    assert sorted(found) == sorted(["a1", "a2", "b1 in a file only ever seen compressed", "b2", "c1"])


def test_file_compressed_while_read_is_not_read_twice(tmp_path, logs, redis_url):
    log = logs / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        for n in range(5):
            write(log, *(f"round {n} line {i}" for i in range(100)))
            rotate_and_compress(log)
        write(log, "last")
        wanted = [f"round {n} line {i}" for n in range(5) for i in range(100)] + ["last"]
        wait_for_lines(redis_url, wanted)
        settle(1.0)
    found = [line.text for line in stream_lines(redis_url)]
    assert sorted(found) == sorted(wanted)


def test_archive_read_after_a_crash_is_not_confused_with_a_new_file_on_the_freed_inode(tmp_path, logs, redis_url):
    """The rotated file's inode is free once gzip removed it, and the next log made may take it.

    Whether it does is the file system's choice (ext4 often gives the inode
    freed last): the rotation matrix (tests/integration) met it every run.
    """
    log = logs / "app.log"
    with sent(tmp_path, redis_url, log, "a1") as collector:
        os.rename(log, f"{log}.1")
        log.touch()
        write(f"{log}.1", "a2, late in the rotated file")
        wait_for_lines(redis_url, ["a2, late in the rotated file"])
        collector.kill()  # while it still follows app.log.1
    write(f"{log}.1", "a3, unread")
    subprocess.run(["gzip", f"{log}.1"], check=True)
    with collector.start():
        wait_for_lines(redis_url, ["a3, unread"])
        for n in range(3):  # new files, perhaps on the inode gzip freed
            os.rename(log, f"{log}.{n + 2}")
            write(log, f"b{n}")
            wait_for_lines(redis_url, [f"b{n}"])
        settle(1.0)
    found = [line.text for line in stream_lines(redis_url)]
    assert sorted(found) == sorted(["a1", "a2, late in the rotated file", "a3, unread", "b0", "b1", "b2"])


def test_archive_being_read_at_a_crash_is_resumed_after_it_moved_up(tmp_path, logs, redis_url):
    """Checkpointed while reading `app.log.1.gz`, which logrotate then renamed to `.2.gz`."""
    log = logs / "app.log"
    log.touch()
    write(f"{log}.1", "a1", "a2", "a3")
    subprocess.run(["gzip", f"{log}.1"], check=True)
    os.rename(f"{log}.1.gz", f"{log}.2.gz")
    st = os.stat(f"{log}.2.gz")
    saved = Position(f"{log}.1.gz", offset=3, head=3, fp=fingerprint(b"a1\n"), gen="savedgeneration")
    redis.Redis.from_url(redis_url).hset(Keys().checkpoint(HOST, "app"), mapping={
        "started": repr(time.time() - 60), "seen": repr(time.time() + 10),
        f"{st.st_dev}:{st.st_ino}": msgspec.json.encode(saved)})
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start():
        wait_for_lines(redis_url, ["a2", "a3"])
        settle()
    assert [(line.id, line.text) for line in stream_lines(redis_url)] == [
        (f"app:{st.st_dev}:{st.st_ino}:savedgeneration:{offset}", text) for offset, text in ((3, "a2"), (6, "a3"))]


def test_a_log_still_empty_at_the_stop_and_compressed_while_down_is_read_without_its_predecessor_again(
        tmp_path, logs, redis_url):
    # Nothing of the new log to know it by (it was empty); its compressed copy
    # is found as a file never seen, and the copy of the one before it,
    # modified just before the stop, is known as read.
    log = logs / "app.log"
    with sent(tmp_path, redis_url, log, "a1") as collector:
        rotate_and_compress(log)
        settle()
        collector.kill()
    write(log, "b1")
    rotate_and_compress(log)
    write(log, "c1")
    with collector.start():
        wait_for_lines(redis_url, ["b1", "c1"])
        settle()
    # The two files are read side by side: their lines' order between them is free.
    assert sorted(line.text for line in stream_lines(redis_url)) == ["a1", "b1", "c1"]


def test_a_file_on_the_inode_of_one_forgotten_at_the_same_time_keeps_its_position(tmp_path, logs, redis_url):
    """At a restart the source forgets a file it finds in a compressed copy (its
    inode is free since gzip removed it) and starts reading a file never seen,
    which took that inode: one batch writes the new file's position and forgets
    the old file's, under one identity. The position must stay, or the next
    restart reads the new file again, in a new generation: every line twice
    (the rotation matrix met it in CI, seed 624567020).

    The inode cannot be chosen, so the checkpoint is written as if it had
    been: the old file's position is filed under the identity of the copy
    never seen. That copy was modified after any look (its mtime is ahead),
    so only its position keeps it from being read as never seen again."""
    log = logs / "app.log"
    old = tmp_path / "old.log"
    write(old, "x1")
    subprocess.run(["gzip", "-c", str(old)], check=True, stdout=open(f"{log}.2.gz", "wb"))
    write(f"{log}.1", "b1", "b2")
    subprocess.run(["gzip", f"{log}.1"], check=True)
    later = time.time() + 30
    os.utime(f"{log}.1.gz", (later, later))
    write(log, "c1")
    st = os.stat(f"{log}.1.gz")
    client = redis.Redis.from_url(redis_url)
    client.hset(Keys().checkpoint(HOST, "app"), mapping={
        "started": repr(time.time() - 60), "seen": repr(time.time() - 10),
        f"{st.st_dev}:{st.st_ino}": msgspec.json.encode(Position(str(log), 3, 3, fingerprint(b"x1\n")))})
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        wait_for_lines(redis_url, ["b1", "b2", "c1"])
        settle()
        c.kill()
    with collector.start() as c:
        c.ready()
        write(log, "c2")
        wait_for_lines(redis_url, ["c2"])
        settle()
    assert sorted(line.text for line in stream_lines(redis_url)) == ["b1", "b2", "c1", "c2"]
