"""Rotated logs compressed before the collector read them to their end.

logrotate's `compress` renames a log, lets the daemon reopen, then
compresses the rotated file and removes it (`delaycompress`: one rotation
later). A running collector holds the file open and reads it to its end
anyway; one that was stopped meanwhile (a crash, an upgrade) finds only
`auth.log.1.gz`. Dropping what the file held past the checkpoint lost those
lines, so they are read from the compressed copy: its bytes, decompressed,
are the file's bytes, so the rest starts at the checkpoint's offset. A
rotated file never seen at its live name (several rotations while the
collector was stopped) is read whole from its copy the same way.

gzip, bzip2 and xz (Python's own modules); other kinds are never read.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import zlib

from .tail import HEAD, NotALogFile, Tail, fingerprint, open_log

log = logging.getLogger("pyfilter.collector.file")

READERS = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
BROKEN = (EOFError, OSError, zlib.error, lzma.LZMAError)  # a cut or corrupt archive


def readable(name: str) -> bool:
    """Whether `name` is a compressed file this module reads."""
    return any(name.lower().endswith(ext) for ext in READERS)


def being_made(path: str) -> bool:
    """Whether the file `path` is compressed from is still there: gzip (and
    logrotate) remove it once the copy is whole, and it is the one to read."""
    return os.path.exists(os.path.splitext(path)[0])


class Archive:
    """A compressed file's decompressed bytes, read at offsets (forward is cheap)."""

    def __init__(self, path: str):
        self.fd, self.st = open_log(path)
        reader = READERS[next(ext for ext in READERS if path.lower().endswith(ext))]
        self.stream = reader(fileobj=os.fdopen(os.dup(self.fd), "rb"))
        try:
            self.first = self.stream.read(HEAD)
        except BROKEN:
            self.first = b""

    def pread(self, size: int, at: int) -> bytes:
        if at + size <= len(self.first):
            return self.first[at : at + size]
        try:
            if self.stream.tell() != at:
                self.stream.seek(at)
            return self.stream.read(size)
        except BROKEN:  # cut short (being written, or damaged): what it holds is all there is
            return b""

    def holds(self, head: int, fp: str, offset: int) -> bool:
        """Whether these are the bytes of the file whose first `head` bytes have
        print `fp`, and it reaches `offset`."""
        if not head or len(self.first) < head or fingerprint(self.first[:head]) != fp:
            return False
        return offset == 0 or len(self.pread(1, offset - 1)) == 1

    def copy_of(self, tail: Tail) -> bool:
        """Whether this is a copy of the file `tail` reads (the same first bytes)."""
        return bool(self.first) and tail.pread(len(self.first), 0) == self.first

    @property
    def identity(self) -> str:
        return f"{self.st.st_dev}:{self.st.st_ino}"

    def close(self) -> None:
        self.stream.close()
        os.close(self.fd)


class Unpacked(Tail):
    """A file read from its compressed copy, under the copy's identity.

    Not the original's: that inode is free once the original is deleted, and
    the next file made may take it (logrotate's `create` often does). Lines
    read here were never sent from the original, so ids of their own lose
    nothing; `gen`: the generation a checkpoint of this copy saved.
    """

    def __init__(self, source: str, archive: Archive, path: str, offset: int, head: int = 0, fp: str = "",
                 gen: str | None = None):
        self.archive = archive
        super().__init__(source, path, archive.fd, archive.st, offset, head, fp, live=False, gen=gen)

    def pread(self, size: int, at: int) -> bytes:
        return self.archive.pread(size, at)

    def close(self) -> None:
        self.archive.close()


def find_copy(candidates: list[str], head: int, fp: str, offset: int) -> tuple[str, Archive] | None:
    """The first of `candidates` (compressed files) holding the file with this print,
    up to `offset`; opened."""
    for path in candidates:
        archive = open_archive(path)
        if archive is None:
            continue
        if archive.holds(head, fp, offset):
            return path, archive
        archive.close()
    return None


def open_archive(path: str) -> Archive | None:
    """The compressed file at `path`, opened; None if it cannot be read (said at debug level)."""
    try:
        return Archive(path)
    except (OSError, NotALogFile) as exc:
        log.debug("cannot read a compressed rotated file", extra={"path": path, "error": str(exc)})
        return None
