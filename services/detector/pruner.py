"""Forget bans whose time ran out.

The active set (`Keys.active_bans`) only grows from the writers' side; every
reader already skips what has expired (`bans.active`), and the kernel dropped
those bans by itself. Removing them (and their scopes, through the ledger)
keeps the set, and every reconcile that reads it, the size of the bans in force.

Every detector runs this: detectors are the one service every deployment has
on the Redis side, and the ledger's `prune` is one atomic call, so replicas
pruning the same set only find less to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.redisio import TRANSIENT
from pyfilter.detector import metrics

log = logging.getLogger("pyfilter.detector.pruner")

PRUNE_EVERY = 30.0  # (s)


async def prune_until(client: redis.Redis, keys: Keys, stop: asyncio.Event,
                      every: float = PRUNE_EVERY) -> None:
    """Forget expired bans every `every` seconds until `stop` is set (the first
    round a period after the start, once the detector has found Redis)."""
    ledger = Ledger(client, keys)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        try:
            metrics.PRUNED.inc(await ledger.prune())
        except TRANSIENT as exc:  # Redis away: the next round prunes what this one did not
            metrics.ERRORS.labels("redis").inc()
            log.warning("pruning expired bans failed", extra={"error": str(exc)})
