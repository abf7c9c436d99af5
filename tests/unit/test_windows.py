"""The failure windows, against a real redis-server: thresholds, idempotency, escalation."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from pyfilter.common import messages
from pyfilter.common.config import Escalation, Rule, Seconds
from pyfilter.common.keys import Keys
from pyfilter.detector.windows import Observed, Windows
from tests.conftest import aclient

NOW = 1_800_000_000.0
ATTACKER = "198.51.100.7"
KEYS = Keys("pf:")


@pytest.fixture
def redis_url(any_redis_url):
    """Every test here runs on a single Redis and on a 3-primary Redis Cluster."""
    return any_redis_url


def make_rule(**kw) -> Rule:
    base = dict(service="sshd", sources=["auth"], patterns=["x"], maxretry=3,
                findtime=Seconds(60), bantime=Seconds(600))
    base.update(kw)
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


def failures(n: int, start: float = NOW - 10, step: float = 1.0, address: str = ATTACKER,
             rule: str = "sshd", tag: str = "f") -> list[Observed]:
    return [Observed(rule, address, "host-a", start + i * step, f"{tag}:{i}", f"line {i}") for i in range(n)]


def run(coro):
    return asyncio.run(coro)


async def record(url: str, rules: dict[str, Rule], batches: list[list[Observed]], now: float = NOW):
    client = aclient(url)
    windows = Windows(client, "pf:", rules)
    bans = []
    for batch in batches:
        bans += await windows.record(batch, now)
    decisions = await client.xrange(KEYS.decisions)
    await client.aclose()
    return bans, [messages.decode_decision(d[b"m"]) for _, d in decisions]


def test_ban_when_maxretry_failures_fall_within_findtime(redis_url):
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [failures(2), failures(1, start=NOW - 5, tag="g")]))
    assert [(b.address, b.rule, b.duration) for b in bans] == [(ATTACKER, "sshd", 600)]
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.action, d.address, d.origin, d.host, d.duration) == ("ban", ATTACKER, "detector", "host-a", 600)
    assert d.expires_at == pytest.approx(NOW + 600)


def test_failures_spread_wider_than_findtime_do_not_ban(redis_url):
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [failures(3, start=NOW - 150, step=40)]))
    assert bans == [] and decisions == []


def test_redelivered_batch_changes_nothing(redis_url):
    batch = failures(2)
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [batch, batch, batch]))
    assert bans == [] and decisions == []
    # And after a ban, replaying the lines that caused it does not ban again.
    full = failures(3)
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [full, full]))
    assert len(bans) == 1 and len(decisions) == 1


def test_line_older_than_window_on_arrival_cannot_ban(redis_url):
    bans, _ = run(record(redis_url, {"sshd": make_rule()}, [failures(5, start=NOW - 3600)]))
    assert bans == []


def test_record_names_host_lines_and_count(redis_url):
    async def go():
        await record(redis_url, {"sshd": make_rule()}, [failures(3)])
        client = aclient(redis_url)
        rec = messages.decode_record(await client.get(Keys("pf:").ban(ATTACKER)))
        score = await client.zscore(Keys("pf:").active_bans, ATTACKER)
        await client.aclose()
        return rec, score
    rec, score = run(go())
    assert (rec.address, rec.rule, rec.host, rec.failures, rec.ban_count) == (ATTACKER, "sshd", "host-a", 3, 1)
    assert rec.lines == ["line 0", "line 1", "line 2"]
    assert rec.first_failure == NOW - 10 and rec.last_failure == NOW - 8
    assert score == pytest.approx(NOW + 600)


def test_repeat_offender_ban_escalates_up_to_maxtime(redis_url):
    rule = make_rule(escalation=Escalation(factor=2, maxtime=Seconds(1500)))
    durations = []

    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pf:", {"sshd": rule})
        now = NOW
        for round_ in range(4):
            bans = await windows.record(failures(3, start=now - 5, tag=f"r{round_}"), now)
            durations.extend(b.duration for b in bans)
            now += 2000  # after the previous ban expired
        await client.aclose()
    run(go())
    assert durations == [600, 1200, 1500, 1500]


def test_instant_rule_bans_on_first_failure(redis_url):
    bans, _ = run(record(redis_url, {"wp": make_rule(mode="instant")}, [failures(1, rule="wp")]))
    assert [b.rule for b in bans] == ["wp"]


def test_consecutive_rule_resets_on_long_gap(redis_url):
    rule = make_rule(mode="consecutive", failed_attempts=3, request_time=Seconds(5))
    gap = failures(2, start=NOW - 30, step=1, tag="a") + failures(2, start=NOW - 10, step=1, tag="b")
    bans, _ = run(record(redis_url, {"c": rule}, [[o._replace(rule="c") for o in gap]]))
    assert bans == []
    close = [o._replace(rule="c") for o in failures(3, start=NOW - 3, step=1, tag="c")]
    bans, _ = run(record(redis_url, {"c": rule}, [close]))
    assert len(bans) == 1


def test_permanent_ban_has_no_expiry(redis_url):
    bans, decisions = run(record(redis_url, {"sshd": make_rule(bantime=Seconds(-1))}, [failures(3)]))
    assert bans[0].duration == -1
    assert decisions[0].expires_at is None


def test_address_banned_repeatedly_by_any_rule_gets_the_recidive_ban(redis_url):
    rules = {"sshd": make_rule(), "postfix": make_rule(),
             "recidive": make_rule(maxretry=3, findtime=Seconds(86400), bantime=Seconds(604800))}

    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pf:", rules)
        found = []
        now = NOW
        for round_, rule in enumerate(["sshd", "postfix", "sshd"]):
            batch = [o._replace(rule=rule) for o in failures(3, start=now - 5, tag=f"r{round_}")]
            found += await windows.record(batch, now)
            now += 700  # the previous ban ran out
        await client.aclose()
        return found
    found = run(go())
    assert [(b.rule, b.duration) for b in found] == [
        ("sshd", 600), ("postfix", 600), ("sshd", 600), ("recidive", 604800)]


class Died(Exception):
    """A detector killed between two of the ledger's calls."""


@pytest.mark.parametrize("dies_before", ["_ban_crossings", "_confirm_crossings"])
def test_a_detector_dying_between_window_and_ban_loses_no_ban(redis_url, dies_before):
    """On Cluster a crossing bans in three calls (on a single Redis too, here), and the
    window keeps its crossing pending until the ban is confirmed: a detector that dies
    after counting the failures (or after writing the ban) and before the next call
    hands nothing over, yet the redelivered lines, though dropped as duplicates, bring
    the ban out exactly once, and recidive counts it once."""
    dying_detector_bans_once(redis_url, dies_before, "three calls")


@pytest.mark.parametrize("dies_before", ["_ban_crossings", "_confirm_crossings"])
def test_one_call_finishes_what_a_dying_detector_left_pending(single_redis_url, dies_before):
    """So does a single Redis's one call (record_and_ban), for crossings a detector of
    the version before it (three calls) left pending."""
    dying_detector_bans_once(single_redis_url, dies_before, "one call")


def dying_detector_bans_once(redis_url: str, dies_before: str, recovers_with: str) -> None:
    rules = {"sshd": make_rule(), "recidive": make_rule(maxretry=2, findtime=Seconds(86400),
                                                         bantime=Seconds(604800))}

    async def go():
        client = aclient(redis_url)

        def windows(split: bool) -> Windows:
            made = Windows(client, "pf:", rules)
            made._ledger.split = split
            return made
        found = []
        now = NOW
        for round_ in range(2):
            batch = failures(3, start=now - 5, tag=f"r{round_}")
            dying = windows(split=True)

            async def die(*_args, **_kw):
                raise Died()
            setattr(dying._ledger, dies_before, die)
            with pytest.raises(Died):
                await dying.record(batch, now)
            # Another replica claims the batch and finds every line counted already.
            found += await windows(recovers_with == "three calls").record(batch, now + 30)
            found += await windows(recovers_with == "three calls").record(batch, now + 31)  # and again: nothing more
            now += 700  # the previous ban ran out
        decisions = [messages.decode_decision(d[b"m"]) for _, d in await client.xrange(KEYS.decisions)]
        await client.aclose()
        return found, decisions
    found, decisions = run(go())
    assert [(b.rule, b.duration) for b in found] == [("sshd", 600), ("sshd", 600), ("recidive", 604800)]
    assert [(d.rule, d.duration) for d in decisions] == [("sshd", 600), ("sshd", 600), ("recidive", 604800)]


def test_recidive_off_means_no_recidive_bans(redis_url):
    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pf:", {"sshd": make_rule()})
        found, now = [], NOW
        for round_ in range(4):
            found += await windows.record(failures(3, start=now - 5, tag=f"r{round_}"), now)
            now += 700
        await client.aclose()
        return found
    assert {b.rule for b in run(go())} == {"sshd"}


def test_failures_recorded_out_of_order_still_ban(redis_url):
    # Replicas may record batches in any order: 0, 20 and 40 s apart with a
    # 60 s window must ban whichever arrives last.
    spread = failures(3, start=NOW - 50, step=20)
    bans, _ = run(record(redis_url, {"sshd": make_rule()}, [[spread[2]], [spread[0]], [spread[1]]]))
    assert [b.address for b in bans] == [ATTACKER]


def test_crossing_again_while_banned_decides_nothing(redis_url):
    # Lines of a banned address keep coming (other hosts, or already in flight):
    # no second decision until the ban ran out, whatever "now" says.
    async def go():
        client = aclient(redis_url)
        windows = Windows(client, "pf:", {"sshd": make_rule()})
        found = []
        for round_ in range(4):
            now = NOW + round_ * 60
            found += await windows.record(failures(3, start=now - 5, tag=f"r{round_}"), now)
        found += await windows.record(failures(3, start=NOW + 700 - 5, tag="late"), NOW + 700)
        await client.aclose()
        return found
    assert [b.duration for b in run(go())] == [600, 600]


def test_a_batch_larger_than_one_script_call_bans_the_same(redis_url):
    from pyfilter.common import ledger
    many = [f"2001:db8:c::{i:x}" for i in range(1, 700)]
    batch = [o for a in many for o in failures(3, address=a, tag=a)]
    assert len(batch) > 2 * ledger.FAILURES_PER_CALL
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [batch]))
    assert {b.address for b in bans} == set(many) == {d.address for d in decisions}


def test_every_window_key_expires(redis_url):
    """Windows, their lines, resets, consecutive state and connection records all
    carry a TTL: nothing a failure writes stays in Redis for ever."""
    rules = {"sshd": make_rule(), "web": make_rule(mode="consecutive", failed_attempts=2, request_time=Seconds(5))}
    connection = [Observed("sshd", "198.51.100.8", "host-a", NOW - 5, "c:1", "closed", "host-a:auth:7", True),
                  Observed("sshd", "198.51.100.8", "host-a", NOW - 4, "c:2", "failed", "host-a:auth:7", False)]
    run(record(redis_url, rules, [failures(3), failures(1, rule="web", tag="w"), connection,
                                  failures(2, rule="web", address="198.51.100.9", tag="v")]))

    async def ttls() -> dict[str, int]:
        client = aclient(redis_url)
        found = {k.decode(): await client.ttl(k) async for k in client.scan_iter("pf:window*")}
        await client.aclose()
        return found

    found = run(ttls())
    kinds = {k.split(":")[1] for k in found}
    assert {"window", "window-lines", "window-state", "window-conns"} <= kinds, found
    assert all(ttl > 0 for ttl in found.values()), found


def test_ban_record_and_ban_count_expire(redis_url):
    """A ban record lasts a day past its ban, the count `escalation.memory`: Redis does not
    keep something for every address ever banned. Permanent bans and memory -1 keep theirs."""
    rules = {"sshd": make_rule(escalation=Escalation(memory=Seconds(3600))),
             "forever": make_rule(bantime=Seconds(-1), escalation=Escalation(memory=Seconds(-1)))}
    run(record(redis_url, rules, [failures(3), failures(3, rule="forever", address="198.51.100.9")]))

    async def expiry() -> dict[str, int]:
        client = aclient(redis_url)
        found = {k.decode(): await client.expiretime(k) async for k in client.scan_iter("pf:{bans}:ban*:*")}
        ttl = await client.ttl(KEYS.ban_count(ATTACKER))
        await client.aclose()
        return found, ttl

    found, count_ttl = run(expiry())
    assert found[KEYS.ban(ATTACKER)] == NOW + 600 + 86400
    assert 3500 < count_ttl <= 3600
    assert found[KEYS.ban("198.51.100.9")] == -1 and found[KEYS.ban_count("198.51.100.9")] == -1


def test_one_address_with_thousands_of_failures_in_one_read(redis_url):
    """A flood from one address is one group of one script call: it bans, and the
    ban keeps the last lines as evidence."""
    bans, decisions = run(record(redis_url, {"sshd": make_rule()}, [failures(20_000, step=0.001)]))
    assert [b.address for b in bans] == [ATTACKER] and len(decisions) == 1

    async def evidence() -> list[str]:
        client = aclient(redis_url)
        rec = messages.decode_record(await client.get(KEYS.ban(ATTACKER)))
        await client.aclose()
        return rec.lines

    assert len(run(evidence())) == 10


def expected_trigger(window: list[float], fresh: list[float], span: float, threshold: int) -> float | None:
    """The rule, one fresh failure at a time: the first failure (in time order)
    that completes a stretch of `threshold` failures within `span` holding it;
    the latest of those over the fresh failures."""
    times = sorted(window + fresh)
    best = None
    for ts in fresh:
        for hi in range(len(times)):
            inside = [t for t in times[:hi + 1] if times[hi] - t <= span]
            if len(inside) >= threshold and inside[0] <= ts <= times[hi]:
                best = times[hi] if best is None else max(best, times[hi])
                break
    return best


def test_the_crossing_check_agrees_with_its_definition_on_random_windows(redis_url):
    """Earlier failures (one call), then fresh ones in any order (a second call):
    the ban's trigger, its last failure, is what the definition gives."""
    rng = random.Random(7)
    cases = []
    for n in range(150):
        span, threshold = rng.choice([5, 10, 30]), rng.randint(2, 5)
        # Within `span` of now: the window drops older failures before any check.
        earlier = sorted({NOW - rng.randint(0, span) for _ in range(rng.randint(0, threshold))})
        fresh = sorted({NOW - rng.randint(0, span) for _ in range(rng.randint(1, 2 * threshold))} - set(earlier))
        if not fresh or expected_trigger([], earlier, span, threshold) is not None:
            continue  # the earlier call must not ban by itself
        cases.append((f"198.51.100.{n % 250}" if n < 250 else None, span, threshold, earlier, fresh))

    async def check() -> list[tuple]:
        client = aclient(redis_url)
        wrong = []
        for address, span, threshold, earlier, fresh in cases:
            await client.flushall()
            rule = make_rule(maxretry=threshold, findtime=Seconds(span))
            windows = Windows(client, "pf:", {"sshd": rule})

            def observed(times: list[float], tag: str) -> list[Observed]:
                shuffled = rng.sample(times, len(times))
                return [Observed("sshd", address, "host-a", t, f"{tag}:{t}", "line") for t in shuffled]

            await windows.record(observed(earlier, "e"), NOW)
            bans = await windows.record(observed(fresh, "f"), NOW)
            raw = await client.get(KEYS.ban(address))
            got = messages.decode_record(raw).last_failure if raw else None
            want = expected_trigger(earlier, fresh, span, threshold)
            if bool(bans) != (want is not None) or got != want:
                wrong.append((span, threshold, earlier, fresh, want, got))
        await client.aclose()
        return wrong

    assert len(cases) > 50
    assert run(check()) == []

