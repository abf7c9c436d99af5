"""Ban notifications against a real SMTP server and a real HTTP receiver on loopback.

The SMTP server is aiosmtpd (in a thread of its own); the webhook receiver
is an aiohttp app in the test's event loop. Redis is the real one.
"""

from __future__ import annotations

import asyncio
import email
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from pyfilter.notifier.notify import run_notifier
from pyfilter.common import messages
from pyfilter.common.config import (
    Config,
    ConfigError,
    EmailConfig,
    NetworkConfig,
    NotifyConfig,
    Rule,
    Seconds,
    Settings,
    WebhookConfig,
    load,
)
from pyfilter.common.keys import NOTIFY_GROUP, Keys
from pyfilter.common.ledger import Ledger, NewBan
from pyfilter.common.network import Widening
from pyfilter.detector.windows import Observed, Windows
from tests.conftest import CLUSTER_URLS, aclient

KEYS = Keys("t:")
RULES = {
    "sshd": Rule(service="ssh", sources=["auth"], patterns=["x"], notify=True),
    "nginx-botsearch": Rule(service="http", sources=["nginx"], patterns=["x"]),  # notify off
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """aiosmtpd handler: keeps every mail it accepts."""

    def __init__(self):
        self.mails: list[email.message.Message] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    box = Mailbox()

    def authenticate(server, session, envelope, mechanism, auth_data):
        box.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    controller = Controller(box, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticate, auth_require_tls=False)
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


class Receiver:
    """A webhook receiver: answers with the statuses it is given, then 200."""

    def __init__(self, port: int, fail_first: int = 0):
        self.port = port
        self.fail_first = fail_first
        self.requests = 0
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=500, text="not now")
        self.bodies.append(json.loads(await request.read()))
        self.headers.append(dict(request.headers))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()


def settings(url: str, *, mail: dict | None = None, hook: dict | None = None,
             **notify) -> Settings:
    config = Config(host="host-a")
    config.redis.url = url
    config.redis.cluster = url in CLUSTER_URLS
    config.redis.prefix = "t:"
    config.notify = NotifyConfig(
        email=EmailConfig(**{"host": "127.0.0.1", "sender": "pyfilter@example.org",
                             "to": ["ops@example.org", "oncall@example.org"], **mail}) if mail else None,
        webhook=WebhookConfig(**hook) if hook else None,
        retry_initial=0.1, retry_max=0.5, **notify)
    return Settings(config=config, rules=RULES, path="test")


async def ban(client, address: str, rule: str = "sshd") -> None:
    now = time.time()
    rec = messages.BanRecord(address=address, rule=rule, host="host-a", origin="detector",
                             banned_at=now, duration=600, expires_at=now + 600,
                             first_failure=now - 30, last_failure=now - 1, failures=5,
                             lines=[f"sshd[1]: Failed password for root from {address} port 22 ssh2"],
                             country="NL", reason="5 failures in 600s")
    await Ledger(client, KEYS).ban([NewBan(rec)])


@asynccontextmanager
async def notifier(s: Settings):
    """A running notifier, as its service runs it: a task that stops when told."""
    client = aclient(s.config.redis.url)
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(s, client, stop))
    # Bans count from when its group exists (it starts at "$").
    await until(lambda: _has_group(client), lambda: task.done() and task.result())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()


async def _has_group(client) -> bool:
    if not await client.exists(KEYS.decisions):
        return False
    return any(g["name"] == NOTIFY_GROUP.encode() for g in await client.xinfo_groups(KEYS.decisions))


async def until(predicate, check=None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check:
            check()
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def any_url(any_redis_url):
    """A single Redis, then a 3-primary Redis Cluster: a channel's keys share one slot."""
    return any_redis_url


def test_per_address_mode_sends_one_mail_per_ban_and_nothing_for_rules_without_notify(
        redis_url, smtp):
    async def go():
        client = aclient(redis_url)
        async with notifier(settings(redis_url, mail={"port": smtp.port})):
            await ban(client, "198.51.100.7")
            await ban(client, "198.51.100.99", rule="nginx-botsearch")  # notify off
            await Ledger(client, KEYS).unban(["198.51.100.7"], "host-a", "")
            await ban(client, "2001:db8::66")
            await until(lambda: len(smtp.mails) >= 2)
            await asyncio.sleep(0.5)  # room for a wrong extra mail to arrive
        await client.aclose()
    run(go())
    assert len(smtp.mails) == 2
    first, second = sorted(smtp.mails, key=lambda m: m["Subject"])
    assert first["Subject"] == "[pyfilter] 198.51.100.7 banned by sshd on host-a"
    assert second["Subject"] == "[pyfilter] 2001:db8::66 banned by sshd on host-a"
    assert first["To"] == "ops@example.org, oncall@example.org"
    body = first.get_payload()
    assert "country:   NL" in body
    assert "failures:  5" in body
    assert "Failed password for root from 198.51.100.7 port 22" in body


def test_a_notice_that_cannot_be_mailed_fails_alone(smtp):
    """A header the mail library refuses (a line break) fails that notice, not the whole batch."""
    from pyfilter.notifier.notify import Email

    channel = Email(settings("redis://unused", mail={"port": smtp.port}).config.notify.email, None)
    def notice(address: str) -> messages.Notice:
        return messages.Notice(address=address, rule="sshd", host="host-a", origin="detector",
                               banned_at=time.time(), duration=600)
    errors = run(channel.deliver([notice("198.51.100.7\r\nBcc: x@example.org"), notice("198.51.100.8")]))
    assert errors[0].startswith("cannot write the mail:") and errors[1] is None
    assert [m["Subject"] for m in smtp.mails] == ["[pyfilter] 198.51.100.8 banned by sshd on host-a"]


def test_digest_mode_sends_one_mail_listing_every_ban_of_the_interval(any_url, smtp):
    addresses = [f"198.51.100.{i}" for i in range(1, 8)]

    async def go():
        client = aclient(any_url)
        s = settings(any_url, mail={"port": smtp.port, "mode": "digest", "interval": 2})
        async with notifier(s):
            for address in addresses:
                await ban(client, address)
            await asyncio.sleep(1)
            assert smtp.mails == []  # the interval is not over yet
            await until(lambda: smtp.mails)
            await asyncio.sleep(0.5)
        await client.aclose()
    run(go())
    [digest] = smtp.mails
    assert digest["Subject"] == "[pyfilter] 7 addresses banned on host-a"
    body = digest.get_payload()
    assert all(address in body for address in addresses)


def test_digest_goes_out_early_when_max_batch_bans_wait(any_url, smtp):
    async def go():
        client = aclient(any_url)
        s = settings(any_url, mail={"port": smtp.port, "mode": "digest", "interval": 3600,
                                      "max_batch": 3})
        async with notifier(s):
            for i in range(4):
                await ban(client, f"198.51.100.{i + 1}")
            await until(lambda: smtp.mails)
            await asyncio.sleep(0.5)
        await client.aclose()
    run(go())
    [digest] = smtp.mails  # the fourth waits for its interval
    assert digest["Subject"].startswith("[pyfilter] 3 addresses banned")


def test_mail_logs_in_with_the_password_from_the_environment(redis_url, smtp, monkeypatch):
    monkeypatch.setenv("PYFILTER_SMTP_PASSWORD", "s3cret")

    async def go():
        client = aclient(redis_url)
        s = settings(redis_url, mail={"port": smtp.port, "username": "pyfilter",
                                      "password_env": "PYFILTER_SMTP_PASSWORD"})
        async with notifier(s):
            await ban(client, "198.51.100.7")
            await until(lambda: smtp.mails)
        await client.aclose()
    run(go())
    assert smtp.logins == [(b"pyfilter", b"s3cret")]


def test_webhook_receives_the_ban_as_json(any_url):
    async def go():
        client = aclient(any_url)
        receiver = Receiver(free_port())
        await receiver.start()
        hook = {"url": f"http://127.0.0.1:{receiver.port}/hook",
                "headers": {"Authorization": "Bearer hook-token"}}
        async with notifier(settings(any_url, hook=hook)):
            await ban(client, "198.51.100.7")
            await ban(client, "198.51.100.99", rule="nginx-botsearch")
            await until(lambda: receiver.bodies)
            await asyncio.sleep(0.3)
        await receiver.stop()
        await client.aclose()
        return receiver
    receiver = run(go())
    [body] = receiver.bodies
    assert receiver.headers[0]["Authorization"] == "Bearer hook-token"
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert body["event"] == "ban"
    assert (body["address"], body["rule"], body["host"], body["origin"]) == \
        ("198.51.100.7", "sshd", "host-a", "detector")
    assert body["duration"] == 600
    assert body["expires_at"] == pytest.approx(body["banned_at"] + 600)
    assert (body["reason"], body["country"], body["failures"]) == ("5 failures in 600s", "NL", 5)
    assert body["lines"] == ["sshd[1]: Failed password for root from 198.51.100.7 port 22 ssh2"]


async def widen(client, addresses: list[str], bantime: int) -> None:
    """Bans of `addresses` by a detector's windows (rule nginx-botsearch: not announced)
    whose network fills (3 bans) and is banned for `bantime` seconds."""
    rule = Rule(service="http", sources=["nginx"], patterns=["x"], window="instant", maxretry=1)
    cfg = NetworkConfig(enabled=True, threshold=3, findtime=Seconds(3600), bantime=Seconds(bantime))
    windows = Windows(client, KEYS.prefix, {"nginx-botsearch": rule}, Widening(cfg))
    now = time.time()
    await windows.record([Observed("nginx-botsearch", a, "host-a", now, f"l:{a}", "GET /.env 404") for a in addresses],
                         now)


def test_network_bans_are_announced_with_their_unban_and_expiry(any_url):
    """A /24 banned by widening, then unbanned by hand; a /64 banned for 1 s, which runs out:
    four notices naming the network, its members and the window; no member's (notify off)."""
    async def go():
        client = aclient(any_url)
        receiver = Receiver(free_port())
        await receiver.start()
        async with notifier(settings(any_url, hook={"url": f"http://127.0.0.1:{receiver.port}/hook"})):
            await widen(client, ["198.51.100.1", "198.51.100.2", "198.51.100.3"], 600)
            await until(lambda: receiver.bodies)
            await Ledger(client, KEYS).unban(["198.51.100.0/24"], "host-b", "a carrier's NAT", origin="manual")
            await until(lambda: len(receiver.bodies) >= 2)
            await widen(client, ["2001:db8:5::1", "2001:db8:5::2", "2001:db8:5::3"], 1)
            await until(lambda: len(receiver.bodies) >= 4)
            await asyncio.sleep(0.5)  # room for a wrong extra notice to arrive
            queued = await client.zcard(KEYS.notify_queue("webhook"))
        await receiver.stop()
        await client.aclose()
        return receiver.bodies, queued
    bodies, queued = run(go())
    assert [(b["event"], b["address"]) for b in bodies] == [
        ("ban", "198.51.100.0/24"), ("unban", "198.51.100.0/24"), ("ban", "2001:db8:5::/64"),
        ("expiry", "2001:db8:5::/64")]
    assert all((b["rule"], b["window"], b["members"]) == ("network", "network", 3) for b in bodies)
    assert "198.51.100.0/24" in bodies[0]["reason"] and bodies[0]["duration"] == 600
    assert bodies[1]["reason"] == "unbanned by manual on host-b: a carrier's NAT"
    assert bodies[3]["expires_at"] == pytest.approx(bodies[2]["banned_at"] + 1)
    assert queued == 0


def test_a_network_bans_end_waits_out_of_the_digest_and_a_rebanned_network_has_no_expiry(any_url, smtp):
    """Two networks banned for 3 s: the first digest lists their bans, not their ends (still
    to come); the next, the end of the one that ran out, not of the one banned again by hand
    meanwhile (after the notifier saw its ban)."""
    async def go():
        client = aclient(any_url)
        s = settings(any_url, mail={"port": smtp.port, "mode": "digest", "interval": 1})
        async with notifier(s):
            await widen(client, ["198.51.100.1", "198.51.100.2", "198.51.100.3"], 3)
            await widen(client, ["2001:db8:5::1", "2001:db8:5::2", "2001:db8:5::3"], 3)
            await until(lambda: smtp.mails)
            await Ledger(client, KEYS).ban([NewBan(messages.BanRecord(
                address="2001:db8:5::/64", rule="manual", host="host-a", origin="manual", banned_at=time.time(),
                duration=3600, expires_at=time.time() + 3600))])
            await until(lambda: len(smtp.mails) >= 2)
            await until(lambda: _queue_empty(client, "email"))
            await asyncio.sleep(0.5)
        await client.aclose()
    run(go())
    first, second = smtp.mails
    assert first["Subject"] == "[pyfilter] 2 addresses banned on host-a"
    assert "198.51.100.0/24" in first.get_payload() and "ran out" not in first.get_payload()
    assert second["Subject"] == "[pyfilter] 1 address banned on host-a"
    assert "198.51.100.0/24" in second.get_payload() and "ran out" in second.get_payload()
    assert "2001:db8:5::/64" not in second.get_payload()


def test_a_network_ban_mail_names_its_members_and_window(smtp):
    from pyfilter.notifier.notify import Email

    channel = Email(settings("redis://unused", mail={"port": smtp.port}).config.notify.email, None)
    notice = messages.Notice(address="198.51.100.0/24", rule="network", host="host-a", origin="detector",
                             banned_at=time.time(), duration=3600, window="network", members=12,
                             reason="12 banned addresses of 198.51.100.0/24 within 3600s")
    expired = msgspec.structs.replace(notice, event="expiry")
    assert run(channel.deliver([notice, expired])) == [None, None]
    first, second = smtp.mails
    assert first["Subject"] == "[pyfilter] 198.51.100.0/24 banned by network on host-a"
    assert "window:    network" in first.get_payload() and "members:   12 banned" in first.get_payload()
    assert second["Subject"] == "[pyfilter] 198.51.100.0/24 no longer banned (the network ban ran out)"


def test_a_mail_shows_the_log_lines_controls_as_escapes(smtp):
    """A client's text in the lines (a user name that clears the screen, sets the window's
    title, reverses what follows) reaches the reader as escapes: mail is read in terminals too."""
    from pyfilter.notifier.notify import Email

    channel = Email(settings("redis://unused", mail={"port": smtp.port}).config.notify.email, None)
    line = "sshd[1]: Failed password for \x1b]0;pwned\x07\x1b[2J\u202eroot from 198.51.100.7 port 22 ssh2"
    notice = messages.Notice(address="198.51.100.7", rule="sshd", host="host-a", origin="detector",
                             banned_at=time.time(), duration=600, lines=[line])
    assert run(channel.deliver([notice])) == [None]
    body = smtp.mails[0].get_payload(decode=True).decode()
    assert r"Failed password for \x1b]0;pwned\x07\x1b[2J\u202eroot from 198.51.100.7" in body
    assert not [c for c in body if c in "\x1b\x07\u202e"]


def test_failing_receiver_gets_the_notice_after_retries(any_url):
    async def go():
        client = aclient(any_url)
        receiver = Receiver(free_port(), fail_first=3)
        await receiver.start()
        async with notifier(settings(any_url, hook={"url": f"http://127.0.0.1:{receiver.port}/hook"})):
            started = time.monotonic()
            await ban(client, "198.51.100.7")
            await until(lambda: receiver.bodies)
            took = time.monotonic() - started
            await asyncio.sleep(0.3)
        await receiver.stop()
        await client.aclose()
        return receiver, took
    receiver, took = run(go())
    assert receiver.requests == 4
    assert [b["address"] for b in receiver.bodies] == ["198.51.100.7"]
    assert took >= 0.1 + 0.2 + 0.4 - 0.05  # waited 0.1, 0.2, 0.4 s between attempts


def test_receiver_that_is_down_holds_up_nothing_and_catches_up_when_back(redis_url, smtp):
    addresses = [f"198.51.100.{i}" for i in range(1, 6)]

    async def go():
        client = aclient(redis_url)
        receiver = Receiver(free_port())  # not started: connections are refused
        s = settings(redis_url, mail={"port": smtp.port},
                     hook={"url": f"http://127.0.0.1:{receiver.port}/hook"})
        async with notifier(s):
            for address in addresses:
                await ban(client, address)
            await until(lambda: len(smtp.mails) == len(addresses))
            assert await client.zcard(KEYS.notify_queue("webhook")) == len(addresses)
            await receiver.start()
            await until(lambda: len(receiver.bodies) == len(addresses))
            await until(lambda: _queue_empty(client, "webhook"))
        await receiver.stop()
        await client.aclose()
        return receiver
    receiver = run(go())
    assert sorted(b["address"] for b in receiver.bodies) == addresses


async def _queue_empty(client, channel: str) -> bool:
    return not await client.zcard(KEYS.notify_queue(channel)) and \
        not await client.hlen(KEYS.notify_items(channel))


def test_restart_mid_retry_loses_nothing(any_url):
    async def go():
        client = aclient(any_url)
        receiver = Receiver(free_port(), fail_first=10**6)
        await receiver.start()
        s = settings(any_url, hook={"url": f"http://127.0.0.1:{receiver.port}/hook"})
        async with notifier(s):
            await ban(client, "198.51.100.7")
            await ban(client, "198.51.100.8")
            await until(lambda: receiver.requests >= 4)  # each tried at least twice
        await ban(client, "198.51.100.9")  # while the notifier is down
        receiver.fail_first = 0
        async with notifier(s):
            await until(lambda: len(receiver.bodies) >= 3)
            await until(lambda: _queue_empty(client, "webhook"))
        await receiver.stop()
        await client.aclose()
        return receiver
    receiver = run(go())
    assert sorted(b["address"] for b in receiver.bodies) == \
        ["198.51.100.7", "198.51.100.8", "198.51.100.9"]


def test_notices_queued_before_the_channel_keys_were_tagged_are_still_sent(any_url):
    """A queue of the version before Redis Cluster (`notify:queue:CHANNEL`, untagged)
    moves to the channel's tagged keys when the notifier starts; its notice goes out."""
    async def go():
        client = aclient(any_url)
        now = time.time()
        notice = messages.Notice(address="198.51.100.7", rule="sshd", host="host-a", origin="detector",
                                 banned_at=now, duration=600)
        await client.hset("t:notify:items:webhook", "1-1", messages.encode(messages.Outgoing(notice, now)))
        await client.zadd("t:notify:queue:webhook", {"1-1": now})
        receiver = Receiver(free_port())
        await receiver.start()
        async with notifier(settings(any_url, hook={"url": f"http://127.0.0.1:{receiver.port}/hook"})):
            await until(lambda: receiver.bodies)
            await until(lambda: _queue_empty(client, "webhook"))
        left = [await client.exists(f"t:notify:{kind}:webhook") for kind in ("items", "queue")]
        await receiver.stop()
        await client.aclose()
        return receiver, left
    receiver, left = run(go())
    assert [b["address"] for b in receiver.bodies] == ["198.51.100.7"]
    assert left == [0, 0]


def test_no_channel_configured_returns_at_once(redis_url):
    async def go():
        client = aclient(redis_url)
        await asyncio.wait_for(run_notifier(settings(redis_url), client, asyncio.Event()), 2)
        await client.aclose()
    run(go())


def test_notify_section_reads_from_the_file_and_refuses_mistakes(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "pyfilter.yaml"
        path.write_text(text)
        return path

    settings = load(write(
        "notify:\n"
        "  email: {host: mail.example.org, from: pyfilter@example.org, to: [ops@example.org],\n"
        "          tls: starttls, port: 587, mode: digest, interval: 15m}\n"
        "  webhook: {url: 'https://hooks.example.org/ban', timeout: 5s}\n"
        "rules:\n"
        "  sshd: {service: ssh, sources: [auth], patterns: ['x <HOST>'], notify: true}\n"))
    cfg = settings.config.notify
    assert (cfg.email.sender, cfg.email.interval, cfg.email.tls) == \
        ("pyfilter@example.org", 900, "starttls")
    assert cfg.webhook.timeout == 5
    assert settings.rules["sshd"].notify is True
    for text, message in [
        ("notify: {email: {host: h, from: nobody, to: [ops@example.org]}}", "expected a mail address"),
        ("notify: {email: {host: h, from: a@b, to: [c@d], username: u}}", "go together"),
        ("notify: {email: {host: h, from: a@b, to: [c@d], password: x}}", "unknown field password"),
        ("notify: {webhook: {url: hooks.example.org}}", "expected an http:// or https:// URL"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(write(text))


def test_notice_json_is_the_documented_shape():
    notice = messages.Notice(address="198.51.100.7", rule="sshd", host="h", origin="manual",
                             banned_at=1.0, duration=-1)
    assert set(msgspec.json.decode(msgspec.json.encode(notice))) == {
        "address", "rule", "host", "origin", "banned_at", "duration", "expires_at", "reason",
        "country", "failures", "first_failure", "last_failure", "ban_count", "lines", "event", "window",
        "members", "v"}


def test_notifier_service_announces_bans_and_stops_cleanly(redis_url, smtp, tmp_path):
    """`python -m pyfilter.notifier`, as compose runs it."""
    metrics_port = free_port()
    config = tmp_path / "pyfilter.yaml"
    config.write_text(
        f"host: notifier-host\nredis: {{url: '{redis_url}', prefix: 't:'}}\n"
        f"notify: {{email: {{host: 127.0.0.1, port: {smtp.port}, from: pyfilter@example.org, "
        "to: [ops@example.org]}, retry_initial: 0.1}\n"
        "rules:\n  sshd: {service: ssh, sources: [auth], patterns: ['x <HOST>'], notify: true}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFILTER_")}
    env.update(PYFILTER_CONFIG=str(config), PYFILTER_METRICS_PORT=str(metrics_port),
               PYFILTER_HEARTBEAT=str(tmp_path / "beat"))
    log = tmp_path / "notifier.log"

    async def go():
        client = aclient(redis_url)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pyfilter.notifier"], env=env,
                                    stdout=out, stderr=out)
        try:
            await until(lambda: _has_group(client), lambda: proc.poll() is None or pytest.fail(log.read_text()))
            await ban(client, "198.51.100.7")
            await until(lambda: smtp.mails)
            await until(lambda: (tmp_path / "beat").exists())
            scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
            assert b'pyfilter_notifier_notices_total{channel="email",outcome="sent"} 1.0' in scrape
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
            await client.aclose()
        assert code == 0, log.read_text()
        assert smtp.mails[0]["To"] == "ops@example.org"
    run(go())


def test_an_undecodable_decision_is_moved_aside_and_does_not_stop_the_next(redis_url, smtp):
    """The one dead-letter policy (common/streams.py), seen from the notifier."""
    async def go():
        client = aclient(redis_url)
        async with notifier(settings(redis_url, mail={"port": smtp.port})):
            bad = await client.xadd(KEYS.decisions, {"m": b"not msgpack"})
            await ban(client, "198.51.100.7")
            await until(lambda: smtp.mails)
            dead = await client.xrange(KEYS.decisions + ":dead")
            assert [(f[b"m"], f[b"from"], f[b"group"]) for _, f in dead] == \
                [(b"not msgpack", bad, NOTIFY_GROUP.encode())]
            groups = {g["name"]: g for g in await client.xinfo_groups(KEYS.decisions)}
            assert groups[NOTIFY_GROUP.encode()]["pending"] == 0
        await client.aclose()
    run(go())
