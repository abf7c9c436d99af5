"""One open log file: reads it in chunks and cuts complete lines, each with its id.

A line's id is the source name, the file's identity (device, inode), its
generation and the byte offset of the line's start:
`auth:2049:1311:k3vq2m7d1xh0e:5120`. The same line read twice (a restart
before the checkpoint was written, a cut line sent again) has the same id,
and no other line ever has it: offsets repeat when a file is truncated
(copytruncate), rewritten, or deleted and its inode reused, so each of these
starts a new generation, a random token. Without it, lines written after a
copytruncate took the ids of lines read before it, and the detector's
windows dropped them as copies. A checkpoint written before generations
existed has none (`gen` empty): that file's ids keep their old form until it
is next truncated.

`Position` is what a checkpoint keeps of a file; `fp` fingerprints the
file's first bytes, which tells a file that kept its inode from a new one
that reused it, and `back_fp` the bytes just before the offset (the end of
the last line read), which tells a file written over from its start with the
same first bytes (a banner, a header) from one appended to. Both are
compared when a file is met again and whenever its size or time changes.
Following files through rotation is `file.FileSource`'s job.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import stat
import time

import msgspec

from pyfilter.common.messages import Line

from .base import Stats, to_text

CHUNK = 1 << 20  # bytes per read
log = logging.getLogger("pyfilter.collector")

HEAD = 1024  # bytes of a file's start that fingerprint it
BACK = 256  # bytes before the read offset (the last line read) that fingerprint what was read
PARTIAL_TIMEOUT = 5.0  # emit a last line without newline after this long (s)


class Position(msgspec.Struct):
    path: str
    offset: int  # start of the next line to send (always a line boundary)
    head: int = 0  # length of the file start that `fp` fingerprints
    fp: str = ""
    gen: str = ""  # the file's generation ("": from a checkpoint older than generations)
    back: int = 0  # length of the bytes before `offset` that `back_fp` fingerprints
    back_fp: str = ""


def saved_positions(saved: dict[str, bytes], source: str, other_fields: tuple[str, ...]) -> dict[str, Position]:
    """A source's checkpoint fields that are file positions (all but `other_fields`);
    one that does not decode is logged and left out (that file is met anew)."""
    positions = {}
    for key, value in saved.items():
        if key not in other_fields:
            try:
                positions[key] = msgspec.json.decode(value, type=Position)
            except msgspec.DecodeError:
                log.warning("ignoring unreadable checkpoint", extra={"source": source, "field": key})
    return positions


def fingerprint(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def new_generation() -> str:
    """A token no generation of any file had before: 64 random bits, 13 characters."""
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()


TRUNCATED, SHRANK, REWRITTEN = "truncated", "shrank", "rewritten"
CHANGES = {  # what each change is, said in a warning
    SHRANK: "got shorter than what was read without being emptied, its first bytes unchanged",
    REWRITTEN: "has new bytes where it was read (its first bytes, or the last line read) but is not "
               "shorter than what was read",
}


def how_changed(size: int, read: int, head_same: bool, back_same: bool = True) -> str | None:
    """What happened to a followed file, from its size now, how far it was
    read, and whether its first bytes and the last line read are still those
    read; None: at most appended to.

    Shorter with other first bytes: truncated (and perhaps written again
    since, as after copytruncate). Shorter with the same first bytes: cut,
    or lines removed by an editor. As long with other first bytes, or another
    last line read: written over from its start.
    """
    if size >= read and head_same and back_same:
        return None
    if size < read:
        return SHRANK if head_same and size > 0 else TRUNCATED
    return REWRITTEN


class Tail:
    """One open file: reads from `pos`, emits lines starting at `offset`.

    `gen` is the generation a checkpoint saved; None: the file is met anew,
    in a generation of its own.
    """

    def __init__(self, source: str, path: str, fd: int, st: os.stat_result, offset: int,
                 head: int = 0, fp: str = "", live: bool = True, gen: str | None = None):
        self.path, self.fd, self.source = path, fd, source
        self.key = f"{st.st_dev}:{st.st_ino}"
        self.live = live  # a watched path names this file
        self.size, self.mtime = st.st_size, st.st_mtime_ns
        self.reset(offset, gen)
        if head:  # a fingerprint from a checkpoint or the original of a copy
            self.head, self.fp = head, fp

    @classmethod
    def resume(cls, source: str, path: str, fd: int, st: os.stat_result, saved: Position,
               live: bool = True) -> "Tail":
        """The file a checkpoint saved, read on where it stopped, in its generation."""
        tail = cls(source, path, fd, st, saved.offset, saved.head, saved.fp, live, saved.gen)
        tail.saved_back(saved)
        return tail

    def saved_back(self, saved: Position) -> None:
        """Compare the bytes before the offset with those a checkpoint fingerprinted."""
        if saved.back and fingerprint(self.pread(saved.back, saved.offset - saved.back)) != saved.back_fp:
            self.behind = None  # not what was read: back_matches says so

    def reset(self, offset: int, gen: str | None = None) -> None:
        """Read from `offset` on, in generation `gen` (None: a new one: the
        file was truncated or rewritten, its offsets will be used again)."""
        self.gen = new_generation() if gen is None else gen
        self.id_prefix = f"{self.source}:{self.key}:{self.gen}:" if self.gen else f"{self.source}:{self.key}:"
        self.offset = self.pos = offset
        self.buf = b""  # bytes [offset, pos) not yet emitted
        self.behind: bytes | None = self._before(offset)  # the last BACK bytes before `offset`
        self.skipping = False  # inside an over-long line already sent cut
        self.head, self.fp = 0, ""
        self.changed_at = time.monotonic()
        self.dirty = True  # position to write with the next batch
        self.refresh_fp()

    def position(self) -> bytes:
        behind = self.behind or b""
        return msgspec.json.encode(Position(self.path, self.offset, self.head, self.fp, self.gen, len(behind),
                                            fingerprint(behind) if behind else ""))

    def pread(self, size: int, at: int) -> bytes:
        return os.pread(self.fd, size, at)

    def head_matches(self) -> bool:
        if self.head == 0:
            return True
        data = self.pread(self.head, 0)
        return len(data) == self.head and fingerprint(data) == self.fp

    def back_matches(self) -> bool:
        """Whether the bytes before the offset (the end of the last line read) are still those read."""
        if self.behind is None:
            return False
        return not self.behind or self.pread(len(self.behind), self.offset - len(self.behind)) == self.behind

    def _before(self, offset: int) -> bytes:
        size = min(BACK, offset)
        return self.pread(size, offset - size) if size else b""

    def _advance(self, offset: int, consumed: bytes) -> None:
        """The offset moves on past `consumed` (bytes just read)."""
        if self.behind is not None:
            self.behind = (self.behind + consumed[-BACK:])[-BACK:]
        self.offset = offset

    def refresh_fp(self) -> None:
        want = min(HEAD, self.pos)
        if want > self.head:
            data = self.pread(want, 0)
            if self.head and fingerprint(data[: self.head]) != self.fp:
                return  # written over from its start: keep the old print, the next look sees it
            self.head, self.fp, self.dirty = len(data), fingerprint(data), True

    def read(self) -> bool:
        """Read one chunk; False at end of file."""
        data = self.pread(CHUNK, self.pos)
        if not data:
            return False
        start, self.pos = self.pos, self.pos + len(data)
        self.changed_at = time.monotonic()
        if self.head < HEAD:
            self.refresh_fp()
        if self.skipping:
            end = data.find(b"\n")
            if end < 0:
                return True
            self.skipping, self.dirty = False, True
            self.offset = start + end + 1
            if self.behind is not None:
                self.behind = self._before(self.offset)  # the cut line was dropped unread
            data = data[end + 1 :]
        self.buf += data
        return True

    def take(self, room: int, out: list[Line], max_bytes: int, stats: Stats) -> int:
        """Move up to `room` complete lines from the buffer to `out`."""
        if not self.buf:
            return 0
        parts = self.buf.split(b"\n", room)
        rest = parts.pop()
        off, prefix = self.offset, self.id_prefix
        for raw in parts:
            if raw:
                text = to_text(raw, max_bytes, stats)
                if text:
                    out.append(Line(prefix + str(off), text))
            off += len(raw) + 1
        taken = len(parts)
        if taken:
            consumed = off - self.offset
            self._advance(off, self.buf[max(0, consumed - BACK) : consumed])
            self.buf, self.dirty = rest, True
        if len(rest) > max_bytes and taken < room:
            # An over-long line: send its start now, drop the rest up to its
            # newline. The position stays at its start until that newline is
            # read, so a restart re-sends the same cut line (same id).
            out.append(Line(prefix + str(off), to_text(rest, max_bytes, stats)))
            self.buf, self.skipping = b"", True
            taken += 1
        return taken

    def flush_partial(self, out: list[Line], max_bytes: int, stats: Stats) -> bool:
        """Emit a last line that has waited PARTIAL_TIMEOUT for its newline."""
        if not self.buf or self.skipping or time.monotonic() - self.changed_at < PARTIAL_TIMEOUT:
            return False
        text = to_text(self.buf, max_bytes, stats)
        if text:
            out.append(Line(self.id_prefix + str(self.offset), text))
        self._advance(self.pos, self.buf)
        self.buf, self.dirty = b"", True
        return True

    def close(self) -> None:
        os.close(self.fd)


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, for a message."""
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "a special file"


class NotALogFile(Exception):
    """A path names something other than a regular file (a FIFO, a device...)."""

    def __init__(self, mode: int):
        super().__init__(f"is {kind_of(mode)}, not a regular file: only files are read")


def open_log(path: str) -> tuple[int, os.stat_result]:
    """Open a log file to read (OSError, or NotALogFile if it is not a regular file).

    O_NONBLOCK: a FIFO put where a log was must not make the open wait for a
    writer (the collector would stop); it changes nothing for a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotALogFile(st.st_mode)
    return fd, st


def head_is(fd: int, head: int, fp: str) -> bool:
    """Whether the file's first `head` bytes still have fingerprint `fp`."""
    if head == 0:
        return False  # nothing to recognise it by
    data = os.pread(fd, head, 0)
    return len(data) == head and fingerprint(data) == fp


def copy_of(fd: int, tail: Tail) -> bool:
    """Whether the file open at `fd` is a copy of the one `tail` follows: it starts
    with the bytes `tail` read (its print), or with those that file holds now
    (nothing of it read yet). Such a copy (copytruncate between its copy and
    its truncation, a backup) holds no line of its own: its lines come from the
    followed file, or from the copy where that file's unread rest is taken from
    it after a truncation (file.FileSource._restart).

    Bytes alike are taken for the same lines: a file written again with the very
    bytes of another (same times, same pids) is not told from a copy of it.
    """
    if head_is(fd, tail.head, tail.fp):
        return True
    now = tail.pread(HEAD, 0)
    start = os.pread(fd, len(now), 0)  # a copy may be shorter: made before the last lines came
    return bool(start) and now.startswith(start)
