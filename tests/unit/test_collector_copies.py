"""A copy of a followed file (copytruncate's copy, before or after its truncation) is read once.

copytruncate copies the log, then empties it. A look for rotated files never
seen (a restart, a rotation noticed elsewhere) that falls between the two
steps found the copy: new since the last look and followed by nobody, it was
read whole, and its lines came again from the live file (or had already
come from it). CI saw it once in the rotation matrix (seed 133554250): every
round there is exactly as long as the one before, so nothing but the first
bytes tells the copy, the emptied log and its next round apart. Each test
here stops between the copy and the truncation on purpose.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter


from .test_collector_support import Collector, file_source, settle, texts, wait_for_lines, write


def attack(n: int) -> list[str]:
    """Round `n`: 15 lines (more than the 1 KB a file's print covers), every round
    exactly as long as the others, none alike."""
    return [f"2026-12-06T16:00:0{n}.000000+00:00 target app[{1000 + 20 * n + i}]: login failed from 2001:db8::{i + 1:x}"
            for i in range(15)]


def copy_step(log) -> None:
    """copytruncate's first step (older copies move up first)."""
    if os.path.exists(f"{log}.1"):
        os.rename(f"{log}.1", f"{log}.2")
    shutil.copyfile(log, f"{log}.1")


def truncate_step(log, *then: str) -> None:
    """copytruncate's second step, and the daemon's next lines."""
    os.truncate(log, 0)
    write(log, *then)


def assert_each_once(redis_url, *rounds: list[str]) -> None:
    wanted = [line for lines in rounds for line in lines]
    wait_for_lines(redis_url, wanted)
    settle()
    counted = Counter(texts(redis_url))
    assert {text: n for text, n in counted.items() if n != 1} == {}
    assert sorted(counted) == sorted(wanted)


def test_copy_made_while_stopped_before_its_truncation_is_not_read_again(tmp_path, logs, redis_url):
    """The CI case: read, killed, copied; started; truncated and written again, as long as before."""
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        write(log, *attack(1))
        wait_for_lines(redis_url, attack(1))
        c.kill()
    copy_step(log)
    with collector.start() as c:
        c.ready()  # its first look, and its look for files never seen, are done
        truncate_step(log, *attack(2))
        assert os.path.getsize(log) == os.path.getsize(f"{log}.1")
        assert_each_once(redis_url, attack(1), attack(2))


def test_copy_of_a_file_not_read_yet_is_not_read_besides_it(tmp_path, logs, redis_url):
    """Killed before reading round 1; the copy is there at the restart, the file not emptied yet."""
    log = logs / "app.log"
    log.touch()
    collector = Collector(tmp_path, redis_url, [file_source("app", log)])
    with collector.start() as c:
        c.ready()
        c.kill()
    write(log, *attack(1))
    copy_step(log)
    with collector.start() as c:
        c.ready()
        wait_for_lines(redis_url, attack(1))
        truncate_step(log, *attack(2))
        assert_each_once(redis_url, attack(1), attack(2))


def test_copy_found_by_a_rotation_elsewhere_before_its_truncation_is_not_read_again(tmp_path, logs, redis_url):
    """No restart: a file appearing at another watched path makes the collector look for
    rotated files never seen while the copy is made but the log not yet emptied."""
    log, other = logs / "app.log", logs / "other.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log, other)]).start() as c:
        c.ready()
        write(log, *attack(1))
        wait_for_lines(redis_url, attack(1))
        copy_step(log)
        write(other, "another log appears")
        wait_for_lines(redis_url, ["another log appears"])
        truncate_step(log, *attack(2))
        assert_each_once(redis_url, attack(1), attack(2), ["another log appears"])


def test_copy_shorter_than_what_was_read_is_not_read_again(tmp_path, logs, redis_url):
    """A line written after the copy and read before the truncation: the copy is shorter
    than what was read (the line is only in what was read: logrotate's known gap)."""
    log = logs / "app.log"
    log.touch()
    late = "2026-12-06T16:00:01.500000+00:00 target app[1099]: login failed from 2001:db8::b"
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, *attack(1))
        wait_for_lines(redis_url, attack(1))
        copy_step(log)
        write(log, late)
        wait_for_lines(redis_url, [late])
        truncate_step(log, *attack(2))
        assert_each_once(redis_url, attack(1), [late], attack(2))
