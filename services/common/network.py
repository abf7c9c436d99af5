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
from typing import NamedTuple

from pyfilter.common.addresses import Address, InvalidAddress, Network, never_ban_reason, parse_target
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
        self._whitelist: list[Network] = []
        self._own: set[Address | Network] = set()
        self._cache: dict[str, list[Step]] = {}

    def judge_with(self, own: set, whitelist: list) -> None:
        """What is never widened over, as the detector knows it now (the cache goes when it changes)."""
        if own != self._own or whitelist != self._whitelist:
            self._own, self._whitelist = set(own), list(whitelist)
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
        try:
            member = parse_target(banned)
        except InvalidAddress:
            return []
        if str(member) != banned:
            return []  # the ledger writes addresses in their one form only
        length = member.max_prefixlen if not isinstance(member, Network) else member.prefixlen
        found = []
        unit = banned
        for prefix in self._steps[member.version]:
            if prefix >= length:
                continue  # the ban covers this step already: its unit is the ban itself
            if prefix < self._widest[member.version]:
                break
            network = ipaddress.ip_network(f"{_first(member)}/{prefix}", strict=False)
            if never_ban_reason(network, self._whitelist, self._own) is not None:
                break  # a wider step covers it too
            found.append(Step(str(network), unit, str(network)))
            unit = str(network)
        owner = self._owner(member, length)
        return found + ([owner] if owner else [])

    def _owner(self, member: Address | Network, length: int) -> Step | None:
        """The owner's step: its network in the ASN database around `member`, cut to the widest allowed."""
        if self.geo is None:
            return None
        found = self.geo.owner_network(str(_first(member)))
        if found is None:
            return None
        asn, text = found
        network = ipaddress.ip_network(text)
        widest = self._widest[member.version]
        if network.version != member.version:
            return None
        if network.prefixlen < widest:
            network = ipaddress.ip_network(f"{_first(member)}/{widest}", strict=False)
        if network.prefixlen >= length or never_ban_reason(network, self._whitelist, self._own) is not None:
            return None
        return Step(f"AS{asn}", str(member), str(network))


def _first(member: Address | Network) -> Address:
    return member.network_address if isinstance(member, Network) else member
