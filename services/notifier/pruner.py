"""Forget bans whose time ran out.

The active set (`Keys.active_bans`) only grows from the writers' side; every
reader already skips what has expired (`bans.active`), and the kernel dropped
those bans by itself. Removing them (and their scopes, through the ledger)
keeps the set, and every reconcile that reads it, the size of the bans in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.redisio import TRANSIENT
from pyfilter.notifier import metrics

log = logging.getLogger("pyfilter.pruner")

PRUNE_EVERY = 30.0  # (s)


async def prune_until(client: redis.Redis, keys: Keys, stop: asyncio.Event) -> None:
    """Forget expired bans every PRUNE_EVERY seconds until `stop` is set."""
    ledger = Ledger(client, keys)
    while not stop.is_set():
        try:
            metrics.PRUNED.inc(await ledger.prune())
        except TRANSIENT as exc:  # Redis away: the next round prunes what this one did not
            metrics.ERRORS.labels("redis").inc()
            log.warning("pruning expired bans failed", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY)
