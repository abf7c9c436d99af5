"""What every firewall backend offers: a short, sshguard-sized interface.

A backend owns one place in the kernel (for nftables, the table
`inet pyfilter`) and knows five verbs: set it up, ban, unban, list, and make
it equal to a wanted state. It holds no policy: deciding what may be banned
(never the host's own addresses, whitelists, ...) happens before a ban gets
here.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pyfilter.common.addresses import InvalidAddress, parse_target

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Target = Address | Network

log = logging.getLogger("pyfilter.enforcer.backend")


def normalize_target(target: Target) -> Target:
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


def target_text(target: Target) -> str:
    """How a target is written by `list()` and read by `sync()`: 198.51.100.7, 2001:db8::/64."""
    return str(normalize_target(target))


def parse_target_text(text: str) -> Target:
    """The inverse of `target_text`; raises InvalidAddress on anything else."""
    return normalize_target(parse_target(text))


def as_target(value: Target | str) -> Target:
    """A target given as an ipaddress object or as text."""
    return parse_target_text(value) if isinstance(value, str) else normalize_target(value)


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban to apply: an address or a network, for `timeout` seconds (None: forever)."""

    target: Target
    timeout: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target):
            raise TypeError(f"Ban.target must be an ipaddress address or network, got {self.target!r}")
        # A zero timeout would reach the kernel as "no timeout": a permanent
        # ban where a (nearly) expired one was meant.
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, int) or self.timeout <= 0
        ):
            raise ValueError(
                f"Ban.timeout for {self.target} must be a positive whole number of seconds "
                f"or None (permanent), got {self.timeout!r}"
            )
        object.__setattr__(self, "target", normalize_target(self.target))


class Backend(abc.ABC):
    """A kernel firewall the enforcer drives.

    The public methods serialise on one lock, so a periodic `sync` never
    interleaves with a `ban` arriving meanwhile; subclasses implement the
    underscored methods.
    """

    name = "backend"

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def init(self) -> None:
        """Create what the backend needs if it is missing. Safe to call again."""
        async with self._lock:
            await self._init()

    async def ban(self, bans: Sequence[Ban]) -> None:
        """Apply bans in one go. A target already banned gets the new timeout."""
        if bans:
            async with self._lock:
                await self._ban(bans)

    async def unban(self, targets: Iterable[Target | str]) -> None:
        """Lift bans. A target that is not banned is skipped silently."""
        normalized = [as_target(t) for t in targets]
        if normalized:
            async with self._lock:
                await self._unban(normalized)

    async def list(self) -> dict[str, float | None]:
        """Every ban in force: target text -> remaining seconds, None if permanent."""
        async with self._lock:
            return await self._list()

    async def sync(self, wanted: Mapping[str, float | None]) -> tuple[list[str], list[str]]:
        """Make the kernel hold exactly `wanted` (target text -> remaining seconds or None).

        Bans already in force are left alone (their timeouts are not touched);
        missing ones are added with the remaining time, extra ones removed.
        Returns the target texts (added, removed).
        """
        async with self._lock:
            to_add, to_remove = plan_sync(await self._list(), wanted)
            if to_remove:
                await self._unban(to_remove)
            if to_add:
                await self._ban(to_add)
        return [target_text(b.target) for b in to_add], [target_text(t) for t in to_remove]

    async def close(self) -> None:
        """Release resources. Bans stay in the kernel and keep expiring there."""

    @abc.abstractmethod
    async def _init(self) -> None: ...

    @abc.abstractmethod
    async def _ban(self, bans: Sequence[Ban]) -> None: ...

    @abc.abstractmethod
    async def _unban(self, targets: Sequence[Target]) -> None: ...

    @abc.abstractmethod
    async def _list(self) -> dict[str, float | None]: ...


def plan_sync(
    current: Mapping[str, float | None], wanted: Mapping[str, float | None]
) -> tuple[list[Ban], list[Target]]:
    """What `sync` must do: (bans to add, targets to remove).

    Wanted entries with no time left count as expired: not added, and removed
    if still present. Remaining times are rounded up to whole seconds so a ban
    never ends early. Keys that are not addresses or networks are logged and
    skipped, so one bad record cannot stop a whole reconcile.
    """
    keep: set[str] = set()
    to_add: dict[str, Ban] = {}
    for text, remaining in wanted.items():
        if remaining is not None and remaining <= 0:
            continue
        if text in current:  # already canonical and present: the common case, no parsing
            keep.add(text)
            continue
        try:
            target = parse_target_text(text)
        except InvalidAddress as exc:
            log.warning("sync: skipping wanted entry: %s", exc, extra={"address": text})
            continue
        key = target_text(target)
        if key in current:
            keep.add(key)
        else:
            to_add[key] = Ban(target, None if remaining is None else math.ceil(remaining))

    to_remove = [parse_target_text(key) for key in current if key not in keep]
    return list(to_add.values()), to_remove
