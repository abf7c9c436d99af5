"""The nftables backend against the real kernel, always inside a network namespace of our own.

Each test makes a fresh namespace (`ip netns add pf-test-...`), runs the
backend with this thread switched into it, checks the outcome with
`ip netns exec NAME nft -j ...`, and deletes the namespace. The machine's own
firewall and network are never touched. Attacker addresses come only from
198.51.100.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest

from pyfilter.enforcer.backends import make_backend
from pyfilter.enforcer.backends.base import Ban
from pyfilter.enforcer.backends.nftables import NftablesBackend
from tests.unit.netns import PORT, connect_result, connects, link, new_netns, run_backend, sh, tcp_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
    reason="needs root, ip and nft (network namespaces and nftables)",
)

ip = ipaddress.ip_address
net = ipaddress.ip_network


class Firewall:
    """A namespace and a way to run a scenario against a fresh, initialised backend in it."""

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def run(self, scenario, init: bool = True):
        return run_backend(self.netns, NftablesBackend, scenario, init)

    def nft(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.netns, "nft", *args)

    def nft_json(self, *args: str) -> list[dict]:
        return json.loads(self.nft("-j", *args))["nftables"]

    def kernel_set(self, name: str) -> dict[str, int | None]:
        """What `nft` sees in one of our sets: element text -> timeout in seconds, None if none."""
        found: dict[str, int | None] = {}
        for item in self.nft_json("list", "set", "inet", "pyfilter", name):
            for elem in item.get("set", {}).get("elem", []):
                timeout = None
                if isinstance(elem, dict) and "elem" in elem:
                    timeout = elem["elem"].get("timeout")
                    elem = elem["elem"]["val"]
                if isinstance(elem, dict) and "prefix" in elem:
                    elem = f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
                found[elem] = timeout
        return found

    def chain_rules(self, chain: str) -> list[str]:
        return [line.strip() for line in self.nft("list", "chain", "inet", "pyfilter", chain).splitlines()
                if "saddr" in line]


@pytest.fixture
def firewall():
    with new_netns() as name:
        yield Firewall(name)


# -- init --------------------------------------------------------------------------


EXPECTED_RULES = [
    'ip saddr @ban4 drop comment "pyfilter ban4 v1"',
    'ip6 saddr @ban6 drop comment "pyfilter ban6 v1"',
    'ip saddr @ban4net drop comment "pyfilter ban4net v1"',
    'ip6 saddr @ban6net drop comment "pyfilter ban6net v1"',
]


def test_init_creates_sets_with_timeouts_and_one_rule_per_set_in_each_chain(firewall):
    firewall.run(lambda backend: asyncio.sleep(0))

    items = firewall.nft_json("list", "table", "inet", "pyfilter")
    sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
    assert {n: (s["type"], sorted(s["flags"])) for n, s in sets.items()} == {
        "ban4": ("ipv4_addr", ["timeout"]),
        "ban6": ("ipv6_addr", ["timeout"]),
        "ban4net": ("ipv4_addr", ["interval", "timeout"]),
        "ban6net": ("ipv6_addr", ["interval", "timeout"]),
    }
    chains = {i["chain"]["name"]: i["chain"] for i in items if "chain" in i}
    assert {n: (c["hook"], c["prio"], c["type"], c["policy"]) for n, c in chains.items()} == {
        "input": ("input", -10, "filter", "accept"),
        "forward": ("forward", -10, "filter", "accept"),
    }
    assert firewall.chain_rules("input") == EXPECTED_RULES
    assert firewall.chain_rules("forward") == EXPECTED_RULES


def test_init_twice_changes_nothing(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"))]))
    before = firewall.nft("-a", "list", "ruleset")  # -a: rule handles change if rules are re-added

    firewall.run(lambda backend: backend.init())

    assert firewall.nft("-a", "list", "ruleset") == before
    assert firewall.kernel_set("ban4") == {"198.51.100.7": None}


def test_init_never_touches_other_tables(firewall):
    firewall.nft("add table ip other; add chain ip other c; add rule ip other c ip saddr 198.51.100.9 drop")
    before = firewall.nft("list", "table", "ip", "other")

    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 60)]))

    assert firewall.nft("list", "table", "ip", "other") == before


def test_init_repairs_our_table_when_it_was_changed_by_hand(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 600)]))
    firewall.nft("add rule inet pyfilter input ip saddr 198.51.100.99 accept")
    firewall.nft("flush chain inet pyfilter forward")

    firewall.run(lambda backend: backend.init())

    assert firewall.chain_rules("input") == EXPECTED_RULES
    assert firewall.chain_rules("forward") == EXPECTED_RULES
    assert "198.51.100.7" in firewall.kernel_set("ban4")  # the sets kept their bans


async def _ban_then_inspect(backend, bans):
    await backend.ban(bans)
    return await backend.inspect()


def test_inspect_reports_the_table_its_hooks_and_elements_per_set(firewall):
    seen = firewall.run(lambda backend: _ban_then_inspect(backend, [
        Ban(ip("198.51.100.7"), 600), Ban(ip("198.51.100.8")), Ban(net("198.51.100.64/26"), 600),
        Ban(ip("198.51.100.9"), 600, (22,), "reject")]))
    assert (seen.table, seen.present, seen.hooks, seen.docker_covered) == ("inet pyfilter", True,
                                                                          ["input", "forward"], True)
    assert seen.sets == {"ban4": 2, "ban6": 0, "ban4net": 1, "ban6net": 0, "ban4_p22_reject": 1}
    assert seen.problems == []


def test_inspect_says_when_the_forward_hook_is_gone_and_when_the_table_is(firewall):
    firewall.run(lambda backend: backend.init())
    firewall.nft("flush chain inet pyfilter forward")
    seen = firewall.run(lambda backend: backend.inspect(), init=False)
    assert seen.hooks == ["input"] and not seen.docker_covered
    assert seen.problems == ["chain forward of table inet pyfilter is missing or lacks its rules (traffic to "
                             "ports Docker publishes is not checked against the bans): restart the enforcer "
                             "to set it up again"]
    firewall.nft("delete table inet pyfilter")
    seen = firewall.run(lambda backend: backend.inspect(), init=False)
    assert not seen.present and seen.hooks == [] and seen.sets == {"ban4": 0, "ban6": 0, "ban4net": 0, "ban6net": 0}
    assert seen.problems[0].startswith("table inet pyfilter is missing")


def test_init_recreates_a_set_and_a_chain_of_an_older_layout(firewall):
    firewall.nft(
        "add table inet pyfilter;"
        "add set inet pyfilter ban4net { type ipv4_addr; flags interval; };"
        "add chain inet pyfilter input { type filter hook input priority 0; };"
        "add rule inet pyfilter input ip saddr @ban4net drop"
    )

    firewall.run(lambda backend: backend.ban([Ban(net("198.51.100.0/24"), 60)]))

    (item,) = [i for i in firewall.nft_json("list", "set", "inet", "pyfilter", "ban4net") if "set" in i]
    assert sorted(item["set"]["flags"]) == ["interval", "timeout"]
    assert firewall.kernel_set("ban4net") == {"198.51.100.0/24": 60}
    (chain,) = [i["chain"] for i in firewall.nft_json("list", "chain", "inet", "pyfilter", "input") if "chain" in i]
    assert chain["prio"] == -10
    assert firewall.chain_rules("input") == EXPECTED_RULES


def test_ban_recovers_after_the_ruleset_was_flushed(firewall):
    async def scenario(backend):
        firewall.nft("flush", "ruleset")  # what a firewall reload elsewhere might do
        await backend.ban([Ban(ip("198.51.100.7"), 60)])
        return await backend.list()

    listed = firewall.run(scenario)

    assert set(listed) == {"198.51.100.7"}
    assert firewall.chain_rules("input") == EXPECTED_RULES


# -- ban / unban / list ----------------------------------------------------------------


def test_ban_puts_the_address_in_the_kernel_set_with_its_timeout(firewall):
    listed = firewall.run(lambda backend: _ban_then_list(backend, [Ban(ip("198.51.100.7"), 600)]))

    assert firewall.kernel_set("ban4") == {"198.51.100.7": 600}
    assert 595 < listed["198.51.100.7"] <= 600


def test_permanent_ban_has_no_timeout(firewall):
    listed = firewall.run(lambda backend: _ban_then_list(backend, [Ban(ip("198.51.100.7"))]))

    assert firewall.kernel_set("ban4") == {"198.51.100.7": None}
    assert listed == {"198.51.100.7": None}


def test_banning_again_replaces_the_timeout_without_duplicating(firewall):
    target = ip("198.51.100.7")
    firewall.run(lambda backend: backend.ban([Ban(target, 600)]))
    firewall.run(lambda backend: backend.ban([Ban(target, 60)]))
    assert firewall.kernel_set("ban4") == {"198.51.100.7": 60}

    firewall.run(lambda backend: backend.ban([Ban(target)]))
    assert firewall.kernel_set("ban4") == {"198.51.100.7": None}

    firewall.run(lambda backend: backend.ban([Ban(target, 120), Ban(target, 300)]))  # the later one wins
    assert firewall.kernel_set("ban4") == {"198.51.100.7": 300}


def test_unban_removes_the_element_and_absent_ones_are_no_error(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.7"), 600), Ban(ip("198.51.100.8"), 600)])
        await backend.unban([ip("198.51.100.7"), ip("198.51.100.200"), "2001:db8::dead", net("198.51.100.0/28")])
        return await backend.list()

    listed = firewall.run(scenario)

    assert firewall.kernel_set("ban4") == {"198.51.100.8": 600}
    assert set(listed) == {"198.51.100.8"}


def test_ipv6_addresses_and_prefixes(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("2001:db8::1"), 300), Ban(net("2001:db8:1::/64"), 900), Ban(ip("2001:db8::2"))])
        listed = await backend.list()
        await backend.unban([ip("2001:db8::2")])
        return listed

    listed = firewall.run(scenario)

    assert listed.keys() == {"2001:db8::1", "2001:db8:1::/64", "2001:db8::2"}
    assert listed["2001:db8::2"] is None
    assert firewall.kernel_set("ban6") == {"2001:db8::1": 300}
    assert firewall.kernel_set("ban6net") == {"2001:db8:1::/64": 900}


def test_ipv4_mapped_and_full_length_targets_are_stored_as_plain_addresses(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("::ffff:198.51.100.7"), 60), Ban(net("198.51.100.8/32"), 60)]))

    assert firewall.kernel_set("ban4") == {"198.51.100.7": 60, "198.51.100.8": 60}
    assert firewall.kernel_set("ban6") == {}


def test_networks_a_wider_ban_replaces_narrower_ones_and_a_covered_one_is_skipped(firewall):
    async def scenario(backend):
        await backend.ban([Ban(net("198.51.100.0/26"), 60), Ban(net("198.51.100.128/25"), 60)])
        await backend.ban([Ban(net("198.51.100.0/24"), 600)])  # covers both
        await backend.ban([Ban(net("198.51.100.64/26"), 60)])  # inside the /24
        await backend.ban([Ban(net("198.51.100.0/24"), 900)])  # same network again
        return await backend.list()

    listed = firewall.run(scenario)

    assert firewall.kernel_set("ban4net") == {"198.51.100.0/24": 900}
    assert list(listed) == ["198.51.100.0/24"]


def test_unban_of_a_network_leaves_its_neighbours(firewall):
    async def scenario(backend):
        await backend.ban([Ban(net("198.51.100.0/25"), 60), Ban(net("198.51.100.128/25"))])
        await backend.unban([net("198.51.100.0/25")])
        return await backend.list()

    assert firewall.run(scenario) == {"198.51.100.128/25": None}
    assert firewall.kernel_set("ban4net") == {"198.51.100.128/25": None}


def test_list_and_unban_cope_with_100k_elements(firewall):
    targets = [ipaddress.IPv4Address(int(ip("198.51.100.0")) + i) for i in range(256)]
    targets += [ipaddress.IPv6Address(int(ip("2001:db8::")) + i) for i in range(100_000 - 256)]

    async def scenario(backend):
        await backend.ban([Ban(t, 3600) for t in targets])
        listed = await backend.list()
        await backend.unban(targets[::2])
        return listed, await backend.list()

    listed, after = firewall.run(scenario)

    assert len(listed) == 100_000
    assert all(3500 < left <= 3600 for left in listed.values())
    assert len(after) == 50_000 and "198.51.100.1" in after and "198.51.100.0" not in after
    firewall.nft("get", "element", "inet", "pyfilter", "ban6", "{ 2001:db8::1 }")  # fails if absent


# -- sync ------------------------------------------------------------------------------


def test_sync_adds_missing_removes_extra_and_leaves_present_alone(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.1"), 600), Ban(ip("198.51.100.2"), 600), Ban(net("2001:db8:2::/64"))])
        added, removed = await backend.sync({
            "198.51.100.1": 100.0,          # present: keeps its own 600 s
            "198.51.100.3": 45.2,           # missing: added with the time left
            "2001:db8::7": None,            # missing: permanent
            "198.51.100.4": 0.0,            # expired: not added
        })
        again = await backend.sync({"198.51.100.1": 100.0, "198.51.100.3": 45.2, "2001:db8::7": None})
        return added, removed, again

    added, removed, again = firewall.run(scenario)

    assert sorted(added) == ["198.51.100.3", "2001:db8::7"]
    assert sorted(removed) == ["198.51.100.2", "2001:db8:2::/64"]
    assert again == ([], [])
    assert firewall.kernel_set("ban4") == {"198.51.100.1": 600, "198.51.100.3": 46}
    assert firewall.kernel_set("ban6") == {"2001:db8::7": None}
    assert firewall.kernel_set("ban6net") == {}


def test_close_leaves_bans_in_place(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 600)]))

    assert firewall.kernel_set("ban4") == {"198.51.100.7": 600}
    assert firewall.chain_rules("input") == EXPECTED_RULES


NO_NET_ADMIN_SCRIPT = """
import asyncio, ipaddress
from pyfilter.enforcer.backends import Ban, make_backend

async def main():
    backend = make_backend("nftables")
    for step in (backend.init(), backend.ban([Ban(ipaddress.ip_address("198.51.100.7"), 60)])):
        try:
            await asyncio.wait_for(step, 10)
        except Exception as exc:
            print(type(exc).__name__, exc)

asyncio.run(main())
"""


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_the_error_says_so_instead_of_hanging(firewall):
    result = subprocess.run(
        ["ip", "netns", "exec", firewall.netns, "setpriv", "--bounding-set", "-net_admin",
         "--inh-caps", "-net_admin", sys.executable, "-c", NO_NET_ADMIN_SCRIPT],
        capture_output=True, text=True, timeout=60,
    )

    lines = result.stdout.splitlines()
    assert len(lines) == 2, result
    assert all(line.startswith("NftablesError") and "needs CAP_NET_ADMIN" in line for line in lines), lines


def test_make_backend_names():
    assert make_backend("log-only").name == "log-only"
    assert make_backend("auto").name == "nftables"  # this kernel has nf_tables
    with pytest.raises(ValueError, match="unknown firewall backend 'ipfw'"):
        make_backend("ipfw")


async def _ban_then_list(backend, bans):
    await backend.ban(bans)
    return await backend.list()


# -- real traffic ------------------------------------------------------------------------

@pytest.fixture
def client_netns():
    with new_netns() as name:
        yield name


ADDRESSES = {
    4: ("198.51.100.1", "198.51.100.2", "198.51.100.3", 24, "-4"),
    6: ("2001:db8:f::1", "2001:db8:f::2", "2001:db8:f::3", 64, "-6"),
}


@pytest.mark.parametrize("version", [4, 6])
def test_banned_client_cannot_connect_until_unbanned(firewall, client_netns, version):
    server, banned, other, prefix, flag = ADDRESSES[version]
    sh("ip", "-n", firewall.netns, "link", "add", "pf-srv", "type", "veth", "peer", "name", "pf-cli",
       "netns", client_netns)
    for ns, dev, addresses in ((firewall.netns, "pf-srv", [server]), (client_netns, "pf-cli", [banned, other])):
        for address in addresses:
            sh("ip", "-n", ns, flag, "addr", "add", f"{address}/{prefix}", "dev", dev,
               *(["nodad"] if version == 6 else []))
        sh("ip", "-n", ns, "link", "set", dev, "up")

    with tcp_server(firewall.netns, server):
        assert connects(client_netns, banned, server)

        firewall.run(lambda backend: backend.ban([Ban(ip(banned), 600)]))
        assert not connects(client_netns, banned, server)
        assert connects(client_netns, other, server)  # only the banned address is cut off

        firewall.run(lambda backend: backend.unban([ip(banned)]))
        assert connects(client_netns, banned, server)


def test_forwarded_traffic_is_dropped_too(firewall, client_netns):
    """The forward chain: the firewall namespace routes between a client and a server (as
    Docker's bridge does for published ports), and a ban there cuts the client off."""
    with new_netns() as server_netns:
        sh("ip", "-n", firewall.netns, "link", "add", "pf-in", "type", "veth", "peer", "name", "pf-cli",
           "netns", client_netns)
        sh("ip", "-n", firewall.netns, "link", "add", "pf-out", "type", "veth", "peer", "name", "pf-srv",
           "netns", server_netns)
        for ns, dev, address in (
            (firewall.netns, "pf-in", "198.51.100.1/26"),
            (client_netns, "pf-cli", "198.51.100.2/26"),
            (firewall.netns, "pf-out", "198.51.100.65/26"),
            (server_netns, "pf-srv", "198.51.100.66/26"),
        ):
            sh("ip", "-n", ns, "addr", "add", address, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", client_netns, "route", "add", "default", "via", "198.51.100.1")
        sh("ip", "-n", server_netns, "route", "add", "default", "via", "198.51.100.65")
        sh("ip", "netns", "exec", firewall.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")

        with tcp_server(server_netns, "198.51.100.66"):
            assert connects(client_netns, "198.51.100.2", "198.51.100.66")

            firewall.run(lambda backend: backend.ban([Ban(net("198.51.100.0/30"), 600)]))
            assert not connects(client_netns, "198.51.100.2", "198.51.100.66")

            firewall.run(lambda backend: backend.unban([net("198.51.100.0/30")]))
            assert connects(client_netns, "198.51.100.2", "198.51.100.66")


# -- scopes ------------------------------------------------------------------------------


def test_a_scoped_ban_gets_sets_named_after_its_scope_and_two_rules_in_each_chain(firewall):
    listed = firewall.run(lambda backend: _ban_then_list(backend, [
        Ban(ip("198.51.100.7"), 600, (2222, 22), "reject"), Ban(net("2001:db8::/64"), None, (), "reject")]))

    assert listed.keys() == {"198.51.100.7|22,2222|reject", "2001:db8::/64|all|reject"}
    assert listed["2001:db8::/64|all|reject"] is None
    assert firewall.kernel_set("ban4_p22-2222_reject") == {"198.51.100.7": 600}
    assert firewall.kernel_set("ports_p22-2222") == {22: None, 2222: None}
    assert firewall.kernel_set("ban6net_all_reject") == {"2001:db8::/64": None}
    for chain in ("input", "forward"):
        assert firewall.chain_rules(chain) == EXPECTED_RULES + [
            "ip saddr @ban4_p22-2222_reject tcp dport @ports_p22-2222 reject with tcp reset "
            'comment "pyfilter ban4_p22-2222_reject v1 tcp"',
            "ip saddr @ban4_p22-2222_reject udp dport @ports_p22-2222 reject "
            'comment "pyfilter ban4_p22-2222_reject v1 other"',
            "meta l4proto tcp ip6 saddr @ban6net_all_reject reject with tcp reset "
            'comment "pyfilter ban6net_all_reject v1 tcp"',
            'ip6 saddr @ban6net_all_reject reject comment "pyfilter ban6net_all_reject v1 other"',
        ]


def test_scoped_sets_survive_a_restart_and_init_twice_changes_nothing(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), None, (22,), "drop"),
                                              Ban(ip("198.51.100.8"), None, (), "reject")]))
    before = firewall.nft("-a", "list", "ruleset")

    listed = firewall.run(lambda backend: backend.list())

    assert firewall.nft("-a", "list", "ruleset") == before
    assert listed == {"198.51.100.7|22|drop": None, "198.51.100.8|all|reject": None}


def test_unban_lifts_every_scope_and_sync_only_the_scope_it_names(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.7"), 600), Ban(ip("198.51.100.7"), 600, (22,), "reject"),
                           Ban(ip("198.51.100.8"), 600), Ban(ip("198.51.100.8"), 600, (22,), "reject")])
        await backend.unban([ip("198.51.100.7")])
        synced = await backend.sync({"198.51.100.8": 600.0})
        return synced, await backend.list()

    (added, removed), listed = firewall.run(scenario)

    assert (added, removed) == ([], ["198.51.100.8|22|reject"])
    assert set(listed) == {"198.51.100.8"}


def test_a_port_scoped_reject_refuses_that_port_only_and_drop_on_all_ports_still_times_out(
        firewall, client_netns):
    server, banned, other = "198.51.100.1", "198.51.100.2", "198.51.100.3"
    link(firewall.netns, "pf-srv", f"{server}/24", client_netns, "pf-cli", f"{banned}/24")
    sh("ip", "-n", client_netns, "addr", "add", f"{other}/24", "dev", "pf-cli")

    with tcp_server(firewall.netns, server, PORT), tcp_server(firewall.netns, server, PORT + 1):
        firewall.run(lambda backend: backend.ban([Ban(ip(banned), 600, (PORT,), "reject")]))
        assert connect_result(client_netns, banned, server, PORT) == "refused"  # a TCP reset
        assert connects(client_netns, banned, server, PORT + 1)
        assert connects(client_netns, other, server, PORT)

        firewall.run(lambda backend: backend.sync({f"{banned}": 600.0}))  # the scope widens to all
        assert connect_result(client_netns, banned, server, PORT + 1) == "timeout"
