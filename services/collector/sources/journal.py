"""The systemd journal, read through `journalctl -o json --follow`.

`paths` name journal folders or files (none: the system journal). A folder
is read as journald lays it out: its `.journal` files and those of its
subfolder named by the host's machine id (`/etc/machine-id`, mounted by
compose; without it, or with no such subfolder, every subfolder). The files are listed again every
RESCAN seconds, and journalctl restarted from where it was when the set
changes: journald rotates its files, a folder may appear after us, and
`journalctl --file` follows only the files it was given.

What is read: the entries whose SYSLOG_IDENTIFIER one of `programs` names
(those of the rules the journal carries, collector/plan.py). A glob such as
`postfix*/smtpd` stands for its plainest form (`postfix/smtpd`) and for the
identifiers present that it matches, looked up again every FIELDS_EVERY
seconds (`journalctl -F`, from an index). Or exactly `match` when the source
gives one (journalctl matches, e.g. `["_SYSTEMD_UNIT=ssh.service", "+",
"SYSLOG_IDENTIFIER=sshd"]`), or every entry when the collector enables no
rule. Matching in journalctl matters: formatting an entry as JSON costs it
about 50 µs, so entries no rule reads are never formatted.

The checkpoint is the cursor of the last entry sent (field `cursor`), also
each line's id; a restart resumes with `--after-cursor`. Without a cursor the
journal is read `--since` the start of the longest window of the rules it
carries (so an attack in progress when PyFilter starts counts), or since the
source first started when no window applies.

Lines read like a syslog file in RFC 3339 format (Debian's rsyslog default),
so the same rules match a journal and a file:
`2024-05-01T10:00:00.123456+00:00 web1 sshd[123]: Failed password for ...`.

journalctl facts this relies on (systemd 252): `--follow` alone shows only
the current boot (hence `--merge` for the system journal), with
`--after-cursor` it still stops at 10 old entries unless `--no-tail` is
given, and a file it cannot open fails the whole command (hence only
readable files are passed).
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

import msgspec

from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .base import STARTED, Batch, Reader, SourcePlan, Stats, to_text

log = logging.getLogger("pyfilter.collector.journal")

CURSOR = "cursor"
READ_LIMIT = 64 << 20  # longest JSON entry accepted from journalctl (bytes)
RESTART_DELAY = 2.0  # before running journalctl again after it failed (s)
RESCAN = 2.0  # how often the journal files are listed again (s)
FIELDS_EVERY = 60.0  # how often globs in `programs` are matched against the identifiers present (s)
MACHINE_ID = Path("/etc/machine-id")


class Entry(msgspec.Struct):
    cursor: str = msgspec.field(name="__CURSOR")
    realtime: str = msgspec.field(default="0", name="__REALTIME_TIMESTAMP")
    # A string, or a list of byte values when the message is not valid UTF-8.
    message: str | list[int] | None = msgspec.field(default=None, name="MESSAGE")
    hostname: str = msgspec.field(default="-", name="_HOSTNAME")
    identifier: str | None = msgspec.field(default=None, name="SYSLOG_IDENTIFIER")
    comm: str | None = msgspec.field(default=None, name="_COMM")
    syslog_pid: str | None = msgspec.field(default=None, name="SYSLOG_PID")
    pid: str | None = msgspec.field(default=None, name="_PID")


_decode = msgspec.json.Decoder(Entry).decode


def format_entry(entry: Entry, max_bytes: int, stats: Stats) -> str:
    """The entry as one syslog-style line (see the module docstring)."""
    message = entry.message
    raw = bytes(message) if isinstance(message, list) else (message or "").encode()
    when = datetime.fromtimestamp(int(entry.realtime) / 1e6, timezone.utc)
    ident = entry.identifier or entry.comm or "-"
    pid = entry.syslog_pid or entry.pid
    head = f"{when.isoformat(timespec='microseconds')} {entry.hostname} {ident}"
    head += f"[{pid}]: " if pid else ": "
    return to_text(head.encode() + raw, max_bytes, stats)


def machine_id() -> str | None:
    try:
        return MACHINE_ID.read_text().strip() or None
    except OSError:
        return None


def journal_files(paths: list[str], machine: str | None) -> list[str]:
    """The journal files the paths hold now (readable or not; a folder that
    cannot be listed stands for its files), sorted."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            if os.path.isfile(path):
                found.append(path)
            continue
        folders = [path]
        if machine and os.path.isdir(os.path.join(path, machine)):
            folders.append(os.path.join(path, machine))
        else:  # no machine id to go by (or not this folder's): every subfolder
            try:
                folders += sorted(f.path for f in os.scandir(path) if f.is_dir())
            except OSError:
                found.append(path)  # a folder we may not list: reported as unreadable
                continue
        for folder in folders:
            for pattern in ("*.journal", "*.journal~"):
                found += glob.glob(os.path.join(glob.escape(folder), pattern))
    return sorted(set(found))


def readable(files: list[str]) -> tuple[list[str], list[str]]:
    """The files split into (readable, unreadable) by the collector's own ids."""
    ok = [f for f in files if os.access(f, os.R_OK)]
    return ok, [f for f in files if f not in ok]


class JournalSource(Reader):
    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event, plan: SourcePlan | None = None):
        super().__init__(cfg, opts, saved, stop, plan)
        cursor = saved.get(CURSOR)
        self.cursor = cursor.decode() if cursor else None  # last entry handed to the reader queue
        self.machine = machine_id()
        self.unreadable: list[str] = []  # files reported as unreadable (logged once)
        self.identifiers: list[str] = []  # what the globs in `programs` matched at the last look
        self.fields_at = 0.0

    # ---- what journalctl is asked ----

    def files(self) -> list[str] | None:
        """The readable journal files to pass (None: the system journal)."""
        if not self.cfg.paths:
            return None
        ok, bad = readable(journal_files(self.cfg.paths, self.machine))
        if bad != self.unreadable:
            self.unreadable = bad
            if bad:
                self.stats.errors += 1
                log.error("journal files the collector may not read (permission denied); it reads them "
                          "once it runs with their group (PYFILTER_JOURNAL_GID, set by `make up`)",
                          extra={"source": self.name, "files": bad[:5], "unreadable": len(bad)})
        return ok

    async def matches(self, files: list[str] | None) -> list[str] | None:
        """journalctl matches for what to read; None: nothing to read."""
        if self.cfg.match or self.plan.programs is None:
            return list(self.cfg.match)
        programs = self.plan.programs
        globs = [p for p in programs if glob.has_magic(p)]
        if globs and time.monotonic() >= self.fields_at:
            self.identifiers = await self._identifiers(files, globs)
            self.fields_at = time.monotonic() + FIELDS_EVERY
        plain = {p.replace("*", "").replace("?", "") if p in globs else p for p in programs}
        wanted = sorted((plain | set(self.identifiers)) - {""})
        return [f"SYSLOG_IDENTIFIER={p}" for p in wanted] or None

    def command(self, files: list[str] | None, *extra: str) -> list[str]:
        cmd = ["journalctl", "-o", "json", "--no-pager"]
        cmd += ["--merge"] if files is None else [f"--file={f}" for f in files]
        return cmd + list(extra)

    async def _identifiers(self, files: list[str] | None, globs: list[str]) -> list[str]:
        """The identifiers present in the journal that the globs match (any case, as rules do)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command(files, "-F", "SYSLOG_IDENTIFIER"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        globs = [g.lower() for g in globs]
        return sorted(i for i in out.decode(errors="replace").splitlines()
                      if any(fnmatch.fnmatchcase(i.lower(), g) for g in globs))

    def position(self) -> list[str]:
        if self.cursor:
            return ["--after-cursor", self.cursor]
        if self.cfg.from_start:
            return []
        if self.plan.lookback:
            return [f"--since=@{time.time() - self.plan.lookback:.6f}"]
        if self.started:
            return [f"--since=@{float(self.started.decode()):.6f}"]
        return []

    # ---- the Source interface ----

    async def batches(self) -> AsyncIterator[Batch]:
        if not self.started:
            # Where "now" was at the first start: without a window to read,
            # a restart before any entry was sent resumes there.
            self.started = repr(time.time()).encode()
            yield Batch([], {STARTED: self.started})

        queue: asyncio.Queue[Line] = asyncio.Queue(maxsize=4 * self.opts.batch_lines)
        reader = asyncio.create_task(self._read(queue))
        stopping = asyncio.create_task(self.stop.wait())
        try:
            while True:
                getting = asyncio.create_task(queue.get())
                await asyncio.wait({getting, stopping, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    if reader.done():
                        reader.result()  # a bug in the reader: let the collector rebuild us
                    return
                lines = [getting.result()]
                while len(lines) < self.opts.batch_lines and not queue.empty():
                    lines.append(queue.get_nowait())
                yield Batch(lines, {CURSOR: lines[-1].id.encode()})
        finally:
            reader.cancel()
            stopping.cancel()

    async def _read(self, queue: asyncio.Queue[Line]) -> None:
        """Run journalctl (again whenever it exits or the files change) and queue its entries."""
        while True:
            files = self.files()
            matches = await self.matches(files) if files != [] else None
            if matches is None:
                await asyncio.sleep(RESCAN)  # nothing to read yet
                continue
            args = self.command(files, "--follow", "--no-tail", *self.position(), *matches)
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=READ_LIMIT)
            watcher = asyncio.create_task(self._watch(proc, files, matches))
            try:
                while raw := await proc.stdout.readline():
                    try:
                        entry = _decode(raw)
                    except msgspec.DecodeError as exc:
                        self.stats.errors += 1
                        log.error("journalctl printed something that is not an entry",
                                  extra={"source": self.name, "error": str(exc)})
                        continue
                    text = format_entry(entry, self.opts.max_line_bytes, self.stats)
                    await queue.put(Line(entry.cursor, text))
                    self.cursor = entry.cursor
                await proc.wait()
            finally:
                watcher.cancel()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if watcher.done() and not watcher.cancelled() and watcher.result():
                continue  # stopped by us: the files or identifiers changed
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            self.stats.errors += 1
            log.error("journalctl exited; running it again", extra={
                "source": self.name, "status": proc.returncode, "error": err or "no message",
                "retry_in": RESTART_DELAY})
            await asyncio.sleep(RESTART_DELAY)

    async def _watch(self, proc: asyncio.subprocess.Process, files: list[str] | None,
                     matches: list[str]) -> bool:
        """Stop journalctl once the files or the identifiers to read change."""
        if files is None:
            return False  # the system journal: journalctl follows its files itself
        while True:
            await asyncio.sleep(RESCAN)
            now_files = self.files()
            now_matches = await self.matches(now_files) if now_files else None
            if now_files != files or now_matches != matches:
                log.info("journal files or identifiers changed; reading on from the last entry",
                         extra={"source": self.name, "files": len(now_files)})
                proc.terminate()
                return True

