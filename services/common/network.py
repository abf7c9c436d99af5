"""Per-network widening of bans: what one banned address counts in.

The ledger counts, where it writes a ban, the bans of each network (and, with
an ASN database, of each network owner), and bans a network once it holds
`threshold` of them within `findtime` (ledger.lua, "Per network"). What an
address counts in is decided here, from values: the configured steps, the
whitelist and the protected hosts' own addresses (nothing that covers one is
ever a step), the widest prefix allowed, and the ASN database.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

from pyfilter.common.addresses import Network, special_networks
from pyfilter.common.config import NetworkConfig
from pyfilter.common.geo import Geo

CACHED = 100_000  # addresses whose steps are remembered (attackers repeat theirs)


class Step(NamedTuple):
    """A banned address counts as `unit` among the bans of `key` (a network,
    or an owner "AS64500"); `target` is the network banned when `key` fills."""

    key: str
    unit: str
    target: str


class Widening:
    def __init__(self, cfg: NetworkConfig, geo: Geo | None = None):
        self.cfg = cfg
        self.geo = geo if cfg.asn else None
        self._steps = {4: cfg.ipv4, 6: cfg.ipv6}
        self._widest = {4: cfg.widest_v4, 6: cfg.widest_v6}
        self._basis: tuple = (None, None)
        # Per IP version, (first address, prefix length) of every network no step may
        # overlap: compared as integers (a flood brings thousands of new addresses a
        # second; ipaddress's objects cost 100 µs per address here, these 10).
        self._never: dict[int, list[tuple[int, int]]] = {}
        self._cache: dict[str, list[Step]] = {}
        self.judge_with(set(), [])

    def judge_with(self, own: set, whitelist: list) -> None:
        """What is never widened over, as the detector knows it now (the cache goes when it changes)."""
        if (own, whitelist) == self._basis:
            return
        self._basis = (set(own), list(whitelist))
        self._never = {v: [(int(n.network_address), n.prefixlen) for n in special_networks(v)] for v in (4, 6)}
        for item in [*whitelist, *own]:
            if isinstance(item, Network):
                self._never[item.version].append((int(item.network_address), item.prefixlen))
            else:
                self._never[item.version].append((int(item), item.max_prefixlen))
        self._cache.clear()

    def steps(self, banned: str) -> list[Step]:
        """The networks (and owner) a ban of `banned` counts in; none for what is not an
        address or network, or is already as wide as every step."""
        found = self._cache.get(banned)
        if found is None:
            if len(self._cache) >= CACHED:
                self._cache.clear()
            found = self._cache[banned] = self._find(banned)
        return found

    def _find(self, banned: str) -> list[Step]:
        read = _read(banned)
        if read is None:
            return []  # not an address or network in its one form (the ledger writes no other)
        version, first, length = read
        bits = 32 if version == 4 else 128
        found = []
        unit = banned
        for prefix in self._steps[version]:
            if prefix >= length:
                continue  # the ban covers this step already: its unit is the ban itself
            if prefix < self._widest[version]:
                break
            start = first >> (bits - prefix) << (bits - prefix)
            if self._overlaps_never(version, bits, start, prefix):
                break  # a wider step covers it too (special ranges included: loopback, mapped IPv4...)
            network = f"{_text(version, start)}/{prefix}"
            found.append(Step(network, unit, network))
            unit = network
        owner = self._owner(banned, version, first, length)
        return found + ([owner] if owner else [])

    def _overlaps_never(self, version: int, bits: int, start: int, prefix: int) -> bool:
        """Whether the network start/prefix overlaps one never to be banned (CIDRs
        overlap when they agree on the bits of the shorter prefix)."""
        for value, length in self._never[version]:
            shift = bits - min(prefix, length)
            if start >> shift == value >> shift:
                return True
        return False

    def _owner(self, banned: str, version: int, first: int, length: int) -> Step | None:
        """The owner's step: its network in the ASN database around `banned`, cut to the widest allowed."""
        if self.geo is None:
            return None
        found = self.geo.owner_network(_text(version, first))
        if found is None:
            return None
        asn, text = found
        network = ipaddress.ip_network(text)
        if network.version != version:
            return None
        widest = self._widest[version]
        if network.prefixlen < widest:
            network = ipaddress.ip_network(f"{_text(version, first)}/{widest}", strict=False)
        start, bits = int(network.network_address), network.max_prefixlen
        if network.prefixlen >= length or self._overlaps_never(version, bits, start, network.prefixlen):
            return None
        return Step(f"AS{asn}", banned, str(network))


def _read(text: str) -> tuple[int, int, int] | None:
    """(IP version, first address as an integer, prefix length) of an address or
    network written in its one form (ipaddress's), else None. With inet_pton: a
    flood brings thousands of new addresses a second, and ipaddress's parsing (an
    exception per IPv6 address tried as IPv4 first) costs several times more."""
    address, slash, prefix = text.partition("/")
    family, version, bits = (socket.AF_INET6, 6, 128) if ":" in address else (socket.AF_INET, 4, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, address), "big")
    except OSError:
        return None
    length = bits
    if slash:
        if not prefix.isdigit() or str(int(prefix)) != prefix or not 0 < int(prefix) < bits:
            return None
        length = int(prefix)
        if value & ((1 << (bits - length)) - 1):
            return None  # host bits set
    if _text(version, value) != address:
        return None
    return version, value, length


def _text(version: int, value: int) -> str:
    """An address as Python's ipaddress writes it (inet_ntop writes the same compressed
    IPv6 form for the addresses this module writes, and much faster)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
