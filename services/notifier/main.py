"""The notifier service: ban notices (notify.py).

A long-running reader of the decisions that nothing waits for; it needs no
port and no capability. Compose starts it only where a channel is configured
(the `notify` profile, which `make up` turns on from the configuration): an
idle host does not pay for it. The container is healthy while Redis answers
(as the collector's), since without Redis it has nothing to do. SIGTERM lets
deliveries under way finish, each bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from pyfilter.common import health, service
from pyfilter.common.config import Settings
from pyfilter.common.metrics import serve as serve_metrics
from pyfilter.common.redisio import TRANSIENT, connect

log = logging.getLogger("pyfilter.notifier")

BEAT_EVERY = 5.0  # (s) between heartbeats while Redis answers


async def heartbeat(client: redis.Redis, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(*TRANSIENT):
            await client.ping()
            health.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), BEAT_EVERY)


async def main_async(settings: Settings) -> int:
    serve_metrics("notifier")
    client = connect(settings.config.redis)
    stop = asyncio.Event()
    service.stop_on_signals(stop)
    tasks = service.Tasks(stop, log)
    tasks.start(heartbeat(client, stop), "heartbeat")
    if not settings.config.notify.any_channel:
        log.warning("no notification channel is configured: nothing to announce "
                    "(docs/notifications.md)")
    else:
        # Only now are aiohttp and the mail modules loaded (about 9 MB that an idle host does not need).
        from pyfilter.notifier.notify import run_notifier

        tasks.start(run_notifier(settings, client, stop), "notices")
    log.info("notifier started", extra={"host": settings.host})
    await tasks.wait()
    await client.aclose()
    return tasks.exit_code


def main() -> int:
    return service.run("notifier", main_async)
