"""What the detector counts from a batch: addresses, IPv6 networks, never-ban."""

from __future__ import annotations

import ipaddress

import msgspec

from pyfilter.common import messages
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
