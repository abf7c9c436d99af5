"""Failure windows in Redis: packing a batch's failures for the window script."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import redis.asyncio as redis

from pyfilter.common.config import Rule
from pyfilter.detector.scripts import RECORD_FAILURES


# Failures per script call: a call runs alone in Redis, so a big batch would
# stall every other client (about 33 µs of Redis CPU per failure, docs/scaling.md).
FAILURES_PER_CALL = 1000


class Observed(NamedTuple):
    """One failure seen in one line: what the matcher found plus the line's identity."""

    rule: str
    address: str
    host: str  # the host whose log had the line
    time: float
    line_id: str
    text: str


@dataclass(frozen=True)
class NewBan:
    address: str
    rule: str
    duration: int


def _thresholds(rule: Rule) -> list[object]:
    """threshold, span, bantime, factor, maxtime, verdict, ports: as the script reads them."""
    if rule.mode == "consecutive":
        threshold, span = rule.failed_attempts, rule.request_time
    elif rule.mode == "instant":
        threshold, span = 1, rule.findtime
    else:
        threshold, span = rule.maxretry, rule.findtime
    ports = ",".join(str(p) for p in rule.ports)
    return [threshold, span, rule.bantime, rule.escalation.factor, rule.escalation.maxtime,
            rule.verdict, ports]


def _group_header(name: str, rule: Rule, address: str, host: str, count: int) -> list[object]:
    return [name, address, host, rule.mode, *_thresholds(rule), count]


class Windows:
    """Applies observed failures to the windows; returns the bans they caused."""

    def __init__(self, client: redis.Redis, prefix: str, rules: dict[str, Rule]):
        self._script = client.register_script(RECORD_FAILURES)
        self._prefix = prefix
        self._rules = rules
        recidive = rules.get("recidive")
        self._recidive = " ".join(map(str, _thresholds(recidive))).strip() if recidive else ""

    async def record(self, observed: list[Observed], now: float) -> list[NewBan]:
        if not observed:
            return []
        groups: dict[tuple[str, str, str], list[Observed]] = defaultdict(list)
        for o in observed:
            groups[(o.rule, o.address, o.host)].append(o)
        bans: list[NewBan] = []
        # One call holds Redis for as long as it runs: keep each call small.
        call: list[object] = []
        count = failures = 0
        for (name, address, host), items in groups.items():
            call += _group_header(name, self._rules[name], address, host, len(items))
            for o in items:
                call += [o.line_id, o.time, o.text]
            count += 1
            failures += len(items)
            if failures >= FAILURES_PER_CALL:
                bans += await self._call(call, count, now)
                call, count, failures = [], 0, 0
        if count:
            bans += await self._call(call, count, now)
        return bans

    async def _call(self, groups: list[object], count: int, now: float) -> list[NewBan]:
        results = await self._script(keys=[], args=[self._prefix, now, self._recidive, count, *groups])
        return [_parse_ban(r) for r in results]


def _parse_ban(result: bytes) -> NewBan:
    address, rule, duration = result.decode().split(" ")
    return NewBan(address, rule, int(duration))
