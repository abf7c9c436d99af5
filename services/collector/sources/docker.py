"""Container logs, through the Docker engine API (the docker SDK).

`container` follows one container (name or id); `label` ("key" or
"key=value") every container carrying it, including ones started later.
A line's text is what the program wrote (without Docker's timestamp, so the
rules for a service match its container logs and its log file alike); its id
is `"{container id}:{timestamp in ns}"`, plus `":{n}"` for the n-th further
line with the very same timestamp.

Checkpoint fields `c:{container id}` hold `"{ns} {n}"` of the last line sent;
a restart asks Docker for the logs since that time and skips what it already
sent. A container with no checkpoint is read from when the source was first
started (STARTED), or from its beginning with `from_start`.

The docker SDK blocks, so each followed container has a thread that feeds a
bounded queue (when the queue is full the thread waits, and so does Docker).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime
from typing import AsyncIterator, NamedTuple

from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import Line

from .base import STARTED, Batch, Stats, to_text

log = logging.getLogger("pyfilter.collector.docker")

DISCOVER_EVERY = 2.0  # look for new or restarted containers this often (s)
FIELD = "c:"


class Mark(NamedTuple):
    """A line's place in one container's log: timestamp and rank among equal ones."""

    ns: int
    n: int

    def encode(self) -> bytes:
        return f"{self.ns} {self.n}".encode()


class Item(NamedTuple):
    container: str
    mark: Mark | None  # None: forget this container's checkpoint
    line: Line | None


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch from Docker's RFC 3339 timestamp."""
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(main + "+00:00").timestamp()
    return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])


class DockerSource:
    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event):
        self.name, self.cfg, self.opts, self.stop = cfg.name, cfg, opts, stop
        self.stats = Stats()
        self.started = saved.get(STARTED)
        self.marks: dict[str, Mark] = {}  # container id -> last line queued
        for key, value in saved.items():
            if key.startswith(FIELD):
                ns, n = value.split()
                self.marks[key[len(FIELD):]] = Mark(int(ns), int(n))
        self.followers: dict[str, tuple[threading.Thread, list]] = {}
        self.drained: dict[str, str] = {}  # container id -> StartedAt when its log ended

    async def batches(self) -> AsyncIterator[Batch]:
        import docker  # only hosts that follow containers need the SDK

        if not self.started:
            self.started = repr(time.time()).encode()
            yield Batch([], {STARTED: self.started})
        self.since = None if self.cfg.from_start else float(self.started)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=4 * self.opts.batch_lines)
        client = docker.from_env()
        watcher = asyncio.create_task(self._discover(client))
        stopping = asyncio.create_task(self.stop.wait())
        try:
            while True:
                getting = asyncio.create_task(self.queue.get())
                await asyncio.wait({getting, stopping, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    if watcher.done():
                        watcher.result()
                    return
                items = [getting.result()]
                while len(items) < self.opts.batch_lines and not self.queue.empty():
                    items.append(self.queue.get_nowait())
                batch = Batch([])
                for item in items:
                    field = FIELD + item.container
                    if item.mark is None:
                        batch.checkpoint.pop(field, None)
                        batch.forget.append(field)
                    else:
                        batch.lines.append(item.line)
                        batch.checkpoint[field] = item.mark.encode()
                yield batch
        finally:
            watcher.cancel()
            stopping.cancel()
            for _, streams in self.followers.values():
                for stream in streams:
                    stream.close()
            client.close()

    async def _discover(self, client) -> None:
        """Start a follower for each matching container that is not followed yet."""
        import docker

        while True:
            try:
                found = await asyncio.to_thread(self._matching, client)
            except docker.errors.DockerException as exc:
                self.stats.errors += 1
                log.error(f"cannot list containers from the Docker engine: {exc}; retrying",
                          extra={"source": self.name})
                found = None
            for container in found or []:
                cid, state = container.id, container.attrs.get("State", {})
                follower = self.followers.get(cid)
                if follower is not None and follower[0].is_alive():
                    continue
                # A stopped container is read once (up to its end), again only if restarted.
                if state.get("Running") or self.drained.get(cid) != state.get("StartedAt"):
                    self._follow(client, container)
            if found is not None:
                gone = set(self.marks) - {c.id for c in found}
                for cid in gone:
                    del self.marks[cid]
                    await self.queue.put(Item(cid, None, None))
            await asyncio.sleep(DISCOVER_EVERY)

    def _matching(self, client) -> list:
        import docker

        if self.cfg.label:
            return client.containers.list(all=True, filters={"label": self.cfg.label})
        try:
            return [client.containers.get(self.cfg.container)]
        except docker.errors.NotFound:
            return []

    def _follow(self, client, container) -> None:
        streams: list = []
        thread = threading.Thread(target=self._pump, args=(client, container, streams),
                                  name=f"docker-logs-{container.id[:12]}", daemon=True)
        self.followers[container.id] = (thread, streams)
        log.info("following container", extra={"source": self.name, "container": container.name,
                                                "id": container.id[:12]})
        thread.start()

    def _pump(self, client, container, streams: list) -> None:
        """Thread: read one container's log and queue its lines, until it ends."""
        cid = container.id
        sent = self.marks.get(cid)
        # Docker's `since` has microsecond precision at best: ask from just
        # before the last line sent and skip up to it. Lines with equal
        # timestamps are ranked in the order Docker gives them, which is the
        # same on every read of the log.
        since = (sent.ns // 1000 - 1) / 1e6 if sent else self.since
        previous = Mark(-1, 0)
        try:
            stream = container.logs(stream=True, follow=True, timestamps=True, since=since)
            streams.append(stream)
            pending = b""
            for chunk in stream:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    previous = self._queue_line(cid, raw, previous, sent)
            if pending:
                self._queue_line(cid, pending, previous, sent)
            container.reload()
            self.drained[cid] = container.attrs.get("State", {}).get("StartedAt")
        except Exception as exc:  # the SDK raises many kinds; the follower is retried
            self.stats.errors += 1
            log.error(f"reading the log of container {container.name} failed: {exc}",
                      extra={"source": self.name, "id": cid[:12]})

    def _queue_line(self, cid: str, raw: bytes, previous: Mark, sent: Mark | None) -> Mark:
        stamp, _, text = raw.partition(b" ")
        try:
            ns = parse_timestamp(stamp.decode())
        except ValueError:
            return previous  # not a timestamped line (cannot happen with timestamps=True)
        mark = Mark(ns, previous.n + 1 if previous.ns == ns else 0)
        if sent is not None and mark <= sent:
            return mark  # sent before a restart
        line_id = f"{cid}:{ns}" if mark.n == 0 else f"{cid}:{ns}:{mark.n}"
        line = Line(line_id, to_text(text, self.opts.max_line_bytes, self.stats))
        asyncio.run_coroutine_threadsafe(self.queue.put(Item(cid, mark, line)), self.loop).result()
        self.marks[cid] = mark
        return mark
