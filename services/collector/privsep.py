"""The collector's only root part: a helper that lists Docker's containers folder.

Docker keeps its containers folder (mode 0710) and each container's
`config.v2.json` (0600) to root. The collector is started as root only to
fork this helper before anything else runs; it then becomes the `pyfilter`
user (PYFILTER_USER) with root's group added, which opens container logs
(0640, group root) by name, but can list and read nothing else of Docker's.

The helper keeps uid 0 and drops every capability: without
CAP_DAC_OVERRIDE, root is only the owner of root's files. It answers one
question, "the containers of this folder" (`containers.Folder`: names,
images, labels, addresses; never their environment), never runs a program,
and exits when the collector closes its end of the socket.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import socket
import struct
import sys
import threading

import msgspec

from .sources.containers import Container, Folder

_helper: Helper | None = None


class Reply(msgspec.Struct):
    containers: list[Container] | None = None
    error: str | None = None


class HelperGone(OSError):
    """The helper exited: container folders can no longer be listed."""


class Helper:
    """The collector's end of the socket; `containers()` blocks (call it in a thread)."""

    def __init__(self, sock: socket.socket, pid: int):
        self._sock, self.pid = sock, pid
        self._lock = threading.Lock()

    def containers(self, folder: str) -> list[Container]:
        with self._lock:
            _send(self._sock, folder.encode())
            data = _receive(self._sock)
        if data is None:
            raise HelperGone("the root helper that lists Docker's containers has exited")
        reply = msgspec.msgpack.decode(data, type=Reply)
        if reply.error is not None:
            raise OSError(reply.error)
        return reply.containers or []


def helper() -> Helper | None:
    """The helper, if the collector was started as root and split; else None (list directly)."""
    return _helper


def split() -> None:
    """Started as root with PYFILTER_USER set: fork the helper, become that user.

    Call it first thing, before any thread or event loop exists.
    """
    global _helper
    user = os.environ.get("PYFILTER_USER")
    if os.getuid() != 0 or not user:
        return
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        sys.exit(f"PYFILTER_USER={user!r}: no such user in this image")
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the helper
        ours.close()
        try:
            _drop_capabilities()
            _serve(theirs)
        except BaseException as exc:  # noqa: BLE001 - said, then gone: the collector reports it
            print(f"collector: the helper that lists Docker's containers failed: {exc}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    theirs.close()
    # Root's group opens Docker's logs (0640 root:root); the groups compose
    # added (adm for /var/log) stay.
    os.setgroups(sorted(set(os.getgroups()) | {0}))
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)  # a uid other than 0: every capability is gone
    _helper = Helper(ours, pid)


def _serve(sock: socket.socket) -> None:
    folders: dict[str, Folder] = {}
    while (request := _receive(sock)) is not None:
        path = request.decode(errors="replace")
        try:
            if not os.path.isabs(path):
                raise OSError(f"not an absolute path: {path!r}")
            folder = folders.setdefault(path, Folder(path))
            reply = Reply(containers=folder.containers())
        except OSError as exc:
            reply = Reply(error=f"cannot list {path}: {exc.strerror or exc}")
        _send(sock, msgspec.msgpack.encode(reply))


def _drop_capabilities() -> None:
    """capset(2) with empty sets: uid 0 stays, its powers go."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    sets = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice 32 bits, all empty
    if libc.capset(header, sets) != 0:
        raise OSError(ctypes.get_errno(), "capset: cannot drop the helper's capabilities")


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(sock: socket.socket) -> bytes | None:
    """One message, or None once the other end has closed."""
    head = _exactly(sock, 4)
    if head is None:
        return None
    return _exactly(sock, struct.unpack("!I", head)[0])


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
