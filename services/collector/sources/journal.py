"""The systemd journal, read through `journalctl -o json --follow`.

The checkpoint is the journal cursor of the last entry sent (field `cursor`);
a restart resumes with `--after-cursor`. The cursor is also each line's id.
`paths` name journal files or folders (none: the system journal); `match`
is passed to journalctl as is, e.g. `["_SYSTEMD_UNIT=ssh.service", "+",
"SYSLOG_IDENTIFIER=sshd"]` (unit or identifier).

Lines read like a syslog file in RFC 3339 format (Debian's rsyslog default),
so the same rules match a journal and a file:
`2024-05-01T10:00:00.123456+00:00 web1 sshd[123]: Failed password for ...`.

journalctl facts this relies on (systemd 252): `--follow` alone shows only
the current boot (hence `--merge`), and with `--after-cursor` it still stops
at 10 old entries unless `--no-tail` is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timezone
from typing import AsyncIterator

import msgspec

from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .base import STARTED, Batch, Stats, to_text

log = logging.getLogger("pyfilter.collector.journal")

CURSOR = "cursor"
READ_LIMIT = 64 << 20  # longest JSON entry accepted from journalctl (bytes)
RESTART_DELAY = 2.0  # before running journalctl again after it exited (s)


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


class JournalSource:
    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event):
        self.name, self.cfg, self.opts, self.stop = cfg.name, cfg, opts, stop
        self.stats = Stats()
        self.started = saved.get(STARTED)
        cursor = saved.get(CURSOR)
        self.cursor = cursor.decode() if cursor else None  # last entry handed to the reader queue

    def command(self, *extra: str) -> list[str]:
        cmd = ["journalctl", "-o", "json", "--no-pager", "--merge"]
        for path in self.cfg.paths:
            cmd.append(f"--directory={path}" if os.path.isdir(path) else f"--file={path}")
        return cmd + list(extra) + list(self.cfg.match)

    async def batches(self) -> AsyncIterator[Batch]:
        checkpoint: dict[str, bytes] = {}
        if not self.started:
            self.started = checkpoint[STARTED] = repr(datetime.now().timestamp()).encode()
            if not self.cfg.from_start:
                # Start after the newest entry there is now, and record that
                # at once: a restart then resumes there, not at a later "now".
                self.cursor = await self._last_cursor()
            if self.cursor:
                checkpoint[CURSOR] = self.cursor.encode()
            yield Batch([], checkpoint)

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
        """Run journalctl (again whenever it exits) and queue its entries as lines."""
        while True:
            where = ["--after-cursor", self.cursor] if self.cursor else []
            proc = await asyncio.create_subprocess_exec(
                *self.command("--follow", "--no-tail", *where),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=READ_LIMIT)
            try:
                while raw := await proc.stdout.readline():
                    try:
                        entry = _decode(raw)
                    except msgspec.DecodeError as exc:
                        self.stats.errors += 1
                        log.error(f"journalctl printed something that is not an entry: {exc}",
                                  extra={"source": self.name})
                        continue
                    text = format_entry(entry, self.opts.max_line_bytes, self.stats)
                    await queue.put(Line(entry.cursor, text))
                    self.cursor = entry.cursor
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            self.stats.errors += 1
            log.error(f"journalctl exited with status {proc.returncode}: {err or 'no message'}; "
                      f"running it again in {RESTART_DELAY}s", extra={"source": self.name})
            await asyncio.sleep(RESTART_DELAY)

    async def _last_cursor(self) -> str | None:
        """Cursor of the newest matching entry, or None if there is none (yet)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command("-n", "1"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=READ_LIMIT)
        out, err = await proc.communicate()
        for raw in out.splitlines()[-1:]:
            try:
                return _decode(raw).cursor
            except msgspec.DecodeError:
                pass
        if proc.returncode:
            log.warning(f"journalctl -n 1 failed ({err.decode(errors='replace').strip()}); "
                        "reading the journal from its start", extra={"source": self.name})
        return None
