"""Manual bans and unbans: what the api asked for, written through the ledger.

The ledger writes them in chunks, each all-or-nothing (record, active set,
ban count, history, decision): an import of 10,000 addresses is one round
trip, and an enforcer never sees a decision whose record is missing. A
Redis failure leaves the chunks already written (the api answers 503);
sending the call again writes the same bans.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import redis.asyncio as redis

from pyfilter.common import messages
from pyfilter.common.addresses import Address, Network
from pyfilter.common.config import ApiConfig
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan


def too_wide(target: Address | Network, cfg: ApiConfig) -> str | None:
    """Why a manual ban of `target` is refused for its width (None: it is not too wide).
    A typo like `2000::/3` must not ban every global IPv6 address."""
    if not isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return None  # one address
    widest, setting = (cfg.widest_ban_v4, "widest_ban_v4") if target.version == 4 else \
        (cfg.widest_ban_v6, "widest_ban_v6")
    if target.prefixlen < widest:
        return (f"{target} is wider than the widest manual ban allowed, /{widest} for IPv{target.version} "
                f"(api.{setting} in the configuration)")
    return None


@dataclass(frozen=True)
class Wanted:
    address: str  # normalised address or CIDR
    duration: int  # seconds; -1 permanent
    reason: str


async def ban_all(client: redis.Redis, keys: Keys, host: str, geo: Geo,
                  wanted: list[Wanted]) -> list[messages.BanRecord]:
    now = time.time()
    return await Ledger(client, keys).ban([NewBan(messages.BanRecord(
        address=w.address, rule="manual", host=host, origin="manual", banned_at=now,
        duration=w.duration, expires_at=None if w.duration < 0 else now + w.duration,
        reason=w.reason or "manual ban", country=geo.lookup(w.address.split("/")[0]).country))
        for w in wanted])


async def unban_all(client: redis.Redis, keys: Keys, host: str, addresses: list[str],
                    reason: str) -> None:
    await Ledger(client, keys).unban(addresses, host, reason)
