"""Addresses and networks: parsing operator input, and what must never be banned."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidAddress(ValueError):
    pass


def parse_address(text: str) -> Address:
    """An IPv4 or IPv6 address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidAddress(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def parse_network(text: str) -> Network:
    """A CIDR (or a bare address, as a /32 or /128); host bits must be zero."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidAddress(f"not a network: {text!r} ({exc})") from None


def parse_target(text: str) -> Address | Network:
    """What an operator may ban: one address, or a network in CIDR form."""
    return parse_network(text) if "/" in text else parse_address(text)


def never_ban_reason(
    target: Address | Network,
    whitelist: Iterable[Network] = (),
    own: Iterable[Address] = (),
) -> str | None:
    """Why `target` must not be banned, or None if it may be.

    Loopback, link-local, unspecified and multicast addresses are never
    banned; nor is anything that overlaps a whitelisted network or contains
    one of the host's own addresses (its interfaces, gateways and resolvers:
    behind NAT every client can appear to come from the gateway).
    """
    net = ipaddress.ip_network(target) if not isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else target
    first = net.network_address
    if first.is_loopback or net.overlaps(_LOOPBACK[net.version]):
        return "loopback"
    if first.is_link_local:
        return "link-local"
    if first.is_unspecified:
        return "unspecified address"
    if first.is_multicast:
        return "multicast"
    for allowed in whitelist:
        if allowed.version == net.version and allowed.overlaps(net):
            return f"whitelisted ({allowed})"
    for addr in own:
        if addr.version == net.version and addr in net:
            return f"an address of this host ({addr})"
    return None


_LOOPBACK = {
    4: ipaddress.ip_network("127.0.0.0/8"),
    6: ipaddress.ip_network("::1/128"),
}
