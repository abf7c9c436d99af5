"""Addresses and networks: parsing operator input, and what must never be banned."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidAddress(ValueError):
    pass


def parse_address(text: str) -> Address:
    """An IPv4 or IPv6 address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4.

    A zone (`fe80::1%eth0`) is refused: it names an interface of one host, and
    Python would keep any text after the `%`, newlines included.
    """
    text = text.strip()
    if "%" in text:
        raise InvalidAddress(f"not an IP address: {text!r} (zone ids are not accepted)")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidAddress(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def parse_network(text: str) -> Network:
    """A CIDR (or a bare address, as a /32 or /128); host bits must be zero.

    An IPv4-mapped network (::ffff:198.51.100.0/120) becomes the IPv4 network
    it stands for: packets from those clients reach the firewall as IPv4.
    """
    text = text.strip()
    if "%" in text:
        raise InvalidAddress(f"not a network: {text!r} (zone ids are not accepted)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidAddress(f"not a network: {text!r} ({exc})") from None
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def parse_target(text: str) -> Address | Network:
    """What an operator may ban: one address, or a network in CIDR form, in its one form (`normalize`)."""
    return normalize(parse_network(text) if "/" in text else parse_address(text))


def normalize(target: Address | Network) -> Address | Network:
    """The one form a target is stored and compared in.

    A /32 (or /128) network is the address itself, and an IPv4-mapped IPv6
    address (::ffff:a.b.c.d) is the IPv4 address: packets from such a client
    arrive as IPv4, so a ban in the IPv6 set would never match them.
    """
    if isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        if target.prefixlen != target.max_prefixlen:
            return target
        target = target.network_address
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped:
        return target.ipv4_mapped
    return target


def never_ban_reason(
    target: Address | Network,
    whitelist: Iterable[Network] = (),
    own: Iterable[Address | Network] = (),
) -> str | None:
    """Why `target` must not be banned, or None if it may be.

    Loopback, link-local, unspecified and multicast addresses are never
    banned; nor is anything that overlaps a whitelisted network, contains
    one of the host's own addresses (its interfaces, gateways and resolvers:
    behind NAT every client can appear to come from the gateway; its
    containers) or overlaps one of its own networks (its containers').
    """
    net = ipaddress.ip_network(target) if not isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else target
    # Overlaps, not just the first address: 169.0.0.0/8 holds the link-local
    # range (cloud metadata services), 8000::/1 holds fe80::/10.
    for reason, special in _SPECIAL[net.version]:
        if net.overlaps(special):
            return reason
    for allowed in whitelist:
        if allowed.version == net.version and allowed.overlaps(net):
            return f"whitelisted ({allowed})"
    for item in own:
        if item.version != net.version:
            continue
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            if item.overlaps(net):
                return f"a network of this host ({item})"
        elif item in net:
            return f"an address of this host ({item})"
    return None


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_SPECIAL = {
    4: [(reason, ipaddress.ip_network(n)) for reason, n in (
        ("loopback", "127.0.0.0/8"), ("link-local", "169.254.0.0/16"), ("unspecified address", "0.0.0.0/8"),
        ("multicast", "224.0.0.0/4"), ("broadcast", "255.255.255.255/32"))],
    6: [(reason, ipaddress.ip_network(n)) for reason, n in (
        ("loopback", "::1/128"), ("link-local", "fe80::/10"), ("unspecified address", "::/128"),
        ("multicast", "ff00::/8"), ("IPv4-mapped range", "::ffff:0:0/96"))],
}


def special_networks(version: int) -> list[Network]:
    """The networks never banned whatever the configuration says (loopback, link-local...)."""
    return [network for _, network in _SPECIAL[version]]
