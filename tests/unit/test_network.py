"""Per-network widening of bans (docs/rules.md, "Per network") against a real redis-server,
single and a 3-primary Cluster: the ledger bans a network where it writes the ban that
fills it, never over what must not be banned, and a network's ban lives beside its
members' own."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

import msgspec
import pytest

from pyfilter.common import bans, hosts
from pyfilter.common.config import ConfigError, NetworkConfig, Seconds, load
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger, NewBan
from pyfilter.common.network import Step, Widening
from pyfilter.detector.windows import Observed, Windows
from tests.conftest import aclient
from tests.unit.test_geo import write_db
from tests.unit.test_ledger import Watched, record
from tests.unit.test_windows import make_rule

KEYS = Keys("t:")
THREE = NetworkConfig(enabled=True, threshold=3, findtime=Seconds(3600), bantime=Seconds(60))


@pytest.fixture
def redis_url(any_redis_url):
    """Every test here runs on a single Redis (one call per read) and on Redis Cluster (three)."""
    return any_redis_url


def widening(cfg: NetworkConfig = THREE, own=(), whitelist=(), geo: Geo | None = None) -> Widening:
    w = Widening(cfg, geo)
    w.judge_with(set(own), list(whitelist))
    return w


def detector(client, w: Widening | None, ipv6_prefix: int = 128) -> Windows:
    """A detector's windows where every failure bans at once (for 600 s)."""
    rules = {"sshd": make_rule(window="instant", bantime=Seconds(600), ipv6_prefix=ipv6_prefix)}
    return Windows(client, KEYS.prefix, rules, w)


async def fail_once(windows: Windows, addresses: list[str], ago: float = 0, tag: str = "l") -> list[str]:
    """One failure from each address (each bans), in one read `ago` seconds ago; returns what was banned."""
    now = time.time() - ago
    observed = [Observed("sshd", a, "host-a", now, f"{tag}:{a}", f"failed from {a}") for a in addresses]
    return [b.address for b in await windows.record(observed, now)]


def scenario(redis_url: str, body):
    async def go():
        client = aclient(redis_url)
        try:
            return await body(client)
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_a_24_with_threshold_bans_is_banned_and_lists_its_members(redis_url):
    async def body(client):
        windows = detector(client, widening())
        await fail_once(windows, ["198.51.100.1", "198.51.100.2"])
        before = await bans.active(client, KEYS)
        await fail_once(windows, ["198.51.100.3", "198.51.100.77"], tag="m")
        return before, await bans.active(client, KEYS), await bans.record(client, KEYS, "198.51.100.0/24")

    before, after, wide = scenario(redis_url, body)
    assert "198.51.100.0/24" not in before  # two of three: nothing wider yet
    assert set(after) == {"198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.77", "198.51.100.0/24"}
    assert (wide.rule, wide.window, wide.origin, wide.duration) == ("network", "network", "detector", 60)
    assert wide.expires_at == pytest.approx(time.time() + 60, abs=10)
    assert set(wide.evidence) >= {"198.51.100.1", "198.51.100.2"} and len(wide.evidence) == wide.failures >= 3
    assert "198.51.100.0/24" in wide.reason


def test_bans_older_than_findtime_do_not_count(redis_url):
    async def body(client):
        windows = detector(client, widening())
        await fail_once(windows, ["198.51.100.1", "198.51.100.2"], ago=7200)
        await fail_once(windows, ["198.51.100.3"])
        return await bans.record(client, KEYS, "198.51.100.0/24")

    assert scenario(redis_url, body) is None


def test_stale_bans_do_not_count_even_when_more_expire_at_once_than_are_forgotten_per_ban(redis_url):
    """Forgetting by age takes 100 units per ban: a network's own count checks the age of its units."""
    async def body(client):
        windows = detector(client, widening())
        await fail_once(windows, [f"2001:db8:{i:x}::1" for i in range(1, 76)], ago=7300)  # 150 units
        await fail_once(windows, ["198.51.100.1", "198.51.100.2"], ago=7200, tag="m")
        await fail_once(windows, ["198.51.100.3"], tag="n")
        return await bans.record(client, KEYS, "198.51.100.0/24")

    assert scenario(redis_url, body) is None


def test_widening_is_off_unless_configured_and_manual_bans_never_widen(redis_url):
    async def body(client):
        await fail_once(detector(client, None), ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        ledger = Ledger(client, KEYS)
        ledger.widening = widening()
        await ledger.ban([NewBan(record(f"198.51.100.{i}")) for i in range(10, 20)])
        return await bans.active(client, KEYS)

    assert not [a for a in scenario(redis_url, body) if "/" in a]


@pytest.mark.parametrize("kept", ["whitelist", "gateway", "resolver", "container network"])
def test_never_widened_over_what_must_not_be_banned(redis_url, kept):
    """The whitelist, and what any protected host published as its own (its enforcer's
    interfaces, gateways and resolvers; its collector's container networks)."""
    async def body(client):
        whitelist = [ipaddress.ip_network("198.51.100.128/28")] if kept == "whitelist" else []
        own = {"gateway": "198.51.100.254", "resolver": "2001:db8:1::53",
               "container network": "198.51.100.192/27"}.get(kept)
        if own:
            await hosts.publish(client, KEYS, "web1", {ipaddress.ip_address(own)} if "/" not in own
                                else {ipaddress.ip_network(own)})
        windows = detector(client, widening(own=await hosts.load(client, KEYS), whitelist=whitelist))
        await fail_once(windows, ["198.51.100.1", "198.51.100.2", "198.51.100.3",
                                  "2001:db8:1:5::1", "2001:db8:1:5::2", "2001:db8:1:5::3"])
        return {a for a in await bans.active(client, KEYS) if "/" in a}

    wide = scenario(redis_url, body)
    if kept == "resolver":  # in the /48, not in the /64
        assert wide == {"198.51.100.0/24", "2001:db8:1:5::/64"}
    else:
        assert wide == {"2001:db8:1:5::/64"}


def account_rule():
    """sshd with its per-account window (20 failures on one account from 10 addresses in
    10 minutes); 5 failures per address for its own window."""
    return make_rule(patterns=["(?P<user>x)"], maxretry=5, findtime=Seconds(600), per_account=True)


def account_attack(attackers: list[str], now: float, tag: str = "a") -> list[Observed]:
    """Each address fails twice on root, a second apart: only the account's window crosses."""
    return [Observed("sshd", a, "host-a", now - 300 + n * len(attackers) + i, f"{tag}:{n}:{i}", "x", user="root")
            for n in range(2) for i, a in enumerate(attackers)]


@pytest.mark.parametrize("kept", ["nothing", "whitelist", "gateway"])
def test_account_bans_widen_like_any_ban(redis_url, kept):
    """10 addresses of one /24 banned by a per-account window ban the /24 (threshold 10),
    unless the /24 holds a whitelisted network or a host's own address. Read again: nothing more."""
    cfg = NetworkConfig(enabled=True, threshold=10, findtime=Seconds(3600), bantime=Seconds(60))
    attackers = [f"198.51.100.{i}" for i in range(1, 11)] + ["2001:db8:7::1", "2001:db8:8::1"]

    async def body(client):
        whitelist = [ipaddress.ip_network("198.51.100.128/28")] if kept == "whitelist" else []
        if kept == "gateway":
            await hosts.publish(client, KEYS, "web1", {ipaddress.ip_address("198.51.100.254")})
        w = widening(cfg, own=await hosts.load(client, KEYS), whitelist=whitelist)
        windows = Windows(client, KEYS.prefix, {"sshd": account_rule()}, w)
        now = time.time()
        banned = await windows.record(account_attack(attackers, now), now)
        state = sorted(await bans.active(client, KEYS)), await client.xlen(KEYS.decisions)
        assert await windows.record(account_attack(attackers, now), now) == []
        again = sorted(await bans.active(client, KEYS)), await client.xlen(KEYS.decisions)
        return banned, state, again, await bans.record(client, KEYS, "198.51.100.0/24")

    banned, state, again, wide = scenario(redis_url, body)
    assert sorted(b.address for b in banned) == sorted(attackers)
    assert state == again
    if kept != "nothing":
        assert wide is None and not [a for a in state[0] if "/" in a]
        return
    assert set(state[0]) == {*attackers, "198.51.100.0/24"}
    assert (wide.rule, wide.window, wide.failures) == ("network", "network", 10)
    assert sorted(wide.evidence) == sorted(attackers[:10])


def test_ipv6_widens_to_the_64_then_to_the_48_by_its_64s(redis_url):
    async def body(client):
        windows = detector(client, widening())
        await fail_once(windows, ["2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1::3"])
        first = {a for a in await bans.active(client, KEYS) if "/" in a}
        # Many addresses of one /64 are one unit of the /48: no /48 yet.
        await fail_once(windows, ["2001:db8:1:2::1"], tag="m")
        second = {a for a in await bans.active(client, KEYS) if "/" in a}
        await fail_once(windows, ["2001:db8:1:3::9"], tag="n")
        return first, second, await bans.record(client, KEYS, "2001:db8:1::/48")

    first, second, wide = scenario(redis_url, body)
    assert first == second == {"2001:db8:1:1::/64"}
    assert wide is not None and wide.window == "network" and wide.failures == 3
    # Per /64 its latest banned address (the first /64's three came in one read: any of them).
    assert len(wide.evidence) == 3 and {"2001:db8:1:2::1", "2001:db8:1:3::9"} <= set(wide.evidence)
    assert len(set(wide.evidence) & {"2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1::3"}) == 1


def test_members_that_are_networks_count_once_and_wider_ones_nowhere(redis_url):
    """A rule that bans IPv6 attackers by /64: each /64 is a unit of its /48. A ban wider
    than a step, or an address not in its one form, counts in nothing."""
    async def body(client):
        windows = detector(client, widening(), ipv6_prefix=64)
        await fail_once(windows, ["2001:db8:2:1::/64", "2001:db8:2:2::/64"])
        await fail_once(windows, ["2001:db8:3::/40", "2001:db8:3::/41", "2001:db8:3:0:0:0:0:1"], tag="m")
        await fail_once(windows, ["2001:db8:2:3::/64"], tag="n")
        return {a for a in await bans.active(client, KEYS) if "/" in a}

    assert scenario(redis_url, body) == {
        "2001:db8:2:1::/64", "2001:db8:2:2::/64", "2001:db8:2:3::/64", "2001:db8:2::/48",  # members, and their /48
        "2001:db8:3::/40", "2001:db8:3::/41"}  # banned as they came, widened to nothing


def test_the_network_ban_expires_and_its_members_keep_theirs(redis_url):
    async def body(client):
        await fail_once(detector(client, widening()), ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        later = time.time() + 61
        await Ledger(client, KEYS).prune(later)
        return await bans.active(client, KEYS, later)

    assert set(scenario(redis_url, body)) == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}


def test_unbanning_the_network_keeps_its_members_and_later_members_are_still_banned(redis_url):
    async def body(client):
        windows = detector(client, widening())
        await fail_once(windows, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        await fail_once(windows, ["198.51.100.4"], tag="m")  # banned while the /24 is
        count = await client.get(KEYS.ban_count("198.51.100.0/24"))
        await Ledger(client, KEYS).unban(["198.51.100.0/24"], "host-a", "a carrier's NAT")
        # It counts afresh: the next member alone does not ban it again.
        await fail_once(windows, ["198.51.100.5"], tag="n")
        return count, await bans.active(client, KEYS), await bans.record(client, KEYS, "198.51.100.4")

    count, active, later = scenario(redis_url, body)
    assert count == b"1"
    assert set(active) == {f"198.51.100.{i}" for i in range(1, 6)}
    assert later is not None and later.rule == "sshd" and later.expires_at == pytest.approx(time.time() + 600, abs=10)


def test_a_redelivered_read_changes_nothing(redis_url):
    async def body(client):
        windows = detector(client, widening())
        addresses = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        await fail_once(windows, addresses)
        state = sorted(await bans.active(client, KEYS)), await client.xlen(KEYS.decisions)
        assert await fail_once(windows, addresses) == []
        return state, (sorted(await bans.active(client, KEYS)), await client.xlen(KEYS.decisions))

    first, again = scenario(redis_url, body)
    assert first == again and len(first[0]) == 4


@pytest.mark.parametrize("split", [False, True], ids=["one call", "three calls"])
def test_widening_writes_only_the_keys_it_is_given_one_slot_per_call(single_redis_url, split):
    async def body(client):
        windows = detector(client, widening())
        ledger = Watched(client, KEYS)
        ledger.split, ledger.widening = split, windows._ledger.widening
        windows._ledger = ledger
        await fail_once(windows, ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8:1:1::1"])
        return ledger.given, {k.decode() for k in await client.keys("*")}, ledger.tags, ledger.split

    given, written, tags, split = scenario(single_redis_url, body)
    assert KEYS.ban("198.51.100.0/24") in written and written <= given, written - given
    if split:
        assert all(len(t) == 1 for t in tags) and {"bans"} in tags


@pytest.mark.parametrize("split", [False, True], ids=["one call", "three calls"])
def test_account_bans_widening_write_only_the_keys_they_are_given(single_redis_url, split):
    """Bans that widen take the three calls' way for account windows even on a single Redis:
    every key given, each call in one slot."""
    async def body(client):
        windows = Windows(client, KEYS.prefix, {"sshd": account_rule()}, widening())
        ledger = Watched(client, KEYS)
        ledger.split, ledger.widening = split, windows._ledger.widening
        windows._ledger = ledger
        now = time.time()
        await windows.record(account_attack([f"198.51.100.{i}" for i in range(1, 13)], now), now)
        return ledger.given, {k.decode() for k in await client.keys("*")}, ledger.tags

    given, written, tags = scenario(single_redis_url, body)
    assert KEYS.ban("198.51.100.0/24") in written and written <= given, written - given
    if split:
        assert all(len(t) == 1 for t in tags) and {"bans"} in tags


def write_asn_db(path: Path) -> str:
    owner = {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Hosting"}
    return write_db(path, "GeoLite2-ASN", {"198.51.100.0/26": owner, "198.51.100.64/26": owner,
                                           "2001:db8::/32": {**owner, "autonomous_system_number": 64501}})


def test_by_owner_each_member_network_is_banned_once_the_owner_fills(redis_url, tmp_path):
    """With an ASN database: three banned addresses of AS64500 (no /24 step here) ban the
    database's network of the ban that filled it, then of each later member; a database
    network wider than the widest allowed is cut to it."""
    geo = Geo(asn_db=write_asn_db(tmp_path / "asn.mmdb"))
    cfg = NetworkConfig(enabled=True, threshold=3, bantime=Seconds(60), ipv4=[], ipv6=[], asn=True,
                        widest_v6=48)

    async def body(client):
        windows = detector(client, widening(cfg, geo=geo))
        await fail_once(windows, ["198.51.100.1", "198.51.100.2"])
        await fail_once(windows, ["198.51.100.65"], tag="m")
        first = {a for a in await bans.active(client, KEYS) if "/" in a}
        await fail_once(windows, ["198.51.100.3"], tag="n")
        await fail_once(windows, ["2001:db8:7::1", "2001:db8:8::1", "2001:db8:9::1"], tag="o")
        return first, {a for a in await bans.active(client, KEYS) if "/" in a}, \
            await bans.record(client, KEYS, "198.51.100.64/26")

    first, later, wide = scenario(redis_url, body)
    assert first == {"198.51.100.64/26"}
    assert later == {"198.51.100.64/26", "198.51.100.0/26", "2001:db8:9::/48"}
    assert "AS64500" in wide.reason and set(wide.evidence) == {"198.51.100.1", "198.51.100.2", "198.51.100.65"}


def test_steps_are_planned_from_values():
    w = widening(NetworkConfig(enabled=True, ipv4=[28, 26], widest_v4=26), own={ipaddress.ip_address("198.51.100.70")})
    assert w.steps("198.51.100.7") == [Step("198.51.100.0/28", "198.51.100.7", "198.51.100.0/28"),
                                       Step("198.51.100.0/26", "198.51.100.0/28", "198.51.100.0/26")]
    assert w.steps("198.51.100.71") == []  # its /28 holds a host's own address, and so does every wider step
    assert widening().steps("127.0.0.1") == widening().steps("fe80::1") == []
    assert widening().steps("not an address") == widening().steps("::ffff:198.51.100.7") == []


@pytest.mark.parametrize("network, error", [
    ({"ipv4": [16, 24]}, "narrowest first"),
    ({"ipv4": [24, 24]}, "narrowest first"),
    ({"ipv6": [64, 24]}, "wider than widest_v6"),
    ({"ipv4": [8], "widest_v4": 16}, "wider than widest_v4"),
    ({"threshold": 1}, "threshold"),
    ({"bantime": "0s"}, "bantime"),
])
def test_bad_network_settings_are_refused_at_load(tmp_path, network, error):
    path = tmp_path / "pyfilter.yaml"
    path.write_text(msgspec.json.encode({"network": network}).decode())
    with pytest.raises(ConfigError, match=error):
        load(path, rules=False)


def test_networks_are_written_as_ipaddress_writes_them():
    """The plan writes networks with inet_ntop; the api and the enforcer read them with
    ipaddress: a network banned and a network unbanned by hand must be one key."""
    import random

    rng = random.Random(17)
    w = widening(NetworkConfig(enabled=True, ipv6=[112, 96, 80, 64, 56, 48, 40, 32], ipv4=[28, 24, 20, 16]))
    for _ in range(3000):
        base = rng.choice([ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("198.51.100.0/24")])
        value = int(base.network_address) | rng.getrandbits(base.max_prefixlen - base.prefixlen) \
            & rng.choice([0xFFFF, 0xFF00FF, (1 << 96) - 1, 1])
        address = str(ipaddress.ip_address(value))
        for step in w.steps(address):
            assert step.target == str(ipaddress.ip_network(step.target)), step
            assert ipaddress.ip_address(address) in ipaddress.ip_network(step.target)
