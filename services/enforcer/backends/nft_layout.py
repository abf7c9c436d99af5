"""What `table inet pyfilter` holds, and how bans are written into it.

    set ban4    { type ipv4_addr; flags timeout; }            addresses
    set ban6    { type ipv6_addr; flags timeout; }
    set ban4net { type ipv4_addr; flags interval,timeout; }   networks (CIDR)
    set ban6net { type ipv6_addr; flags interval,timeout; }
    chain input   { type filter hook input priority -10; policy accept; }
    chain forward { type filter hook forward priority -10; policy accept; }

Each chain holds one rule per set (`ip saddr @ban4 drop comment "pyfilter
ban4 v1"`, ...), so a packet costs four set lookups however many bans there
are. The forward chain covers ports Docker publishes (DNAT, then forward);
priority -10 runs it before Docker's filter rules at 0. Addresses and
networks have separate sets: a hash set is the cheaper structure for single
addresses, and only an interval set can hold networks.

The messages are built with pyroute2's classes; the rule expressions are the
ones `nft` itself sends for `ip saddr @ban4 drop`, so `nft list` shows them
the same way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_msg,
    nft_table_msg,
)

from pyfilter.enforcer.backends import nft_netlink as nl
from pyfilter.enforcer.backends.base import Network

TABLE = "pyfilter"
PRIORITY = -10
HOOKS = {"input": 1, "forward": 2}  # NF_INET_LOCAL_IN, NF_INET_FORWARD


@dataclass(frozen=True)
class SetSpec:
    name: str
    version: int  # 4 or 6
    interval: bool

    @property
    def key_len(self) -> int:
        return 4 if self.version == 4 else 16

    @property
    def flags(self) -> frozenset[str]:
        return frozenset({"NFT_SET_TIMEOUT", "NFT_SET_INTERVAL"} if self.interval else {"NFT_SET_TIMEOUT"})

    @property
    def rule_comment(self) -> str:
        # init() recognises our rules by it; bump the version when a rule changes.
        return f"pyfilter {self.name} v1"


SETS = (
    SetSpec("ban4", 4, False),
    SetSpec("ban6", 6, False),
    SetSpec("ban4net", 4, True),
    SetSpec("ban6net", 6, True),
)
ADDRESS_SET = {4: SETS[0], 6: SETS[1]}
NETWORK_SET = {4: SETS[2], 6: SETS[3]}


# -- building the table ----------------------------------------------------------


def plan_layout(sets: dict, chains: dict, rule_comments: dict[str, list]) -> tuple[list, list[str]]:
    """Messages that turn what exists (dumped set, chain, rule messages) into the layout.

    Returns (messages, names of sets that must be recreated). No messages
    means nothing to do. A set or chain of the wrong kind (an older layout)
    is recreated; our chains' rules are rebuilt unless they are exactly ours,
    in order. Rules go first, so the sets are free to be deleted; all of it
    is sent as one transaction, so traffic never sees a half-built table.
    """
    stale_sets = [s for s in SETS if s.name in sets and not _set_matches(sets[s.name], s)]
    stale_chains = [c for c in HOOKS if c in chains and not _chain_matches(chains[c], c)]
    ours = [s.rule_comment for s in SETS]
    rebuild_rules = bool(stale_sets or stale_chains or any(rule_comments.get(c) != ours for c in HOOKS))

    plan = []
    if rebuild_rules:
        plan += [_flush_chain(c) for c in HOOKS if c in chains]
    plan += [_delete_chain(c) for c in stale_chains]
    plan += [_delete_set(s) for s in stale_sets]
    plan += [_set_message(s, i) for i, s in enumerate(SETS, 1) if s.name not in sets or s in stale_sets]
    plan += [_chain_message(c) for c in HOOKS if c not in chains or c in stale_chains]
    if rebuild_rules:
        plan += [_rule_message(c, s) for c in HOOKS for s in SETS]
    if plan:
        plan.insert(0, _message(nft_table_msg(), NFT_MSG_NEWTABLE, [("NFTA_TABLE_NAME", TABLE)]))
    return plan, [s.name for s in stale_sets]


def _message(msg, command: int, attrs: list):
    msg["attrs"] = attrs
    flags = NLM_F_REQUEST | NLM_F_ACK
    if command in (NFT_MSG_NEWTABLE, NFT_MSG_NEWSET, NFT_MSG_NEWCHAIN):
        flags |= NLM_F_CREATE  # no NLM_F_EXCL: one that exists already is fine
    elif command == NFT_MSG_NEWRULE:
        flags |= NLM_F_CREATE | NLM_F_APPEND
    return nl.prepare(msg, command, flags)


def _flush_chain(name: str):
    # DELRULE naming a chain but no rule handle deletes all rules of that chain.
    return _message(nft_rule_msg(), NFT_MSG_DELRULE, [("NFTA_RULE_TABLE", TABLE), ("NFTA_RULE_CHAIN", name)])


def _delete_chain(name: str):
    return _message(nft_chain_msg(), NFT_MSG_DELCHAIN, [("NFTA_CHAIN_TABLE", TABLE), ("NFTA_CHAIN_NAME", name)])


def _delete_set(spec: SetSpec):
    return _message(nft_set_msg(), NFT_MSG_DELSET, [("NFTA_SET_TABLE", TABLE), ("NFTA_SET_NAME", spec.name)])


def _set_message(spec: SetSpec, set_id: int):
    return _message(nft_set_msg(), NFT_MSG_NEWSET, [
        ("NFTA_SET_TABLE", TABLE),
        ("NFTA_SET_NAME", spec.name),
        ("NFTA_SET_FLAGS", spec.flags),
        ("NFTA_SET_KEY_TYPE", 7 if spec.version == 4 else 8),  # nft's ipv4_addr / ipv6_addr
        ("NFTA_SET_KEY_LEN", spec.key_len),
        ("NFTA_SET_ID", set_id),
    ])


def _chain_message(name: str):
    hook = {"attrs": [("NFTA_HOOK_HOOKNUM", HOOKS[name]), ("NFTA_HOOK_PRIORITY", PRIORITY)]}
    return _message(nft_chain_msg(), NFT_MSG_NEWCHAIN, [
        ("NFTA_CHAIN_TABLE", TABLE),
        ("NFTA_CHAIN_NAME", name),
        ("NFTA_CHAIN_HOOK", hook),
        ("NFTA_CHAIN_POLICY", 1),  # accept: we only ever drop what is banned
        ("NFTA_CHAIN_TYPE", "filter"),
    ])


def _expr(name: str, *attrs: tuple) -> dict:
    prefix = f"NFTA_{name.upper()}_"
    data = {"attrs": [(prefix + key, value) for key, value in attrs]}
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", data)]}


DROP = {"attrs": [("NFTA_VERDICT_CODE", 0)]}  # NF_DROP


def _rule_message(chain: str, spec: SetSpec):
    """`ip saddr @ban4 drop` (or `ip6 saddr @ban6 drop`), with our comment."""
    nfproto, saddr_offset = (2, 12) if spec.version == 4 else (10, 8)  # NFPROTO_IPV4/6
    expressions = [
        _expr("meta", ("KEY", 15), ("DREG", 1)),  # NFT_META_NFPROTO -> register 1
        _expr("cmp", ("SREG", 1), ("OP", 0), ("DATA", {"attrs": [("NFTA_DATA_VALUE", bytes([nfproto]))]})),
        _expr("payload", ("DREG", 1), ("BASE", 1), ("OFFSET", saddr_offset), ("LEN", spec.key_len)),
        _expr("lookup", ("SET", spec.name), ("SREG", 1)),
        _expr("immediate", ("DREG", 0), ("DATA", {"attrs": [("NFTA_DATA_VERDICT", DROP)]})),
    ]
    # pyroute2 writes a str user-data attribute in nft's comment format.
    return _message(nft_rule_msg(), NFT_MSG_NEWRULE, [
        ("NFTA_RULE_TABLE", TABLE),
        ("NFTA_RULE_CHAIN", chain),
        ("NFTA_RULE_EXPRESSIONS", expressions),
        ("NFTA_RULE_USERDATA", spec.rule_comment),
    ])


def _set_matches(msg, spec: SetSpec) -> bool:
    return (
        msg.get_attr("NFTA_SET_KEY_LEN") == spec.key_len
        and frozenset(msg.get_attr("NFTA_SET_FLAGS") or ()) == spec.flags
    )


def _chain_matches(msg, name: str) -> bool:
    hook = msg.get_attr("NFTA_CHAIN_HOOK")
    return (
        hook is not None
        and msg.get_attr("NFTA_CHAIN_TYPE") == "filter"
        and hook.get_attr("NFTA_HOOK_HOOKNUM") == HOOKS[name]
        and hook.get_attr("NFTA_HOOK_PRIORITY") == PRIORITY
    )


# -- bans as set elements ----------------------------------------------------------


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
