"""Ban notifications: mail (one per ban, or a digest) and a JSON webhook.

The notifier service (notifier/main.py) runs them. It reads the decisions stream with a consumer group of its own
("notify"), beside the enforcers' groups: banning never waits for it. Each
ban of a rule with `notify: true` goes into one queue per channel in Redis
before the stream entry is acknowledged, and is delivered from there. A failed delivery stays queued with a later due time
(exponential backoff, capped), so a receiver that is down, or a restart of
the notifier, loses nothing. Delivery is at least once: a crash between sending
and dequeuing sends that notice again.

Queue members are the decisions' stream entry ids, which makes queueing a
redelivered entry a no-op. Several notifiers may run (one per server
profile, say): a notice is claimed (leased) before it is sent, so only one of them sends it.

A network ban (docs/rules.md, "Per network"; `notify.network`) is announced
with its end: beside its notice, an end notice waits in each queue as
`end:NETWORK`, due when the ban runs out (never, for a permanent one). An
unban of the network sends it at once as an unban; a later ban of the network
moves it; one still in force when it falls due (banned again by other means)
is dropped. Expiry writes no decision: this is how the notifier learns of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from email.message import EmailMessage

import aiohttp
import msgspec
import redis.asyncio as redis

from pyfilter.common import bans, messages
from pyfilter.common.config import EmailConfig, NotifyConfig, Settings, WebhookConfig
from pyfilter.common.geo import Geo
from pyfilter.common.keys import NOTIFY_GROUP, Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.redisio import TRANSIENT
from pyfilter.common.streams import Consumer
from pyfilter.notifier import mail, metrics

logger = logging.getLogger("pyfilter.notify")

READ_COUNT = 500
BATCH = 50  # notices taken per round from a per-ban queue
POLL = 0.5  # seconds between looks at a queue with nothing due
# A claimed notice whose sender died (no success, no failure written) is due
# again after this long; long enough for the slowest SMTP batch to finish.
LEASE = 300.0
ORPHAN_IDLE_MS = 60_000  # stream entries another consumer took and left this long are ours
END = "end:"  # a network ban's end notice's queue member: END + the network
NETWORK = "network"  # the rule (and window) of the ledger's network bans

class Webhook:
    """POST each notice as JSON (the fields of `messages.Notice`); any 2xx is delivered."""

    name = "webhook"
    digest = False
    delay = 0.0

    def __init__(self, cfg: WebhookConfig, session: aiohttp.ClientSession):
        self.cfg = cfg
        self.session = session
        self.headers = {"Content-Type": "application/json", **cfg.headers}

    async def deliver(self, notices: list[messages.Notice]) -> list[str | None]:
        return list(await asyncio.gather(*(self._post(n) for n in notices)))

    async def _post(self, notice: messages.Notice) -> str | None:
        try:
            async with self.session.post(self.cfg.url, data=msgspec.json.encode(notice),
                                         headers=self.headers,
                                         timeout=aiohttp.ClientTimeout(total=self.cfg.timeout)) as r:
                if 200 <= r.status < 300:
                    return None
                return f"HTTP {r.status} from {self.cfg.url}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


class Email:
    """SMTP through the stdlib in a thread (smtplib blocks; mail is rare enough)."""

    name = "email"

    def __init__(self, cfg: EmailConfig, password: str | None):
        self.cfg = cfg
        self.password = password
        self.digest = cfg.mode == "digest"
        self.delay = float(cfg.interval) if self.digest else 0.0

    async def deliver(self, notices: list[messages.Notice]) -> list[str | None]:
        if self.digest:
            [error] = await asyncio.to_thread(mail.send, self.cfg, self.password,
                                              [mail.digest(self.cfg, notices)])
            return [error] * len(notices)
        # A notice that cannot be written as a mail fails alone (and is given
        # up after `give_up_after`), without holding back the others.
        composed: list[EmailMessage | str] = []
        for n in notices:
            try:
                composed.append(mail.single(self.cfg, n))
            except (ValueError, TypeError) as exc:
                composed.append(f"cannot write the mail: {exc}")
        sent = iter(await asyncio.to_thread(mail.send, self.cfg, self.password,
                                            [m for m in composed if not isinstance(m, str)]))
        return [m if isinstance(m, str) else next(sent) for m in composed]


Channel = Webhook | Email


class Notifier:
    def __init__(self, settings: Settings, client: redis.Redis, session: aiohttp.ClientSession):
        self.cfg: NotifyConfig = settings.config.notify
        self.client = client
        self.keys = Keys(settings.config.redis.prefix)
        self.decisions = Consumer(client, self.keys.decisions, NOTIFY_GROUP, settings.host,
                                  messages.decode_decision, READ_COUNT, metrics.ERRORS)
        self.rules = {name for name, rule in settings.rules.items() if rule.notify}
        if self.cfg.manual:
            self.rules.add("manual")
        if self.cfg.network:
            self.rules.add(NETWORK)
        geoip = settings.config.geoip
        self.geo = Geo(geoip.country_db, geoip.asn_db) if geoip.country_db else None
        self.channels: list[Channel] = []
        if self.cfg.webhook:
            self.channels.append(Webhook(self.cfg.webhook, session))
        if email := self.cfg.email:
            password = os.environ.get(email.password_env) if email.password_env else None
            if email.password_env and password is None:
                logger.error("notify.email.password_env names an environment variable that is not set; "
                             "mail notifications are off", extra={"variable": email.password_env})
            else:
                self.channels.append(Email(email, password))
        self.ledger = Ledger(client, self.keys)

    # Reading decisions into the queues

    async def start(self) -> None:
        # Queues of the version before Redis Cluster (their keys untagged) carry on.
        await self.ledger.upgrade_channels([c.name for c in self.channels])
        # "$": notices are about bans from now on, not the whole history.
        await self.decisions.ensure_group(start="$")
        # Entries a notifier that is gone had read but not queued become ours...
        await self.decisions.claim(ORPHAN_IDLE_MS)
        # ...and so are our own from before a restart: queue them first.
        while await self.consume(pending=True):
            pass

    async def consume(self, pending: bool = False) -> int:
        entries = await (self.decisions.pending() if pending else self.decisions.new())
        if not entries:
            return 0
        read = self.decisions.decode(entries)
        wanted = [(entry_id, d) for entry_id, d in read.messages
                  if d.action == "ban" and d.rule in self.rules]
        notices = await self.notices([d for _, d in wanted])
        lifted = await self.lifted([d for _, d in read.messages if d.action == "unban"]) if self.cfg.network else []
        await self.decisions.dead_letter(read)
        now = time.time()
        # Queued, then acknowledged: each channel's keys and the decisions stream
        # are in different Redis Cluster slots, no transaction holds them all. A
        # crash between the two reads the entries again, and queueing a notice
        # again changes nothing while it waits (its id is its queue member).
        if wanted or lifted:
            async with self.client.pipeline(transaction=False) as pipe:
                for (entry_id, _), notice in zip(wanted, notices, strict=True):
                    packed = messages.encode(messages.Outgoing(notice=notice, queued_at=now))
                    for channel in self.channels:
                        pipe.hset(self.keys.notify_items(channel.name), entry_id, packed)
                        pipe.zadd(self.keys.notify_queue(channel.name), {entry_id: now + channel.delay},
                                  nx=True)
                    if notice.rule == NETWORK:
                        self.queue_end(pipe, notice, now)
                for channel, notice in lifted:
                    packed = messages.encode(messages.Outgoing(notice=notice, queued_at=now))
                    pipe.hset(self.keys.notify_items(channel.name), END + notice.address, packed)
                    pipe.zadd(self.keys.notify_queue(channel.name), {END + notice.address: now + channel.delay})
                await pipe.execute()
        async with self.client.pipeline(transaction=True) as pipe:
            self.decisions.ack_on(pipe, read.ids)
            await pipe.execute()
        return len(entries)

    async def notices(self, decisions: list[messages.Decision]) -> list[messages.Notice]:
        found = await bans.records(self.client, self.keys, sorted({d.address for d in decisions}))
        records = {r.address: r for r in found}
        return [self.notice(d, records.get(d.address)) for d in decisions]

    def queue_end(self, pipe, notice: messages.Notice, now: float) -> None:
        """A network ban's end notice, due when it runs out (a permanent one: never, but
        for an unban), in place of the network's earlier one. The same ban read again
        queues the same."""
        end = msgspec.structs.replace(notice, event="expiry", reason=f"the ban of {notice.address} ran out")
        packed = messages.encode(messages.Outgoing(notice=end, queued_at=now))
        due = float("inf") if notice.expires_at is None else notice.expires_at
        for channel in self.channels:
            pipe.hset(self.keys.notify_items(channel.name), END + notice.address, packed)
            pipe.zadd(self.keys.notify_queue(channel.name), {END + notice.address: due + channel.delay})

    async def lifted(self, unbans: list[messages.Decision]) -> list[tuple[Channel, messages.Notice]]:
        """Unbans of network bans announced here (their end notice still waits): per
        channel, the unban notice that takes the end notice's place."""
        if not unbans:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for channel in self.channels:
                for d in unbans:
                    pipe.hget(self.keys.notify_items(channel.name), END + d.address)
            found = iter(await pipe.execute())
        lifted = []
        for channel in self.channels:
            for d in unbans:
                raw = next(found)
                if raw is None:
                    continue  # not a network ban announced here, or its end was sent already
                try:
                    end = messages.decode_outgoing(raw).notice
                except (TypeError, msgspec.DecodeError):
                    continue
                reason = f"unbanned by {d.origin} on {d.host}" + (f": {d.reason}" if d.reason else "")
                lifted.append((channel, msgspec.structs.replace(end, event="unban", reason=reason)))
        return lifted

    def notice(self, d: messages.Decision, rec: messages.BanRecord | None) -> messages.Notice:
        if rec is not None and rec.rule != d.rule:
            rec = None  # replaced by a later ban under another rule: not this ban's story
        country = rec.country if rec else None
        if country is None and self.geo is not None:
            country = self.geo.lookup(d.address).country
        return messages.Notice(
            address=d.address, rule=d.rule, host=d.host, origin=d.origin, banned_at=d.created_at,
            duration=d.duration, expires_at=d.expires_at, reason=d.reason or (rec.reason if rec else ""),
            country=country, failures=rec.failures if rec else 0,
            first_failure=rec.first_failure if rec else None,
            last_failure=rec.last_failure if rec else None,
            ban_count=rec.ban_count if rec else 1, lines=rec.lines if rec else [],
            window=rec.window if rec else (NETWORK if d.rule == NETWORK else ""),
            members=rec.failures if rec is not None and rec.window == NETWORK else 0)

    async def read_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.consume()
            except Exception as exc:  # Redis away, or back empty (NOGROUP), or a bug
                if isinstance(exc, TRANSIENT):
                    metrics.ERRORS.labels("redis").inc()
                    logger.warning("redis error, retrying", extra={"error": str(exc)})
                else:
                    metrics.ERRORS.labels("read").inc()
                    logger.exception("reading decisions failed")
                await _nap(stop, 1.0)
                with contextlib.suppress(Exception):
                    await self.start()  # makes the group again if Redis lost it

    # Delivering from the queues

    async def claim(self, channel: Channel) -> list[bytes]:
        """Lease what is due (the ledger's claims: two notifiers never both send a notice)."""
        now = time.time()
        if channel.digest:
            return await self.ledger.claim_digest(channel.name, now, LEASE, channel.cfg.max_batch,
                                                  now + channel.delay)
        return await self.ledger.claim_due(channel.name, now, LEASE, BATCH)

    async def deliver_once(self, channel: Channel) -> int:
        """Send what is due on a channel; record each outcome. Returns how many were due."""
        ids = await self.claim(channel)
        if not ids:
            return 0
        queue, items = self.keys.notify_queue(channel.name), self.keys.notify_items(channel.name)
        pending, gone = [], []
        for entry_id, raw in zip(ids, await self.client.hmget(items, ids), strict=True):
            try:
                pending.append((entry_id, messages.decode_outgoing(raw)))
            except (TypeError, msgspec.DecodeError):
                # None: sent by another notifier after our lease ran out.
                gone.append(entry_id)
        pending, replaced = await self.still_banned(pending)
        gone += replaced
        errors = await channel.deliver([o.notice for _, o in pending]) if pending else []
        now = time.time()
        attempts = 0
        async with self.client.pipeline(transaction=True) as pipe:
            for entry_id in gone:
                pipe.zrem(queue, entry_id)
                pipe.hdel(items, entry_id)
            for (entry_id, out), error in zip(pending, errors, strict=True):
                if self.record(pipe, channel, entry_id, out, error, now):
                    attempts = max(attempts, out.attempts)
            if channel.digest:
                hold = self.keys.notify_hold(channel.name)
                if attempts:  # the whole digest waits out the backoff of its most-tried notice
                    pipe.set(hold, "backoff", px=int(self.backoff(attempts) * 1000))
                else:
                    pipe.delete(hold)
            await pipe.execute()
        return len(ids)

    async def still_banned(self, pending: list[tuple[bytes, messages.Outgoing]]
                           ) -> tuple[list[tuple[bytes, messages.Outgoing]], list[bytes]]:
        """Of the notices due, the expiries of networks still banned (banned again by
        other means: it did not end) are not sent. Returns (to send, to drop)."""
        ends = [(entry_id, out) for entry_id, out in pending if out.notice.event == "expiry"]
        if not ends:
            return pending, []
        now = time.time()
        scores = await self.client.zmscore(self.keys.active_bans, [out.notice.address for _, out in ends])
        dropped = {entry_id for (entry_id, _), score in zip(ends, scores, strict=True)
                   if score is not None and score > now}
        return [p for p in pending if p[0] not in dropped], list(dropped)

    def record(self, pipe, channel: Channel, entry_id: bytes, out: messages.Outgoing,
               error: str | None, now: float) -> bool:
        """Queue the outcome of one delivery; True if it is to be tried again."""
        queue, items = self.keys.notify_queue(channel.name), self.keys.notify_items(channel.name)
        n = out.notice
        where = {"channel": channel.name, "address": n.address, "rule": n.rule, "host": n.host}
        if error is None:
            pipe.zrem(queue, entry_id)
            pipe.hdel(items, entry_id)
            metrics.NOTICES.labels(channel.name, "sent").inc()
            logger.info("notification sent", extra=where)
            return False
        out.attempts += 1
        if now - out.queued_at > self.cfg.give_up_after:
            pipe.zrem(queue, entry_id)
            pipe.hdel(items, entry_id)
            metrics.NOTICES.labels(channel.name, "dropped").inc()
            logger.error("notification dropped after retrying too long",
                         extra={**where, "attempts": out.attempts, "error": error})
            return False
        delay = self.backoff(out.attempts)
        pipe.hset(items, entry_id, messages.encode(out))
        if not channel.digest:
            pipe.zadd(queue, {entry_id: now + delay}, xx=True)
        metrics.NOTICES.labels(channel.name, "failed").inc()
        logger.warning("notification failed, will retry",
                       extra={**where, "attempts": out.attempts, "retry_in": delay, "error": error})
        return True

    def backoff(self, attempts: int) -> float:
        return min(self.cfg.retry_initial * 2 ** (attempts - 1), self.cfg.retry_max)

    async def deliver_loop(self, channel: Channel, stop: asyncio.Event) -> None:
        # A delivery under way is finished before stopping (each is bounded
        # by its timeout), so a clean stop leaves no notice leased.
        while not stop.is_set():
            try:
                if await self.deliver_once(channel):
                    continue
            except TRANSIENT as exc:
                metrics.ERRORS.labels("redis").inc()
                logger.warning("redis error, retrying", extra={"channel": channel.name,
                                                               "error": str(exc)})
            except Exception:  # a bug must not end notifications for the notifier's lifetime
                metrics.ERRORS.labels("delivery").inc()
                logger.exception("notification round failed", extra={"channel": channel.name})
            await _nap(stop, POLL)

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while True:  # Redis may be away at the start, or go away and come back
            try:
                await self.start()
                break
            except TRANSIENT as exc:
                logger.warning("redis unreachable, retrying", extra={"error": str(exc)})
                await _nap(stop, delay)
                delay = min(delay * 2, 10.0)
                if stop.is_set():
                    return
        logger.info("notifications on", extra={"channels": [c.name for c in self.channels],
                                               "rules": sorted(self.rules)})
        reader = asyncio.create_task(self.read_loop(stop))
        await asyncio.gather(*(self.deliver_loop(c, stop) for c in self.channels))
        # Cut short a blocking read rather than wait it out: an entry read
        # but not yet queued stays pending for us and is queued on start.
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _nap(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_notifier(settings: Settings, client: redis.Redis, stop: asyncio.Event) -> None:
    """Announce bans until `stop` is set; returns at once when no channel is configured.
    A channel configured but unusable (its error logged) waits for `stop`: restarting
    the notifier would not change that, only repeat the error."""
    if not settings.config.notify.any_channel:
        return
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(settings, client, session)
        if notifier.channels:
            await notifier.run(stop)
        else:
            await stop.wait()
