"""Log files and globs, followed through rotation, truncation and re-creation.

A file is known by its identity (device, inode), not its name: that is what
survives a rename. Each open file is a `Tail` (`tail.py`); the source keeps one per
identity and looks at the watched paths again when inotify says they changed
(wake.py) and every RESCAN seconds, or every `poll_interval` without inotify:

- a path now naming another file (logrotate `create`, delete + re-create):
  the old file is read to its end and kept open until it has been quiet for
  DRAIN_IDLE seconds (daemons write to it until they reopen), the new file is
  read from its start;
- a file shorter than what was read, or whose first bytes changed
  (copytruncate, truncation): it is read again from 0, after the unread rest
  was taken from the copy if one sits next to it (`name.1` starting with the
  same bytes);
- a watched path that appears later is read from its start.

A file there before the source first started is read from its first line
inside the plan's `lookback` (the longest window of the rules it feeds, found
by the lines' times: `seek.py`), so failures written just before the start
count; with no lookback (or `from_start`), from its end (or its start).

Checkpoint hash fields: `"{dev}:{ino}"` -> `Position` (JSON, readable with
HGETALL), plus STARTED and SEEN. On restart a file resumes at its position if
its identity and first bytes (`fp`, which guards against inode reuse) match.
Files rotated while the collector was down are found next to the live file:
by identity (read from the saved offset), and files it never saw (modified
after SEEN) are read whole. Compressed files are never read.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import stat
import time
from typing import AsyncIterator


from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .base import STARTED, Batch, Reader, SourcePlan
from .seek import end_of_last_line, recent_start
from .tail import Tail, head_is, saved_positions
from .wake import Wake, folders_of, woken

log = logging.getLogger("pyfilter.collector.file")

RESCAN = 5.0  # with inotify (wake.py): look at the paths at least this often, or poll_interval (s)
DRAIN_IDLE = 5.0  # keep reading a rotated-away file until quiet this long (s)
SEEN = "seen"  # checkpoint field: wall time of the scan behind the last batch
SEEN_MARGIN = 1.0  # clock slack when judging "modified after SEEN" (s)
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
# What logrotate appends to a rotated name: `.1`, or `-20240501` with dateext.
ROTATED_NAME = re.compile(r"(\.\d+|-\d{8}(\d{2})?)$")


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
                    wake.watch(folders_of([*self.cfg.paths, *(t.path for t in self.tails.values())]))
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
                self._problem(path, "is not a regular file")
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
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            self._problem(path, f"cannot open: {exc.strerror}")
            return False
        st = os.fstat(fd)  # what we opened, in case the path moved meanwhile
        key = f"{st.st_dev}:{st.st_ino}"
        if key in self.tails or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return False
        if self.problems.pop(path, None):
            log.info("file readable again", extra={"source": self.name, "path": path})
        saved = self.saved.pop(key, None)
        if saved is not None:
            tail = Tail(self.name, path, fd, st, saved.offset, saved.head, saved.fp)
            self.tails[key] = tail
            if st.st_size < saved.offset or not tail.head_matches():
                self._restart(tail, "changed while the collector was stopped")
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
        if st.st_size >= tail.pos and tail.head_matches():
            return False
        self._restart(tail, "truncated or rewritten (copytruncate?)")
        return True

    def _restart(self, tail: Tail, why: str) -> None:
        """Read a truncated file again from 0, after taking its unread rest from a copy."""
        if tail.offset > 0:
            copy = self._find_sibling(tail.path, lambda c: c.st_size >= tail.offset,
                                      lambda fd: head_is(fd, tail.head, tail.fp))
            if copy is not None:
                path, fd, st = copy
                rest = Tail(self.name, path, fd, st, tail.offset, tail.head, tail.fp, live=False)
                self.tails[rest.key] = rest
                log.info("reading the rest of a truncated file from its copy",
                         extra={"source": self.name, "path": tail.path, "copy": path, "offset": tail.offset})
            elif tail.pos > tail.offset:
                log.warning("file truncated before it was read to its end; no copy found next to it",
                            extra={"source": self.name, "path": tail.path, "offset": tail.offset})
        log.info("reading the file from the start", extra={"source": self.name, "path": tail.path, "why": why})
        tail.reset(0)

    def _recover_rotated(self, found: dict) -> None:
        """First scan: finish files rotated while we were stopped; forget the rest."""
        for key, pos in list(self.saved.items()):
            del self.saved[key]
            # A file checkpointed before its first read has no fingerprint yet
            # (head 0, offset 0): its identity is all there is, and reading it
            # from 0 loses nothing whatever file now has that identity.
            hit = self._find_sibling(pos.path, lambda c, k=key: f"{c.st_dev}:{c.st_ino}" == k,
                                     lambda fd, p=pos: p.head == 0 or head_is(fd, p.head, p.fp))
            if hit is None:
                log.warning("a followed file is gone (rotated and compressed, or deleted); "
                            "lines written after the last checkpoint may be missing",
                            extra={"source": self.name, "path": pos.path, "offset": pos.offset})
                self.forget.append(key)
                continue
            path, fd, st = hit
            self.tails[key] = Tail(self.name, path, fd, st, pos.offset, pos.head, pos.fp, live=False)
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
        for path in sorted(names):
            while True:
                hit = self._find_sibling(path, lambda c: c.st_mtime > since
                                         and f"{c.st_dev}:{c.st_ino}" not in found, None)
                if hit is None:
                    break
                copy, fd, st = hit
                tail = Tail(self.name, copy, fd, st, 0, live=False)
                self.tails[tail.key] = tail
                log.info("reading a rotated file never seen at its live name",
                         extra={"source": self.name, "path": copy})

    def _find_sibling(self, path: str, stat_ok, fd_ok):
        """A rotated relative of `path` (same folder, name starting with its name)
        that passes the tests, opened; None if there is none."""
        folder, base = os.path.split(path)
        base = ROTATED_NAME.sub("", base) or base  # app.log.1 has moved on to app.log.2
        try:
            entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            name = entry.name
            if not name.startswith(base) or name == base or name.lower().endswith(COMPRESSED):
                continue
            try:
                st = entry.stat()
                if not stat.S_ISREG(st.st_mode) or f"{st.st_dev}:{st.st_ino}" in self.tails:
                    continue
                if not stat_ok(st):
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            if fd_ok is None or fd_ok(fd):
                return entry.path, fd, os.fstat(fd)
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


def watched_paths(patterns: list[str]) -> list[str]:
    """The paths a file source watches: its paths, globs expanded to live files."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            # A glob names live files: never pick up rotated or compressed ones.
            paths += sorted(p for p in glob.glob(pattern) if not ROTATED_NAME.search(p)
                            and not p.lower().endswith(COMPRESSED))
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
