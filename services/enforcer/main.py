"""Enforcer: apply ban decisions to this host's kernel firewall.

Each host reads the decisions stream from a position of its own (XREAD, and
a key of this host's: enforcer/position.py), so a host that was down applies
what it missed when it returns; the position moves only after the kernel has
the decisions. On start and every
`reconcile_interval` the kernel sets are made equal to the active bans
(remaining time, expired ones gone, manual unbans applied). On shutdown the
bans stay in the kernel: their timeouts run there.

A ban's scope (ports, drop or reject) comes with its decision, and the
active bans keep it beside each ban's expiry (`bans.scopes`), so the
enforcer needs no rules: a reconcile gives every ban the scope it was made with.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from pyfilter.common import bans, health, hosts, messages, service, status
from pyfilter.common.addresses import InvalidAddress, Network, never_ban_reason, parse_target
from pyfilter.common.config import Settings
from pyfilter.common.keys import Keys
from pyfilter.common.metrics import serve as serve_metrics
from pyfilter.common.redisio import TRANSIENT, connect, wait_for_redis
from pyfilter.common.streams import Follower
from pyfilter.common.whitelist import Whitelist
from pyfilter.enforcer import metrics
from pyfilter.enforcer.backends import make_backend
from pyfilter.enforcer.backends.base import DEFAULT_SCOPE, Backend, Ban, Scope, ban_key
from pyfilter.enforcer.hostinfo import own_addresses
from pyfilter.enforcer.position import Position

logger = logging.getLogger("pyfilter.enforcer")

DECISIONS_PER_READ = 1000
# Kernel timeouts are milliseconds in 64 bits; no sensible ban is longer than
# ten years (the api refuses longer ones; -1 is the way to say forever).
MAX_TIMEOUT = 10 * 365 * 86400


class Enforcer:
    def __init__(self, settings: Settings, backend: Backend):
        cfg = settings.config
        self.settings = settings
        self.backend = backend
        self.keys = Keys(cfg.redis.prefix)
        self.client = connect(cfg.redis)
        self.decisions = Follower(self.client, self.keys.decisions, settings.host,
                                  messages.decode_decision, DECISIONS_PER_READ, metrics.ERRORS)
        self.position = Position(self.client, self.keys, settings.host)
        self.at = b""  # the last decision applied (loaded by `start`)
        self.whitelist = Whitelist(self.client, self.keys, cfg.whitelist)
        self.networks: list = []  # the whitelist as last read
        self.own: set = set()  # filled from the kernel at start and each reconcile
        # Every protected host's own addresses and networks (its containers'), from Redis.
        self.published: set = set()
        self.stopping = asyncio.Event()
        self.next_reconcile = 0.0
        self.next_status = 0.0
        self.started_at = time.time()
        self.publisher = status.Publisher(self.client, self.keys, "enforcer", settings.host)

    def refusal(self, target) -> str | None:
        return never_ban_reason(target, self.networks, self.own | self.published)

    async def apply(self, decisions: list[messages.Decision], redelivered: bool = False) -> None:
        """Apply decisions in order; consecutive bans go to the kernel as one batch.

        `redelivered` decisions were read before a crash or a lost connection
        and may already be in the kernel: those are not applied a second time.
        """
        pending: list[Ban] = []
        now = time.time()
        self.networks = await self.whitelist.networks()
        in_kernel = await self.backend.list() if redelivered else {}
        for d in decisions:
            try:
                target = parse_target(d.address)
            except InvalidAddress as exc:
                logger.error("decision with a bad address ignored", extra={"error": str(exc)})
                continue
            metrics.DECISIONS.labels(d.action).inc()
            if d.action == "unban":
                if pending:
                    await self.backend.ban(pending)
                    metrics.APPLIED.labels("ban").inc(len(pending))
                    pending = []
                await self.backend.unban([target])
                if isinstance(target, Network):
                    # A network's ban replaced, in a kernel interval set, the
                    # narrower bans it covered (a /48 its /64s): those still in
                    # force come back now, not at the next reconcile.
                    self.next_reconcile = 0.0
                metrics.APPLIED.labels("unban").inc()
                logger.info("unbanned", extra={"address": d.address, "origin": d.origin})
                continue
            if reason := self.refusal(target):
                metrics.REFUSED.inc()
                logger.warning("refused to ban", extra={"address": d.address, "rule": d.rule,
                                                        "reason": reason})
                continue
            timeout = None if d.expires_at is None else min(math.ceil(d.expires_at - now), MAX_TIMEOUT)
            if timeout is not None and timeout <= 0:
                continue  # ran out before it reached us
            scope = _scope_or_default(d.ports, d.verdict, d.address)
            ban = Ban(target, timeout, scope.ports, scope.verdict)
            if ban_key(ban.target, scope) in in_kernel:
                logger.info("already in the kernel", extra={"address": d.address, "rule": d.rule})
                continue
            pending.append(ban)
            logger.info("banned", extra={"address": d.address, "rule": d.rule, "timeout": timeout,
                                         "seen_by": d.host, "origin": d.origin, "scope": scope.text()})
        if pending:
            await self.backend.ban(pending)
            metrics.APPLIED.labels("ban").inc(len(pending))

    async def reconcile(self) -> None:
        # Addresses change (DHCP, a new resolver): read them again each time.
        self.own = await own_addresses()
        await hosts.publish(self.client, self.keys, self.settings.host, self.own)
        self.published = await hosts.load(self.client, self.keys)
        self.networks = await self.whitelist.networks()
        now = time.time()
        wanted: dict[str, float | None] = {}
        active = await bans.active(self.client, self.keys, now)
        scopes = await bans.scopes(self.client, self.keys)
        for address, expires in active.items():
            try:
                target = parse_target(address)
            except InvalidAddress:
                continue
            if self.refusal(target) is None:
                s = scopes.get(address)
                scope = _scope_or_default(s.ports, s.verdict, address) if s else DEFAULT_SCOPE
                wanted[ban_key(target, scope)] = None if expires is None else expires - now
        added, removed = await self.backend.sync(wanted)
        metrics.RECONCILES.inc()
        metrics.RECONCILE_CHANGES.labels("added").inc(len(added))
        metrics.RECONCILE_CHANGES.labels("removed").inc(len(removed))
        metrics.KERNEL_BANS.set(len(wanted))
        logger.info("reconciled", extra={"active": len(wanted), "added": len(added),
                                         "removed": len(removed)})
        self.next_reconcile = time.monotonic() + self.settings.config.enforcer.reconcile_interval

    async def publish_status(self) -> None:
        """What this host's firewall holds, for `pyfilter status` (every REFRESH seconds)."""
        self.next_status = time.monotonic() + status.REFRESH
        try:
            seen = await self.backend.inspect()
        except Exception as exc:  # a report that says so beats none
            logger.warning("could not inspect the firewall", extra={"error": str(exc)})
            problems, seen = [f"the enforcer could not read its firewall: {exc}"], None
        else:
            problems = seen.problems
        await self.publisher.publish(messages.EnforcerStatus(
            host=self.settings.host, at=time.time(), started_at=self.started_at, backend=self.backend.name,
            table=seen.table if seen else None, table_present=bool(seen and seen.present),
            hooks=seen.hooks if seen else [], docker_covered=bool(seen and seen.docker_covered),
            sets=[messages.SetStatus(n, c) for n, c in (seen.sets if seen else {}).items()],
            problems=problems))

    async def consume(self, redelivered: bool = False) -> int:
        """Read and apply one round of decisions after our position, then move it. With
        `redelivered`, the first round after a start: it may hold decisions applied
        before a crash or a lost connection, whose position was not saved."""
        entries = await self.decisions.after(self.at, block_ms=None if redelivered else 1000)
        if not entries:
            return 0
        read = self.decisions.decode(entries)
        await self.apply([d for _, d in read.messages], redelivered=redelivered)
        self.at = read.ids[-1][1]
        await self.position.save(self.at)
        return len(entries)

    async def start(self) -> None:
        await wait_for_redis(self.client, "enforcer")
        await hosts.register(self.client, self.keys, self.settings.host)
        self.at = await self.position.load()
        await self.consume(redelivered=True)
        await self.reconcile()

    async def run(self) -> None:
        await self.backend.init()
        self.own = await own_addresses()
        logger.info("enforcer started", extra={"host": self.settings.host,
                                               "never_ban_own": sorted(map(str, self.own))})
        await self.start()
        while not self.stopping.is_set():
            health.beat()
            try:
                await self.consume()
                if time.monotonic() >= self.next_reconcile:
                    await self.reconcile()
                if time.monotonic() >= self.next_status:
                    await self.publish_status()
            except TRANSIENT as exc:
                metrics.ERRORS.labels("redis").inc()
                logger.warning("redis error, retrying", extra={"error": str(exc)})
                await asyncio.sleep(1)
                await self.start()
        await self.backend.close()
        await self.client.aclose()


def _scope_or_default(ports, verdict: str, address: str) -> Scope:
    """The scope of a decision or an active ban; a malformed one bans all ports rather than nothing."""
    try:
        return Scope(tuple(ports), verdict)  # type: ignore[arg-type]
    except ValueError as exc:
        logger.error("bad ban scope, banning all ports instead", extra={"address": address, "error": str(exc)})
        return DEFAULT_SCOPE


async def main_async(settings: Settings) -> None:
    # The enforcer shares the host's network: metrics stay on its loopback.
    serve_metrics("enforcer", host="127.0.0.1")
    enforcer = Enforcer(settings, make_backend(settings.config.enforcer.backend))
    service.stop_on_signals(enforcer.stopping)
    await enforcer.run()


def main() -> int:
    return service.run("enforcer", main_async, rules=False)
