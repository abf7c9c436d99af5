"""The collector: follow every configured source and commit its lines to Redis.

One task per source pulls batches from it and commits each (lines and
checkpoint in one transaction) before pulling the next. A source that fails
in a way it did not handle is rebuilt from its last committed checkpoint; the
others go on. SIGTERM (or SIGINT) lets each source finish the batch in hand,
then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pyfilter.common import health, metrics, service
from pyfilter.common.config import Settings, Source as SourceConfig
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import TRANSIENT, connect
from pyfilter.common.status import Publisher
from pyfilter.common.zones import InvalidZone, get_zone

from . import checkpoints, plan, report
from .checkpoints import Committer
from .sources import SourcePlan, Stats, build

log = logging.getLogger("pyfilter.collector")

SHUTDOWN_GRACE = 8.0  # time to finish the batches in hand (docker stop waits 10 s)
REBUILD_DELAY = 2.0  # pause before rebuilding a source that failed unexpectedly (s)
BEAT_EVERY = 2.0  # heartbeat while Redis answers (s)


async def follow(cfg: SourceConfig, settings: Settings, redis: aioredis.Redis,
                 committer: Committer, stats: Stats, stop: asyncio.Event, todo: SourcePlan,
                 live: dict | None = None) -> None:
    keys, host = Keys(settings.config.redis.prefix), settings.host
    zone = source_zone(cfg)
    shown = zone() or "UTC"
    log.info("timestamps without a zone read in the source's zone",
             extra={"source": cfg.name, "timezone": shown})
    while not stop.is_set():
        saved = await checkpoints.load(redis, keys, host, cfg.name)
        source = build(cfg, settings.config.collector, saved, stop, replace(todo, tz=zone()))
        source.stats = stats
        if live is not None:
            live[cfg.name] = source  # for the status report
        try:
            async for batch in source.batches():
                await committer.commit(cfg.name, batch, stats, zone(), cfg.program, todo.skip)
        except Exception:
            stats.errors += 1
            log.exception("source failed; restarting it from its checkpoint",
                          extra={"source": cfg.name, "retry_in": REBUILD_DELAY})
            await asyncio.sleep(REBUILD_DELAY)


HOST_LOCALTIME = Path("/host/etc/localtime")  # the host's zone file, mounted by compose


def source_zone(cfg: SourceConfig) -> Callable[[], str | None]:
    """The zone a source writes zone-less timestamps in (syslog writes local time), asked per batch.

    In order: the source's `timezone`; TZ; the host's /etc/localtime mounted
    in the container (its offset now: a zone file has no name); this
    machine's zone name. None (UTC) when nothing says.
    """
    for name in (cfg.timezone, os.environ.get("TZ", "").lstrip(":")):
        if name and _valid(name):
            return lambda: name
    if HOST_LOCALTIME.is_file():
        try:
            with HOST_LOCALTIME.open("rb") as f:
                zone = ZoneInfo.from_file(f)
        except (OSError, ValueError) as exc:
            log.warning("the host's zone file is not readable; set `timezone` on the sources "
                        "whose logs carry local times", extra={"path": str(HOST_LOCALTIME), "error": str(exc)})
        else:
            return lambda: datetime.now(zone).strftime("%z")
    name = _machine_zone()
    return lambda: name


def _machine_zone() -> str | None:
    names = []
    with contextlib.suppress(OSError):
        names.append(Path("/etc/timezone").read_text().strip())
    with contextlib.suppress(OSError):
        names.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    return next((n for n in names if n and _valid(n)), None)


def _valid(name: str) -> bool:
    try:
        get_zone(name)
    except InvalidZone:
        return False
    return True


async def heartbeat(redis: aioredis.Redis, stop: asyncio.Event) -> None:
    # The container is healthy while Redis answers us: a collector cut off
    # from Redis cannot deliver anything, however busy its loops are.
    while not stop.is_set():
        try:
            await redis.ping()
            health.beat()
        except TRANSIENT:
            pass
        try:
            await asyncio.wait_for(stop.wait(), BEAT_EVERY)
        except TimeoutError:
            pass


class Exporter:
    """Prometheus view of the sources' counters, read at scrape time."""

    COUNTERS = (
        ("lines", "Lines written to the stream"),
        ("batches", "Stream entries written"),
        ("bytes", "Bytes written to the stream"),
        ("cut", "Lines cut to max_line_bytes"),
        ("errors", "Input and Redis errors (each is logged)"),
    )

    def __init__(self, stats: dict[str, Stats], committer: Committer):
        self.stats, self.committer = stats, committer

    def collect(self):
        for name, text in self.COUNTERS:
            family = CounterMetricFamily(f"pyfilter_collector_{name}", text, labels=["source"])
            for source, stats in self.stats.items():
                family.add_metric([source], getattr(stats, name))
            yield family
        yield GaugeMetricFamily("pyfilter_collector_stream_length",
                                "Entries in the lines stream at the last write (detector lag)",
                                value=self.committer.length)


def make_plan(settings: Settings) -> plan.Plan:
    """Choose the source of every enabled rule's lines, and say so (collector/plan.py)."""
    sources = settings.config.collector.sources
    chosen = plan.make(settings.rules, sources, {s.name: plan.probe(s) for s in sources})
    kinds = {s.name: s.type for s in sources}
    for c in chosen.rules:
        extra = {"rule": c.rule, "sources": c.carriers, "left_out": c.left_out}
        if c.problem:
            log.warning(c.problem, extra=extra)
        elif c.carriers:
            names = ", ".join(f"the journal ({n})" if kinds[n] == "journal" else n for n in c.carriers)
            copies = f"; their copies in {', '.join(c.left_out)} are left out" if c.left_out else ""
            log.info(f"{c.rule}: lines from {names}{copies}", extra=extra)
    for s in sources:
        if s.name not in chosen.sources:
            log.info("no enabled rule reads the source's lines here; not followed",
                     extra={"source": s.name})
    return chosen


async def run(settings: Settings) -> int:
    if not settings.config.collector.sources:
        log.warning("no sources configured; nothing to collect")
    cfg = settings.config
    chosen = make_plan(settings)
    todo = chosen.sources
    followed = [s for s in cfg.collector.sources if s.name in todo]
    redis = connect(cfg.redis, socket_timeout=30)
    committer = Committer(redis, Keys(cfg.redis.prefix), settings.host, cfg.redis.lines_maxlen)
    stop = asyncio.Event()
    service.stop_on_signals(stop)

    stats = {source.name: Stats() for source in followed}
    metrics.serve("collector", Exporter(stats, committer))

    live: dict = {}
    tasks = service.Tasks(stop, log)
    for source in followed:
        tasks.start(follow(source, settings, redis, committer, stats[source.name], stop, todo[source.name], live),
                    f"source {source.name}")
    tasks.start(heartbeat(redis, stop), "heartbeat")
    publisher = Publisher(redis, Keys(cfg.redis.prefix), "collector", settings.host)
    tasks.start(report.publish_until(settings, chosen, live, publisher, stop), "status report")
    log.info("collector started", extra={"host": settings.host,
                                         "sources": [s.name for s in followed]})
    await stop.wait()
    started = time.monotonic()
    pending = await tasks.wait(SHUTDOWN_GRACE)
    for task in pending:
        # Still waiting on Redis: its checkpoint has not moved, nothing is lost.
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await redis.aclose()
    log.info("collector stopped", extra={"seconds": round(time.monotonic() - started, 3),
                                         "unfinished": len(pending)})
    return tasks.exit_code


def main() -> int:
    # Run as root, `privsep.split()` has already left the helper (__main__.py).
    return service.run("collector", run)


if __name__ == "__main__":
    sys.exit(main())
