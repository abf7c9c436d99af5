"""Bans as nftables set elements: networks as intervals, and the time each has left.

An interval set holds a network as two elements: its first address, and the
address just past its end flagged INTERVAL_END.
"""

from __future__ import annotations

import ipaddress

from pyfilter.enforcer.backends import nft_netlink as nl
from pyfilter.enforcer.backends.base import Network


def interval_elements(net: Network, timeout_ms: int | None = None) -> bytes:
    """A network as packed interval-set elements: its first address, then the end marker."""
    start = nl.pack_element(net.network_address.packed, timeout_ms)
    if int(net.broadcast_address) == (1 << net.max_prefixlen) - 1:
        return start  # a network that reaches the top of the address space has no end
    return start + nl.pack_element((net.broadcast_address + 1).packed, interval_end=True)


def networks_from(elements: list[nl.Element], version: int) -> dict[Network, float | None]:
    """The networks in an interval set (starts and end markers, in any order) -> seconds left."""
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    top = address((1 << (32 if version == 4 else 128)) - 1)
    result: dict[Network, float | None] = {}
    start: nl.Element | None = None

    def close(last) -> None:
        for net in ipaddress.summarize_address_range(address(start.key), last):
            result[net] = remaining(start)

    # Sorted by key, an end marker before a start at the same key: [a, b) [b, c).
    # An end with no start before it (nft writes one at 0.0.0.0) is ignored.
    for element in sorted(elements, key=lambda e: (e.key, not e.interval_end)):
        if start is not None:
            close(address(element.key) - 1)
            start = None
        if not element.interval_end:
            start = element
    if start is not None:
        close(top)
    return {net: left for net, left in result.items() if left != 0.0}


class NetworkIndex:
    """Networks grouped by prefix length: finds the one covering a network without a full scan."""

    def __init__(self, networks=()) -> None:
        self._by_length: dict[tuple[int, int], set[int]] = {}  # (version, prefix length) -> addresses
        for net in networks:
            self.add(net)

    def add(self, net: Network) -> None:
        self._by_length.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))

    def covering(self, net: Network, strict: bool = False) -> Network | None:
        """A network of the index that contains `net` (and is not `net` itself if strict)."""
        address = int(net.network_address)
        for version, length in sorted(self._by_length):
            if version != net.version or length > net.prefixlen or (strict and length == net.prefixlen):
                continue
            host_bits = net.max_prefixlen - length
            masked = address >> host_bits << host_bits
            if masked in self._by_length[version, length]:
                return type(net)((masked, length))
        return None


def remaining(element: nl.Element) -> float | None:
    """Seconds an element has left, None if it never expires, 0.0 if it just expired."""
    if not element.timeout_ms or element.expires_ms is None:
        return None
    return element.expires_ms / 1000
