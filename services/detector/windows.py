"""Failure windows in Redis: a batch's failures, grouped for the ledger's record_failures
(per address) and record_accounts (per account, with the logins that spare addresses)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

import msgspec
import redis.asyncio as redis

from pyfilter.common import config
from pyfilter.common.config import Rule
from pyfilter.common.keys import Keys, account_id
from pyfilter.common.ledger import Ledger, Planned
from pyfilter.common.network import Widening

# How long a line id is remembered by a slow window (ledger.lua, record_slow):
# a batch counted but not acknowledged comes back within detector.claim_idle
# while any detector runs (docs/decisions.md, "Slow windows").
REDELIVERY_HORIZON = 3600

# Accounts whose key name (a hash of their name) a detector remembers: attackers name any.
ACCOUNTS_REMEMBERED = 10_000


class Observed(NamedTuple):
    """One failure seen in one line: what the matcher found plus the line's identity."""

    rule: str
    address: str
    host: str  # the host whose log had the line
    time: float
    line_id: str
    text: str
    # The connection the line belongs to (host, source and pid), "" if none,
    # and whether the line counts only if that connection has no other failure.
    connection: str = ""
    once: bool = False
    weight: int = 1  # failures it counts as (its pattern's weight)
    value: str = ""  # what a distinct window counts, as `digest` gives it ("": none)
    user: str | None = None  # the account the line names (a rule's `user` capture)


def digest(value: str) -> str:
    """A captured value as a distinct window keeps it: 16 hex digits, whatever the
    client wrote (an 8 KB path, quotes, an address), so hostile text is never a
    Redis member and every value costs the same few bytes."""
    return hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest() if value else ""


class Login(NamedTuple):
    """A successful login seen in one line (a rule's `success` pattern)."""

    rule: str
    address: str
    user: str
    host: str
    time: float


# An account's name as windows and ban records keep it: what sshd writes at most (it
# cuts user names at 100 characters), as valid UTF-8 (a line's undecodable bytes too).
ACCOUNT_NAME_MAX = 100


def account_name(user: str) -> str:
    if len(user) <= ACCOUNT_NAME_MAX and user.isascii():  # the usual name, as it is (no copy)
        return user
    return user[:ACCOUNT_NAME_MAX].encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class NewBan:
    address: str
    rule: str
    duration: int


def _thresholds(rule: Rule) -> list[object]:
    """threshold, span, bantime, factor, maxtime, memory, verdict, ports: as record_failures reads them."""
    if rule.window == "consecutive":
        threshold, span = rule.failed_attempts, rule.request_time
    elif rule.window == "instant":
        threshold, span = 1, rule.findtime
    else:
        threshold, span = rule.maxretry, rule.findtime
    ports = ",".join(str(p) for p in rule.ports)
    # Plain numbers (config's `Seconds` is an int subclass MessagePack does not know).
    return [int(threshold), int(span), int(rule.bantime), float(rule.escalation.factor),
            int(rule.escalation.maxtime), int(rule.escalation.memory), rule.verdict, ports]


def _account_settings(rule: Rule) -> list[object]:
    """failures, addresses, span, success_memory, then bantime..ports: as record_accounts reads them."""
    per = rule.per_account
    assert isinstance(per, config.PerAccount)
    return [int(per.failures), int(per.addresses), int(per.findtime), int(per.success_memory),
            *_thresholds(rule)[2:]]


def _slow_thresholds(rule: Rule) -> list[object]:
    """A rule's slow window as record_failures reads a group's fields after rule,
    address and host (the lines go between the thresholds and the last)."""
    slow = rule.slow
    assert slow is not None
    bantime = rule.bantime if slow.bantime is None else slow.bantime
    return ["slow", int(slow.maxretry), int(slow.findtime), int(bantime), *_thresholds(rule)[3:],
            [int(slow.bucket), REDELIVERY_HORIZON]]


def weighted(o: Observed, most: int) -> list[object]:
    """A failure's fields in a group of a window that counts lines (all kinds but
    distinct, which counts weights itself): a line of weight w is w failures of
    weight 1, the first named by its line id, the others by the id and their
    number (`id*2`...), so a redelivered line still adds nothing. Only the first
    carries the text: the ban record shows the line once. No more than `most`
    (the rule's largest threshold: more would change no crossing)."""
    fields = [o.line_id, o.time, o.text, o.connection, o.once, 1, o.value]
    for n in range(2, min(o.weight, most) + 1):
        fields += (f"{o.line_id}*{n}", o.time, "", o.connection, o.once, 1, o.value)
    return fields


def _getter(*names: str) -> itemgetter:
    """Observed's fields `names`, read at C speed (a replay groups every failure of a log)."""
    return itemgetter(*(Observed._fields.index(name) for name in names))


# A failure's group, and its fields in the group, as `_groups` and `_account_groups` send them.
_group_of = _getter("rule", "address", "host")
_fields = _getter("line_id", "time", "text", "connection", "once", "weight", "value")  # as `weighted`
_account_fields = _getter("line_id", "time", "address", "text")


class Windows:
    """Applies observed failures to the windows; returns the bans they caused."""

    def __init__(self, client: redis.Redis, prefix: str, rules: dict[str, Rule], widening: Widening | None = None):
        self._ledger = Ledger(client, Keys(prefix))
        self._ledger.widening = widening  # bans of whole networks (docs/rules.md, "Per network")
        # Per rule, the group fields after rule, address and host: window kind, then thresholds.
        self._settings = {name: [rule.window, *_thresholds(rule)] for name, rule in rules.items()}
        # The same for the rules' slow windows, with the kind's own settings last.
        self._slow = {name: _slow_thresholds(rule) for name, rule in rules.items() if rule.slow}
        # Rules whose windows count weighted lines as copies (`weighted`): how many at most.
        self._copies = {name: max(int(s[1]) for s in (self._settings[name], self._slow.get(name, [0, 0])))
                        for name, rule in rules.items() if rule.window != "distinct"}
        recidive = rules.get("recidive")
        self._recidive = msgspec.msgpack.encode(_thresholds(recidive)) if recidive else b""
        # Rules with a per-account window: their service (whose accounts they count)
        # and the group fields after rule, account and host.
        self._accounts = {name: (rule.service, _account_settings(rule)) for name, rule in rules.items()
                          if rule.per_account is not None}
        self._account_ids: dict[tuple[str, str], str] = {}

    async def record(self, observed: list[Observed], now: float, logins: Sequence[Login] = ()) -> list[NewBan]:
        """Apply the failures (the ledger sends every call of a step, per address and
        per account, in one round trip per node), and raises if any call failed:
        nothing is acknowledged then. `logins` spare their addresses in per-account windows."""
        return await self.record_plan(self.plan(observed, now, logins))

    def plan(self, observed: list[Observed], now: float, logins: Sequence[Login] = ()) -> Planned:
        """The work of `record` before Redis: the failures and logins grouped, and the
        ledger's calls packed (`pyfilter replay` plans a step while Redis runs the one before)."""
        accounts = self._account_groups(observed, logins) if self._accounts else []
        return self._ledger.plan(self._groups(observed), accounts, now, self._recidive)

    async def record_plan(self, plan: Planned) -> list[NewBan]:
        """`record` of a step already planned."""
        return [NewBan(*ban) for ban in await self._ledger.record_planned(plan)]

    def _account_groups(self, observed: list[Observed], logins: Sequence[Login]) -> list[list[object]]:
        """Failures and logins of rules with a per-account window, grouped by (rule, account,
        host), as record_accounts reads them."""
        failures: dict[tuple[str, str, str], list[object]] = defaultdict(list)
        logged: dict[tuple[str, str, str], list[object]] = defaultdict(list)
        counted = self._accounts
        for o in observed:
            if o.user and o.rule in counted:
                failures[(o.rule, account_name(o.user), o.host)].extend(_account_fields(o))
        for login in logins:
            if login.user and login.rule in self._accounts:
                logged[(login.rule, account_name(login.user), login.host)] += (login.address, login.time)
        groups = []
        for key in dict.fromkeys([*failures, *logged]):
            rule, account, host = key
            service, settings = self._accounts[rule]
            groups.append([rule, account, host, *settings, failures.get(key, []), logged.get(key, []),
                           self._account_id(service, account)])
        return groups

    def _account_id(self, service: str, account: str) -> str:
        """keys.account_id, remembered: a few accounts (root, admin) take most failures,
        each hashed once rather than once per group."""
        found = self._account_ids.get((service, account))
        if found is None:
            if len(self._account_ids) >= ACCOUNTS_REMEMBERED:
                self._account_ids.clear()
            found = self._account_ids[(service, account)] = account_id(service, account)
        return found

    def _groups(self, observed: list[Observed]) -> list[list[object]]:
        """The failures grouped by (rule, address, host), as record_failures reads them;
        a rule with a slow window has a second group for it, with the same list of
        lines (which the ledger sends once)."""
        groups: dict[tuple[str, str, str], list[object]] = defaultdict(list)
        copies = self._copies
        for o in observed:
            if o.weight > 1 and (most := copies.get(o.rule)):
                groups[_group_of(o)].extend(weighted(o, most))
            else:
                groups[_group_of(o)].extend(_fields(o))
        found = [[name, address, host, *self._settings[name], lines]
                 for (name, address, host), lines in groups.items()]
        for (name, address, host), lines in groups.items():
            if slow := self._slow.get(name):
                found.append([name, address, host, *slow[:-1], lines, slow[-1]])
        return found
