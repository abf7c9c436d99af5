"""What every firewall backend offers: a short, sshguard-sized interface.

A backend owns one place in the kernel (for nftables, the table
`inet pyfilter`) and knows five verbs: set it up, ban, unban, list, and make
it equal to a wanted state. It holds no policy: deciding what may be banned
(never the host's own addresses, whitelists, ...) happens before a ban gets
here.

A ban has a scope: every port (the default) or a list of ports, matched on
TCP and UDP, and a verdict, drop (the default) or reject. `list()` and
`sync()` key a ban by its target for the default scope and by
`target|ports|verdict` otherwise (`198.51.100.7|22,2222|reject`,
`2001:db8::/64|all|reject`), so the enforcer reconciles scopes with plain
string keys. A target may be banned in several scopes at once; `unban`
lifts all of them, `sync` removes exactly the keys that are not wanted.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pyfilter.common.addresses import InvalidAddress, normalize, parse_target

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Target = Address | Network

log = logging.getLogger("pyfilter.enforcer.backend")


def target_text(target: Target) -> str:
    """How a target is written by `list()` and read by `sync()`: 198.51.100.7, 2001:db8::/64."""
    return str(normalize(target))


def parse_target_text(text: str) -> Target:
    """The inverse of `target_text`; raises InvalidAddress on anything else."""
    return parse_target(text)


def as_target(value: Target | str) -> Target:
    """A target given as an ipaddress object or as text."""
    return parse_target_text(value) if isinstance(value, str) else normalize(value)


Verdict = Literal["drop", "reject"]
VERDICTS = ("drop", "reject")
# Enough for any service's ports; keeps the set names of a scope (which spell
# its ports) within nftables' 256-character limit.
MAX_PORTS = 32


@dataclass(frozen=True, slots=True)
class Scope:
    """What a ban blocks: all ports or these (TCP and UDP), by dropping or rejecting."""

    ports: tuple[int, ...] = ()
    verdict: Verdict = "drop"

    def __post_init__(self) -> None:
        ports = tuple(sorted(set(self.ports)))
        if any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in ports):
            raise ValueError(f"ban ports must be whole numbers from 1 to 65535, got {list(self.ports)!r}")
        if len(ports) > MAX_PORTS:
            raise ValueError(f"a ban covers at most {MAX_PORTS} ports, got {len(ports)}: "
                             "ban all ports instead, or split the rule")
        if self.verdict not in VERDICTS:
            raise ValueError(f"ban verdict must be 'drop' or 'reject', got {self.verdict!r}")
        object.__setattr__(self, "ports", ports)

    @property
    def is_default(self) -> bool:
        return not self.ports and self.verdict == "drop"

    def text(self) -> str:
        """`22,2222|reject`, `all|reject`; the default scope is written as nothing."""
        return "" if self.is_default else f"{','.join(map(str, self.ports)) or 'all'}|{self.verdict}"

    @classmethod
    def parse(cls, text: str) -> Scope:
        ports, sep, verdict = text.partition("|")
        try:
            numbers = () if ports == "all" else tuple(int(p) for p in ports.split(","))
        except ValueError:
            numbers = None
        if not sep or numbers is None:
            raise InvalidAddress(f"not a ban scope: {text!r} (expected like '22,2222|reject' or 'all|reject')")
        try:
            return cls(numbers, verdict)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidAddress(f"not a ban scope: {text!r} ({exc})") from None


DEFAULT_SCOPE = Scope()


def ban_key(target: Target, scope: Scope = DEFAULT_SCOPE) -> str:
    """How `list()` and `sync()` name a ban: `198.51.100.7`, `198.51.100.7|22|reject`."""
    text = target_text(target)
    return text if scope.is_default else f"{text}|{scope.text()}"


def parse_ban_key(text: str) -> tuple[Target, Scope]:
    """The inverse of `ban_key`; raises InvalidAddress on anything else."""
    target, sep, scope = text.partition("|")
    return parse_target_text(target), (Scope.parse(scope) if sep else DEFAULT_SCOPE)


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban to apply: an address or a network, for `timeout` seconds (None: forever),
    on all ports or `ports` (TCP and UDP), dropping or rejecting."""

    target: Target
    timeout: int | None = None
    ports: tuple[int, ...] = ()
    verdict: Verdict = "drop"

    @property
    def scope(self) -> Scope:
        return Scope(self.ports, self.verdict)

    @property
    def key(self) -> str:
        return ban_key(self.target, self.scope)

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
        object.__setattr__(self, "target", normalize(self.target))
        scope = Scope(tuple(self.ports), self.verdict)  # validates, and sorts the ports
        object.__setattr__(self, "ports", scope.ports)


@dataclass(frozen=True)
class Inspection:
    """What a backend finds of its own place in the kernel, for the status report."""

    table: str | None  # what it owns, e.g. "inet pyfilter"; None: nothing (log-only)
    present: bool
    hooks: list[str]  # where traffic meets its sets
    docker_covered: bool  # forwarded traffic (ports Docker publishes) meets them too
    sets: dict[str, int]  # set -> elements
    problems: list[str]  # in words, with what to do


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
        """Lift bans, in every scope. A target that is not banned is skipped silently."""
        normalized = [as_target(t) for t in targets]
        if normalized:
            async with self._lock:
                await self._unban(normalized)

    async def list(self) -> dict[str, float | None]:
        """Every ban in force: ban key (see `ban_key`) -> remaining seconds, None if permanent."""
        async with self._lock:
            return await self._list()

    async def sync(self, wanted: Mapping[str, float | None]) -> tuple[list[str], list[str]]:
        """Make the kernel hold exactly `wanted` (ban key -> remaining seconds or None).

        Bans already in force are left alone (their timeouts are not touched);
        missing ones are added with the remaining time, extra ones removed
        (only in the scope their key names). Returns the keys (added, removed).
        """
        async with self._lock:
            await self._before_sync()
            to_add, to_remove = plan_sync(await self._list(), wanted)
            if to_remove:
                await self._remove(to_remove)
            if to_add:
                await self._ban(to_add)
        return [b.key for b in to_add], [b.key for b in to_remove]

    async def inspect(self) -> Inspection:
        """Look at what is in the kernel: table, hooks, elements per set."""
        async with self._lock:
            return await self._inspect()

    async def close(self) -> None:
        """Release resources. Bans stay in the kernel and keep expiring there."""

    @abc.abstractmethod
    async def _init(self) -> None: ...

    @abc.abstractmethod
    async def _ban(self, bans: Sequence[Ban]) -> None: ...

    @abc.abstractmethod
    async def _unban(self, targets: Sequence[Target]) -> None: ...

    @abc.abstractmethod
    async def _remove(self, entries: Sequence[Ban]) -> None:
        """Remove each entry's target from its own scope only (timeouts are ignored)."""

    @abc.abstractmethod
    async def _list(self) -> dict[str, float | None]: ...

    async def _inspect(self) -> Inspection:
        return Inspection(None, False, [], False, {}, [])

    async def _before_sync(self) -> None:
        """A hook for backends that re-check their surroundings at each sync."""


def plan_sync(
    current: Mapping[str, float | None], wanted: Mapping[str, float | None]
) -> tuple[list[Ban], list[Ban]]:
    """What `sync` must do: (bans to add, bans to remove; the latter without timeouts).

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
            target, scope = parse_ban_key(text)
        except InvalidAddress as exc:
            log.warning("sync: skipping a wanted entry", extra={"address": text, "error": str(exc)})
            continue
        key = ban_key(target, scope)
        if key in current:
            keep.add(key)
        else:
            timeout = None if remaining is None else math.ceil(remaining)
            to_add[key] = Ban(target, timeout, scope.ports, scope.verdict)

    to_remove = []
    for key in current:
        if key not in keep:
            target, scope = parse_ban_key(key)
            to_remove.append(Ban(target, None, scope.ports, scope.verdict))
    return list(to_add.values()), to_remove
