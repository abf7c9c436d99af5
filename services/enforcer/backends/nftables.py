"""nftables backend: bans are elements of kernel sets with timeouts.

The table, its sets and rules are described in `nft_layout`; the netlink
plumbing is in `nft_netlink`. Everything goes through pyroute2 over netlink,
`init()` included: the five expressions of a rule are easy to build with
pyroute2's message classes, and the enforcer then needs neither the `nft`
binary nor to parse its output. `init()` reads our table and sends one atomic
transaction only for what differs, so calling it again changes nothing.

Timeouts are kernel element timeouts (milliseconds), so bans expire even
with every service down. Banning a target that is already in a set must
replace its timeout, but kernels before 6.12 silently keep the old one on a
plain re-add. So an address ban is sent as "add bare, delete, add with
timeout" in one transaction: the same result on every kernel, and never a
moment without the ban. Unban is "add bare, delete", which succeeds whether
or not the element was there. Networks are read first instead (see
`_replace_networks`): an interval set refuses overlaps.

Large batches go out in chunks of about 2,000 elements per message (a
netlink attribute holds at most 64 KiB), one transaction per chunk.

A ban with a scope other than "all ports, drop" goes to the sets of that
scope (see `nft_layout`), created with their rules by the first ban that
needs them; `list()` names such a ban `target|ports|verdict`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import Sequence

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETSET,
    NFT_MSG_NEWSETELEM,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_msg,
)

from pyfilter.enforcer.backends import nft_netlink as nl
from pyfilter.enforcer.backends.base import Backend, Ban, Inspection, Network, Target, ban_key
from pyfilter.enforcer.backends.nft_elements import NetworkIndex, interval_elements, networks_from, remaining
from pyfilter.enforcer.backends.nft_layout import (
    HOOKS,
    SETS,
    TABLE,
    SetSpec,
    parse_spec,
    chain_matches,
    plan_layout,
    scope_messages,
    scoped_spec,
)

log = logging.getLogger("pyfilter.enforcer.nftables")


class NftablesError(RuntimeError):
    """A netlink request to nftables failed; the message says what and what to do."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code  # the errno the kernel answered


class NftablesBackend(Backend):
    name = "nftables"

    def __init__(self) -> None:
        super().__init__()
        self._sock = nl.NftSocket()
        self._scoped: dict[str, SetSpec] = {}  # scoped sets in the kernel, by name
        self._ports_sets: set[str] = set()

    async def close(self) -> None:
        self._sock.close()

    # -- init ------------------------------------------------------------------

    async def _init(self) -> None:
        sets = {m.get_attr("NFTA_SET_NAME"): m
                for m in await self._dump(nft_set_msg, NFT_MSG_GETSET, "NFTA_SET_TABLE")}
        chains = {m.get_attr("NFTA_CHAIN_NAME"): m
                  for m in await self._dump(nft_chain_msg, NFT_MSG_GETCHAIN, "NFTA_CHAIN_TABLE")}
        comments: dict[str, list] = {}  # chain -> comments of its rules, in order
        for rule in await self._dump(nft_rule_msg, NFT_MSG_GETRULE, "NFTA_RULE_TABLE"):
            chain = rule.get_attr("NFTA_RULE_CHAIN")
            comments.setdefault(chain, []).append(rule.get_attr("NFTA_RULE_USERDATA"))
        plan, recreated = plan_layout(sets, chains, comments)
        for name in recreated:
            log.warning("nftables: a set has another type or flags than expected; recreating it "
                        "(its bans return at the next sync)", extra={"set": name})
        if plan:
            await self._transact(f"set up table inet {TABLE}", plan)
            log.info("nftables: table set up", extra={"table": f"inet {TABLE}", "changes": len(plan) - 1})
        self._scoped = {s.name: s for s in map(parse_spec, sets) if s is not None}
        self._ports_sets = {n for n in sets if n.startswith("ports_")}
        self._ports_sets |= {s.ports_set for s in self._scoped.values() if s.ports_set}

    async def _ensure_sets(self, specs: set[SetSpec]) -> None:
        """Create the scoped sets among `specs` that do not exist yet, with their rules."""
        new = sorted((s for s in specs if s not in SETS and s.name not in self._scoped), key=lambda s: s.name)
        if new:
            await self._transact(f"add sets {', '.join(s.name for s in new)}",
                                 scope_messages(new, self._ports_sets))
            self._scoped.update((s.name, s) for s in new)
            self._ports_sets |= {s.ports_set for s in new if s.ports_set}
            log.info("nftables: added sets for bans with a scope", extra={"sets": [s.name for s in new]})

    def _specs(self, version: int, interval: bool) -> list[SetSpec]:
        """Every set, default and scoped, a target of this family and kind may be in."""
        return [s for s in (*SETS, *self._scoped.values()) if (s.version, s.interval) == (version, interval)]

    # -- ban / unban -----------------------------------------------------------

    async def _ban(self, bans: Sequence[Ban]) -> None:
        await self._retrying(self._apply_bans, bans)

    async def _unban(self, targets: Sequence[Target]) -> None:
        # From every scope: the sets are read again if the first try fails.
        await self._retrying(lambda items: self._apply_unbans(
            [(spec, t) for t in items for spec in self._specs(t.version, _is_network(t))]), targets)

    async def _remove(self, entries: Sequence[Ban]) -> None:
        await self._retrying(self._apply_unbans, [
            (scoped_spec(b.scope, b.target.version, _is_network(b.target)), b.target) for b in entries])

    async def _retrying(self, apply, items) -> None:
        # ENOENT: our table was removed under us (`nft flush ruleset`), or a
        # network expired between reading and changing its set. Set the table
        # up again if needed, and try once more.
        try:
            await apply(items)
        except NftablesError as exc:
            if exc.code != errno.ENOENT:
                raise
            log.warning("nftables: checking the table and retrying once",
                        extra={"table": f"inet {TABLE}", "error": str(exc)})
            await self._init()
            await apply(items)

    async def _apply_bans(self, bans: Sequence[Ban]) -> None:
        addresses: dict[SetSpec, dict[bytes, int | None]] = {}
        networks: dict[SetSpec, dict[Network, int | None]] = {}
        for ban in bans:
            timeout_ms = None if ban.timeout is None else ban.timeout * 1000
            spec = scoped_spec(ban.scope, ban.target.version, _is_network(ban.target))
            if spec.interval:
                networks.setdefault(spec, {})[ban.target] = timeout_ms
            else:
                addresses.setdefault(spec, {})[ban.target.packed] = timeout_ms  # a later duplicate wins
        await self._ensure_sets({*addresses, *networks})
        for spec, timeouts in addresses.items():
            await self._replace_addresses(spec.name, timeouts)
        for spec, wanted in networks.items():
            await self._replace_networks(spec, wanted)

    async def _replace_addresses(self, set_name: str, timeouts: dict[bytes, int | None]) -> None:
        bare: list[bytes] = []
        timed: list[bytes] = []
        size = 0

        async def flush() -> None:
            bare_list, timed_list = b"".join(bare), b"".join(timed)
            await self._transact(f"ban in set {set_name}", [
                nl.element_message(NFT_MSG_NEWSETELEM, TABLE, set_name, bare_list),
                nl.element_message(NFT_MSG_DELSETELEM, TABLE, set_name, bare_list),
                nl.element_message(NFT_MSG_NEWSETELEM, TABLE, set_name, timed_list),
            ])
            bare.clear()
            timed.clear()

        for key, timeout_ms in timeouts.items():
            element = nl.pack_element(key, timeout_ms)
            if size + len(element) > nl.NLA_MAX_PAYLOAD:
                await flush()
                size = 0
            bare.append(nl.pack_element(key))
            timed.append(element)
            size += len(element)
        if timed:
            await flush()

    async def _replace_networks(self, spec: SetSpec, wanted: dict[Network, int | None]) -> None:
        """Add networks, deleting in the same transaction the ones each replaces.

        An interval set refuses overlapping intervals, and CIDRs either nest
        or are disjoint: a wider ban replaces the narrower ones it covers, a
        narrower ban under a wider one is skipped (the periodic sync adds it
        if the wider one ends first). An identical one is deleted and added
        again, which is how its timeout is replaced.
        """
        existing = await self._networks(spec)
        existing_index, kept_index = NetworkIndex(existing), NetworkIndex()
        kept: list[Network] = []
        for net in sorted(wanted, key=lambda n: n.prefixlen):  # wider ones first
            wider = kept_index.covering(net, strict=True) or existing_index.covering(net, strict=True)
            if wider is None:
                kept.append(net)
                kept_index.add(net)
            else:
                log.info("nftables: already covered by a wider ban",
                         extra={"address": str(net), "covered_by": str(wider)})

        chunk: list[Network] = []
        size = 0

        async def flush() -> None:
            chunk_index = NetworkIndex(chunk)
            replaced = [old for old in existing if chunk_index.covering(old)]
            deletions = nl.chunks(interval_elements(old) for old in replaced)
            await self._transact(f"ban in set {spec.name}", [
                *(nl.element_message(NFT_MSG_DELSETELEM, TABLE, spec.name, payload) for payload in deletions),
                nl.element_message(NFT_MSG_NEWSETELEM, TABLE, spec.name,
                                   b"".join(interval_elements(net, wanted[net]) for net in chunk)),
            ])
            chunk.clear()

        for net in kept:
            length = len(interval_elements(net, wanted[net]))
            if size + length > nl.NLA_MAX_PAYLOAD:
                await flush()
                size = 0
            chunk.append(net)
            size += length
        if chunk:
            await flush()

    async def _apply_unbans(self, entries: Sequence[tuple[SetSpec, Target]]) -> None:
        by_set: dict[SetSpec, set[Target]] = {}
        for spec, target in entries:
            if spec in SETS or spec.name in self._scoped:  # a scope never used has nothing to lift
                by_set.setdefault(spec, set()).add(target)
        for spec, targets in by_set.items():
            if not spec.interval:
                # "add bare, delete" removes an element whether or not it was there.
                for payload in nl.chunks(nl.pack_element(t.packed) for t in targets):
                    await self._transact(f"unban in set {spec.name}", [
                        nl.element_message(NFT_MSG_NEWSETELEM, TABLE, spec.name, payload),
                        nl.element_message(NFT_MSG_DELSETELEM, TABLE, spec.name, payload),
                    ])
                continue
            # A bare network added to an interval set could collide with an
            # overlapping one: delete only the networks present.
            present = [net for net in await self._networks(spec) if net in targets]
            for payload in nl.chunks(interval_elements(net) for net in present):
                await self._transact(f"unban in set {spec.name}", [
                    nl.element_message(NFT_MSG_DELSETELEM, TABLE, spec.name, payload),
                ])

    # -- list ------------------------------------------------------------------

    async def _list(self) -> dict[str, float | None]:
        bans: dict[str, float | None] = {}
        for spec in (*SETS, *self._scoped.values()):
            if spec.interval:
                bans.update((ban_key(net, spec.scope), left) for net, left in (await self._networks(spec)).items())
                continue
            for element in await self._elements(spec):
                left = remaining(element)
                if left != 0.0:
                    bans[ban_key(ipaddress.ip_address(element.key), spec.scope)] = left
        return bans

    async def _networks(self, spec: SetSpec) -> dict[Network, float | None]:
        return networks_from(await self._elements(spec), spec.version)

    async def _elements(self, spec: SetSpec) -> list[nl.Element]:
        try:
            return await nl.dump_elements(self._sock, TABLE, spec.name)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                log.warning("nftables: a set is missing; init() creates it",
                            extra={"set": spec.name, "table": f"inet {TABLE}"})
                return []
            raise _error(f"list set {spec.name}", exc) from None

    # -- inspect ---------------------------------------------------------------

    async def _inspect(self) -> Inspection:
        chains = {m.get_attr("NFTA_CHAIN_NAME"): m
                  for m in await self._dump(nft_chain_msg, NFT_MSG_GETCHAIN, "NFTA_CHAIN_TABLE")}
        ours: dict[str, set] = {}  # chain -> comments of its rules
        for rule in await self._dump(nft_rule_msg, NFT_MSG_GETRULE, "NFTA_RULE_TABLE"):
            ours.setdefault(rule.get_attr("NFTA_RULE_CHAIN"), set()).add(rule.get_attr("NFTA_RULE_USERDATA"))
        fixed = {c for spec in SETS for c in spec.rule_comments}
        hooks = [c for c in HOOKS if c in chains and chain_matches(chains[c], c) and fixed <= ours.get(c, set())]
        sets = {}
        for spec in (*SETS, *self._scoped.values()):
            if spec.interval:
                sets[spec.name] = len(await self._networks(spec))
            else:
                sets[spec.name] = sum(1 for e in await self._elements(spec) if remaining(e) != 0.0)
        problems = []
        if not chains:
            problems.append(f"table inet {TABLE} is missing (removed by a firewall reload?): "
                            "restart the enforcer to set it up again")
        else:
            for chain in HOOKS:
                if chain not in hooks:
                    problems.append(f"chain {chain} of table inet {TABLE} is missing or lacks its rules "
                                    f"({'traffic to this host' if chain == 'input' else 'traffic to ports Docker publishes'}"
                                    " is not checked against the bans): restart the enforcer to set it up again")
        return Inspection(f"inet {TABLE}", bool(chains), hooks, "forward" in hooks, sets, problems)

    # -- netlink ---------------------------------------------------------------

    async def _transact(self, what: str, messages: list) -> None:
        try:
            await nl.transact(self._sock, messages)
        except NetlinkError as exc:
            raise _error(what, exc) from None

    async def _dump(self, msg_class, command: int, table_attr: str) -> list:
        """Our table's sets, chains or rules (the kernel filters by table name)."""
        msg = msg_class()
        msg["attrs"] = [(table_attr, TABLE)]
        try:
            return [m for m in await nl.dump(self._sock, msg, command) if m.get_attr(table_attr) == TABLE]
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return []  # no table yet
            raise _error(f"read table inet {TABLE}", exc) from None


def _is_network(target: Target) -> bool:
    return isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network))


_HINTS = {
    errno.EPERM: "the enforcer needs CAP_NET_ADMIN: run as root, or with cap_add: [NET_ADMIN]",
    errno.ENOENT: f"table inet {TABLE} or one of its sets is missing; init() creates them",
    errno.EEXIST: "it overlaps an element already in the set",
    errno.EOPNOTSUPP: "this kernel lacks the nf_tables feature",
    errno.EMSGSIZE: "the netlink message was too large",
}


def _error(what: str, exc: NetlinkError) -> NftablesError:
    hint = _HINTS.get(exc.code, "see the kernel log (dmesg)")
    return NftablesError(f"nftables: {what} failed: {os.strerror(exc.code)} ({hint})", exc.code)
