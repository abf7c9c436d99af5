"""Container logs, read from Docker's json-file logs: no access to the Docker engine.

Compose mounts Docker's containers folder read-only at /host/docker/containers
(the source's `paths`). Every DISCOVER_EVERY seconds the source looks at it
(through the root helper of `privsep` when the collector runs split) and
follows, with neither `container` nor `label` set, every container whose
image names a program (`containers.program_for`) or whose `pyfilter.rules`
label names its rules; else the selected containers, whatever their image.
A container removed from the folder is read to the end of its log and
forgotten.

Each container's lines go out in batches of their own, with its program, the
rules its label names and its name, and each line carries its stream time.
The addresses and networks of every running container, followed or not, go
out with the batches for the never-ban list.

json-file rotation (`max-size`) renames the log to `.1` (`.2`...) and starts
a new one: the file being read is read to its end, then the next one in that
chain, so several rotations between two looks lose nothing. `max-file: 1`
truncates the log instead; it is then read again from 0.

Docker cuts a line longer than 16 KB into pieces; only the first is sent (the
others start wherever the writer's text happened to be cut, so they could
read as any line an attacker likes).

Line ids are the file's, `source:dev:ino:generation:offset` (tail.py: a
truncation starts a new generation). Checkpoint fields:
`"{dev}:{ino}"` -> `tail.Position` of a log file, STARTED, and SEEN (when
the folder was last looked at). A container first seen after the source
started is read from its first line written after the look before; at the
very first start, from the end of each log (its start with `from_start`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from typing import AsyncIterator

import msgspec

from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .. import privsep
from .base import STARTED, Batch, Reader, to_text
from .containers import LOG_DRIVER, Container, Folder, decode_entry, label_matches, label_rules, \
    parse_time, program_for
from .tail import NotALogFile, Position, Tail, open_log, saved_positions
from .wake import Wake, woken

log = logging.getLogger("pyfilter.collector.docker")

FOLDER = "/host/docker/containers"
DISCOVER_EVERY = 2.0  # look for new and removed containers this often (s)
SEEN = "seen"
SEEN_EVERY = 30.0  # write SEEN at least this often while nothing else moves (s)
CLOCK_SLACK = 1.0  # (s) between the collector's clock and Docker's line times
# A json-file line is one JSON object: a 16 KB piece of text, escaped (up to
# six bytes a character), plus Docker's fields.
RAW_MAX = 128 * 1024
MAX_ROTATED = 100  # `.1` to `.N`: the most rotated files looked at


class Followed:
    """One followed container: what it is, whose rules read it, the log file being read."""

    def __init__(self, container: Container, program: str | None, rules: list[str] | None, path: str):
        self.container, self.program, self.rules, self.path = container, program, rules, path
        self.tail: Tail | None = None
        self.skipping: set[str] = set()  # streams inside a line Docker cut into pieces
        self.gone = False  # removed from the folder: read to the end, then forgotten
        self.rotated = False  # the live name names another file: read this one to its end once more

    @property
    def name(self) -> str:
        return self.container.name


class DockerSource(Reader):
    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event):
        super().__init__(cfg, opts, saved, stop)
        self.folder = cfg.paths[0] if cfg.paths else FOLDER
        self.first_start = self.started is None
        # Wall time of the previous look: a container first seen now was not there then.
        self.seen = float(saved.get(SEEN, 0)) or time.time()
        self.seen_sent = 0.0  # monotonic time SEEN was last written
        self.saved = saved_positions(saved, self.name, (STARTED, SEEN))
        self.followed: dict[str, Followed] = {}  # container id -> its log
        self.skipped: set[str] = set()  # containers not followed (said once)
        self.forget: list[str] = []
        self.own_sent: list[str] | None = None
        self.own: list[str] | None = None  # to publish with the next batch
        self.problems: dict[str, str] = {}
        self.lister = privsep.helper()
        self.local = None if self.lister else Folder(self.folder)

    # ---- the Source interface ----

    async def batches(self) -> AsyncIterator[Batch]:
        with woken() as wake:  # None: no inotify here, poll every poll_interval
            async for batch in self._follow(wake):
                yield batch

    async def _follow(self, wake: Wake | None) -> AsyncIterator[Batch]:
        if self.first_start:
            self.started = repr(time.time()).encode()
        limit = self.opts.batch_lines
        next_look = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_look:
                await self._look()
                next_look = time.monotonic() + DISCOVER_EVERY
            progressed = False
            taken: dict[Followed, list[Line]] = {}
            count = 0
            for followed in list(self.followed.values()):
                tail = followed.tail
                if tail is None:
                    continue
                while True:
                    try:
                        more = tail.read()
                    except OSError as exc:
                        self._problem(followed.path, f"read failed: {exc.strerror}")
                        # Opened again at the next look, from where it stopped.
                        self.saved[tail.key] = msgspec.json.decode(tail.position(), type=Position)
                        tail.close()
                        followed.tail = None
                        break
                    while True:
                        raw: list[Line] = []
                        if not tail.take(limit - count, raw, RAW_MAX, self.stats):
                            break
                        lines = self._decode(followed, raw)
                        taken.setdefault(followed, []).extend(lines)
                        count += len(lines)
                        if count >= limit:
                            for batch in self._batches(taken):
                                yield batch
                            taken, count = {}, 0
                    progressed |= more
                    if not more:
                        break
                if followed.tail is not None:
                    self._at_end(followed)
            for batch in self._batches(taken, idle=not progressed):
                yield batch
            if not progressed and wake:
                # The logs' folders are root's: each log is watched itself.
                wake.watch(files=[f.path for f in self.followed.values() if f.tail is not None])
                await wake.wait(self.stop, max(0.0, next_look - time.monotonic()))
            elif not progressed:
                # A plain sleep: the loop looks at `stop` each round, and waiting on
                # the event would cost a task per round (a third of the idle CPU).
                await asyncio.sleep(self.opts.poll_interval)

    def _batches(self, taken: dict[Followed, list[Line]], idle: bool = False) -> list[Batch]:
        """One batch per container with lines; the last one also moves the checkpoint."""
        out = [Batch(lines, program=f.program, rules=f.rules, container=f.name)
               for f, lines in taken.items() if lines]
        checkpoint: dict[str, bytes] = {}
        for f in self.followed.values():
            if f.tail is not None and f.tail.dirty:
                checkpoint[f.tail.key] = f.tail.position()
                f.tail.dirty = False
        if self.first_start:
            checkpoint[STARTED] = self.started
            self.first_start = False
        due = idle and time.monotonic() - self.seen_sent >= SEEN_EVERY
        if not (out or checkpoint or self.forget or self.own is not None or due):
            return []
        checkpoint[SEEN] = repr(self.seen).encode()
        self.seen_sent = time.monotonic()
        last = out[-1] if out else Batch([])
        if not out:
            out.append(last)
        last.checkpoint, self.forget, last.forget = checkpoint, [], self.forget
        last.own, self.own = self.own, None
        return out

    # ---- what a log line says ----

    def _decode(self, followed: Followed, raw: list[Line]) -> list[Line]:
        out = []
        for line in raw:
            entry = decode_entry(line.text)
            if entry is None:
                self.stats.errors += 1
                continue
            text, stream = entry.log, entry.stream
            whole = text.endswith("\n")
            if stream in followed.skipping:
                if whole:
                    followed.skipping.discard(stream)
                continue
            if not whole:
                followed.skipping.add(stream)
                self.stats.cut += 1
            text = to_text(text.removesuffix("\n").encode(), self.opts.max_line_bytes, self.stats)
            if text:
                out.append(Line(line.id, text, parse_time(entry.time)))
        return out

    # ---- containers coming and going ----

    async def _look(self) -> None:
        looked_at = time.time()
        try:
            if self.lister is not None:
                found = await asyncio.to_thread(self.lister.containers, self.folder)
            else:
                found = await asyncio.to_thread(self.local.containers)
        except OSError as exc:
            self._problem(self.folder, f"cannot list Docker's containers: {exc}")
            return
        self.problems.pop(self.folder, None)
        own = sorted({a for c in found for a in (*c.addresses, *c.networks)})
        if own != self.own_sent:
            self.own = self.own_sent = own
        present = {c.id: c for c in found}
        self.skipped &= set(present)
        for cid, followed in self.followed.items():
            if cid not in present and not followed.gone:
                log.info("container removed; reading its log to the end",
                         extra={"source": self.name, "container": followed.name})
                followed.gone = True
        for container in found:
            choice = self._choose(container)
            followed = self.followed.get(container.id)
            if followed is not None:
                if choice is not None:
                    followed.container, (followed.program, followed.rules) = container, choice
                if followed.tail is None and not followed.gone:
                    self._open(followed, self.seen)
                continue
            if choice is None:
                continue
            if container.driver != LOG_DRIVER:
                self._skip(container, f"it logs with the {container.driver} driver; only json-file "
                                      "(Docker's default) logs are read from files")
                continue
            path = os.path.join(self.folder, container.id, container.log_name())
            followed = self.followed[container.id] = Followed(container, *choice, path)
            self._open(followed, self.seen)
        self.seen = looked_at

    def _choose(self, container: Container) -> tuple[str | None, list[str] | None] | None:
        """(program, rules) of a container to follow; None: not followed."""
        cfg = self.cfg
        if cfg.container and cfg.container not in (container.name, container.id, container.id[:12]):
            return None
        if cfg.label and not label_matches(container.labels, cfg.label):
            return None
        rules = label_rules(container.labels)
        program = cfg.program or program_for(container.image, cfg.images)
        if rules is None and program is None and not (cfg.container or cfg.label):
            # Most containers of a host (databases, caches) are none of our business.
            self._skip(container, f"no rule reads image {container.image!r}: label it "
                                  "pyfilter.rules=RULE,... or map the image in the source's `images`",
                       logging.DEBUG)
            return None
        return program, rules

    def _skip(self, container: Container, why: str, level: int = logging.WARNING) -> None:
        if container.id not in self.skipped:
            self.skipped.add(container.id)
            log.log(level, f"container {container.name} not read: {why}",
                    extra={"source": self.name, "container": container.name})

    # ---- a container's log files ----

    def _open(self, followed: Followed, since: float) -> None:
        """Start reading a container's log: where its checkpoint says, else from `since`."""
        chain = self._chain(followed.path)
        folder = os.path.dirname(followed.path)
        saved = {k: p for k, p in self.saved.items() if os.path.dirname(p.path) == folder}
        hit = next(((path, _key(st)) for path, st in chain if _key(st) in saved), None)
        resumed = None
        if hit is not None:
            path, resumed = hit[0], saved[hit[1]]
            start = resumed.offset
        elif saved:
            log.warning("a container's log rotated away while the collector was stopped (compressed "
                        "or deleted); lines written after the last checkpoint may be missing",
                        extra={"source": self.name, "container": followed.name})
            path, start = next((p for p, s in chain if s.st_mtime > since - CLOCK_SLACK), followed.path), 0
        elif not chain:
            path, start = followed.path, 0
        elif self.cfg.from_start:
            path, start = chain[0][0], 0
        elif self.first_start:  # there before us: from its end
            path, start = chain[-1][0], chain[-1][1].st_size
        else:
            path, start = self._start(chain, since - CLOCK_SLACK)
        if self._attach(followed, path, start, resumed):
            for key in saved:
                del self.saved[key]
                if key != followed.tail.key:
                    self.forget.append(key)

    def _attach(self, followed: Followed, path: str, offset: int, saved: Position | None = None,
                quiet: bool = False) -> bool:
        """Read `path` from `offset` (or where `saved` stopped) for the container;
        False if it cannot be opened (said)."""
        try:
            fd, st = open_log(path)
        except OSError as exc:
            self._problem(path, f"cannot open: {exc.strerror}")
            return False
        except NotALogFile as exc:
            self._problem(path, str(exc))
            return False
        if self.problems.pop(path, None):
            log.info("container log readable again", extra={"source": self.name, "path": path})
        if saved is None:
            tail = Tail(self.name, path, fd, st, offset)
        else:
            tail = Tail.resume(self.name, path, fd, st, saved)
            if saved.offset > st.st_size or not tail.head_matches():
                tail.reset(0)  # truncated while we were away, or another file reused the inode
        followed.tail = tail
        if tail.offset:
            followed.skipping = _open_pieces(fd, tail.offset)
        (log.debug if quiet else log.info)("following container", extra={
            "source": self.name, "container": followed.name, "path": path, "offset": tail.offset})
        return True

    @staticmethod
    def _start(chain: list[tuple[str, os.stat_result]], since: float) -> tuple[str, int]:
        """The first line written at or after `since`, in the chain of a container's log files."""
        for path, _ in chain:
            try:
                fd, st = open_log(path)
            except (OSError, NotALogFile):
                continue
            try:
                size = st.st_size
                if path == chain[-1][0] or (_time_at(fd, _last_line(fd, size)) or 0) >= since:
                    return path, first_line_at(fd, size, since)
            finally:
                os.close(fd)
        path, st = chain[-1]
        return path, st.st_size

    def _at_end(self, followed: Followed) -> None:
        """At the end of the file being read: finish a removed container; follow rotation."""
        tail = followed.tail
        if followed.gone:
            self._close(followed)
            del self.followed[followed.container.id]
            return
        try:
            st = os.stat(followed.path)
        except OSError:
            return  # being removed: the next look says
        if _key(st) == tail.key:
            if (st.st_size, st.st_mtime_ns) == (tail.size, tail.mtime):
                return
            tail.size, tail.mtime = st.st_size, st.st_mtime_ns
            if st.st_size < tail.pos or not tail.head_matches():
                log.info("container log truncated (max-file 1); reading it from the start",
                         extra={"source": self.name, "container": followed.name})
                tail.reset(0)
                followed.skipping.clear()
            return
        if not followed.rotated:
            # Renamed away: Docker may have written to it between our last read
            # and the rename, never after. One more read to its end, then the next file.
            followed.rotated = True
            return
        chain = self._chain(followed.path)
        keys = [_key(s) for _, s in chain]
        if tail.key in keys[:-1]:
            path = chain[keys.index(tail.key) + 1][0]
        else:  # compressed or deleted meanwhile: the files written after it
            written = os.fstat(tail.fd).st_mtime_ns
            path = next((p for p, s in chain if s.st_mtime_ns > written), followed.path)
        self._close(followed)
        followed.skipping.clear()
        followed.rotated = False
        self._attach(followed, path, 0, quiet=True)

    def _chain(self, live: str) -> list[tuple[str, os.stat_result]]:
        """A container's log files, oldest first: `.N` ... `.1`, then the live one."""
        rotated = []
        for n in range(1, MAX_ROTATED + 1):
            try:
                st = os.stat(f"{live}.{n}")
            except OSError:
                break  # rotation shifts every name up by one: none is older than a missing one
            if stat.S_ISREG(st.st_mode):
                rotated.append((f"{live}.{n}", st))
        chain = rotated[::-1]
        try:
            chain.append((live, os.stat(live)))
        except OSError:
            pass
        return chain

    def _close(self, followed: Followed) -> None:
        if followed.tail is not None:
            followed.tail.close()
            self.forget.append(followed.tail.key)
            followed.tail = None

    def _problem(self, path: str, what: str) -> None:
        if self.problems.get(path) != what:
            self.problems[path] = what
            self.stats.errors += 1
            log.error("cannot read a path of the source; retrying", extra={
                "source": self.name, "path": path, "problem": what, "retry_every": DISCOVER_EVERY})


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def first_line_at(fd: int, size: int, since: float) -> int:
    """Offset of the first line of a json-file log whose time is `since` or later (size: none).

    Docker writes lines in time order, so a binary search over line starts
    finds it reading a few lines of even a huge log.
    """
    lo, hi = 0, size  # lines before lo are older; the line at hi (or the end) is not
    while lo < hi:
        start = _line_start(fd, (lo + hi) // 2, lo, size)
        if start >= hi:  # no line starts in the upper half: step over the line at lo
            start = lo
        end = _line_end(fd, start, size)
        when = _time_at(fd, start)
        if when is None or when < since:
            lo = end
        else:
            hi = start
    return lo


def _line_start(fd: int, pos: int, lo: int, size: int) -> int:
    """The first line start at or after `pos` (a line starts at `lo`)."""
    if pos <= lo:
        return lo
    return _line_end(fd, pos - 1, size)


def _line_end(fd: int, pos: int, size: int) -> int:
    """Just after the newline that ends the line holding `pos` (the size if none)."""
    while pos < size:
        data = os.pread(fd, 65536, pos)
        cut = data.find(b"\n")
        if cut >= 0:
            return pos + cut + 1
        pos += len(data)
        if not data:
            break
    return size


def _last_line(fd: int, size: int) -> int:
    """Where the last complete line starts."""
    data = os.pread(fd, min(size, RAW_MAX), max(0, size - RAW_MAX))
    cut = data.rstrip(b"\n").rfind(b"\n")
    return max(0, size - len(data)) + cut + 1


def _time_at(fd: int, start: int) -> float | None:
    raw = os.pread(fd, RAW_MAX, start).partition(b"\n")[0]
    entry = decode_entry(raw.decode("utf-8", "replace"))
    return parse_time(entry.time) if entry else None


def _open_pieces(fd: int, offset: int) -> set[str]:
    """Streams whose last line before `offset` is the start of a line Docker cut (resuming mid-line)."""
    start = max(0, offset - RAW_MAX)
    data = os.pread(fd, offset - start, start)
    if start:
        data = data.partition(b"\n")[2]  # the first line may be cut
    open_streams: set[str] = set()
    for raw in data.split(b"\n"):
        entry = decode_entry(raw.decode("utf-8", "replace")) if raw else None
        if entry is not None:
            if entry.log.endswith("\n"):
                open_streams.discard(entry.stream)
            else:
                open_streams.add(entry.stream)
    return open_streams
