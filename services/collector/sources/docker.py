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
a new one: the file being read is read to its end, then the one written after
it, found by identity in the chain of the container's files (jsonfile.py),
so several rotations between two looks, or one under way while the source
looks, lose nothing. With `compress: true` the rotated files are compressed
(`.1.gz`...): one compressed before it was read to its end (the collector
was stopped), or never seen uncompressed, is read from its compressed copy
(packed.py), as the file source reads logrotate's. `max-file: 1` truncates
the log instead; it is then read again from 0 in a new generation.

Docker cuts a line longer than 16 KB into pieces; only the first is sent (the
others start wherever the writer's text happened to be cut, so they could
read as any line an attacker likes).

Line ids are the file's, `source:dev:ino:generation:offset` (tail.py: a
truncation starts a new generation). Checkpoint fields:
`"{dev}:{ino}"` -> `tail.Position` of a log file (the one being read, and
the one read before it while that one is still empty), STARTED, and SEEN
(when the folder was last looked at). A container first seen after the source
started is read from its first line written after the look before; at the
very first start, from the end of each log (its start with `from_start`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import AsyncIterator

import msgspec

from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .. import privsep
from .base import STARTED, Batch, Reader, to_text
from .containers import LOG_DRIVER, Container, Folder, decode_entry, label_matches, label_rules, \
    parse_time, program_for
from .jsonfile import RAW_MAX, Files, chain, copy_of, first_line_since, identity, open_pieces
from .packed import Archive, Unpacked, find_copy, readable as packed
from .tail import NotALogFile, Position, Tail, open_log, saved_positions
from .wake import Wake, woken

log = logging.getLogger("pyfilter.collector.docker")

FOLDER = "/host/docker/containers"
DISCOVER_EVERY = 2.0  # look for new and removed containers this often (s)
SEEN = "seen"
SEEN_EVERY = 30.0  # write SEEN at least this often while nothing else moves (s)
CLOCK_SLACK = 1.0  # (s) between the collector's clock and Docker's line times


class Followed:
    """One followed container: what it is, whose rules read it, the log file being read."""

    def __init__(self, container: Container, program: str | None, rules: list[str] | None, path: str):
        self.container, self.program, self.rules, self.path = container, program, rules, path
        self.tail: Tail | None = None
        # Checkpoint fields of the file read before this one (key -> its position
        # still to write, None once written), kept while this one has no first
        # bytes to be found by: see `_next_file`.
        self.held: dict[str, bytes | None] = {}
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
            if f.held and f.tail is not None and f.tail.head:
                self.forget.extend(f.held)  # the file read now can be found by its own first bytes
                f.held = {}
            elif f.held:
                checkpoint.update((key, position) for key, position in f.held.items() if position is not None)
                f.held = dict.fromkeys(f.held)
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
        files = chain(followed.path)
        folder = os.path.dirname(followed.path)
        saved = {k: p for k, p in self.saved.items() if os.path.dirname(p.path) == folder}
        tail = next((t for path, st in files if identity(st) in saved
                     if (t := self._resume(path, saved[identity(st)])) is not None), None)
        if tail is None and saved:
            tail = self._compressed_copy(files, saved)
            if tail is not None:
                log.info("reading the rest of a container's log from its compressed copy",
                         extra={"source": self.name, "container": followed.name, "path": tail.path})
        if tail is None:
            path, start = self._where_to_start(followed, files, saved, since)
            tail = self._tail(path, start)
        if tail is None:
            return
        self._attach(followed, tail)
        resumed_empty = tail.key in saved and not saved[tail.key].head
        for key, position in saved.items():
            del self.saved[key]
            if key == tail.key:
                continue
            if resumed_empty and position.head:
                followed.held[key] = None  # the file read before the empty one, still in the checkpoint
            else:
                self.forget.append(key)

    def _where_to_start(self, followed: Followed, files: Files, saved: dict[str, Position],
                        since: float) -> tuple[str, int]:
        """Where a container's log is read from when no file of it was being read."""
        live = files[-1] if files and files[-1][0] == followed.path else None
        if saved and all(p.head for p in saved.values()):
            # Docker deletes the oldest file first: every file left was written after it.
            log.warning("a container's log file was deleted (max-file) or emptied (max-file 1) while the "
                        "collector was stopped; lines it held past the last checkpoint are lost",
                        extra={"source": self.name, "container": followed.name})
            return files[0][0] if files else followed.path, 0
        if not files:
            return followed.path, 0
        if saved:  # nothing of it was read yet: its lines are those written since
            return first_line_since(files, since - CLOCK_SLACK)
        if self.cfg.from_start:
            return files[0][0], 0
        if self.first_start and live is not None:  # there before us: from its end
            return live[0], live[1].st_size
        return first_line_since(files, since - CLOCK_SLACK)

    def _resume(self, path: str, saved: Position) -> Tail | None:
        """The file a checkpoint saved, at `path`, read on where it stopped; None if
        another file has its identity now (an inode used again)."""
        tail = self._tail(path, saved.offset, saved)
        if tail is not None and tail.offset != saved.offset:
            tail.close()
            return None
        return tail

    def _compressed_copy(self, files: Files, saved: dict[str, Position]) -> Tail | None:
        """A checkpointed file compressed while the collector was stopped, read on
        from its copy (under the copy's identity: its lines were never sent)."""
        compressed = [path for path, _ in files if packed(path)]
        for pos in saved.values():
            if pos.head and (copy := find_copy(compressed, pos.head, pos.fp, pos.offset)) is not None:
                path, archive = copy
                return Unpacked(self.name, archive, path, pos.offset, pos.head, pos.fp)
        return None

    def _tail(self, path: str, offset: int, saved: Position | None = None,
              expect: str | None = None) -> Tail | None:
        """`path` read from `offset` (or where `saved` stopped: from 0 if it is another
        file now, or was truncated meanwhile). None if it cannot be opened (said), or if
        it is not the file `expect` names (it moved since we looked: a rotation)."""
        try:
            if packed(path):
                archive = Archive(path)
                key, fd, st = archive.identity, None, archive.st
            else:
                archive = None
                fd, st = open_log(path)
                key = identity(st)
        except FileNotFoundError:
            if expect is None:
                self._problem(path, "cannot open: No such file or directory")
            return None
        except OSError as exc:
            self._problem(path, f"cannot open: {exc.strerror}")
            return None
        except NotALogFile as exc:
            self._problem(path, str(exc))
            return None
        if expect is not None and key != expect:
            if archive is not None:
                archive.close()
            else:
                os.close(fd)
            return None
        if self.problems.pop(path, None):
            log.info("container log readable again", extra={"source": self.name, "path": path})
        if archive is not None:
            if saved is None:
                return Unpacked(self.name, archive, path, offset)
            tail = Unpacked(self.name, archive, path, saved.offset, saved.head, saved.fp, saved.gen)
            tail.saved_back(saved)
            same = (archive.holds(saved.head, saved.fp, saved.offset) if saved.head else True) and tail.back_matches()
        elif saved is None:
            return Tail(self.name, path, fd, st, offset)
        else:
            tail = Tail.resume(self.name, path, fd, st, saved)
            same = saved.offset <= st.st_size and tail.head_matches() and tail.back_matches()
        if not same:
            tail.reset(0)  # truncated while we were away, or another file took the identity
        return tail

    def _attach(self, followed: Followed, tail: Tail, quiet: bool = False) -> None:
        followed.tail = tail
        followed.skipping = open_pieces(tail.pread, tail.offset) if tail.offset else set()
        (log.debug if quiet else log.info)("following container", extra={
            "source": self.name, "container": followed.name, "path": tail.path, "offset": tail.offset})

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
            return  # being removed, or rotated a moment ago: looked at again next round
        if identity(st) == tail.key:
            if (st.st_size, st.st_mtime_ns) == (tail.size, tail.mtime):
                return
            tail.size, tail.mtime = st.st_size, st.st_mtime_ns
            if st.st_size < tail.pos or not tail.head_matches() or not tail.back_matches():
                log.info("container log truncated (max-file 1) or written over; reading it from the start",
                         extra={"source": self.name, "container": followed.name})
                tail.reset(0)
                followed.skipping.clear()
            return
        if not followed.rotated:
            # Renamed away: Docker may have written to it between our last read
            # and the rename, never after. One more read to its end, then the next file.
            followed.rotated = True
            return
        following = self._written_after(followed)
        if following is None:
            return  # none yet, or it moved as we looked: next round
        self._next_file(followed, following)

    def _written_after(self, followed: Followed) -> Tail | None:
        """The file Docker wrote after the one being read (read to its end), from its start."""
        tail = followed.tail
        files = chain(followed.path)
        keys = [identity(st) for _, st in files]
        if tail.key in keys:
            later = files[keys.index(tail.key) + 1 :]
        else:
            # Gone from the names: compressed (its copy is in the chain), else
            # deleted as the oldest (every file left was written after it).
            copy = -1
            for i, (path, st) in enumerate(files):
                found = copy_of(path, st, tail) if packed(path) else False
                if found is None:
                    return None  # moved as we looked: not "deleted", look again next round
                if found:
                    copy = i
                    break
            later = files[copy + 1 :]
        for path, st in later:
            following = self._tail(path, 0, expect=identity(st))
            if following is None:
                return None
            if _copies(tail, following):
                following.close()  # the file read and its copy, seen under two names as we looked
                continue
            return following
        return None

    def _next_file(self, followed: Followed, following: Tail) -> None:
        """Read `following` from now on, the file read so far being read to its end.

        That file's position stays in the checkpoint until `following` has
        first bytes: an empty file has nothing to be found by once it is
        compressed while the collector is stopped. A restart then finds the
        compressed copy of the file read, at its end, and goes on to the
        next; found by time instead, the last second of lines read (any
        slack for Docker's clock) would be sent again from that copy, under
        new ids.
        """
        done = followed.tail
        self.forget.extend(followed.held)
        followed.held = {done.key: done.position()}
        done.close()
        followed.rotated = False
        self._attach(followed, following, quiet=True)

    def _close(self, followed: Followed) -> None:
        if followed.tail is not None:
            followed.tail.close()
            self.forget.append(followed.tail.key)
            followed.tail = None
        self.forget.extend(followed.held)
        followed.held = {}

    def _problem(self, path: str, what: str) -> None:
        if self.problems.get(path) != what:
            self.problems[path] = what
            self.stats.errors += 1
            log.error("cannot read a path of the source; retrying", extra={
                "source": self.name, "path": path, "problem": what, "retry_every": DISCOVER_EVERY})


def _copies(one: Tail, other: Tail) -> bool:
    """Whether one of the two is the compressed copy of the other."""
    if isinstance(other, Unpacked):
        return other.archive.copy_of(one)
    return isinstance(one, Unpacked) and one.archive.copy_of(other)
