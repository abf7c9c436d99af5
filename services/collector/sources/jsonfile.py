"""A container's json-file log files on disk: their order, and where lines start in them.

json-file writes `ID-json.log`. At `max-size` it deletes the oldest rotated
file (`.{max-file - 1}`), renames `.N-1` -> `.N` ... `.1` -> `.2`, the log
-> `.1`, and starts a new log, one system call at a time. With `compress:
true` the rotated names end in `.gz`: right after a rotation `.1` is
compressed into `.1.gz`, then removed (the next rotation waits for that).

Files are told apart by identity (device, inode), never by their times: a
burst writes several files within one tick of the file system's clock.
"""

from __future__ import annotations

import os
import stat

from .containers import decode_entry, parse_time
from .packed import Archive, readable as packed
from .tail import NotALogFile, Tail, open_log

MAX_ROTATED = 100  # `.1` to `.N`: the most rotated files looked at
# A json-file line is one JSON object: a 16 KB piece of text, escaped (up to
# six bytes a character), plus Docker's fields.
RAW_MAX = 128 * 1024

Files = list[tuple[str, os.stat_result]]


def identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def chain(live: str) -> Files:
    """A container's log files, oldest first: `.N` ... `.1`, then the live one; each once.

    A rotation may run while we look. Looking at the live name first, then
    `.1`, `.2`... sees every file at least once whatever the moment: a file
    only ever moves to the next name up, after we looked below it. A file
    seen twice (it moved as we looked) is kept once, where it was seen last;
    a number missing mid-shift does not end the chain, two in a row do. Of
    `.n` and `.n.gz`, the plain file counts: the other is its copy being made.
    """
    found = []
    missing = 0
    for n in range(MAX_ROTATED + 1):
        name = f"{live}.{n}" if n else live
        hit = _regular(name) or (_regular(name + ".gz") if n else None)
        if hit is not None:
            found.append(hit)
            missing = 0
        elif n:
            missing += 1
            if missing == 2:
                break
    files, kept = [], set()
    for path, st in reversed(found):
        if identity(st) not in kept:
            kept.add(identity(st))
            files.append((path, st))
    return files


def _regular(path: str) -> tuple[str, os.stat_result] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st) if stat.S_ISREG(st.st_mode) else None


def copy_of(path: str, st: os.stat_result, tail: Tail) -> bool | None:
    """Whether the compressed file found at `path` (`st`) is a copy of the file
    `tail` reads; None if it is not at `path` any more (renamed by a rotation, or deleted)."""
    try:
        archive = Archive(path)
    except FileNotFoundError:
        return None
    except (OSError, NotALogFile):
        return False
    try:
        return archive.copy_of(tail) if archive.identity == identity(st) else None
    finally:
        archive.close()


# ---- where lines start, by their times -------------------------------------

def first_line_since(files: Files, since: float) -> tuple[str, int]:
    """The first line written at or after `since`, in the chain of a container's log files."""
    for path, st in files:
        last = path == files[-1][0]
        if packed(path):
            # Compressed after its last line was written: all older if made before `since`.
            if st.st_mtime < since and not last:
                continue
            try:
                archive = Archive(path)
            except (OSError, NotALogFile):
                continue
            try:
                at, found = first_packed_line_at(archive.pread, since)
            finally:
                archive.close()
            if found or last:
                return path, at
            continue
        try:
            fd, st = open_log(path)
        except (OSError, NotALogFile):
            continue
        try:
            size = st.st_size
            if last or (time_at(fd, last_line(fd, size)) or 0) >= since:
                return path, first_line_at(fd, size, since)
        finally:
            os.close(fd)
    path, st = files[-1]
    return path, 0 if packed(path) else st.st_size


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
        when = time_at(fd, start)
        if when is None or when < since:
            lo = end
        else:
            hi = start
    return lo


def first_packed_line_at(pread, since: float) -> tuple[int, bool]:
    """Offset of the first line whose time is `since` or later in a compressed
    log, read forward (a compressed file cannot be searched), and whether there
    is one (else: its end)."""
    at, rest = 0, b""
    while True:
        data = pread(1 << 20, at + len(rest))
        if not data:
            return at, False
        rest += data
        *lines, rest = rest.split(b"\n")
        for raw in lines:
            entry = decode_entry(raw.decode("utf-8", "replace"))
            when = parse_time(entry.time) if entry else None
            if when is not None and when >= since:
                return at, True
            at += len(raw) + 1


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


def last_line(fd: int, size: int) -> int:
    """Where the last complete line starts."""
    data = os.pread(fd, min(size, RAW_MAX), max(0, size - RAW_MAX))
    cut = data.rstrip(b"\n").rfind(b"\n")
    return max(0, size - len(data)) + cut + 1


def time_at(fd: int, start: int) -> float | None:
    raw = os.pread(fd, RAW_MAX, start).partition(b"\n")[0]
    entry = decode_entry(raw.decode("utf-8", "replace"))
    return parse_time(entry.time) if entry else None


def open_pieces(pread, offset: int) -> set[str]:
    """Streams whose last line before `offset` is the start of a line Docker cut (resuming mid-line)."""
    start = max(0, offset - RAW_MAX)
    data = pread(offset - start, start)
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
