"""Wake a source when its files change (inotify) instead of polling them.

An idle collector whose sources each poll every `poll_interval` (50 ms) wakes
hundreds of times a second to find nothing; on a small host that was most of
the idle stack's CPU (docs/benchmarks.md, "Idle cost"). A source waits on a
`Wake` instead: it returns as soon as a watched file is written, created,
renamed or removed (so a line is read at once, sooner than a poll would), or
after the timeout the source gives. That timeout is the source's rescan, and
it is what keeps "nothing is lost" without trusting inotify: events can be
missed (a folder that does not exist yet, a file system without inotify such
as NFS or some FUSE mounts, an overflowing queue, the watch limit reached),
and the rescan reads what they would have announced.

Folders are watched for some names in them (a host's /var/log is busy with
files no source reads); files are watched themselves where their folder
cannot be read (Docker's container folders).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fnmatch
import os
import struct
from collections.abc import Iterable, Iterator

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC

CHANGES = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
FOLDER_EVENTS = CHANGES | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ONLYDIR
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the watch no longer names that path
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _init, _add, _rm = _libc.inotify_init1, _libc.inotify_add_watch, _libc.inotify_rm_watch
except (OSError, AttributeError):  # not Linux
    _init = None


class Wake:
    def __init__(self, fd: int):
        self.fd = fd
        self.woken = asyncio.Event()
        self.names: dict[int, frozenset[str] | None] = {}  # wd -> name patterns (None: any)
        self.paths: dict[str, int] = {}  # watched path -> wd
        asyncio.get_running_loop().add_reader(fd, self._read)

    @classmethod
    def open(cls) -> "Wake | None":
        """A new inotify instance, or None where there is none to be had (then poll)."""
        fd = _init(IN_NONBLOCK | IN_CLOEXEC) if _init else -1
        return cls(fd) if fd >= 0 else None

    def watch(self, folders: dict[str, Iterable[str]] | None = None, files: Iterable[str] = ()) -> None:
        """Watch these folders (for these names or glob patterns in them) and these files.

        Cheap to call after every scan: a path already watched costs nothing, a
        path that cannot be watched (missing, unreadable, no watches left) is
        tried again at the next call, and watches no longer asked for go.
        """
        wanted: dict[str, tuple[int, frozenset[str] | None]] = {
            folder: (FOLDER_EVENTS, frozenset(names)) for folder, names in (folders or {}).items()}
        wanted.update((path, (CHANGES, None)) for path in files)
        for path in [p for p in self.paths if p not in wanted]:
            _rm(self.fd, self.paths.pop(path))  # its IN_IGNORED event then drops the names
        for path, (mask, names) in wanted.items():
            wd = self.paths.get(path)
            if wd is None:
                wd = _add(self.fd, os.fsencode(path), mask)
                if wd < 0:
                    continue
                self.paths[path] = wd
            self.names[wd] = names

    async def wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Until a watched file changes, `stop` is set, or `timeout` seconds pass."""
        if not self.woken.is_set() and not stop.is_set():
            waits = [asyncio.ensure_future(self.woken.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        self.woken.clear()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            wd, mask, _, size = EVENT.unpack_from(data, offset)
            name = data[offset + EVENT.size:offset + EVENT.size + size].rstrip(b"\0")
            offset += EVENT.size + size
            if mask & GONE:
                self._forget(wd)
            if mask & (IN_Q_OVERFLOW | GONE) or self._wanted(wd, os.fsdecode(name)):
                self.woken.set()

    def _wanted(self, wd: int, name: str) -> bool:
        if wd not in self.names:
            return False
        patterns = self.names[wd]
        return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def _forget(self, wd: int) -> None:
        # A moved folder or file is watched under its new name: let the next
        # `watch` call look its path up again.
        for path in [p for p, w in self.paths.items() if w == wd]:
            del self.paths[path]
            _rm(self.fd, wd)
        self.names.pop(wd, None)


def folders_of(paths: Iterable[str]) -> dict[str, set[str]]:
    """Folder -> the names (or patterns) to watch in it, for paths and globs of files.

    A glob whose folder part is itself a pattern cannot be watched; the
    source's rescan finds its files.
    """
    found: dict[str, set[str]] = {}
    for path in paths:
        folder, name = os.path.split(path)
        if folder and not any(c in folder for c in "*?["):
            found.setdefault(folder, set()).add(name)
    return found


@contextlib.contextmanager
def woken() -> Iterator[Wake | None]:
    """A source loop's Wake (None where there is no inotify: the loop polls), closed after it."""
    wake = Wake.open()
    try:
        yield wake
    finally:
        if wake:
            wake.close()

