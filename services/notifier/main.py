"""The notifier service: ban notices (notify.py) and the expired-ban pruner (pruner.py).

Both are small, long-running readers of the ban ledger that nothing waits
for, so they share a process; neither needs a port or a capability. The
container is healthy while Redis answers (as the collector's), since without
Redis neither has anything to do. SIGTERM lets deliveries under way finish,
each bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from pyfilter.common import health, service
from pyfilter.common.config import Settings
from pyfilter.common.keys import Keys
from pyfilter.common.metrics import serve as serve_metrics
from pyfilter.common.redisio import TRANSIENT, connect
from pyfilter.notifier.pruner import prune_until

log = logging.getLogger("pyfilter.notifier")

BEAT_EVERY = 5.0  # (s) between heartbeats while Redis answers


async def heartbeat(client: redis.Redis, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(*TRANSIENT):
            await client.ping()
            health.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), BEAT_EVERY)


async def notices(settings: Settings, client: redis.Redis, stop: asyncio.Event) -> None:
    """Ban notices, where a channel is configured: only then are aiohttp and
    the mail modules loaded (about 9 MB that an idle host does not need)."""
    if settings.config.notify.email is None and settings.config.notify.webhook is None:
        return
    from pyfilter.notifier.notify import run_notifier

    await run_notifier(settings, client, stop)


async def main_async(settings: Settings) -> None:
    serve_metrics("notifier")
    client = connect(settings.config.redis)
    stop = asyncio.Event()
    service.stop_on_signals(stop)
    log.info("notifier started", extra={"host": settings.host})
    await asyncio.gather(heartbeat(client, stop),
                         prune_until(client, Keys(settings.config.redis.prefix), stop),
                         notices(settings, client, stop))
    await client.aclose()


def main() -> int:
    return service.run("notifier", main_async)
