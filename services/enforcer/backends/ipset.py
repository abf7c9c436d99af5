"""iptables + ipset backend: bans are elements of ipset hash sets with timeouts.

For hosts whose firewall is iptables (legacy or nft flavour). The sets

    pyfilter4     hash:ip  family inet   timeout 0    addresses
    pyfilter6     hash:ip  family inet6  timeout 0
    pyfilter4net  hash:net family inet   timeout 0    networks (CIDR)
    pyfilter6net  hash:net family inet6  timeout 0

are created and fed over netlink with pyroute2 (`ipset_netlink`), about
2,000 elements per message; chain `pyfilter` holds one rule per set
(`-m set --match-set pyfilter4 src -j DROP`) and is jumped to from INPUT and
DOCKER-USER or FORWARD (`xtables`). So a packet costs one hash lookup per
set however many bans there are, and the kernel expires each ban by itself.

A ban with another scope goes to sets named `pyfilter4_<8 hex digits of the
scope>` (ipset names stop at 31 characters), whose rules match the ports with
`-m multiport` (15 ports per rule) for TCP and UDP and end in DROP or REJECT
(`--reject-with tcp-reset` for TCP). Each rule's comment spells its set and
scope (`pyfilter pyfilter4_1a2b3c4d 22,2222|reject v1 tcp`), which is how
`list()` tells a set's scope after a restart.

Timeouts above ipset's limit (about 24.8 days) are cut to it; the periodic
sync adds such a ban again when it runs out early.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_ADD, IPSET_CMD_DEL

from pyfilter.common.addresses import InvalidAddress
from pyfilter.enforcer.backends import ipset_netlink as nl
from pyfilter.enforcer.backends.base import DEFAULT_SCOPE, Backend, Ban, Inspection, Scope, Target, ban_key
from pyfilter.enforcer.backends.xtables import Xtables, XtablesError, comment_of, match_set_of

log = logging.getLogger("pyfilter.enforcer.ipset")

MAXELEM = 1 << 21  # the default, 65,536, is too few for a botnet's worth of bans
MULTIPORT_MAX = 15
SCOPED_NAME = re.compile(r"^pyfilter[46](net)?_[0-9a-f]{8}$")


class IpsetError(RuntimeError):
    """A netlink request to ipset failed; the message says what and what to do."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code  # the errno the kernel answered


@dataclass(frozen=True)
class SetSpec:
    version: int
    interval: bool
    scope: Scope = DEFAULT_SCOPE

    @property
    def name(self) -> str:
        base = f"pyfilter{self.version}{'net' if self.interval else ''}"
        if self.scope.is_default:
            return base
        return f"{base}_{hashlib.sha1(self.scope.text().encode()).hexdigest()[:8]}"

    @property
    def stype(self) -> str:
        return "hash:net" if self.interval else "hash:ip"

    def rules(self) -> list[str]:
        """This set's rules in chain `pyfilter`, as `iptables -S` prints them (without `-A pyfilter`)."""
        match = f"-m set --match-set {self.name} src"
        if self.scope.is_default:
            return [f'{match} -m comment --comment "pyfilter {self.name} v1" -j DROP']
        ports = self.scope.ports
        groups = [ports[i:i + MULTIPORT_MAX] for i in range(0, len(ports), MULTIPORT_MAX)] or [()]
        rules = []
        for proto in ("tcp", "udp" if ports else None):
            verdict = "-j DROP"
            if self.scope.verdict == "reject":
                verdict = "-j REJECT --reject-with " + (
                    "tcp-reset" if proto == "tcp" else "icmp-port-unreachable" if self.version == 4
                    else "icmp6-port-unreachable")
            for n, group in enumerate(groups, 1):
                dports = f" -m multiport --dports {','.join(map(str, group))}" if group else ""
                comment = f"pyfilter {self.name} {self.scope.text()} v1 {proto or 'other'} {n}"
                rules.append(f'{f"-p {proto} " if proto else ""}{match}{dports} '
                             f'-m comment --comment "{comment}" {verdict}')
        return rules


DEFAULT_SETS = tuple(SetSpec(v, i) for v in (4, 6) for i in (False, True))


def _is_network(target: Target) -> bool:
    return isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network))


def scopes_from_rules(rules: Sequence[str]) -> dict[str, Scope]:
    """Set name -> scope, read from the comments of our scoped rules."""
    found: dict[str, Scope] = {}
    for rule in rules:
        words = (comment_of(rule) or "").split()
        if len(words) >= 4 and words[0] == "pyfilter" and words[3] == "v1" and match_set_of(rule) == words[1]:
            try:
                found[words[1]] = Scope.parse(words[2])
            except InvalidAddress:
                continue
    return found


class IpsetBackend(Backend):
    name = "iptables"

    def __init__(self, iptables: str = "iptables", ip6tables: str = "ip6tables") -> None:
        super().__init__()
        self._sock = nl.IpsetSocket()
        self._xt = {4: Xtables(iptables), 6: Xtables(ip6tables)}
        self._scoped: dict[str, SetSpec] = {}  # scoped sets with rules, by name

    async def close(self) -> None:
        self._sock.close()

    # -- init and sync -----------------------------------------------------------

    async def _init(self) -> None:
        await self._guard("connect to ipset", self._sock.setup_endpoint())
        existing = set(await self._guard("list sets", nl.set_names(self._sock)))
        rules = {v: await xt.rules() for v, xt in self._xt.items()}
        scoped = {**scopes_from_rules(rules[4]), **scopes_from_rules(rules[6])}
        self._scoped = {}
        for name, scope in scoped.items():
            version, interval = int(name[8]), name[9:].startswith("net")
            spec = SetSpec(version, interval, scope)
            if spec.name == name and name in existing:
                self._scoped[name] = spec
        stale = [s for s in DEFAULT_SETS if s.name in existing and not await self._matches(s)]
        if stale:
            # Rules refer to sets by name, so a set of another kind (made by
            # hand, or an older layout) can only go once our rules are gone.
            log.warning("ipset: sets of another type or without timeouts; recreating them "
                        "(their bans return at the next sync)", extra={"sets": [s.name for s in stale]})
            for xt in self._xt.values():
                await xt.write_chain([])
            rules = {4: [], 6: []}
            for spec in stale:
                await self._guard(f"destroy set {spec.name}", self._sock.destroy(spec.name))
                existing.discard(spec.name)
        for spec in (*DEFAULT_SETS, *self._scoped.values()):
            if spec.name not in existing:
                await self._create(spec)
        for version, xt in self._xt.items():
            wanted = [r for s in self._specs(version) for r in s.rules()]
            if [comment_of(r) for r in rules[version]] != [comment_of(r) for r in wanted]:
                await xt.write_chain(wanted)
                log.info("chain pyfilter written", extra={"binary": xt.binary, "rules": len(wanted)})
            await xt.hook()
        # Scoped sets left without rules (a crash between creating one and
        # writing its rules) block nothing: they are ours to remove.
        for name in existing:
            if SCOPED_NAME.match(name) and name not in self._scoped:
                await self._destroy_orphan(name)

    async def _matches(self, spec: SetSpec) -> bool:
        stype, family, timeout = await self._guard(f"read set {spec.name}", nl.set_header(self._sock, spec.name))
        return (stype, family, timeout) == (spec.stype, nl.AF[spec.version], True)

    async def _before_sync(self) -> None:
        # Docker may have started since: hook DOCKER-USER as soon as it exists.
        for xt in self._xt.values():
            await xt.hook()

    def _specs(self, version: int, interval: bool | None = None) -> list[SetSpec]:
        return [s for s in (*DEFAULT_SETS, *self._scoped.values())
                if s.version == version and (interval is None or s.interval == interval)]

    async def _create(self, spec: SetSpec) -> None:
        await self._guard(f"create set {spec.name}", self._sock.create(
            spec.name, stype=spec.stype, family=nl.AF[spec.version], exclusive=False,
            timeout=0, maxelem=MAXELEM))

    async def _destroy_orphan(self, name: str) -> None:
        try:
            await self._sock.destroy(name)
            log.info("ipset: removed a set no rule used", extra={"set": name})
        except NetlinkError as exc:  # referenced by someone's rule: leave it
            log.warning("ipset: a set with no rule of ours cannot be removed",
                        extra={"set": name, "error": str(exc)})

    async def _ensure_sets(self, specs: set[SetSpec]) -> None:
        """Create scoped sets first used now, then rewrite the chain with their rules."""
        new = [s for s in specs if not s.scope.is_default and s.name not in self._scoped]
        for spec in new:
            await self._create(spec)
        for version in {s.version for s in new}:
            self._scoped.update((s.name, s) for s in new if s.version == version)
            await self._xt[version].write_chain([r for s in self._specs(version) for r in s.rules()])
        if new:
            log.info("ipset: added sets for bans with a scope", extra={"sets": [s.name for s in new]})

    # -- ban / unban / list --------------------------------------------------------

    async def _ban(self, bans: Sequence[Ban]) -> None:
        await self._retrying(self._apply_bans, bans)

    async def _unban(self, targets: Sequence[Target]) -> None:
        await self._retrying(lambda items: self._apply_removals(
            [(s, t) for t in items for s in self._specs(t.version, _is_network(t))]), targets)

    async def _remove(self, entries: Sequence[Ban]) -> None:
        await self._retrying(self._apply_removals, [
            (SetSpec(b.target.version, _is_network(b.target), b.scope), b.target) for b in entries])

    async def _retrying(self, apply, items) -> None:
        # ENOENT: a set was destroyed under us (`ipset destroy`, a firewall
        # reload). Set everything up again and try once more.
        try:
            await apply(items)
        except IpsetError as exc:
            if exc.code != errno.ENOENT:
                raise
            log.warning("ipset: setting up sets and rules again and retrying once", extra={"error": str(exc)})
            await self._init()
            await apply(items)

    async def _apply_bans(self, bans: Sequence[Ban]) -> None:
        by_set: dict[SetSpec, dict[Target, int | None]] = {}
        for ban in bans:
            if _is_network(ban.target) and ban.target.prefixlen == 0:
                log.error("ipset: cannot ban a /0: hash:net sets hold prefixes of length 1 or more",
                          extra={"address": str(ban.target)})
                continue
            spec = SetSpec(ban.target.version, _is_network(ban.target), ban.scope)
            by_set.setdefault(spec, {})[ban.target] = ban.timeout  # a later duplicate wins
        await self._ensure_sets(set(by_set))
        for spec, timeouts in by_set.items():
            # Permanent: no timeout attribute, so the set's default (0, never) applies.
            await self._change(IPSET_CMD_ADD, spec, (nl.pack_element(t, left) for t, left in timeouts.items()))

    async def _apply_removals(self, entries: Sequence[tuple[SetSpec, Target]]) -> None:
        by_set: dict[SetSpec, set[Target]] = {}
        for spec, target in entries:
            if spec.scope.is_default or spec.name in self._scoped:  # an unused scope holds nothing
                by_set.setdefault(spec, set()).add(target)
        for spec, targets in by_set.items():
            await self._change(IPSET_CMD_DEL, spec, (nl.pack_element(t) for t in targets))

    async def _change(self, command: int, spec: SetSpec, elements) -> None:
        what = f"{'ban in' if command == IPSET_CMD_ADD else 'unban from'} set {spec.name}"
        await self._guard(what, nl.change(self._sock, command, spec.name, elements))

    async def _list(self) -> dict[str, float | None]:
        bans: dict[str, float | None] = {}
        for spec in (*DEFAULT_SETS, *self._scoped.values()):
            try:
                elements = await self._guard(f"list set {spec.name}",
                                             nl.list_elements(self._sock, spec.name, spec.interval))
            except IpsetError as exc:
                log.warning("ipset: a set is missing; init() creates it", extra={"error": str(exc)})
                continue
            bans.update((ban_key(e.target, spec.scope), e.remaining) for e in elements)
        return bans

    async def _inspect(self) -> Inspection:
        existing = set(await self._guard("list sets", nl.set_names(self._sock)))
        sets = {}
        for spec in (*DEFAULT_SETS, *self._scoped.values()):
            if spec.name in existing:
                sets[spec.name] = len(await self._guard(f"list set {spec.name}",
                                                        nl.list_elements(self._sock, spec.name, spec.interval)))
        hooks, covered, problems = [], True, []
        for xt in self._xt.values():
            jumps, forwarded = await xt.hooked()
            hooks += [f"{xt.binary} {c}" for c in jumps]
            covered &= forwarded
            if not await xt.rules():
                problems.append(f"{xt.binary}: chain pyfilter is missing or empty: restart the enforcer")
            if "INPUT" not in jumps:
                problems.append(f"{xt.binary}: INPUT does not jump to chain pyfilter (traffic to this host "
                                "is not checked against the bans): restart the enforcer")
            if not forwarded:
                problems.append(f"{xt.binary}: DOCKER-USER (or FORWARD) does not jump to chain pyfilter "
                                "(traffic to ports Docker publishes is not checked): the next sync adds it")
        missing = [s.name for s in DEFAULT_SETS if s.name not in existing]
        if missing:
            problems.append(f"ipset sets {', '.join(missing)} are missing: restart the enforcer")
        return Inspection("ipset pyfilter* + iptables chain pyfilter", not missing, hooks, covered, sets,
                          problems)

    async def _guard(self, what: str, coro):
        try:
            return await coro
        except NetlinkError as exc:
            raise _error(what, exc) from None


_HINTS = {
    errno.EPERM: "the enforcer needs CAP_NET_ADMIN: run as root, or with cap_add: [NET_ADMIN]",
    errno.ENOENT: "the set does not exist; init() creates it",
    errno.EPROTONOSUPPORT: "this kernel has no ipset support (module ip_set); use the nftables backend",
}


def _error(what: str, exc: NetlinkError) -> IpsetError:
    hint = _HINTS.get(exc.code, "see the kernel log (dmesg)")
    return IpsetError(f"ipset: {what} failed: {exc} ({hint})", exc.code)


__all__ = ["IpsetBackend", "IpsetError", "SetSpec", "XtablesError"]
