"""What `pyfilter replay` prints: the bans, per rule the addresses that logged in
later (a hint of false positives), and with --compare the bans only one
configuration makes. Text for people, one JSON document with --json."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

import msgspec

from pyfilter.cli.matching import iso

if TYPE_CHECKING:
    from pyfilter.cli.replay import Outcome
    from pyfilter.common.messages import BanRecord

SHOWN_LOGINS = 10  # addresses named per rule in the text report


def duration(seconds: int) -> str:
    if seconds < 0:
        return "permanent"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def logged_in_later(outcome: Outcome) -> dict[str, list[str]]:
    """Per rule, the addresses (or networks) it banned that logged in successfully after their first
    ban (or in its second: most logs write whole seconds)."""
    first: dict[tuple[str, str], float] = {}
    for ban in outcome.bans:
        first.setdefault((ban.rule, ban.address), ban.banned_at)
    found: dict[str, list[str]] = defaultdict(list)
    for (rule, address), at in first.items():
        if "/" in address:  # a network: any of its addresses
            net = ipaddress.ip_network(address, strict=False)
            later = any(t >= at and _inside(a, net) for a, t in outcome.logins.items())
        else:
            later = outcome.logins.get(address, float("-inf")) >= at
        if later:
            found[rule].append(address)
    return found


def _inside(address: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether a login's address (or the network its rule counts it as) lies in `net`."""
    own = ipaddress.ip_network(address, strict=False)
    return own.version == net.version and own.subnet_of(net)  # type: ignore[arg-type]


def per_rule(outcome: Outcome) -> dict[str, dict]:
    later = logged_in_later(outcome)
    bans = Counter(b.rule for b in outcome.bans)
    addresses: dict[str, set[str]] = defaultdict(set)
    for b in outcome.bans:
        addresses[b.rule].add(b.address)
    return {rule: {"bans": bans[rule], "addresses": len(addresses[rule]),
                   "logged_in_later": sorted(later.get(rule, []))} for rule in sorted(bans)}


def key(ban: BanRecord) -> tuple[str, str, int]:
    return ban.address, ban.rule, ban.duration


def differences(a: Outcome, b: Outcome) -> tuple[list[BanRecord], list[BanRecord]]:
    """The bans only `a` makes and those only `b` makes (by address, rule and duration)."""
    only_a = Counter(map(key, a.bans)) - Counter(map(key, b.bans))
    only_b = Counter(map(key, b.bans)) - Counter(map(key, a.bans))
    return _pick(a.bans, only_a), _pick(b.bans, only_b)


def _pick(bans: list[BanRecord], wanted: Counter) -> list[BanRecord]:
    picked = []
    for ban in bans:
        if wanted[key(ban)] > 0:
            wanted[key(ban)] -= 1
            picked.append(ban)
    return picked


def write(outcomes: list[Outcome], as_json: bool, tz: str) -> None:
    out = sys.stdout
    if as_json:
        document = {"replays": [_document(o) for o in outcomes]}
        if len(outcomes) == 2:
            only_a, only_b = differences(*outcomes)
            document["only_first"] = msgspec.to_builtins(only_a)
            document["only_second"] = msgspec.to_builtins(only_b)
        out.write(json.dumps(document) + "\n")
        return
    for outcome in outcomes:
        _report(out, outcome, tz)
    if len(outcomes) == 2:
        a, b = outcomes
        only_a, only_b = differences(a, b)
        out.write(f"\nCompared: {len(only_a)} ban(s) only with {a.config}, {len(only_b)} only with {b.config}\n")
        for name, bans in ((a.config, only_a), (b.config, only_b)):
            if bans:
                out.write(f"Only with {name}:\n")
                for ban in bans:
                    _ban_line(out, ban, tz)


def _document(outcome: Outcome) -> dict:
    return {"config": outcome.config, "lines": outcome.lines, "failures": outcome.failures,
            "first_failure": outcome.first, "last_failure": outcome.last, "seconds": round(outcome.seconds, 3),
            "bans": msgspec.to_builtins(outcome.bans), "rules": per_rule(outcome)}


def _report(out, outcome: Outcome, tz: str) -> None:
    span = f", log time {iso(outcome.first, tz)} to {iso(outcome.last, tz)}" if outcome.first else ""
    out.write(f"{outcome.config}: {outcome.lines:,} lines, {outcome.failures:,} failures{span}; "
              f"{len(outcome.bans):,} ban(s) ({outcome.seconds:.2f} s)\n")
    for ban in outcome.bans:
        _ban_line(out, ban, tz)
    rules = per_rule(outcome)
    if rules:
        out.write("Per rule (addresses banned, then how many of them logged in successfully later):\n")
    for rule, r in rules.items():
        later = r["logged_in_later"]
        named = ", ".join(later[:SHOWN_LOGINS]) + (", ..." if len(later) > SHOWN_LOGINS else "")
        out.write(f"  {rule}: {r['bans']} ban(s) of {r['addresses']} address(es); "
                  f"{len(later)} logged in later{': ' + named if later else ''}\n")


def _ban_line(out, ban: BanRecord, tz: str) -> None:
    out.write(f"  {iso(ban.banned_at, tz)}  {ban.address}  {ban.rule} ({ban.window or 'manual'})  "
              f"{duration(ban.duration)}, ban #{ban.ban_count}: {ban.reason}\n")
    if ban.account:
        out.write(f"      account: {ban.account}\n")
    if ban.evidence:
        out.write(f"      evidence: {', '.join(ban.evidence)}\n")
    if ban.lines:
        out.write(f"      last line: {ban.lines[-1]}\n")
