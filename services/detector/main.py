"""Detector: read batches of lines (consumer group), match rules, update windows.

Replicas are stateless and interchangeable: they share the consumer group
"detect" on every host's lines stream (the hosts listed in `Keys.hosts`,
looked at again every second; the group is made on a stream the first time
it is seen) and keep every window in Redis. An entry is
acknowledged (and deleted) only after its failures are in the windows, so a
replica killed mid-batch leaves the entry pending, and another replica claims
it after `detector.claim_idle`. Replaying it is harmless: windows are idempotent per
line id.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence

from redis.exceptions import ResponseError

from pyfilter.common import health, hosts, messages, service, status
from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_address
from pyfilter.common.config import Settings
from pyfilter.common.geo import Geo
from pyfilter.common.keys import DETECT_GROUP, Keys
from pyfilter.common.ledger import Ledger, Planned
from pyfilter.common.metrics import serve as serve_metrics
from pyfilter.common.network import Widening
from pyfilter.common.redisio import TRANSIENT, connect, ensure_group, wait_for_redis
from pyfilter.common.streams import Consumer, Entry
from pyfilter.common.whitelist import Whitelist
from pyfilter.detector import metrics
from pyfilter.detector.matching import Matcher
from pyfilter.detector.pruner import prune_until
from pyfilter.detector.windows import Login, NewBan, Observed, Windows, digest

logger = logging.getLogger("pyfilter.detector")

BATCHES_PER_READ = 16
CLAIM_EVERY_S = 5.0
LAG_EVERY_S = 5.0
HOSTS_EVERY_S = 1.0


class Detector:
    def __init__(self, settings: Settings, offline: bool = False):
        """`offline`: `pyfilter replay`'s detector, the one reader of its lines, each
        read once and in order. It keeps every rule's successful logins (replay's hint
        of addresses that logged in later), not only those of rules with a
        per-account window, the only ones the windows use; and its connection state
        sees every line, so failures need not name their connections for the
        windows' check across replicas (Matcher's `single_reader`)."""
        self.settings = settings
        cfg = settings.config
        self.keys = Keys(cfg.redis.prefix)
        self.client = connect(cfg.redis)
        self.matcher = Matcher(settings.rules, successes=offline or
                               {name for name, rule in settings.rules.items() if rule.per_account is not None},
                               single_reader=offline)
        self.widening = Widening(cfg.network, Geo(asn_db=cfg.geoip.asn_db) if cfg.network.asn else None) \
            if cfg.network.enabled else None
        self.windows = Windows(self.client, cfg.redis.prefix, settings.rules, self.widening)
        self.whitelist = Whitelist(self.client, self.keys, cfg.whitelist)
        # Rules that count and ban IPv6 attackers by network, not one by one.
        self.v6_prefix = {n: r.ipv6_prefix for n, r in settings.rules.items() if r.ipv6_prefix < 128}
        # host text -> address to count (or None): parsing and the never-ban
        # checks cost microseconds, and attackers repeat their address.
        self._countable_cache: dict[str, str | None] = {}
        # What the cache was made with: the host addresses and whitelist.
        self._countable_basis: tuple = ()
        self._login_cache: dict[tuple[str, str], str | None] = {}  # (rule, host) -> `_login_address`
        self.own = hosts.OwnAddresses(self.client, self.keys)
        self._unknown_rules: set[str] = set()  # named by a container's label, not enabled (said once)
        # A container's hostname is unique per replica and stable across its
        # restarts, so a restarted replica finds its own unfinished batches at
        # once (`resume`). Sharing a name by mistake is harmless: batches are
        # idempotent.
        self.consumer = os.environ.get("PYFILTER_CONSUMER") or socket.gethostname()
        self.lines = Consumer(self.client, [], DETECT_GROUP, self.consumer,
                              messages.decode_batch, BATCHES_PER_READ, metrics.ERRORS)
        self.stopping = asyncio.Event()
        self.next_hosts = 0.0
        self.next_claim = 0.0
        self.next_lag = 0.0
        # The previous read's window update, still running in Redis while the
        # next read is matched here, and the next read itself (see `step`).
        self.inflight: asyncio.Task | None = None
        self.reading: asyncio.Future | None = None

    def observe(self, batch: messages.LineBatch, now: float, own: set,
                whitelist: list, logins: list[Login] | None = None) -> list[Observed]:
        """Failures in a batch, minus addresses that must never be counted; its
        successful logins go to `logins` (for per-account windows)."""
        lines = batch.lines
        return self.observe_texts(batch, [line.text for line in lines], lines.__getitem__, now, own, whitelist,
                                  logins)

    def observe_texts(self, batch: messages.LineBatch, texts: Sequence[str], line_of: Callable[[int], messages.Line],
                      now: float, own: set, whitelist: list, logins: list[Login] | None = None) -> list[Observed]:
        """`observe` of a batch whose lines come apart (its own `lines` are not read):
        their texts, and `line_of(i)` the Line of text i, asked only of lines that fail
        (`pyfilter replay` makes no Line for the others: most lines of a log)."""
        basis = (frozenset(own), tuple(whitelist))
        if basis != self._countable_basis:  # addresses or whitelist changed: judge afresh
            self._countable_cache.clear()
            self._countable_basis = basis
        if batch.rules:
            self._warn_unknown_rules(batch)
        found: list[Observed] = []
        # Containers of one host each have their own pids: their connections are kept apart.
        origin = f"{batch.host}/{batch.container}" if batch.container else batch.host
        host, read_at, cache, v6_prefix = batch.host, batch.read_at, self._countable_cache, self.v6_prefix
        for i, (rule, attacker, at, user, _, conn, once, count, weight, value) in self.matcher.match_batch(
                texts, batch.source, now, origin, batch.tz, batch.program, batch.rules, batch.skip):
            address = cache[attacker] if attacker in cache else self._countable(attacker, own, whitelist)
            if address is None:
                continue
            if rule in v6_prefix and ":" in address:
                address = self._prefix_of(address, v6_prefix[rule], own, whitelist)
            line = line_of(i)
            connection = f"{origin}:{batch.source}:{conn}" if conn else ""
            # A time the source knows exactly (a container's stream time) wins over the text's.
            when = line.time or at or read_at
            value = digest(value) if value else ""
            found.append(Observed(rule, address, host, when, line.id, line.text, connection, once, weight, value,
                                  user))
            if count > 1:
                # rsyslog's "message repeated N times": N failures, each with
                # its own stable id, so a redelivery still counts each once.
                found += [Observed(rule, address, host, when, f"{line.id}#{n}", line.text, connection, once,
                                   weight, value, user) for n in range(2, count + 1)]
        for s in self.matcher.take_successes():
            if logins is not None and (address := self._login_address(s.rule, s.address)) is not None:
                logins.append(Login(s.rule, address, s.user, batch.host, s.time or batch.read_at))
        return found

    def _login_address(self, rule: str, host: str) -> str | None:
        """A login's address as its rule counts failures: normalized, an IPv6 address as its
        network where the rule bans networks (whitelisted or not: it only spares).
        Remembered, as `_countable`: the same few addresses log in again and again."""
        cache = self._login_cache
        found = cache.get((rule, host), False)
        if found is False:
            if len(cache) >= 100_000:
                cache.clear()
            found = cache[(rule, host)] = self._login_check(rule, host)
        return found  # type: ignore[return-value]

    def _login_check(self, rule: str, host: str) -> str | None:
        try:
            addr = parse_address(host)
        except InvalidAddress:
            return None
        if rule in self.v6_prefix and addr.version == 6:
            return str(ipaddress.ip_network(f"{addr}/{self.v6_prefix[rule]}", strict=False))
        return str(addr)

    def _warn_unknown_rules(self, batch: messages.LineBatch) -> None:
        """Say once which rules a container's label names that this detector does not run."""
        unknown = set(batch.rules or ()) - set(self.settings.rules) - self._unknown_rules
        if unknown:
            self._unknown_rules |= unknown
            logger.warning("a container names rules that are not enabled; enable them in pyfilter.yaml "
                           "to read its lines with them",
                           extra={"container": batch.container, "host": batch.host, "rules": sorted(unknown)})

    @staticmethod
    def _prefix_of(address: str, prefix: int, own: set, whitelist: list) -> str:
        """The IPv6 network a rule bans as a whole (one attacker often owns a /64),
        unless it holds something never to be banned: then just the address."""
        net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        return address if never_ban_reason(net, whitelist, own) else str(net)

    def _countable(self, host: str, own: set, whitelist: list) -> str | None:
        cache = self._countable_cache
        if host in cache:
            return cache[host]
        if len(cache) >= 100_000:
            cache.clear()
        cache[host] = address = self._check(host, own, whitelist)
        return address

    def _check(self, host: str, own: set, whitelist: list) -> str | None:
        try:
            addr = parse_address(host)
        except InvalidAddress:
            return None  # a hostname: we never resolve names an attacker controls
        if never_ban_reason(addr, whitelist, own) is not None:
            return None
        return str(addr)

    async def handle(self, entries: list[Entry]) -> None:
        await self.finish(*await self.prepare(entries))

    async def prepare(self, entries: list[Entry]) -> tuple[list[Observed], list[bytes], float, Counter, list[Login]]:
        """Decode and match a read: the failures it holds, the entries to acknowledge, when,
        its lines by (host, source), and its successful logins."""
        now = time.time()
        own = await self.own.get()
        whitelist = await self.whitelist.networks()
        self.judge_with(own, whitelist)
        # Matching is CPU work: in a thread, so that the event loop meanwhile
        # sends the next read and the previous read's window update to Redis.
        read, observed, lines, logins = await asyncio.to_thread(self.match_entries, entries, now, own, whitelist)
        await self.lines.dead_letter(read)
        return observed, read.ids, now, lines, logins

    def judge_with(self, own: set, whitelist: list) -> None:
        """What decisions are judged with besides the lines: the addresses never to ban
        (this host's own and the whitelist), before a read's step (`pyfilter replay` too)."""
        if self.widening:
            self.widening.judge_with(own, whitelist)

    def match_entries(self, entries: list[Entry], now: float, own: set, whitelist: list):
        """A read decoded (with its undecodable entries), the failures in it, its
        lines by (host, source), and its successful logins."""
        read = self.lines.decode(entries)
        logins: list[Login] = []
        observed, lines = self.observe_batches([batch for _, batch in read.messages], now, own, whitelist, logins)
        return read, observed, lines, logins

    def observe_batches(self, batches: list[messages.LineBatch], now: float, own: set,
                        whitelist: list, logins: list[Login] | None = None) -> tuple[list[Observed], Counter]:
        """The failures in batches of lines, and their lines by (host, source); their
        successful logins go to `logins` (per-account windows).
        Half of the detector's one step from lines to bans; `decide` is the other
        (`pyfilter replay` runs both on logs, in log time: this half as `observe_texts`)."""
        observed: list[Observed] = []
        lines: Counter = Counter()
        for batch in batches:
            observed += self.observe(batch, now, own, whitelist, logins)
            lines[batch.host, batch.source] += len(batch.lines)
        return observed, lines

    async def decide(self, observed: list[Observed], now: float, logins: Sequence[Login] = (),
                     plan: Planned | None = None) -> list[NewBan]:
        """Count failures into the windows at `now` (`logins` spare their addresses in
        per-account windows); the bans they decided. `plan`: `windows.plan` of them,
        if made already (`pyfilter replay` makes it while Redis runs the step before)."""
        for rule, count in Counter(o.rule for o in observed).items():
            metrics.FAILURES.labels(rule).inc(count)
        banned = await self.windows.record_plan(plan or self.windows.plan(observed, now, logins))
        for ban in banned:
            metrics.BANS.labels(ban.rule).inc()
            logger.info("ban decided", extra={"address": ban.address, "rule": ban.rule,
                                              "duration": ban.duration})
        return banned

    async def finish(self, observed: list[Observed], ids: list[bytes], now: float,
                     lines: Counter | None = None, logins: list[Login] | None = None) -> None:
        """Count the failures into the windows, then acknowledge their entries
        (with this minute's counts for `pyfilter status`, in the same round trip)."""
        await self.decide(observed, now, logins or [])
        lines = lines or Counter()
        # One round trip, not a transaction: on Redis Cluster the streams and
        # the counts are in different slots (a crash in between can only
        # leave a minute's counts short; the windows are already written).
        async with self.client.pipeline(transaction=False) as pipe:
            self.lines.ack_on(pipe, ids, delete=True)
            streams = len(pipe)  # each stream's XACK, then its XDEL
            status.count(pipe, self.keys, now, lines, Counter((o.host, o.rule) for o in observed))
            acked = sum((await pipe.execute())[:streams:2])
        # Lines are counted by the replica that acknowledges them: a read that
        # reached this one after another claimed its entries (a frozen or slow
        # replica) was matched again, harmlessly (windows count a line id once),
        # but is not counted twice.
        if acked:
            for (_, source), n in lines.items():
                metrics.LINES.labels(source).inc(n)
        metrics.BATCHES.inc(len(ids))

    async def measure_lag(self) -> None:
        """Export how far behind the detectors are (every few seconds, from any replica)."""
        if time.monotonic() < self.next_lag:
            return
        self.next_lag = time.monotonic() + LAG_EVERY_S
        lag = pending = 0
        for stream in self.lines.streams:
            for group in await self.client.xinfo_groups(stream):
                if group["name"] in (DETECT_GROUP, DETECT_GROUP.encode()):
                    lag += group.get("lag") or 0
                    pending += group["pending"]
        metrics.LAG.set(lag)
        metrics.PENDING.set(pending)

    async def follow_hosts(self, force: bool = False) -> None:
        """Read every listed host's stream (making the group on one seen for the first time),
        and the single stream of before per-host streams while it still holds lines."""
        if not force and time.monotonic() < self.next_hosts:
            return
        self.next_hosts = time.monotonic() + HOSTS_EVERY_S
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.hosts)
            pipe.xlen(self.keys.legacy_lines)
            listed, legacy = await pipe.execute()
        streams = [self.keys.lines(h.decode()) for h in sorted(listed)]
        if legacy:
            streams.append(self.keys.legacy_lines)
        known = set(self.lines.streams)
        for stream in streams:
            if force or stream not in known:
                await ensure_group(self.client, stream, DETECT_GROUP)
        self.lines.streams = streams

    async def resume(self) -> None:
        """Finish the batches this consumer took before a crash or a lost connection."""
        await wait_for_redis(self.client, "detector")
        await Ledger(self.client, self.keys).load(
            {name: messages.BanScope([int(p) for p in rule.ports], rule.verdict)
             for name, rule in self.settings.rules.items() if rule.ports or rule.verdict != "drop"})
        await self.follow_hosts(force=True)
        while entries := await self.lines.pending():
            await self.handle(entries)

    async def run(self) -> None:
        await self.resume()
        logger.info("detector started", extra={"consumer": self.consumer,
                                               "rules": sorted(self.settings.rules)})
        while not self.stopping.is_set():
            health.beat()
            try:
                await self.step()
                await self.measure_lag()
            except (*TRANSIENT, ResponseError) as exc:
                # NOGROUP: a stream went away under us (a host removed, Redis
                # emptied); resume makes the groups again. Other replies are bugs.
                if not isinstance(exc, TRANSIENT) and not str(exc).startswith("NOGROUP"):
                    raise
                metrics.ERRORS.labels("redis").inc()
                logger.warning("redis error, retrying", extra={"error": str(exc)})
                # Unfinished updates and reads left their entries pending for
                # this consumer: resume redoes them.
                with contextlib.suppress(Exception):
                    await self.settle()
                await self.forget_read()
                await asyncio.sleep(1)
                await self.resume()
        # A read already on its way is finished before stopping, not left pending
        # (on Cluster, with what the other slots' reads bring).
        task, self.reading = self.reading, None
        entries = (await task if task is not None else []) + await self.lines.finish_reads()
        await self.settle()
        if entries:
            await self.handle(entries)

    async def settle(self) -> None:
        """Wait for the window update still running, if any."""
        task, self.inflight = self.inflight, None
        if task is not None:
            await task

    async def forget_read(self) -> None:
        """Drop the read ahead, if any (its entries stay pending for `resume`).

        Waits for it to end without raising what ended it (its cancellation,
        or the Redis error that brought us here), so a cancellation of the
        detector itself still goes through."""
        task, self.reading = self.reading, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the error was logged by the caller

    def read(self) -> asyncio.Future:
        return asyncio.ensure_future(self.lines.new(block_ms=1000))

    async def next_read(self) -> list[Entry]:
        """New entries for this consumer. While a busy stream's read is
        matched, the next one is already on its way (Redis answers it between
        window updates, so it is ready when matching ends)."""
        task, self.reading = self.reading, None
        entries = await (task or self.read())
        if entries:
            self.reading = self.read()
        return entries

    async def step(self) -> None:
        await self.follow_hosts()
        # Entries a dead replica left pending come first.
        if time.monotonic() >= self.next_claim:
            claimed = await self.lines.claim(self.settings.config.detector.claim_idle * 1000)
            if claimed:
                await self.settle()
                await self.handle(claimed)
                return
            self.next_claim = time.monotonic() + CLAIM_EVERY_S
        if entries := await self.next_read():
            # Match this read while Redis runs the previous read's window
            # script; updates still reach Redis one after the other, in order.
            work = await self.prepare(entries)
            await self.settle()
            self.inflight = asyncio.create_task(self.finish(*work))


async def main_async(settings: Settings) -> int:
    serve_metrics("detector")
    detector = Detector(settings)
    service.stop_on_signals(detector.stopping)
    tasks = service.Tasks(detector.stopping, logger)
    tasks.start(detector.run(), "windows")
    tasks.start(prune_until(detector.client, detector.keys, detector.stopping), "pruner")
    # Either ending on an error stops the other (a read under way is finished first).
    await tasks.wait()
    await detector.client.aclose()
    return tasks.exit_code


def main() -> int:
    return service.run("detector", main_async)
