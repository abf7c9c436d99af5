"""Failure windows in Redis: a batch's failures, grouped for the ledger's record_failures."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
import redis.asyncio as redis

from pyfilter.common.config import Rule
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.network import Widening



class Observed(NamedTuple):
    """One failure seen in one line: what the matcher found plus the line's identity."""

    rule: str
    address: str
    host: str  # the host whose log had the line
    time: float
    line_id: str
    text: str
    # The connection the line belongs to (host, source and pid), "" if none,
    # and whether the line counts only if that connection has no other failure.
    connection: str = ""
    once: bool = False
    weight: int = 1  # failures it counts as (its pattern's weight)
    value: str = ""  # what a distinct window counts, as `digest` gives it ("": none)


def digest(value: str) -> str:
    """A captured value as a distinct window keeps it: 16 hex digits, whatever the
    client wrote (an 8 KB path, quotes, an address), so hostile text is never a
    Redis member and every value costs the same few bytes."""
    return hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest() if value else ""


@dataclass(frozen=True)
class NewBan:
    address: str
    rule: str
    duration: int


def _thresholds(rule: Rule) -> list[object]:
    """threshold, span, bantime, factor, maxtime, memory, verdict, ports: as record_failures reads them."""
    if rule.window == "consecutive":
        threshold, span = rule.failed_attempts, rule.request_time
    elif rule.window == "instant":
        threshold, span = 1, rule.findtime
    else:
        threshold, span = rule.maxretry, rule.findtime
    ports = ",".join(str(p) for p in rule.ports)
    # Plain numbers (config's `Seconds` is an int subclass MessagePack does not know).
    return [int(threshold), int(span), int(rule.bantime), float(rule.escalation.factor),
            int(rule.escalation.maxtime), int(rule.escalation.memory), rule.verdict, ports]


class Windows:
    """Applies observed failures to the windows; returns the bans they caused."""

    def __init__(self, client: redis.Redis, prefix: str, rules: dict[str, Rule], widening: Widening | None = None):
        self._ledger = Ledger(client, Keys(prefix))
        self._ledger.widening = widening  # bans of whole networks (docs/rules.md, "Per network")
        # Per rule, the group fields after rule, address and host: window kind, then thresholds.
        self._settings = {name: [rule.window, *_thresholds(rule)] for name, rule in rules.items()}
        recidive = rules.get("recidive")
        self._recidive = msgspec.msgpack.encode(_thresholds(recidive)) if recidive else b""

    async def record(self, observed: list[Observed], now: float) -> list[NewBan]:
        """Apply the failures (the ledger sends its calls in one round trip per
        step and node), and raises if any call failed: nothing is acknowledged then."""
        banned = await self._ledger.record_failures(self._groups(observed), now, self._recidive)
        return [NewBan(*ban) for ban in banned]

    def _groups(self, observed: list[Observed]) -> list[list[object]]:
        """The failures grouped by (rule, address, host), as record_failures reads them."""
        groups: dict[tuple[str, str, str], list[object]] = defaultdict(list)
        for o in observed:
            groups[(o.rule, o.address, o.host)] += (o.line_id, o.time, o.text, o.connection, o.once,
                                                    o.weight, o.value)
        return [[name, address, host, *self._settings[name], lines]
                for (name, address, host), lines in groups.items()]
