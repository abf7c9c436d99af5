"""Backend logic that needs no kernel: ban values, sync planning, the log-only
backend, and the nftables element encoding."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct

import pytest

from pyfilter.enforcer import backends
from pyfilter.enforcer.backends import make_backend, nft_netlink as nl
from pyfilter.enforcer.backends.ipset import IpsetBackend
from pyfilter.enforcer.backends.nftables import NftablesBackend
from pyfilter.common.addresses import InvalidAddress
from pyfilter.enforcer.backends.base import Ban, ban_key, parse_ban_key, plan_sync, target_text
from pyfilter.enforcer.backends.nft_elements import NetworkIndex, interval_elements, networks_from

ip = ipaddress.ip_address
net = ipaddress.ip_network


# -- Ban ---------------------------------------------------------------------------


def test_ban_stores_mapped_and_full_length_targets_as_plain_addresses():
    assert Ban(ip("::ffff:198.51.100.7")).target == ip("198.51.100.7")
    assert Ban(net("2001:db8::5/128"), 60).target == ip("2001:db8::5")
    assert Ban(net("2001:db8::/64")).target == net("2001:db8::/64")


@pytest.mark.parametrize("timeout", [0, -5, 1.5, True, "60"])
def test_ban_refuses_a_timeout_that_is_not_a_positive_whole_number(timeout):
    with pytest.raises(ValueError, match="198.51.100.7"):
        Ban(ip("198.51.100.7"), timeout)


def test_ban_refuses_text_targets():
    with pytest.raises(TypeError, match="ipaddress"):
        Ban("198.51.100.7", 60)


# -- plan_sync -----------------------------------------------------------------------


def test_plan_sync_adds_missing_removes_extra_and_leaves_present_alone():
    current = {"198.51.100.1": 500.0, "198.51.100.2": 10.0, "2001:db8::/64": None}
    wanted = {
        "198.51.100.1": 20.0,        # present: untouched
        "2001:DB8:0::/64": None,     # present, written differently
        "198.51.100.3": 30.2,        # missing: rounded up
        "::ffff:198.51.100.4": None,  # missing, mapped form
        "198.51.100.5": 0.0,         # expired
        "not-an-address": 60.0,      # skipped, logged
    }

    to_add, to_remove = plan_sync(current, wanted)

    assert to_add == [Ban(ip("198.51.100.3"), 31), Ban(ip("198.51.100.4"))]
    assert to_remove == [Ban(ip("198.51.100.2"))]


def test_plan_sync_removes_a_present_ban_that_is_wanted_with_no_time_left():
    assert plan_sync({"198.51.100.1": 3.0}, {"198.51.100.1": -1.0}) == ([], [Ban(ip("198.51.100.1"))])


def test_plan_sync_moves_a_ban_to_another_scope_without_touching_the_default_one():
    current = {"198.51.100.1": 50.0, "198.51.100.1|22|reject": 50.0, "198.51.100.2|all|reject": 9.0}
    wanted = {"198.51.100.1": 50.0, "198.51.100.2|22,2222|drop": 9.5}

    to_add, to_remove = plan_sync(current, wanted)

    assert to_add == [Ban(ip("198.51.100.2"), 10, (22, 2222), "drop")]
    assert to_remove == [Ban(ip("198.51.100.1"), None, (22,), "reject"), Ban(ip("198.51.100.2"), None, (), "reject")]


# -- scopes --------------------------------------------------------------------------


def test_ban_keys_name_the_scope_unless_it_is_the_default():
    assert Ban(ip("198.51.100.7"), 60).key == "198.51.100.7"
    assert Ban(ip("198.51.100.7"), 60, [2222, 22, 22], "reject").key == "198.51.100.7|22,2222|reject"
    assert Ban(net("2001:db8::/64"), None, (), "reject").key == "2001:db8::/64|all|reject"
    assert Ban(ip("198.51.100.7"), None, (22,)).key == "198.51.100.7|22|drop"
    for key in ("198.51.100.7|22,2222|reject", "2001:db8::/64|all|reject", "198.51.100.7"):
        target, scope = parse_ban_key(key)
        assert ban_key(target, scope) == key


@pytest.mark.parametrize("ports, verdict", [((0,), "drop"), ((65536,), "drop"), ((22,), "accept"),
                                            (tuple(range(1, 40)), "drop"), ((True,), "drop")])
def test_ban_refuses_a_bad_scope(ports, verdict):
    with pytest.raises(ValueError, match="port|verdict"):
        Ban(ip("198.51.100.7"), 60, ports, verdict)


@pytest.mark.parametrize("key", ["198.51.100.7|22", "198.51.100.7|x|drop", "198.51.100.7|22|accept", "a|all|drop"])
def test_bad_ban_keys_are_invalid_addresses(key):
    with pytest.raises(InvalidAddress):
        parse_ban_key(key)


def test_log_only_backend_keeps_scopes_apart_and_unban_lifts_them_all():
    backend = make_backend("log-only")

    async def scenario():
        await backend.ban([Ban(ip("198.51.100.7"), 60), Ban(ip("198.51.100.7"), 60, (22,), "reject"),
                           Ban(ip("198.51.100.8"), None, (), "reject")])
        first = set(await backend.list())
        await backend.unban(["198.51.100.7"])
        return first, set(await backend.list())

    first, after = asyncio.run(scenario())

    assert first == {"198.51.100.7", "198.51.100.7|22|reject", "198.51.100.8|all|reject"}
    assert after == {"198.51.100.8|all|reject"}


# -- log-only backend ------------------------------------------------------------------


def test_log_only_backend_remembers_bans_and_expires_them(caplog):
    clock = [1000.0]
    backend = make_backend("log-only", clock=lambda: clock[0])

    async def scenario():
        await backend.init()
        await backend.ban([Ban(ip("198.51.100.7"), 60), Ban(net("2001:db8::/64"))])
        first = await backend.list()
        clock[0] += 61
        second = await backend.list()
        added, removed = await backend.sync({"198.51.100.8": 5.0})
        await backend.unban(["198.51.100.8", "198.51.100.9"])
        return first, second, added, removed, await backend.list()

    with caplog.at_level("INFO", logger="pyfilter.enforcer"):
        first, second, added, removed, last = asyncio.run(scenario())

    assert first == {"198.51.100.7": 60.0, "2001:db8::/64": None}
    assert second == {"2001:db8::/64": None}
    assert (added, removed) == (["198.51.100.8"], ["2001:db8::/64"])
    assert last == {}
    assert "would ban 198.51.100.7 for 60 s" in caplog.text
    assert "would unban 198.51.100.8" in caplog.text and "198.51.100.9" not in caplog.text


# -- nftables element encoding -------------------------------------------------------------


def test_packed_elements_parse_back():
    raw = b"".join([
        nl.pack_element(ip("198.51.100.7").packed, 600_000),
        nl.pack_element(ip("2001:db8::1").packed),
        nl.pack_element(ip("198.51.101.0").packed, interval_end=True),
    ])

    assert list(nl.parse_elements(raw)) == [
        nl.Element(ip("198.51.100.7").packed, False, 600_000, None),
        nl.Element(ip("2001:db8::1").packed, False, None, None),
        nl.Element(ip("198.51.101.0").packed, True, None, None),
    ]


def test_chunks_stay_under_the_netlink_attribute_limit():
    elements = [nl.pack_element(ipaddress.IPv6Address(i).packed, 1000) for i in range(5000)]

    payloads = list(nl.chunks(elements))

    assert all(len(p) <= nl.NLA_MAX_PAYLOAD for p in payloads)
    assert b"".join(payloads) == b"".join(elements)


def _as_kernel_reports(raw: bytes, expires_ms: int | None) -> list[nl.Element]:
    # The kernel reports a timed element with the time it has left.
    return [e._replace(expires_ms=expires_ms if e.timeout_ms else None) for e in nl.parse_elements(raw)]


def test_networks_round_trip_through_interval_elements_in_any_order():
    raw = b"".join([
        interval_elements(net("198.51.100.0/25"), 60_000),
        interval_elements(net("198.51.100.128/26")),         # adjacent: shares a key with an end
        interval_elements(net("255.255.255.0/24"), 60_000),  # reaches the top: no end marker
        nl.pack_element(bytes(4), interval_end=True),        # nft's leading end marker at 0.0.0.0
    ])
    elements = _as_kernel_reports(raw, 30_000)[::-1]

    assert networks_from(elements, 4) == {
        net("198.51.100.0/25"): 30.0,
        net("198.51.100.128/26"): None,
        net("255.255.255.0/24"): 30.0,
    }


def test_ipv6_prefix_round_trip():
    elements = _as_kernel_reports(interval_elements(net("2001:db8:1::/64"), 5_000), 4_000)

    assert {target_text(n): left for n, left in networks_from(elements, 6).items()} == {"2001:db8:1::/64": 4.0}


def test_network_index_finds_the_covering_network():
    index = NetworkIndex([net("198.51.100.0/24"), net("2001:db8::/48"), net("2001:db8:ff::/64")])

    assert index.covering(net("198.51.100.64/26")) == net("198.51.100.0/24")
    assert index.covering(net("198.51.100.0/24")) == net("198.51.100.0/24")
    assert index.covering(net("198.51.100.0/24"), strict=True) is None
    assert index.covering(net("198.51.0.0/16")) is None
    assert index.covering(net("2001:db8:0:5::/64")) == net("2001:db8::/48")
    assert index.covering(net("2001:db8:ff::/64"), strict=True) is None


# -- auto ----------------------------------------------------------------------------


class _Kernel:
    """A netfilter netlink socket whose kernel answers the nftables probe with `errno`."""

    def __init__(self, errno: int):
        self.errno = errno

    def __call__(self, *args):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def settimeout(self, seconds):
        pass

    def send(self, data: bytes) -> int:
        return len(data)

    def recv(self, size: int) -> bytes:
        # nlmsghdr (len, type=ERROR, flags, seq, pid), then the error code (negative errno).
        return struct.pack("=IHHIIi", 20, backends.NLMSG_ERROR, 0, 1, 0, -self.errno)


def test_auto_falls_back_to_iptables_where_the_kernel_has_no_nftables(monkeypatch):
    """This machine's kernel has nf_tables, so the answer of one without it is played back."""
    monkeypatch.setattr(socket, "socket", _Kernel(errno.EOPNOTSUPP))
    assert backends.nftables_available() is False
    assert isinstance(make_backend("auto"), IpsetBackend)
    monkeypatch.setattr(socket, "socket", _Kernel(0))  # a bare acknowledgement
    assert backends.nftables_available() is True
    assert isinstance(make_backend("auto"), NftablesBackend)
