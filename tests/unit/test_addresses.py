"""What may never be banned, and parsing what operators type."""

from __future__ import annotations

import ipaddress

import pytest

from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_address, parse_target


@pytest.mark.parametrize("text, reason", [
    ("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
    ("127.0.0.0/8", "loopback"), ("0.0.0.0/0", "loopback"), ("::/0", "loopback"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified address"), ("224.0.0.1", "multicast"),
])
def test_special_addresses_are_never_banned(text, reason):
    assert never_ban_reason(parse_target(text)) == reason


def test_whitelisted_networks_and_own_addresses_are_never_banned():
    whitelist = [ipaddress.ip_network("198.51.100.0/28")]
    own = [ipaddress.ip_address("2001:db8::5")]
    assert "whitelisted" in never_ban_reason(parse_target("198.51.100.3"), whitelist, own)
    assert "whitelisted" in never_ban_reason(parse_target("198.51.100.0/24"), whitelist, own)
    assert "this host" in never_ban_reason(parse_target("2001:db8::5"), whitelist, own)
    assert "this host" in never_ban_reason(parse_target("2001:db8::/64"), whitelist, own)
    assert never_ban_reason(parse_target("198.51.100.77"), whitelist, own) is None
    assert never_ban_reason(parse_target("2001:db8:1::5"), whitelist, own) is None


@pytest.mark.parametrize("text", ["198.51.100.300", "example.com", "", "198.51.100.0/33",
                                  "198.51.100.1/24", "1.2.3", "2001:db8::g"])
def test_invalid_input_is_refused(text):
    with pytest.raises(InvalidAddress):
        parse_target(text)


def test_ipv4_mapped_ipv6_is_the_ipv4_address():
    assert str(parse_address("::ffff:198.51.100.9")) == "198.51.100.9"
