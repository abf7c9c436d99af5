"""The country of bans written without one, looked up once, in the background.

The detector writes its bans in Redis without GeoIP (a Lua function, and a
flood must stay cheap); manual bans carry their country. The ledger lists
the bans still to look up in the index (`p` members), and this task gives
each its country through the ledger (`set_countries`), which keeps the
country index and counts right. The reads that depend on countries (a
search by country, /stats) first finish what is pending, so they are never
behind; a country is still looked up once per ban, never per record per read
(docs/decisions.md, "Bounded reads").
"""

from __future__ import annotations

import asyncio
import logging

from pyfilter.api.index import NONE_KNOWN
from pyfilter.api.state import Api
from pyfilter.common.ledger import Ledger

logger = logging.getLogger("pyfilter.api")

BATCH = 500
EVERY = 2.0  # (s) between looks when nothing is left to do


async def fill_once(api: Api) -> int:
    """Look up one batch of bans without a country; returns how many were pending."""
    pending = await api.reader.index.pending_countries(BATCH)
    found = [(address, at, api.geo.lookup(address.split("/")[0]).country or NONE_KNOWN)
             for address, at in pending]
    await Ledger(api.client, api.keys).set_countries(found)
    return len(pending)


async def fill_pending(api: Api) -> None:
    """Look up every ban still without a country (one task at a time per api)."""
    async with api.filling:
        while await fill_once(api) == BATCH:
            await asyncio.sleep(0)  # let requests in between batches


async def fill_forever(api: Api) -> None:
    while True:
        try:
            await fill_pending(api)
        except Exception as exc:  # Redis away, or a bug: log it and look again later
            logger.warning("looking up the country of bans failed", extra={"error": str(exc)})
        # The api's stop cancels this task. A cancel that lands while redis-py opens a
        # connection under its socket timeout may end there without raising (redis-py
        # 7.4, unix socket): the task is still marked as cancelling, so stop here.
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise asyncio.CancelledError
        await asyncio.sleep(EVERY)
