"""What the detector counts from a batch: addresses, IPv6 networks, never-ban."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from datetime import datetime, timezone

import msgspec
import pytest
import redis.asyncio as aioredis

from pyfilter.common import messages, status
from pyfilter.cli.matching import load_rules
from pyfilter.common.config import Config, Rule, Seconds, Settings
from pyfilter.detector.main import Detector

NOW = 1_795_000_000.0


def detector(redis_url: str, **rule) -> Detector:
    sshd = msgspec.convert({"service": "sshd", "sources": ["auth"],
                            "patterns": [r"Failed password for \S+ from <HOST> port \d+"], **rule},
                           Rule, dec_hook=lambda t, v: Seconds(v))
    config = Config(host="h")
    config.redis.url = redis_url
    return Detector(Settings(config=config, rules={"sshd": sshd}, path="t"))


def batch(*addresses: str) -> messages.LineBatch:
    lines = [messages.Line(f"auth:0:0:{i}", f"sshd[1]: Failed password for root from {a} port 22")
             for i, a in enumerate(addresses)]
    return messages.LineBatch(host="h", source="auth", lines=lines, read_at=NOW)


def test_ipv6_attackers_are_counted_by_the_rules_prefix(redis_url):
    d = detector(redis_url, ipv6_prefix=64)
    found = d.observe(batch("2001:db8:5::1", "2001:db8:5::2", "198.51.100.7"), NOW, set(), [])
    assert [o.address for o in found] == ["2001:db8:5::/64", "2001:db8:5::/64", "198.51.100.7"]


def test_prefix_holding_a_protected_address_falls_back_to_the_address(redis_url):
    d = detector(redis_url, ipv6_prefix=64)
    own = {ipaddress.ip_address("2001:db8:5::99")}
    found = d.observe(batch("2001:db8:5::1"), NOW, own, [])
    assert [o.address for o in found] == ["2001:db8:5::1"]


def test_by_default_ipv6_addresses_are_counted_one_by_one(redis_url):
    found = detector(redis_url).observe(batch("2001:db8:5::1"), NOW, set(), [])
    assert [o.address for o in found] == ["2001:db8:5::1"]


def test_whitelisted_and_loopback_addresses_are_not_counted(redis_url):
    whitelist = [ipaddress.ip_network("198.51.100.0/28")]
    found = detector(redis_url).observe(batch("198.51.100.3", "127.0.0.1", "198.51.100.30"),
                                        NOW, set(), whitelist)
    assert [o.address for o in found] == ["198.51.100.30"]


# A connection cut by a batch boundary: replicas each see part of it.

def replicas_record(redis_url: str, batches: list[list[str]], order: list[int]) -> list[str]:
    """Each batch matched by its own replica (fresh connection state), recorded in `order`;
    the addresses banned."""
    sshd = msgspec.structs.replace(load_rules(None, "sshd")["sshd"], maxretry=5, findtime=Seconds(3600))

    async def run() -> list[str]:
        config = Config(host="h")
        config.redis.url = redis_url
        settings = Settings(config=config, rules={"sshd": sshd}, path="t")
        await aioredis.from_url(redis_url).flushall()
        now = time.time()
        seen = [Detector(settings).observe(
            messages.LineBatch("h", "auth", [messages.Line(f"auth:0:{b}:{i}", t) for i, t in enumerate(lines)],
                               now), now, set(), []) for b, lines in enumerate(batches)]
        banned = []
        for b in order:
            banned += [ban.address for ban in await Detector(settings).windows.record(seen[b], now)]
        return banned

    return asyncio.run(run())


def sshd_line(pid: int, message: str) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{stamp} h sshd[{pid}]: {message}"


def test_a_closing_line_at_another_replica_does_not_count_again(redis_url):
    """4 failed connections; the last one's "Connection closed by authenticating
    user" line (a failure only for a connection without another) is in the next
    batch, at another replica that never saw the connection fail: 4 failures,
    in either order of recording, so no ban at maxretry 5."""
    failed = [sshd_line(100 + n, f"Failed password for root from 198.51.100.9 port {5000 + n} ssh2")
              for n in range(4)]
    closed = [sshd_line(103, "Connection closed by authenticating user root 198.51.100.9 port 5003 [preauth]")]
    assert replicas_record(redis_url, [failed, closed], [0, 1]) == []
    assert replicas_record(redis_url, [failed, closed], [1, 0]) == []
    # A fifth failed connection does ban, whichever replica sees it.
    fifth = [sshd_line(104, "Failed password for root from 198.51.100.9 port 5004 ssh2")]
    assert replicas_record(redis_url, [failed, closed + fifth], [1, 0]) == ["198.51.100.9"]


def test_connections_that_only_give_up_still_count_at_any_replica(redis_url):
    """Bots that disconnect during authentication log only the closing line:
    each such connection is one failure, wherever its line is matched."""
    lines = [sshd_line(200 + n, f"Connection closed by authenticating user root 198.51.100.10 port {6000 + n} "
                                "[preauth]") for n in range(5)]
    assert replicas_record(redis_url, [lines[:2], lines[2:]], [1, 0]) == ["198.51.100.10"]


def test_replay_reads_every_line_itself_so_its_failures_name_no_connection(redis_url):
    """`pyfilter replay`'s detector reads every line of a connection, in order, across
    its batches: its own connection state drops the closing line of a connection that
    failed, and the windows need not check it again (no `connection` to send)."""
    sshd = msgspec.structs.replace(load_rules(None, "sshd")["sshd"], maxretry=5, findtime=Seconds(3600))
    config = Config(host="h")
    config.redis.url = redis_url
    settings = Settings(config=config, rules={"sshd": sshd}, path="t")
    failed = sshd_line(103, "Failed password for root from 198.51.100.9 port 5003 ssh2")
    closed = sshd_line(103, "Connection closed by authenticating user root 198.51.100.9 port 5003 [preauth]")
    given_up = sshd_line(104, "Connection closed by authenticating user root 198.51.100.9 port 5004 [preauth]")
    found = {}
    for name, offline in (("live", False), ("replay", True)):
        d = Detector(settings, offline=offline)
        found[name] = [f for b, texts in enumerate([[failed], [closed, given_up]])
                       for f in d.observe(messages.LineBatch(
                           "h", "auth", [messages.Line(f"auth:0:{b}:{i}", t) for i, t in enumerate(texts)], NOW),
                           NOW, set(), [])]
    assert [(f.connection, f.once) for f in found["live"]] == [("h:auth:103", False), ("h:auth:104", True)]
    assert [(f.connection, f.once) for f in found["replay"]] == [("", False), ("", True)]


def test_syslog_times_are_read_in_the_zone_of_their_source(redis_url):
    """A host writing local time west of UTC: read as UTC its failures would look hours old."""
    line = "Nov 17 20:00:00 h sshd[1]: Failed password for root from 198.51.100.7 port 22"
    def observed(tz, **rule):
        b = messages.LineBatch("h", "auth", [messages.Line("auth:0:0:0", line)], NOW, tz=tz)
        return [o.time for o in detector(redis_url, **rule).observe(b, NOW, set(), [])]
    utc = datetime(2026, 11, 17, 20, 0, tzinfo=timezone.utc).timestamp()
    assert observed(None) == [utc]
    assert observed("America/New_York") == [utc + 5 * 3600]
    assert observed("-0500") == [utc + 5 * 3600]
    assert observed("America/New_York", timezone="UTC") == [utc]  # a rule's own zone wins
    assert observed("Mars/Olympus") == [utc]  # an unknown zone: the default, matching goes on


# Container logs: lines carry their stream time, a label names the rules.

def container_batch(*lines: messages.Line, **fields) -> messages.LineBatch:
    return messages.LineBatch(host="h", source="containers", lines=list(lines), read_at=NOW, **fields)


def test_a_lines_stream_time_wins_over_the_time_its_text_holds(redis_url):
    written = NOW - 30.5
    line = messages.Line("containers:0:0:0", "Nov 21 01:59:00 web sshd[1]: Failed password for root "
                         "from 198.51.100.7 port 22", written)
    (found,) = detector(redis_url, sources=[]).observe(container_batch(line), NOW, set(), [])
    assert found.time == written


def test_a_container_label_names_the_rules_that_read_its_lines(redis_url):
    rules = {"sshd": msgspec.structs.replace(load_rules(None, "sshd")["sshd"], sources=["auth"])}
    config = Config(host="h")
    config.redis.url = redis_url
    d = Detector(Settings(config=config, rules=rules, path="t"))
    text = "Failed password for root from 198.51.100.7 port 22 ssh2"
    lines = [messages.Line("containers:0:0:0", text)]
    # A plain line of an app whose program no rule reads, from a source the rule is not
    # restricted to: nothing, unless the container's label names the rule.
    assert d.observe(container_batch(*lines, program="myapp"), NOW, set(), []) == []
    found = d.observe(container_batch(*lines, program="myapp", rules=["sshd", "not-enabled"],
                                      container="app"), NOW, set(), [])
    assert [(o.rule, o.address) for o in found] == [("sshd", "198.51.100.7")]


def test_addresses_of_the_hosts_containers_are_not_counted(redis_url):
    own = {ipaddress.ip_network("172.18.0.0/16")}
    found = detector(redis_url).observe(batch("172.18.0.9", "198.51.100.7"), NOW, own, [])
    assert [o.address for o in found] == ["198.51.100.7"]


def test_an_undecodable_lines_entry_is_moved_aside_and_the_rest_counted(redis_url):
    """The one dead-letter policy (common/streams.py), seen from a detector."""
    async def go():
        d = detector(redis_url)
        await d.client.sadd(d.keys.hosts, "h")
        await d.follow_hosts()
        stream = d.keys.lines("h")
        bad = await d.client.xadd(stream, {"m": b"not msgpack"})
        await d.client.xadd(stream, {"m": messages.encode(batch("198.51.100.7"))})
        await d.handle(await d.lines.new())
        dead = await d.client.xrange(stream + ":dead")
        left = await d.client.xlen(stream)
        lines, _ = await status.last_hour(d.client, d.keys, "h")
        await d.client.aclose()
        return dead, bad, left, lines
    dead, bad, left, lines = asyncio.run(go())
    assert [(f[b"m"], f[b"from"], f[b"group"]) for _, f in dead] == [(b"not msgpack", bad, b"detect")]
    assert left == 0  # both acknowledged and deleted
    assert lines == {"auth": 1}  # the good batch was read


def test_forgetting_a_failed_read_ahead_raises_nothing_but_a_cancelled_detector_stops(redis_url):
    """After a Redis error the detector drops its read ahead; that must not swallow its own cancellation."""
    async def go():
        d = detector(redis_url)

        async def failed_read():
            raise ConnectionError("redis went away")
        d.reading = asyncio.ensure_future(failed_read())
        await asyncio.sleep(0)
        await d.forget_read()  # the read's error is the caller's, already logged: not raised again

        release = asyncio.Event()

        async def stubborn_read():  # a read that outlives its cancellation for a while
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await release.wait()
        d.reading = asyncio.ensure_future(stubborn_read())
        await asyncio.sleep(0)
        forgetting = asyncio.ensure_future(d.forget_read())
        await asyncio.sleep(0)
        forgetting.cancel()  # the detector is being stopped meanwhile
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await forgetting
        await d.client.aclose()
    asyncio.run(go())


def test_a_failure_carries_its_patterns_weight(redis_url):
    """A root attempt of weight 5 (first pattern), any other user weight 1."""
    d = detector(redis_url, patterns=[{"re": r"Failed password for root from <HOST> port \d+", "weight": 5},
                                      r"Failed password for \S+ from <HOST> port \d+"])
    lines = [messages.Line("auth:0:0:0", "sshd[1]: Failed password for root from 198.51.100.7 port 22"),
             messages.Line("auth:0:0:1", "sshd[1]: Failed password for bob from 198.51.100.8 port 22")]
    found = d.observe(messages.LineBatch(host="h", source="auth", lines=lines, read_at=NOW), NOW, set(), [])
    assert [(o.address, o.weight) for o in found] == [("198.51.100.7", 5), ("198.51.100.8", 1)]


def test_only_rules_with_a_per_account_window_keep_their_logins(redis_url):
    """The live detector keeps the successful logins only of rules whose per-account window
    uses them: a rule without one records none (no success work); replay keeps every rule's."""
    base = {"service": "sshd", "sources": ["auth"], "patterns": [r"Failed password for (?P<user>\S+) from <HOST> port"],
            "success": [r"Accepted password for (?P<user>\S+) from <HOST> port"]}
    rules = {name: msgspec.convert({**base, "per_account": per}, Rule, dec_hook=lambda t, v: Seconds(v))
             for name, per in (("counted", True), ("plain", False))}
    config = Config(host="h")
    config.redis.url = redis_url
    settings = Settings(config=config, rules=rules, path="t")
    lines = messages.LineBatch(host="h", source="auth", read_at=NOW, lines=[
        messages.Line("auth:0:0:0", "sshd[1]: Accepted password for root from 198.51.100.7 port 22 ssh2")])
    live, replaying = Detector(settings), Detector(settings, offline=True)
    kept: dict[str, list] = {"live": [], "replay": []}
    live.observe(lines, NOW, set(), [], kept["live"])
    replaying.observe(lines, NOW, set(), [], kept["replay"])
    assert [(login.rule, login.address, login.user) for login in kept["live"]] == [("counted", "198.51.100.7", "root")]
    assert sorted(login.rule for login in kept["replay"]) == ["counted", "plain"]
    plain = next(r for r in live.matcher.rules if r.name == "plain")
    assert plain.logins is None  # nothing recorded for it at all
