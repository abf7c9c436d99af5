"""An idle file source sleeps until its files change (inotify), and loses nothing without it."""

from __future__ import annotations

import asyncio
import os

from pyfilter.collector.sources import file as file_module
from pyfilter.collector.sources.file import FileSource
from pyfilter.collector.sources.wake import Wake, folders_of
from pyfilter.common.config import CollectorConfig, Source

from .test_collector_support import Collector, file_source, wait_for_lines, write

GUARD = 30.0  # a test that waits longer than this has failed


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def pending(wake: Wake) -> bool:
    """Whether the events the kernel queued so far woke `wake` (read them now)."""
    wake._read()
    return wake.woken.is_set()


def test_a_line_appended_to_a_watched_name_wakes(tmp_path):
    async def main():
        wake = Wake.open()
        wake.watch(folders_of([str(tmp_path / "auth.log")]))
        write(tmp_path / "auth.log", "Failed password")
        await wake.wait(asyncio.Event(), 3600)  # returns at once: the write woke it
        wake.close()

    run(main())


def test_other_files_in_the_folder_do_not_wake(tmp_path):
    async def main():
        wake = Wake.open()
        wake.watch(folders_of([str(tmp_path / "auth.log"), str(tmp_path / "nginx-*.log")]))
        write(tmp_path / "syslog", "busy neighbour")
        write(tmp_path / "nginx.log.1", "not a match for the glob")
        assert not pending(wake)
        write(tmp_path / "nginx-access.log", "a match for the glob")
        assert pending(wake)
        wake.close()

    run(main())


def test_rotation_wakes_and_the_new_file_is_watched(tmp_path):
    async def main():
        wake = Wake.open()
        log = tmp_path / "auth.log"
        write(log, "before")
        wake.watch(files=[str(log)])  # a file watched itself, as Docker's logs are
        await wake.wait(asyncio.Event(), 0)
        os.rename(log, tmp_path / "auth.log.1")
        assert pending(wake)
        await wake.wait(asyncio.Event(), 0)
        wake.watch(files=[str(log)])
        write(log, "after")
        assert pending(wake)
        wake.close()

    run(main())


def test_a_folder_created_later_is_watched_at_the_next_look(tmp_path):
    async def main():
        wake = Wake.open()
        folder = tmp_path / "nginx"
        paths = folders_of([str(folder / "access.log")])
        wake.watch(paths)  # missing: nothing watched, no error
        folder.mkdir()
        wake.watch(paths)
        write(folder / "access.log", "GET /")
        assert pending(wake)
        wake.close()

    run(main())


def test_wait_returns_when_the_collector_stops(tmp_path):
    async def main():
        wake, stop = Wake.open(), asyncio.Event()
        wake.watch(folders_of([str(tmp_path / "auth.log")]))
        asyncio.get_running_loop().call_soon(stop.set)
        await wake.wait(stop, 3600)
        wake.close()

    run(main())


async def first_lines(log, poll_interval: float) -> list[str]:
    """Start a file source on `log` from its end, append a line once it is idle, return what it reads."""
    opts = CollectorConfig(poll_interval=poll_interval)
    source = FileSource(Source(name="auth", paths=[str(log)]), opts, {}, asyncio.Event())
    batches = source.batches()
    while (await anext(batches)).lines or not source.tails:
        pass  # the first look: the file opened at its end
    asyncio.get_running_loop().call_later(0.2, write, log, "Failed password")
    while not (batch := await anext(batches)).lines:
        pass
    await batches.aclose()
    return [line.text for line in batch.lines]


def test_an_idle_source_reads_a_new_line_on_change_not_on_its_poll(tmp_path):
    log = tmp_path / "auth.log"
    log.touch()
    # An hour between looks: only the change itself can bring the line in time.
    assert run(first_lines(log, poll_interval=3600)) == ["Failed password"]


def test_without_inotify_the_source_polls_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(file_module.Wake, "open", classmethod(lambda cls: None))
    log = tmp_path / "auth.log"
    log.touch()
    assert run(first_lines(log, poll_interval=0.05)) == ["Failed password"]


def test_collector_delivers_a_line_written_after_idling(tmp_path, redis_url):
    log = tmp_path / "auth.log"
    log.touch()
    # As above, through the real collector process and Redis.
    with Collector(tmp_path, redis_url, [file_source("auth", log)], poll_interval=3600).start() as c:
        c.ready("auth")
        write(log, "first after idle")
        wait_for_lines(redis_url, ["first after idle"])
