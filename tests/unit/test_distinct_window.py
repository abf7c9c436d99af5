"""The distinct window kind, against a real redis-server (single and Cluster): an address's
different values (request paths answered 404) are counted, each once, weighted, hashed."""

from __future__ import annotations

import asyncio
import re

import msgspec
import pytest

from pyfilter.common import messages
from pyfilter.common.config import MAX_DISTINCT, Rule, Seconds
from pyfilter.common.keys import Keys
from pyfilter.detector.windows import Observed, Windows, digest
from tests.conftest import aclient

NOW = 1_800_000_000.0
ATTACKER = "198.51.100.7"
KEYS = Keys("pf:")


@pytest.fixture
def redis_url(any_redis_url):
    return any_redis_url


def probing(**kw) -> Rule:
    base = dict(service="http", patterns=["<PATH>"], window="distinct", maxretry=5,
                findtime=Seconds(60), bantime=Seconds(600))
    base.update(kw)
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def requests(paths: list[str], start: float = NOW - 20, address: str = ATTACKER, tag: str = "l",
             weight: int = 1) -> list[Observed]:
    """One 404 line per path, a second apart, each its own line id."""
    return [Observed("web", address, "host-a", start + i, f"{tag}:{i}", f"GET {p} 404", weight=weight,
                     value=digest(p)) for i, p in enumerate(paths)]


async def record(url: str, batches: list[list[Observed]], split: bool | None = None, **rule) -> tuple:
    client = aclient(url)
    windows = Windows(client, "pf:", {"web": probing(**rule)})
    if split is not None:
        windows._ledger.split = split
    bans = []
    for batch in batches:
        bans += await windows.record(batch, NOW)
    records = {b.address: messages.decode_record(await client.get(KEYS.ban(b.address))) for b in bans}
    members = await client.zrange(KEYS.window("web", ATTACKER), 0, -1)
    await client.aclose()
    return bans, records, members


def test_distinct_paths_reaching_maxretry_ban_with_window_distinct(redis_url):
    paths = [f"/p{i}" for i in range(5)]
    bans, records, _ = asyncio.run(record(redis_url, [requests(paths)]))
    assert [(b.address, b.rule, b.duration) for b in bans] == [(ATTACKER, "web", 600)]
    rec = records[ATTACKER]
    assert rec.window == "distinct"
    assert rec.failures == 5
    assert rec.lines == [f"GET {p} 404" for p in paths]


def test_the_same_path_asked_again_counts_once(redis_url):
    """A browser reloading a missing page, 50 times: one value, no ban."""
    bans, _, members = asyncio.run(record(redis_url, [requests(["/missing"] * 50), requests(["/a", "/b"], tag="m")]))
    assert bans == []
    assert len(members) == 3


def test_a_redelivered_batch_changes_nothing(redis_url):
    batch = requests([f"/p{i}" for i in range(4)])
    bans, _, members = asyncio.run(record(redis_url, [batch, batch, batch]))
    assert bans == [] and len(members) == 4
    # After a ban, the lines that caused it do not ban again.
    full = requests([f"/p{i}" for i in range(5)])
    bans, _, _ = asyncio.run(record(redis_url, [full, full]))
    assert len(bans) == 1


def test_paths_spread_wider_than_findtime_do_not_ban(redis_url):
    """A path every 20 s, each recorded as it comes: never 5 within a minute."""
    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pf:", {"web": probing()})
        bans = []
        for i in range(10):
            at = NOW + 20 * i
            bans += await windows.record([Observed("web", ATTACKER, "host-a", at, f"s:{i}", "x",
                                                   value=digest(f"/p{i}"))], at)
        await client.aclose()
        return bans
    assert asyncio.run(go()) == []


def test_weighted_probe_paths_count_more(redis_url):
    """Two probe-only paths of weight 2 and one ordinary path reach 5."""
    batches = [requests(["/.env", "/.git/config"], weight=2, tag="p"), requests(["/x"], start=NOW - 5)]
    bans, records, _ = asyncio.run(record(redis_url, batches))
    assert [b.address for b in bans] == [ATTACKER]
    assert records[ATTACKER].failures == 3  # values, not weights


def test_values_recorded_out_of_order_still_ban(redis_url):
    paths = requests([f"/p{i}" for i in range(5)])
    bans, _, _ = asyncio.run(record(redis_url, [paths[3:], paths[:3]]))
    assert len(bans) == 1


def test_failures_without_a_value_are_not_counted(redis_url):
    blank = [Observed("web", ATTACKER, "host-a", NOW - 1 - i, f"b:{i}", "x") for i in range(10)]
    assert asyncio.run(record(redis_url, [blank]))[0] == []


def test_hostile_paths_reach_redis_only_as_digests(redis_url):
    """An 8 KB path, quotes, an address: the window holds 'WEIGHT:16 hex digits' only."""
    hostile = ["/" + "a" * 8192, '/x" 198.51.100.66 "', "/198.51.100.66", "/\u00e9\\x22"]
    _, _, members = asyncio.run(record(redis_url, [requests(hostile)]))
    assert len(members) == 4
    assert all(re.fullmatch(rb"1:[0-9a-f]{16}", m) for m in members)


def test_a_flood_of_paths_keeps_a_bounded_window(redis_url):
    """10,000 different paths in one read: one ban, and what is kept stays small."""
    flood = requests([f"/scan/{i}" for i in range(10_000)], start=NOW - 50)
    for i, o in enumerate(flood):
        flood[i] = o._replace(time=NOW - 50 + i / 1000)
    bans, _, members = asyncio.run(record(redis_url, [flood], maxretry=MAX_DISTINCT))
    assert [b.address for b in bans] == [ATTACKER]
    assert len(members) < MAX_DISTINCT


@pytest.mark.parametrize("split", [True, False])
def test_one_call_and_three_calls_ban_the_same(single_redis_url, split):
    paths = requests([f"/p{i}" for i in range(7)])
    bans, records, _ = asyncio.run(record(single_redis_url, [paths[:2], paths[2:], paths], split=split))
    assert [(b.address, b.duration) for b in bans] == [(ATTACKER, 600)]
    assert records[ATTACKER].window == "distinct"


def test_a_threshold_beyond_the_values_kept_is_refused():
    with pytest.raises(msgspec.ValidationError, match="at most"):
        probing(maxretry=MAX_DISTINCT + 1)
    with pytest.raises(msgspec.ValidationError, match="only a rule with window: distinct"):
        probing(window="sliding", ignore_values=["x"])
    with pytest.raises(msgspec.ValidationError, match="ignore_values"):
        probing(ignore_values=["("])
    with pytest.raises(msgspec.ValidationError, match="distinct window only"):
        probing(window="sliding", patterns=[{"re": "<HOST>", "weight": 5}])


def test_a_distinct_rule_whose_pattern_captures_no_value_is_refused():
    from pyfilter.detector.matching import Matcher
    from pyfilter.detector.matching.compiled import RuleError
    with pytest.raises(RuleError, match="captures no value"):
        Matcher({"web": probing(patterns=["<HOST> 404"])})
