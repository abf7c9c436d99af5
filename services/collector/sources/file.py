"""Log files and globs, followed through rotation, truncation and re-creation.

A file is known by its identity (device, inode), not its name: that is what
survives a rename. Each open file is a `Tail` (`tail.py`); the source keeps one per
identity and looks at the watched paths again when inotify says they changed
(wake.py) and every RESCAN seconds, or every `poll_interval` without inotify:

- a path now naming another file (logrotate `create`, delete + re-create):
  the old file is read to its end and kept open until it has been quiet for
  DRAIN_IDLE seconds (daemons write to it until they reopen), the new file is
  read from its start;
- a file shorter than what was read, or whose first bytes or last line
  read changed (copytruncate, truncation, an edit in place: `how_changed`): it is read
  again from 0 in a new generation (tail.py), after the unread rest was taken
  from the copy if one sits next to it (`name.1`, or `name.1.gz`, starting
  with the same bytes); an edit in place is warned about. A file changed
  before anything of it was read has no first bytes to compare: a copy of
  it made meanwhile is found as a rotated file never seen (below). A copy
  seen before its original is emptied (copytruncate has two steps) is left
  to the original (`tail.copy_of`), never read as a file never seen;
- a watched path that appears later is read from its start.

A file there before the source first started is read from its first line
inside the plan's `lookback` (the longest window of the rules it feeds, found
by the lines' times: `seek.py`), so failures written just before the start
count; with no lookback (or `from_start`), from its end (or its start).

Checkpoint hash fields: `"{dev}:{ino}"` -> `Position` (JSON, readable with
HGETALL), plus STARTED and SEEN. On restart a file resumes at its position if
its identity and first bytes (`fp`, which guards against inode reuse) match.
Files rotated while the collector was down are found next to the live file
(or next to a symbolic link's new target) by identity and read from the
saved offset, else in a compressed copy by their first bytes (packed.py);
files it never saw (modified after SEEN) are read whole, compressed or not.
Other compressed files are never read. A FIFO or device is refused, once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from typing import AsyncIterator


from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .base import STARTED, Batch, Reader, SourcePlan
from .packed import Archive, Unpacked, being_made, find_copy, open_archive
from .rotated import identity, link_targets, relatives, watched_paths
from .seek import end_of_last_line, recent_start
from .tail import (
    CHANGES, TRUNCATED, NotALogFile, Tail, copy_of, head_is, how_changed, open_log, saved_positions,
)
from .wake import Wake, folders_of, woken

log = logging.getLogger("pyfilter.collector.file")

RESCAN = 5.0  # with inotify (wake.py): look at the paths at least this often, or poll_interval (s)
DRAIN_IDLE = 5.0  # keep reading a rotated-away file until quiet this long (s)
SEEN = "seen"  # checkpoint field: wall time of the scan behind the last batch
SEEN_MARGIN = 1.0  # clock slack when judging "modified after SEEN" (s)


class FileSource(Reader):
    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event, plan: SourcePlan | None = None):
        super().__init__(cfg, opts, saved, stop, plan)
        self.seen = float(saved.get(SEEN, 0))
        self.saved = saved_positions(saved, self.name, (STARTED, SEEN))
        self.tails: dict[str, Tail] = {}
        self.forget: list[str] = []
        self.problems: dict[str, str] = {}  # path -> what is wrong (logged once)
        self.first_scan = True
        self.scanned_at = 0.0  # wall time of the last scan's start

    # ---- the Source interface ----

    async def batches(self) -> AsyncIterator[Batch]:
        with woken() as wake:  # None: no inotify here, poll every poll_interval
            async for batch in self._follow(wake):
                yield batch

    async def _follow(self, wake: Wake | None) -> AsyncIterator[Batch]:
        lines: list[Line] = []
        limit, max_bytes = self.opts.batch_lines, self.opts.max_line_bytes
        next_scan = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_scan:
                if wake:  # before the scan: a change right after it still wakes us
                    wake.watch(folders_of([*self.cfg.paths, *(t.path for t in self.tails.values()),
                                           *link_targets(self.cfg.paths)]))
                self._scan()
                next_scan = time.monotonic() + self.opts.poll_interval
            progressed = False
            for tail in list(self.tails.values()):
                while True:
                    try:
                        more = tail.read()
                    except OSError as exc:
                        self._problem(tail.path, f"read failed: {exc.strerror}")
                        self._drop(tail)
                        break
                    while tail.take(limit - len(lines), lines, max_bytes, self.stats):
                        if len(lines) >= limit:
                            yield self._batch(lines)
                            lines = []
                    progressed |= more
                    if not more or time.monotonic() >= next_scan:
                        break  # at its end, or time to look at the paths again
                if tail.key not in self.tails:
                    continue
                tail.flush_partial(lines, max_bytes, self.stats)
                if not tail.live and not tail.buf and time.monotonic() - tail.changed_at >= DRAIN_IDLE:
                    log.info("closing rotated-away file", extra={"source": self.name, "path": tail.path})
                    self._drop(tail)
            if lines or self.forget or not self.started or any(t.dirty for t in self.tails.values()):
                yield self._batch(lines)
                lines = []
            if not progressed and wake:
                await wake.wait(self.stop, max(RESCAN, self.opts.poll_interval))
                next_scan = 0.0  # a rename or a new file shows in the paths
            elif not progressed:
                await _sleep_unless(self.stop, self.opts.poll_interval)

    def _batch(self, lines: list[Line]) -> Batch:
        checkpoint = {SEEN: repr(self.scanned_at).encode()}
        if not self.started:
            self.started = checkpoint[STARTED] = repr(time.time()).encode()
        for tail in self.tails.values():
            if tail.dirty:
                checkpoint[tail.key] = tail.position()
                tail.dirty = False
        forget, self.forget = self.forget, []
        return Batch(lines, checkpoint, forget)

    # ---- watching paths ----

    def _scan(self) -> None:
        previous, self.scanned_at = self.scanned_at, time.time()
        found: dict[str, tuple[str, os.stat_result]] = {}
        for path in watched_paths(self.cfg.paths):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self.problems.pop(path, None)
                continue
            except OSError as exc:
                self._problem(path, f"cannot stat: {exc.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._problem(path, str(NotALogFile(st.st_mode)))
                continue
            found.setdefault(f"{st.st_dev}:{st.st_ino}", (path, st))

        rotated = False
        for key, tail in self.tails.items():
            if key not in found and tail.live:
                log.info("file rotated or deleted; reading it to its end",
                         extra={"source": self.name, "path": tail.path})
                tail.live, rotated = False, True
        for key, (path, st) in found.items():
            tail = self.tails.get(key)
            if tail is not None:
                tail.live, tail.path = True, path
                if self._truncated(tail, st):
                    rotated = True
            else:
                rotated |= self._open(path, st) and not self.first_scan
        if self.first_scan:
            self._recover_rotated(found)
        elif rotated:
            self._adopt_unseen(previous - SEEN_MARGIN, found)
        self.first_scan = False

    def _open(self, path: str, st: os.stat_result) -> bool:
        try:
            fd, st = open_log(path)  # st: what we opened, in case the path moved meanwhile
        except OSError as exc:
            self._problem(path, f"cannot open: {exc.strerror}")
            return False
        except NotALogFile as exc:
            self._problem(path, str(exc))
            return False
        key = f"{st.st_dev}:{st.st_ino}"
        if key in self.tails:
            os.close(fd)
            return False
        if self.problems.pop(path, None):
            log.info("file readable again", extra={"source": self.name, "path": path})
        saved = self.saved.pop(key, None)
        if saved is not None:
            tail = Tail.resume(self.name, path, fd, st, saved)
            self.tails[key] = tail
            change = how_changed(st.st_size, saved.offset, tail.head_matches(), tail.back_matches())
            if change is not None:
                self._restart(tail, change, st.st_size, stopped=True)
            return True
        # First sight of a file that was there before us (a new source, or a
        # path added to the config: unchanged since our last look) starts at
        # its first line inside the lookback unless from_start; one that
        # appeared later is read whole.
        old = not self.started or st.st_mtime < self.seen - SEEN_MARGIN
        if not (self.first_scan and old and not self.cfg.from_start):
            start = 0
        elif self.plan.lookback:
            now = time.time()
            start = recent_start(fd, st.st_size, now - self.plan.lookback, self.plan.tz, now)
        else:
            start = end_of_last_line(fd, st.st_size)
        self.tails[key] = Tail(self.name, path, fd, st, start)
        log.info("following file", extra={"source": self.name, "path": path, "offset": start,
                                           "size": st.st_size})
        return True

    def _truncated(self, tail: Tail, st: os.stat_result) -> bool:
        if st.st_size == tail.size and st.st_mtime_ns == tail.mtime:
            return False
        tail.size, tail.mtime = st.st_size, st.st_mtime_ns
        change = how_changed(st.st_size, tail.pos, tail.head_matches(), tail.back_matches())
        if change is None:
            # Nothing read yet: no first bytes to tell a truncation by. Lines
            # written and copied away since the last look (copytruncate) are
            # in a copy that the look for rotated files never seen finds.
            return tail.pos == 0
        self._restart(tail, change, st.st_size)
        return True

    def _restart(self, tail: Tail, change: str, size: int, stopped: bool = False) -> None:
        """Read a truncated or rewritten file again from 0, in a new generation
        (its offsets are used again), after taking its unread rest from a copy."""
        where = {"source": self.name, "path": tail.path, "offset": tail.offset, "size": size}
        copy = None
        if tail.offset > 0:
            copy = self._copy_of_read(tail)
            if copy is not None:
                path, fd, st = copy
                # A copy shorter than what was read was made before the last lines read
                # came (they are in no copy): it holds nothing unread, it is followed from
                # its end so that no look for files never seen reads it again.
                copy = path, Tail(self.name, path, fd, st, min(tail.offset, st.st_size), tail.head, tail.fp,
                                  live=False)
            if copy is None and (packed := self._packed_copy(tail.path, tail.head, tail.fp, tail.offset)):
                copy = packed[0], Unpacked(self.name, packed[1], packed[0], tail.offset, tail.head, tail.fp)
        if copy is not None:
            path, rest = copy
            self.tails[rest.key] = rest
            what = ("reading the rest of a truncated file from its copy" if rest.offset == tail.offset
                    else "a truncated file's copy holds only lines already read; following it from its end")
            log.info(what, extra={**where, "copy": path})
        elif change == TRUNCATED and tail.pos > tail.offset:
            log.warning("file truncated before it was read to its end; no copy found next to it", extra=where)
        elif change != TRUNCATED:
            # Not a rotation: someone edited the log. What it holds now cannot
            # be told from what was read, so it is all read again.
            log.warning(f"file {CHANGES[change]}: edited in place, not rotated; reading it again from "
                        "the start, so failures it still holds may count twice", extra=where)
        log.info("reading the file from the start", extra={
            "source": self.name, "path": tail.path,
            "why": f"{change} while the collector was stopped" if stopped else change})
        tail.reset(0)

    def _recover_rotated(self, found: dict) -> None:
        """First scan: finish files rotated while we were stopped; forget the rest."""
        for key, pos in list(self.saved.items()):
            del self.saved[key]
            # A file checkpointed before its first read has no fingerprint yet
            # (head 0, offset 0): its identity is all there is, and reading it
            # from 0 loses nothing whatever file now has that identity.
            same = ((lambda c, k=key: f"{c.st_dev}:{c.st_ino}" == k),
                    (lambda fd, p=pos: p.head == 0 or head_is(fd, p.head, p.fp)))
            # Next to its name, or next to the file a symbolic link there points to now.
            hit = self._find_sibling(pos.path, *same) or self._find_sibling(
                os.path.realpath(pos.path), *same, named="any")
            if hit is not None:
                path, fd, st = hit
                self.tails[key] = Tail.resume(self.name, path, fd, st, pos, live=False)
            elif packed := self._packed_copy(pos.path, pos.head, pos.fp, pos.offset):
                path, archive = packed
                ours = archive.identity == key  # a copy we were reading already
                tail = Unpacked(self.name, archive, path, pos.offset, pos.head, pos.fp, pos.gen if ours else None)
                self.tails[tail.key] = tail
                if not ours:
                    self.forget.append(key)
            else:
                log.warning("a followed file is gone (deleted, or compressed in a form not read); "
                            "lines written after the last checkpoint may be missing",
                            extra={"source": self.name, "path": pos.path, "offset": pos.offset})
                self.forget.append(key)
                continue
            log.info("finishing a file rotated while the collector was stopped",
                     extra={"source": self.name, "path": path, "offset": pos.offset})
        if self.started and self.seen > 0:
            self._adopt_unseen(self.seen - SEEN_MARGIN, found)

    def _adopt_unseen(self, since: float, found: dict) -> None:
        """Read whole any rotated file next to a followed one that we never saw.

        Several rotations between two looks (a collector restart, a burst)
        leave files that were never at a watched path while we looked; their
        mtime after our last look gives them away.
        """
        names = {t.path for t in self.tails.values()} | {p for p, _ in found.values()}
        # A link's earlier targets, next to its target now (`app-3.log` for `app-4.log`).
        targets = {(t, "numbered") for t in link_targets(self.cfg.paths)}
        for path, named in sorted({(n, "rotated") for n in names} | targets):
            while True:
                # Not a copy of a followed file (copytruncate caught between its two
                # steps): its lines are that file's (tail.copy_of).
                hit = self._find_sibling(path, lambda c: c.st_mtime > since
                                         and f"{c.st_dev}:{c.st_ino}" not in found,
                                         lambda fd: not any(copy_of(fd, t) for t in self.tails.values()), named)
                if hit is None:
                    break
                copy, fd, st = hit
                tail = Tail(self.name, copy, fd, st, 0, live=False)
                self.tails[tail.key] = tail
                log.info("reading a rotated file never seen at its live name",
                         extra={"source": self.name, "path": copy})
            for copy in relatives(path, packed=True, named=named):
                try:
                    if copy.stat().st_mtime <= since or identity(copy) in self.tails or being_made(copy.path):
                        continue
                except OSError:
                    continue
                if (archive := open_archive(copy.path)) is None:
                    continue
                # A compressed copy of a file being read holds nothing new.
                if any(archive.copy_of(t) for t in self.tails.values()):
                    archive.close()
                    continue
                tail = Unpacked(self.name, archive, copy.path, 0)
                self.tails[tail.key] = tail
                log.info("reading a compressed rotated file never seen at its live name",
                         extra={"source": self.name, "path": copy.path})

    def _copy_of_read(self, tail: Tail):
        """A rotated relative starting with the bytes `tail` read (its print),
        opened: one that reaches its offset if there is one, else a shorter one."""
        def same(fd: int) -> bool:
            return head_is(fd, tail.head, tail.fp)

        return (self._find_sibling(tail.path, lambda c: c.st_size >= tail.offset, same)
                or self._find_sibling(tail.path, lambda c: c.st_size < tail.offset, same))

    def _packed_copy(self, path: str, head: int, fp: str, offset: int) -> tuple[str, Archive] | None:
        """A compressed rotated relative of `path` holding the file with this print up to `offset`."""
        return find_copy([e.path for e in relatives(path, packed=True)
                          if identity(e) not in self.tails], head, fp, offset)

    def _find_sibling(self, path: str, stat_ok, fd_ok, named: str = "rotated"):
        """A rotated relative of `path` (rotated.relatives) that passes the tests,
        opened; None if there is none."""
        for entry in relatives(path, named=named):
            try:
                st = entry.stat()
                if not stat.S_ISREG(st.st_mode) or f"{st.st_dev}:{st.st_ino}" in self.tails:
                    continue
                if not stat_ok(st):
                    continue
                fd, st = open_log(entry.path)
            except (OSError, NotALogFile):
                continue
            if fd_ok is None or fd_ok(fd):
                return entry.path, fd, st
            os.close(fd)
        return None

    def _drop(self, tail: Tail) -> None:
        tail.close()
        del self.tails[tail.key]
        self.forget.append(tail.key)

    def _problem(self, path: str, what: str) -> None:
        if self.problems.get(path) != what:
            self.problems[path] = what
            self.stats.errors += 1
            log.error("cannot read a path of the source; retrying", extra={
                "source": self.name, "path": path, "problem": what, "retry_every": self.opts.poll_interval})


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
