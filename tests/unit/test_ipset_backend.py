"""The iptables + ipset backend against the real kernel, always inside a network namespace of our own.

Like the nftables tests: each test makes a fresh namespace, runs the backend
with this thread switched into it, checks the outcome with `ip netns exec NAME
ipset|iptables ...`, and deletes the namespace. The machine's own firewall is
never touched. Attacker addresses come only from 198.51.100.0/24 and
2001:db8::/32.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil

import pytest

from pyfilter.enforcer.backends import make_backend
from pyfilter.enforcer.backends.base import Ban
from tests.unit.netns import PORT, connect_result, connects, link, new_netns, run_backend, sh, tcp_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "ipset", "iptables", "ip6tables")),
    reason="needs root, ip, ipset and iptables (apt-get install ipset iptables)",
)

ip = ipaddress.ip_address
net = ipaddress.ip_network

FLAVOURS = {"nft": ("iptables", "ip6tables"), "legacy": ("iptables-legacy", "ip6tables-legacy")}


class Firewall:
    def __init__(self, netns: str, flavour: str = "nft") -> None:
        self.netns = netns
        self.binaries = FLAVOURS[flavour]

    def run(self, scenario, init: bool = True):
        return run_backend(self.netns, lambda: make_backend("iptables", iptables=self.binaries[0], ip6tables=self.binaries[1]), scenario, init)

    def exec(self, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.netns, *argv)

    def iptables(self, *args: str, version: int = 4) -> str:
        return self.exec(self.binaries[0 if version == 4 else 1], "-w", *args)

    def kernel_set(self, name: str) -> dict[str, int | None]:
        """Element -> timeout left in seconds (None: permanent), as `ipset list` shows it."""
        found: dict[str, int | None] = {}
        members = self.exec("ipset", "list", name).split("Members:\n", 1)[1]
        for line in members.splitlines():
            words = line.split()
            if words:
                found[words[0]] = int(words[2]) or None if len(words) > 2 and words[1] == "timeout" else None
        return found

    def headers(self) -> dict[str, str]:
        text = self.exec("ipset", "list", "-t")
        blocks = [dict(line.split(": ", 1) for line in b.splitlines() if ": " in line) for b in text.split("\n\n")]
        return {b["Name"]: f"{b['Type']} {' '.join(b['Header'].split()[:2])} {'timeout' in b['Header']}"
                for b in blocks if "Name" in b}

    def chain(self, name: str = "pyfilter", version: int = 4) -> list[str]:
        return [line for line in self.iptables("-S", name, version=version).splitlines() if line.startswith("-A")]


def assert_set(firewall: Firewall, name: str, expected: dict[str, int | None]) -> None:
    """The set holds exactly these elements; ipset shows the time left, so a timed one may
    have lost a few seconds since it was added."""
    found = firewall.kernel_set(name)
    assert found.keys() == expected.keys(), found
    for element, timeout in expected.items():
        left = found[element]
        assert left == timeout if timeout is None else (left is not None and timeout - 5 < left <= timeout), found


@pytest.fixture
def firewall():
    with new_netns() as name:
        yield Firewall(name)


async def _ban_then_list(backend, bans):
    await backend.ban(bans)
    return await backend.list()


# -- init ---------------------------------------------------------------------------


def test_init_creates_four_sets_with_timeouts_and_one_rule_per_set_hooked_into_input_and_forward(firewall):
    firewall.run(lambda backend: asyncio.sleep(0))

    assert firewall.headers() == {
        "pyfilter4": "hash:ip family inet True",
        "pyfilter4net": "hash:net family inet True",
        "pyfilter6": "hash:ip family inet6 True",
        "pyfilter6net": "hash:net family inet6 True",
    }
    for version in (4, 6):
        assert firewall.chain(version=version) == [
            f'-A pyfilter -m set --match-set pyfilter{version}{kind} src '
            f'-m comment --comment "pyfilter pyfilter{version}{kind} v1" -j DROP' for kind in ("", "net")]
        assert firewall.chain("INPUT", version) == ["-A INPUT -j pyfilter"]
        assert firewall.chain("FORWARD", version) == ["-A FORWARD -j pyfilter"]


def test_init_twice_changes_nothing(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7")), Ban(ip("198.51.100.8"), 60, (22,), "reject")]))
    before = firewall.exec("iptables-save"), firewall.exec("ip6tables-save"), firewall.headers()

    firewall.run(lambda backend: backend.init())

    after = firewall.exec("iptables-save"), firewall.exec("ip6tables-save"), firewall.headers()
    assert [_without_comments(d) for d in after[:2]] == [_without_comments(d) for d in before[:2]]
    assert after[2] == before[2]
    assert_set(firewall, "pyfilter4", {"198.51.100.7": None})


def _without_comments(dump: str) -> list[str]:
    return [line for line in dump.splitlines() if not line.startswith("#")]  # "# Generated ... on <time>"


def test_init_hooks_docker_user_when_docker_made_it_and_sync_notices_it_later(firewall):
    firewall.iptables("-N", "DOCKER-USER")
    firewall.iptables("-A", "DOCKER-USER", "-j", "RETURN")
    firewall.run(lambda backend: asyncio.sleep(0))
    assert firewall.chain("DOCKER-USER") == ["-A DOCKER-USER -j pyfilter", "-A DOCKER-USER -j RETURN"]
    assert firewall.chain("FORWARD") == []

    firewall.iptables("-N", "DOCKER-USER", version=6)  # Docker with IPv6 enabled after we started
    firewall.run(lambda backend: backend.sync({}), init=False)
    assert firewall.chain("DOCKER-USER", 6) == ["-A DOCKER-USER -j pyfilter"]


def test_inspect_reports_sets_hooks_and_whether_docker_user_is_covered(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.7"), 600), Ban(ipaddress.ip_network("198.51.100.64/26"))])
        return await backend.inspect()

    seen = firewall.run(scenario)
    assert seen.present and seen.problems == [] and seen.docker_covered
    assert seen.hooks == [f"{b} {c}" for b in firewall.binaries for c in ("INPUT", "FORWARD")]
    assert seen.sets == {"pyfilter4": 1, "pyfilter4net": 1, "pyfilter6": 0, "pyfilter6net": 0}

    async def docker_starts(backend):  # after us: DOCKER-USER is hooked at the next sync
        firewall.iptables("-N", "DOCKER-USER")
        return await backend.inspect()

    seen = firewall.run(docker_starts)
    assert not seen.docker_covered
    assert seen.problems == [f"{firewall.binaries[0]}: DOCKER-USER (or FORWARD) does not jump to chain pyfilter "
                             "(traffic to ports Docker publishes is not checked): the next sync adds it"]


def test_init_never_touches_other_chains_and_sets(firewall):
    firewall.exec("ipset", "create", "other", "hash:ip")
    firewall.exec("ipset", "add", "other", "198.51.100.9")
    firewall.iptables("-N", "mine")
    firewall.iptables("-A", "mine", "-m", "set", "--match-set", "other", "src", "-j", "DROP")
    firewall.iptables("-A", "INPUT", "-s", "198.51.100.10", "-j", "ACCEPT")

    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 60, (22,), "reject")]))

    assert firewall.chain("mine") == ["-A mine -m set --match-set other src -j DROP"]
    assert firewall.chain("INPUT") == ["-A INPUT -j pyfilter", "-A INPUT -s 198.51.100.10/32 -j ACCEPT"]
    assert_set(firewall, "other", {"198.51.100.9": None})


def test_init_recreates_a_set_of_another_type_and_removes_scoped_sets_without_rules(firewall):
    firewall.exec("ipset", "create", "pyfilter4", "hash:net")  # no timeouts, wrong type
    firewall.exec("ipset", "create", "pyfilter4_0123abcd", "hash:ip")

    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 60)]))

    assert firewall.headers()["pyfilter4"] == "hash:ip family inet True"
    assert "pyfilter4_0123abcd" not in firewall.headers()
    assert_set(firewall, "pyfilter4", {"198.51.100.7": 60})


def test_ban_recovers_after_the_sets_were_destroyed(firewall):
    async def scenario(backend):
        firewall.iptables("-F", "pyfilter")
        firewall.iptables("-F", "pyfilter", version=6)
        firewall.exec("ipset", "destroy")  # what a firewall reload elsewhere might do
        await backend.ban([Ban(ip("198.51.100.7"), 60)])
        return await backend.list()

    assert set(firewall.run(scenario)) == {"198.51.100.7"}
    assert len(firewall.chain()) == 2


# -- ban / unban / list / sync --------------------------------------------------------


def test_banning_again_replaces_the_timeout_and_permanent_bans_have_none(firewall):
    target = ip("198.51.100.7")
    firewall.run(lambda backend: backend.ban([Ban(target, 600)]))
    firewall.run(lambda backend: backend.ban([Ban(target, 60)]))
    assert_set(firewall, "pyfilter4", {"198.51.100.7": 60})

    firewall.run(lambda backend: backend.ban([Ban(target)]))
    assert_set(firewall, "pyfilter4", {"198.51.100.7": None})

    listed = firewall.run(lambda backend: _ban_then_list(backend, [Ban(target, 120), Ban(target, 300)]))
    assert_set(firewall, "pyfilter4", {"198.51.100.7": 300})  # the later one wins
    assert 295 < listed["198.51.100.7"] <= 300


def test_unban_removes_the_element_and_absent_ones_are_no_error(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.7"), 600), Ban(ip("198.51.100.8"), 600)])
        await backend.unban([ip("198.51.100.7"), ip("198.51.100.200"), "2001:db8::dead", net("198.51.100.0/28")])
        return await backend.list()

    assert set(firewall.run(scenario)) == {"198.51.100.8"}
    assert_set(firewall, "pyfilter4", {"198.51.100.8": 600})


def test_ipv6_addresses_prefixes_and_mapped_addresses(firewall):
    listed = firewall.run(lambda backend: _ban_then_list(backend, [
        Ban(ip("2001:db8::1"), 300), Ban(net("2001:db8:1::/64"), 900), Ban(ip("::ffff:198.51.100.7"))]))

    assert listed.keys() == {"2001:db8::1", "2001:db8:1::/64", "198.51.100.7"}
    assert_set(firewall, "pyfilter6", {"2001:db8::1": 300})
    assert_set(firewall, "pyfilter6net", {"2001:db8:1::/64": 900})
    assert_set(firewall, "pyfilter4", {"198.51.100.7": None})


def test_scoped_bans_get_their_own_sets_and_rules_and_unban_lifts_every_scope(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.7"), 600), Ban(ip("198.51.100.7"), 600, (2222, 22), "reject"),
                           Ban(ip("198.51.100.8"), None, (), "reject")])
        first = await backend.list()
        await backend.unban([ip("198.51.100.7")])
        return first, await backend.list()

    first, after = firewall.run(scenario)

    assert set(first) == {"198.51.100.7", "198.51.100.7|22,2222|reject", "198.51.100.8|all|reject"}
    assert after == {"198.51.100.8|all|reject": None}
    rules = firewall.chain()
    assert len(rules) == 2 + 2 + 2
    assert any("-p tcp" in r and "--dports 22,2222" in r and "--reject-with tcp-reset" in r for r in rules)
    assert any("-p udp" in r and "--dports 22,2222" in r and "icmp-port-unreachable" in r for r in rules)
    # A new backend (a restart) reads each set's scope back from the rules.
    assert firewall.run(lambda backend: backend.list()) == {"198.51.100.8|all|reject": None}


def test_sync_adds_missing_removes_extra_and_leaves_present_alone(firewall):
    async def scenario(backend):
        await backend.ban([Ban(ip("198.51.100.1"), 600), Ban(ip("198.51.100.2"), 600),
                           Ban(net("2001:db8:2::/64")), Ban(ip("198.51.100.1"), 600, (22,), "reject")])
        wanted = {"198.51.100.1": 100.0, "198.51.100.3": 45.2, "2001:db8::7": None, "198.51.100.4": 0.0,
                  "198.51.100.5|22|drop": 30.0}
        first = await backend.sync(wanted)
        return first, await backend.sync(wanted)

    (added, removed), again = firewall.run(scenario)

    assert sorted(added) == ["198.51.100.3", "198.51.100.5|22|drop", "2001:db8::7"]
    assert sorted(removed) == ["198.51.100.1|22|reject", "198.51.100.2", "2001:db8:2::/64"]
    assert again == ([], [])
    assert_set(firewall, "pyfilter4", {"198.51.100.1": 600, "198.51.100.3": 46})


def test_list_and_unban_cope_with_100k_elements(firewall):
    targets = [ipaddress.IPv4Address(int(ip("198.51.100.0")) + i) for i in range(256)]
    targets += [ipaddress.IPv6Address(int(ip("2001:db8::")) + i) for i in range(100_000 - 256)]

    async def scenario(backend):
        await backend.ban([Ban(t, 3600) for t in targets])
        listed = await backend.list()
        await backend.unban(targets[::2])
        return listed, await backend.list()

    listed, after = firewall.run(scenario)

    assert len(listed) == 100_000 and all(3500 < left <= 3600 for left in listed.values())
    assert len(after) == 50_000 and "198.51.100.1" in after and "198.51.100.0" not in after


def test_close_leaves_bans_in_place(firewall):
    firewall.run(lambda backend: backend.ban([Ban(ip("198.51.100.7"), 600)]))

    assert_set(firewall, "pyfilter4", {"198.51.100.7": 600})
    assert len(firewall.chain()) == 2


# -- real traffic -----------------------------------------------------------------------


@pytest.fixture
def client_netns():
    with new_netns() as name:
        yield name


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
@pytest.mark.parametrize("version", [4, 6])
def test_banned_client_cannot_connect_until_unbanned(firewall, client_netns, version, flavour):
    firewall = Firewall(firewall.netns, flavour)
    server, banned, other, prefix = {4: ("198.51.100.1", "198.51.100.2", "198.51.100.3", 24),
                                     6: ("2001:db8:f::1", "2001:db8:f::2", "2001:db8:f::3", 64)}[version]
    link(firewall.netns, "pf-srv", f"{server}/{prefix}", client_netns, "pf-cli", f"{banned}/{prefix}")
    sh("ip", "-n", client_netns, f"-{version}", "addr", "add", f"{other}/{prefix}", "dev", "pf-cli",
       *(["nodad"] if version == 6 else []))

    with tcp_server(firewall.netns, server):
        assert connects(client_netns, banned, server)

        firewall.run(lambda backend: backend.ban([Ban(ip(banned), 600)]))
        assert connect_result(client_netns, banned, server) == "timeout"
        assert connects(client_netns, other, server)  # only the banned address

        firewall.run(lambda backend: backend.ban([Ban(ip(other), 600, (PORT,), "reject")]))
        assert connect_result(client_netns, other, server) == "refused"  # REJECT: a TCP reset

        firewall.run(lambda backend: backend.unban([ip(banned), ip(other)]))
        assert connects(client_netns, banned, server)
        assert connects(client_netns, other, server)
