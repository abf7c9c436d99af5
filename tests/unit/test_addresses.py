"""What may never be banned, and parsing what operators type."""

from __future__ import annotations

import ipaddress

import pytest

from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_address, parse_network, parse_target


@pytest.mark.parametrize("text, reason", [
    ("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
    ("127.0.0.0/8", "loopback"), ("0.0.0.0/0", "loopback"), ("::/0", "loopback"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified address"), ("224.0.0.1", "multicast"),
    ("255.255.255.255", "broadcast"), ("ff02::1", "multicast"), ("::", "unspecified address"),
    # Networks that only contain such addresses are refused too, and mapped forms are IPv4.
    ("169.0.0.0/8", "link-local"), ("160.0.0.0/4", "link-local"), ("224.0.0.0/3", "multicast"),
    ("fe00::/7", "link-local"), ("8000::/1", "link-local"),
    ("::ffff:127.0.0.1/128", "loopback"), ("::ffff:127.0.0.0/104", "loopback"),
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
                                  "198.51.100.1/24", "1.2.3", "2001:db8::g", "fe80::1%eth0",
                                  "2001:db8::2%a\r\nBcc: x@example.org", "2001:db8::%1/64"])
def test_invalid_input_is_refused(text):
    with pytest.raises(InvalidAddress):
        parse_target(text)


def test_ipv4_mapped_ipv6_is_the_ipv4_address():
    assert str(parse_address("::ffff:198.51.100.9")) == "198.51.100.9"


def test_one_target_has_one_form():
    """A /32 is the address, a mapped address or network is IPv4: one ban, one key, one check."""
    assert parse_target("198.51.100.7/32") == parse_target("198.51.100.7") == ipaddress.ip_address("198.51.100.7")
    assert parse_target("2001:db8::7/128") == ipaddress.ip_address("2001:db8::7")
    assert parse_target("::ffff:198.51.100.7/128") == ipaddress.ip_address("198.51.100.7")
    assert parse_target("::ffff:198.51.100.0/120") == ipaddress.ip_network("198.51.100.0/24")
    assert parse_network("::ffff:198.51.100.0/120") == ipaddress.ip_network("198.51.100.0/24")


def test_a_whitelist_entry_in_mapped_form_protects_the_ipv4_addresses():
    whitelist = [parse_network("::ffff:198.51.100.0/120")]
    assert "whitelisted" in never_ban_reason(parse_target("198.51.100.3"), whitelist)
    assert "whitelisted" in never_ban_reason(parse_target("::ffff:198.51.100.3"), whitelist)


def test_a_network_of_this_hosts_containers_is_never_banned():
    own = [ipaddress.ip_network("172.18.0.0/16"), ipaddress.ip_address("172.18.0.5")]
    assert "this host" in never_ban_reason(parse_target("172.18.3.4"), [], own)
    assert "this host" in never_ban_reason(parse_target("172.16.0.0/12"), [], own)
    assert never_ban_reason(parse_target("172.19.0.1"), [], own) is None
