"""Slow windows (a rule's `slow:`, counts per bucket) and weighted patterns, against a real
redis-server: on a single Redis (one call) and on a 3-primary Redis Cluster (three calls)."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from pyfilter.common import config, ledger, logtime, messages
from pyfilter.common.config import Seconds
from pyfilter.common.keys import Keys
from pyfilter.detector.matching import Matcher
from pyfilter.detector.windows import REDELIVERY_HORIZON, Observed, Windows
from tests.conftest import aclient
from tests.unit.test_windows import make_rule

NOW = 1_800_000_000.0  # a multiple of an hour: bucket edges are easy to read
HOUR = 3600
ATTACKER = "198.51.100.7"
KEYS = Keys("pf:")


@pytest.fixture
def redis_url(any_redis_url):
    return any_redis_url


def slow_rule(**kw) -> config.Rule:
    """Fast window 3 in 60 s; slow window 10 in 24 h, hourly buckets, banning for a day."""
    slow = {"maxretry": 10, "findtime": 86400, "bucket": HOUR, "bantime": 86400, **kw.pop("slow", {})}
    return make_rule(slow=slow, **kw)


def spread(n: int, every: float = HOUR, end: float = NOW - 1, address: str = ATTACKER, tag: str = "s",
           weight: int = 1) -> list[Observed]:
    """`n` failures, one every `every` seconds, the last at `end`: too slow for the fast window."""
    return [Observed("sshd", address, "host-a", end - (n - 1 - i) * every, f"{tag}:{i}", f"line {i}", weight=weight)
            for i in range(n)]


async def _record(url: str, rules, batches: list[list[Observed]], now: float | list[float] = NOW):
    client = aclient(url)
    windows = Windows(client, "pf:", rules)
    bans = []
    for i, batch in enumerate(batches):
        bans += await windows.record(batch, now[i] if isinstance(now, list) else now)
    decisions = [messages.decode_decision(d[b"m"]) for _, d in await client.xrange(KEYS.decisions)]
    raw = await client.get(KEYS.ban(ATTACKER))
    await client.aclose()
    return bans, decisions, messages.decode_record(raw) if raw else None


def record(url, rules, batches, now=NOW):
    return asyncio.run(_record(url, rules, batches, now))


def test_slow_attacker_is_banned_by_the_slow_window(redis_url):
    """Ten failures an hour apart: never 3 in a minute, but 10 in a day."""
    bans, decisions, rec = record(redis_url, {"sshd": slow_rule()}, [[o] for o in spread(10)])
    assert [(b.address, b.rule, b.duration) for b in bans] == [(ATTACKER, "sshd", 86400)]
    assert len(decisions) == 1
    assert (rec.window, rec.failures, rec.last_failure) == ("slow", 10, NOW - 1)
    assert rec.first_failure == (NOW - 1 - 9 * HOUR) // HOUR * HOUR  # its bucket's start
    assert rec.lines == [f"line {i}" for i in range(7, 10)]  # the last three


def test_a_step_cut_into_several_calls_counts_every_slow_window(redis_url, monkeypatch):
    """A slow window's group sends its address group's lines once when both are in one call
    (ledger.py) and whole when the step's calls cut them apart: six attackers, ten failures
    each in one step, calls of at most 100 failures (the address groups, then the slow
    groups: four slow groups beside theirs, two in a call of their own)."""
    monkeypatch.setattr(ledger, "FAILURES_PER_CALL", 100)
    attackers = [f"198.51.100.{i}" for i in range(10, 16)]
    batch = [o for i, a in enumerate(attackers) for o in spread(10, address=a, tag=f"c{i}")]
    bans, decisions, _ = record(redis_url, {"sshd": slow_rule()}, [batch])
    assert sorted((b.address, b.rule, b.duration) for b in bans) == [(a, "sshd", 86400) for a in attackers]
    assert len(decisions) == len(attackers)


def test_failures_below_the_slow_threshold_or_older_than_its_window_do_not_ban(redis_url):
    bans, _, _ = record(redis_url, {"sshd": slow_rule()}, [spread(9)])
    assert bans == []
    # 10 failures over 27 hours: never 10 within 24 hourly buckets.
    bans, _, _ = record(redis_url, {"sshd": slow_rule()}, [spread(10, every=3 * HOUR, address="198.51.100.8")])
    assert bans == []


def test_a_redelivered_batch_adds_nothing_to_the_slow_window(redis_url):
    batch = spread(9)
    later = [NOW, NOW + 60, NOW + REDELIVERY_HORIZON - 60]  # redelivered within the horizon
    bans, _, _ = record(redis_url, {"sshd": slow_rule()}, [batch, batch, batch], now=later)
    assert bans == []
    bans, _, _ = record(redis_url, {"sshd": slow_rule()}, [spread(1, end=NOW - 2, tag="new")], now=NOW + 120)
    assert len(bans) == 1


def test_the_slow_window_keeps_buckets_not_failures(redis_url):
    """What an address costs is bounded: a count per bucket, and only the ids of
    the last REDELIVERY_HORIZON, however many failures (here 2 a minute for a day,
    under the slow threshold)."""
    rule = slow_rule(slow={"maxretry": 100_000})
    batches, times = [], []
    for hour in range(24):
        at = NOW - (23 - hour) * HOUR
        batches.append(spread(120, every=30, end=at, tag=f"h{hour}"))
        times.append(at)

    async def sizes():
        await _record(redis_url, {"sshd": rule}, batches, now=times)
        client = aclient(redis_url)
        found = (await client.hlen(KEYS.slow_window("sshd", ATTACKER)),
                 await client.zcard(KEYS.slow_ids("sshd", ATTACKER)),
                 await client.llen(KEYS.slow_lines("sshd", ATTACKER)),
                 {k.decode(): await client.ttl(k) async for k in client.scan_iter("pf:slow*")})
        await client.aclose()
        return found

    buckets, ids, lines, ttls = asyncio.run(sizes())
    assert buckets <= 25 and ids <= 240 and lines == 3
    assert ttls and all(t > 0 for t in ttls.values()), ttls


def test_replay_counts_the_slow_window_alike_without_remembering_line_ids(single_redis_url):
    """`pyfilter replay` reads each line once, so its library (logtime.py) skips the
    slow window's guard against redelivery: the same ban, and no line ids kept."""
    async def replayed():
        client = aclient(single_redis_url)
        await logtime.load(client)
        windows = Windows(client, "pf:", {"sshd": slow_rule()})
        bans, kept = [], []
        for o in spread(10):
            bans += await windows.record([o], o.time)  # a window call's `now` is log time in replay
            kept.append((await client.exists(KEYS.slow_window("sshd", ATTACKER)),
                         await client.exists(KEYS.slow_ids("sshd", ATTACKER))))
        await client.aclose()
        return bans, kept

    bans, kept = asyncio.run(replayed())
    assert [(b.address, b.rule, b.duration) for b in bans] == [(ATTACKER, "sshd", 86400)]
    assert kept == [(1, 0)] * 9 + [(0, 0)]  # buckets until the ban takes them; never ids
    assert "local DELIVERED_ONCE = false\n" in ledger.CODE  # a detector's library keeps the guard


def test_fast_and_slow_windows_of_one_rule_each_ban(redis_url):
    """A fast burst bans for the rule's bantime; the same address going on slowly
    later is banned again, for the slow window's (longer) bantime."""
    burst = [Observed("sshd", ATTACKER, "host-a", NOW - 20 * HOUR + i, f"b:{i}", "burst") for i in range(3)]
    slow = spread(7, end=NOW - 1)
    bans, decisions, rec = record(redis_url, {"sshd": slow_rule()}, [burst, slow],
                                  now=[NOW - 20 * HOUR + 5, NOW])
    assert [b.duration for b in bans] == [600, 86400]
    assert rec.window == "slow" and rec.ban_count == 2


def test_the_slow_window_bans_the_same_whatever_the_order_of_batches(redis_url):
    """Replicas count batches in any order: addresses with 10 or more failures
    in a day are banned once, the others never."""
    banned = [f"198.51.100.{i}" for i in range(1, 11)]
    spared = [f"198.51.100.{i}" for i in range(101, 111)]
    lines = [o for a in banned for o in spread(10, every=2 * HOUR, address=a, tag=a)]
    lines += [o for a in spared for o in spread(9, every=2 * HOUR, address=a, tag=a)]
    random.Random(7).shuffle(lines)
    batches = [lines[i:i + 7] for i in range(0, len(lines), 7)]
    bans, _, _ = record(redis_url, {"sshd": slow_rule()}, batches)
    assert sorted(b.address for b in bans) == sorted(banned)


def test_a_weighted_line_counts_as_its_weight_once(redis_url):
    """Weight 3 with maxretry 3: one line bans; the record shows the line once
    and 3 failures; the line again (a redelivery) adds nothing."""
    root = [Observed("sshd", ATTACKER, "host-a", NOW - 1, "r:1", "Failed password for root", weight=3)]
    bans, decisions, rec = record(redis_url, {"sshd": make_rule()}, [root, root])
    assert len(bans) == 1 and len(decisions) == 1
    assert (rec.failures, rec.lines, rec.window) == (3, ["Failed password for root"], "sliding")


def test_a_weighted_line_below_the_threshold_adds_its_weight_once(redis_url):
    heavy = [Observed("sshd", ATTACKER, "host-a", NOW - 2, "r:1", "root", weight=2)]
    light = [Observed("sshd", ATTACKER, "host-a", NOW - 1, "u:1", "user")]
    bans, _, _ = record(redis_url, {"sshd": make_rule(maxretry=4)}, [heavy, heavy, light])
    assert bans == []
    other = [[o._replace(address="198.51.100.8")] for o in (*heavy, *heavy, *light)]
    bans, _, _ = record(redis_url, {"sshd": make_rule(maxretry=3)}, other)
    assert len(bans) == 1


def test_weighted_lines_count_in_the_slow_window_too(redis_url):
    bans, _, rec = record(redis_url, {"sshd": slow_rule()}, [spread(5, weight=2), spread(5, weight=2)])
    assert len(bans) == 1 and rec.window == "slow" and rec.failures == 10


def test_the_matcher_gives_a_failure_its_pattern_weight():
    rule = msgspec.convert({
        "service": "sshd", "programs": ["sshd"], "patterns": [
            {"re": "Failed password for root from <HOST> port \\d+", "weight": 5},
            "Failed password for \\S+ from <HOST> port \\d+",
        ]}, config.Rule)
    matcher = Matcher({"sshd": rule})
    lines = ["Jan  1 00:00:00 h sshd[1]: Failed password for root from 198.51.100.7 port 22",
             "Jan  1 00:00:01 h sshd[2]: Failed password for alice from 198.51.100.7 port 22"]
    weights = [f.weight for _, f in matcher.match_batch(lines, "auth", NOW)]
    assert weights == [5, 1]


@pytest.mark.parametrize("slow, error", [
    ({"findtime": "1d", "bucket": "7h"}, "divides findtime"),
    ({"findtime": "1h", "bucket": "2h"}, "divides findtime"),
    ({"findtime": "30d", "bucket": "1m"}, "at most 1000 buckets"),
])
def test_a_slow_window_that_does_not_cut_into_buckets_is_refused(tmp_path, slow, error):
    path = tmp_path / "r.yaml"
    path.write_text(msgspec.json.encode({"service": "x", "patterns": ["<HOST>"], "slow": slow}).decode())
    with pytest.raises(config.ConfigError, match=error):
        config.load_rule(path, "x")


@pytest.mark.parametrize("weight", [0, 1001, "heavy"])
def test_a_weight_out_of_range_is_refused(tmp_path, weight):
    path = tmp_path / "r.yaml"
    path.write_text(msgspec.json.encode({"service": "x", "patterns": [{"re": "<HOST>", "weight": weight}]}).decode())
    with pytest.raises(config.ConfigError, match=r"patterns\[0\]\.weight"):
        config.load_rule(path, "x")


def test_slow_window_settings_read_from_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("service: x\npatterns: ['<HOST>']\nslow: {maxretry: 30, findtime: 24h, bucket: 1h}\n")
    rule = config.load_rule(path, "x")
    assert rule.slow == config.SlowWindow(maxretry=30, findtime=Seconds(86400), bucket=Seconds(3600))


def test_a_heavy_weight_becomes_no_more_entries_than_the_threshold(redis_url):
    """Weight 1000, maxretry 3 and a slow window of 10: the line crosses both
    (the slow ban, a day, replaces the fast one), as 10 entries, not 1000."""
    heavy = [Observed("sshd", ATTACKER, "host-a", NOW - 1, "h:1", "heavy", weight=1000)]
    bans, _, rec = record(redis_url, {"sshd": slow_rule()}, [heavy])
    assert [b.duration for b in bans] == [600, 86400]
    assert (rec.window, rec.failures, rec.lines) == ("slow", 10, ["heavy"])
