"""What `table inet pyfilter` holds: its sets, chains and rules (elements: `nft_elements`).

    set ban4    { type ipv4_addr; flags timeout; }            addresses
    set ban6    { type ipv6_addr; flags timeout; }
    set ban4net { type ipv4_addr; flags interval,timeout; }   networks (CIDR)
    set ban6net { type ipv6_addr; flags interval,timeout; }
    chain input   { type filter hook input priority -10; policy accept; }
    chain forward { type filter hook forward priority -10; policy accept; }

Each chain holds one rule per set (`ip saddr @ban4 drop comment "pyfilter
ban4 v1"`, ...), so a packet costs four set lookups however many bans there
are. Bans of another scope (a port list, or reject instead of drop) go to
sets named after the scope, created when first used, with two rules each:

    set ban4_p22-2222_reject { type ipv4_addr; flags timeout; }
    set ports_p22-2222 { type inet_service; elements = { 22, 2222 }; }
    meta l4proto tcp ip saddr @ban4_p22-2222_reject th dport @ports_p22-2222 reject with tcp reset
    meta l4proto udp ip saddr @ban4_p22-2222_reject th dport @ports_p22-2222 reject

(`ban4_all_reject` has no port match; its second rule rejects every other
protocol.) The name spells the scope, so `list()` reads it back from the set
name alone. The forward chain covers ports Docker publishes (DNAT, then forward);
priority -10 runs it before Docker's filter rules at 0. Addresses and
networks have separate sets: a hash set is the cheaper structure for single
addresses, and only an interval set can hold networks.

The messages are built with pyroute2's classes; the rule expressions are the
ones `nft` itself sends for `ip saddr @ban4 drop`, so `nft list` shows them
the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_msg,
    nft_table_msg,
)

from pyfilter.enforcer.backends import nft_netlink as nl
from pyfilter.enforcer.backends.base import DEFAULT_SCOPE, Scope

TABLE = "pyfilter"
PRIORITY = -10
HOOKS = {"input": 1, "forward": 2}  # NF_INET_LOCAL_IN, NF_INET_FORWARD


@dataclass(frozen=True)
class SetSpec:
    name: str
    version: int  # 4 or 6
    interval: bool
    scope: Scope = DEFAULT_SCOPE

    @property
    def key_len(self) -> int:
        return 4 if self.version == 4 else 16

    @property
    def flags(self) -> frozenset[str]:
        return frozenset({"NFT_SET_TIMEOUT", "NFT_SET_INTERVAL"} if self.interval else {"NFT_SET_TIMEOUT"})

    @property
    def rule_comments(self) -> tuple[str, ...]:
        # init() recognises our rules by them; bump the version when a rule changes.
        if self.scope.is_default:
            return (f"pyfilter {self.name} v1",)
        return (f"pyfilter {self.name} v1 tcp", f"pyfilter {self.name} v1 other")

    @property
    def ports_set(self) -> str | None:
        """The set of ports the rules of a port-scoped set match."""
        return f"ports_{_ports_slug(self.scope)}" if self.scope.ports else None


def _ports_slug(scope: Scope) -> str:
    return "p" + "-".join(map(str, scope.ports)) if scope.ports else "all"


def scoped_spec(scope: Scope, version: int, interval: bool) -> SetSpec:
    """The set holding bans of `scope` for one family and kind: ban4_p22-2222_reject, ..."""
    base = f"ban{version}{'net' if interval else ''}"
    if scope.is_default:
        return SetSpec(base, version, interval)
    return SetSpec(f"{base}_{_ports_slug(scope)}_{scope.verdict}", version, interval, scope)


_SCOPED_NAME = re.compile(r"^ban([46])(net)?_(all|p\d+(?:-\d+)*)_(drop|reject)$")


def parse_spec(name: str) -> SetSpec | None:
    """The scoped set a name belongs to, or None if it is not one of ours."""
    m = _SCOPED_NAME.match(name)
    if not m:
        return None
    ports = () if m[3] == "all" else tuple(int(p) for p in m[3][1:].split("-"))
    try:
        spec = scoped_spec(Scope(ports, m[4]), int(m[1]), bool(m[2]))  # type: ignore[arg-type]
    except ValueError:
        return None
    return spec if spec.name == name else None  # e.g. ports written unsorted: not ours


SETS = (
    SetSpec("ban4", 4, False),
    SetSpec("ban6", 6, False),
    SetSpec("ban4net", 4, True),
    SetSpec("ban6net", 6, True),
)


# -- building the table ----------------------------------------------------------


def plan_layout(sets: dict, chains: dict, rule_comments: dict[str, list]) -> tuple[list, list[str]]:
    """Messages that turn what exists (dumped set, chain, rule messages) into the layout.

    Returns (messages, names of sets that must be recreated). No messages
    means nothing to do. Scoped sets found in the table are kept, with their
    rules. A set or chain of the wrong kind (an older layout) is recreated;
    our chains' rules are rebuilt unless they are exactly ours (the fixed
    ones first, in order, then the scoped ones in any order). Rules go first,
    so the sets are free to be deleted; all of it is sent as one transaction,
    so traffic never sees a half-built table.
    """
    scoped = sorted((s for s in map(parse_spec, sets) if s is not None), key=lambda s: s.name)
    specs = [*SETS, *scoped]
    stale_sets = [s for s in specs if s.name in sets and not _set_matches(sets[s.name], s)]
    stale_chains = [c for c in HOOKS if c in chains and not chain_matches(chains[c], c)]
    fixed = [c for s in SETS for c in s.rule_comments]
    extra = sorted(c for s in scoped for c in s.rule_comments)
    rebuild_rules = bool(stale_sets or stale_chains or any(
        (rule_comments.get(c) or [])[:len(fixed)] != fixed
        or sorted((rule_comments.get(c) or [])[len(fixed):]) != extra for c in HOOKS))
    missing_ports = {s.ports_set: s.scope for s in scoped if s.ports_set and s.ports_set not in sets}

    plan = []
    if rebuild_rules:
        plan += [_flush_chain(c) for c in HOOKS if c in chains]
    plan += [_delete_chain(c) for c in stale_chains]
    plan += [_delete_set(s) for s in stale_sets]
    plan += [m for name, scope in missing_ports.items() for m in ports_set_messages(name, scope, 100)]
    plan += [_set_message(s, i) for i, s in enumerate(specs, 1) if s.name not in sets or s in stale_sets]
    plan += [_chain_message(c) for c in HOOKS if c not in chains or c in stale_chains]
    if rebuild_rules:
        plan += [m for c in HOOKS for s in specs for m in rule_messages(c, s)]
    if plan:
        plan.insert(0, _message(nft_table_msg(), NFT_MSG_NEWTABLE, [("NFTA_TABLE_NAME", TABLE)]))
    return plan, [s.name for s in stale_sets]


def scope_messages(specs: list[SetSpec], ports_sets: set[str]) -> list:
    """Messages that add scoped sets (and the ports sets not in `ports_sets`) with their rules."""
    plan = []
    for i, spec in enumerate(specs, 1):
        if spec.ports_set and spec.ports_set not in ports_sets:
            plan += ports_set_messages(spec.ports_set, spec.scope, 100 + i)
            ports_sets = ports_sets | {spec.ports_set}
        plan.append(_set_message(spec, i))
        plan += [m for c in HOOKS for m in rule_messages(c, spec)]
    return plan


def ports_set_messages(name: str, scope: Scope, set_id: int) -> list:
    """`set ports_p22-2222 { type inet_service; elements = { 22, 2222 } }`."""
    return [
        _message(nft_set_msg(), NFT_MSG_NEWSET, [
            ("NFTA_SET_TABLE", TABLE),
            ("NFTA_SET_NAME", name),
            ("NFTA_SET_KEY_TYPE", 13),  # nft's inet_service
            ("NFTA_SET_KEY_LEN", 2),
            ("NFTA_SET_ID", set_id),
        ]),
        nl.element_message(NFT_MSG_NEWSETELEM, TABLE, name,
                           b"".join(nl.pack_element(p.to_bytes(2, "big")) for p in scope.ports)),
    ]


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
TCP, UDP = 6, 17


def rule_messages(chain: str, spec: SetSpec) -> list:
    """The rules of one set: `ip saddr @ban4 drop`, or the two rules of a scoped set."""
    scope = spec.scope
    if scope.is_default:
        return [_rule_message(chain, spec, spec.rule_comments[0], _saddr(spec) + [_drop()])]
    ports = _dport(spec) if scope.ports else []
    tcp_verdict = _reject(tcp=True) if scope.verdict == "reject" else _drop()
    other_verdict = _reject(tcp=False) if scope.verdict == "reject" else _drop()
    # Without ports, "other" is every protocol but TCP (already rejected with a reset).
    other_proto = _l4proto(UDP) if scope.ports else []
    tcp_comment, other_comment = spec.rule_comments
    return [
        _rule_message(chain, spec, tcp_comment, _l4proto(TCP) + _saddr(spec) + ports + [tcp_verdict]),
        _rule_message(chain, spec, other_comment, other_proto + _saddr(spec) + ports + [other_verdict]),
    ]


def _saddr(spec: SetSpec) -> list:
    """`ip saddr @set` (or ip6): the family check nft adds, then the lookup."""
    nfproto, saddr_offset = (2, 12) if spec.version == 4 else (10, 8)  # NFPROTO_IPV4/6
    return [
        _expr("meta", ("KEY", 15), ("DREG", 1)),  # NFT_META_NFPROTO -> register 1
        _cmp_eq(bytes([nfproto])),
        _expr("payload", ("DREG", 1), ("BASE", 1), ("OFFSET", saddr_offset), ("LEN", spec.key_len)),
        _expr("lookup", ("SET", spec.name), ("SREG", 1)),
    ]


def _l4proto(proto: int) -> list:
    return [_expr("meta", ("KEY", 16), ("DREG", 1)), _cmp_eq(bytes([proto]))]  # NFT_META_L4PROTO


def _dport(spec: SetSpec) -> list:
    """`th dport @ports_...`: bytes 2-3 of the TCP or UDP header."""
    return [
        _expr("payload", ("DREG", 1), ("BASE", 2), ("OFFSET", 2), ("LEN", 2)),
        _expr("lookup", ("SET", spec.ports_set), ("SREG", 1)),
    ]


def _cmp_eq(value: bytes) -> dict:
    return _expr("cmp", ("SREG", 1), ("OP", 0), ("DATA", {"attrs": [("NFTA_DATA_VALUE", value)]}))


def _drop() -> dict:
    return _expr("immediate", ("DREG", 0), ("DATA", {"attrs": [("NFTA_DATA_VERDICT", DROP)]}))


def _reject(tcp: bool) -> dict:
    if tcp:
        return _expr("reject", ("TYPE", 1))  # NFT_REJECT_TCP_RST
    return _expr("reject", ("TYPE", 2), ("ICMP_CODE", 1))  # icmpx port-unreachable, any family


def _rule_message(chain: str, spec: SetSpec, comment: str, expressions: list):
    # pyroute2 writes a str user-data attribute in nft's comment format.
    return _message(nft_rule_msg(), NFT_MSG_NEWRULE, [
        ("NFTA_RULE_TABLE", TABLE),
        ("NFTA_RULE_CHAIN", chain),
        ("NFTA_RULE_EXPRESSIONS", expressions),
        ("NFTA_RULE_USERDATA", comment),
    ])


def _set_matches(msg, spec: SetSpec) -> bool:
    return (
        msg.get_attr("NFTA_SET_KEY_LEN") == spec.key_len
        and frozenset(msg.get_attr("NFTA_SET_FLAGS") or ()) == spec.flags
    )


def chain_matches(msg, name: str) -> bool:
    hook = msg.get_attr("NFTA_CHAIN_HOOK")
    return (
        hook is not None
        and msg.get_attr("NFTA_CHAIN_TYPE") == "filter"
        and hook.get_attr("NFTA_HOOK_HOOKNUM") == HOOKS[name]
        and hook.get_attr("NFTA_HOOK_PRIORITY") == PRIORITY
    )
