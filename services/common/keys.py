"""Every Redis key name, built in one place from the deployment's prefix.

Two deployments can share one Redis by using different prefixes. On Redis
Cluster a ledger function may only touch keys of one slot, so the keys come
in two kinds (docs/decisions.md, "Ledger"):
- an address's windows carry the address as a hash tag (`{198.51.100.7}`):
  windows spread over the cluster by address, one address's in one slot;
- the ban side (records, counts, the active set, scopes, history, decisions)
  carries the tag `{bans}` (`ban_side`): a ban is written in one slot;
- a notification channel's queue, notices and hold carry the tag
  `{notify:CHANNEL}` (`notify_side`): the notifier's claims are one slot each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.crc import key_slot

DETECT_GROUP = "detect"
NOTIFY_GROUP = "notify"


@dataclass(frozen=True)
class Keys:
    prefix: str = "pyfilter:"

    # Hosts
    @property
    def hosts(self) -> str:
        """Set of the protected hosts' names: whose lines streams the detectors read.
        Written by `pyfilter server add-host` (or by a collector not yet listed)."""
        return f"{self.prefix}hosts"

    # Streams
    def lines(self, host: str) -> str:
        """Batches of one host's log lines, its collector -> detectors (consumer group
        "detect"). One stream per host, so a host's Redis user can write its own only."""
        return f"{self.prefix}lines:{host}"

    @property
    def legacy_lines(self) -> str:
        """The one lines stream of every host before per-host streams: detectors drain
        what is left in it after an upgrade (docs/security.md, "Upgrading")."""
        return f"{self.prefix}lines"

    @property
    def decisions(self) -> str:
        """Ban and unban decisions, detectors/api -> every enforcer."""
        return self.ban_side("decisions")

    @staticmethod
    def dead_letters(stream: str) -> str:
        """Entries of `stream` that could not be decoded, moved aside for a person to read."""
        return f"{stream}:dead"

    def decisions_read(self, host: str) -> str:
        """How far a host's enforcer has applied the decisions (an entry id): its own
        key, written by it alone (it reads with XREAD, which writes nothing)."""
        return f"{self.prefix}decisions-read:{host}"

    def enforce_group(self, host: str) -> str:
        """The consumer group each host's enforcer once read decisions with: its
        position is taken over from there once (enforcer/position.py)."""
        return f"enforce:{host}"

    # Collector
    def checkpoint(self, host: str, source: str) -> str:
        """Read positions of one source on one host (hash: file identity -> offset)."""
        return f"{self.prefix}checkpoint:{host}:{source}"

    # Detector: one window per rule and address, changed only by the ledger's record_failures
    def window(self, rule: str, address: str) -> str:
        """Failures of one address under one rule: sorted set, line id -> log time."""
        return f"{self.prefix}window:{rule}:{_tag(address)}"

    def window_lines(self, rule: str, address: str) -> str:
        """The window's last lines (list), copied into the ban record."""
        return f"{self.prefix}window-lines:{rule}:{_tag(address)}"

    def window_state(self, rule: str, address: str) -> str:
        """A window's hash: `reset`, the log time of the failure that last triggered a
        ban (older ones no longer count); a consecutive window's `last` failure's
        time and its `count` so far; `pending`, a crossing of the threshold whose
        ban the ledger has not confirmed yet (ledger.lua, "Failure windows")."""
        return f"{self.prefix}window-state:{rule}:{_tag(address)}"

    def window_conns(self, rule: str, address: str) -> str:
        """Hash: connection -> what the window counted of it ("!", or the id of its `once` line)."""
        return f"{self.prefix}window-conns:{rule}:{_tag(address)}"

    # Per-account windows (ledger.lua, "Per-account windows"): one account of one
    # service over every host, named by `account_id` (never by the account's name, the
    # attacker's text), changed only by the ledger's record_accounts
    def account_window(self, account: str) -> str:
        """Failures on one account: sorted set, "LINE_ID ADDRESS" -> log time (the newest
        MAX_ACCOUNT_FAILURES kept)."""
        return f"{self.prefix}account-window:{_tag(account)}"

    def account_lines(self, account: str) -> str:
        """The account window's last lines (list), copied into its bans' records."""
        return f"{self.prefix}account-lines:{_tag(account)}"

    def account_state(self, account: str) -> str:
        """The account window's hash: `reset` (the log time of its last crossing) and
        `pending` (a crossing not yet confirmed), as `window_state`."""
        return f"{self.prefix}account-state:{_tag(account)}"

    def account_logins(self, account: str) -> str:
        """Sorted set: address -> log time of its last successful login as the account
        (the newest few, for the rule's `per_account.success_memory`)."""
        return f"{self.prefix}account-logins:{_tag(account)}"

    def account_crossed(self, account: str) -> str:
        """The ban side's judgement of the account window's last crossing ("trigger",
        "bans"), so a crossing handed back after a crash is not judged twice."""
        return self.ban_side(f"account-crossed:{account}")

    # A rule's slow window (`slow:`, ledger.lua's record_slow): counts per bucket of
    # log time instead of each failure, with the same four keys' roles.
    def slow_window(self, rule: str, address: str) -> str:
        """Hash: bucket number (log time // bucket) -> failures counted in it."""
        return f"{self.prefix}slow:{rule}:{_tag(address)}"

    def slow_lines(self, rule: str, address: str) -> str:
        """The slow window's last lines (list), copied into the ban record."""
        return f"{self.prefix}slow-lines:{rule}:{_tag(address)}"

    def slow_state(self, rule: str, address: str) -> str:
        """The slow window's hash: `reset` and `pending`, as `window_state`'s."""
        return f"{self.prefix}slow-state:{rule}:{_tag(address)}"

    def slow_ids(self, rule: str, address: str) -> str:
        """Sorted set: line id -> when it was counted (epoch seconds), for the
        redelivery horizon only: what makes a redelivered batch count nothing."""
        return f"{self.prefix}slow-ids:{rule}:{_tag(address)}"

    # Bans: every key a ban writes is on the ban side, in one Cluster slot
    def ban_side(self, name: str) -> str:
        """A key of the ban side: all of them share the hash tag `{bans}`."""
        return f"{self.prefix}{BAN_SIDE_TAG}:{name}"

    def ban(self, address: str) -> str:
        """The current ban record of an address (MessagePack BanRecord)."""
        return self.ban_side(f"ban:{address}")

    @property
    def active_bans(self) -> str:
        """Sorted set: address -> expiry (epoch seconds; +inf for permanent)."""
        return self.ban_side("active")

    @property
    def ban_scopes(self) -> str:
        """Hash: banned address -> its scope (MessagePack BanScope), for bans not on every
        port with drop; with `active_bans`, what an enforcer reconciles from."""
        return self.ban_side("scopes")

    @property
    def ban_history(self) -> str:
        """Stream of every ban record ever written (bounded)."""
        return self.ban_side("history")

    def ban_count(self, address: str) -> str:
        """How many times an address was banned (escalation)."""
        return self.ban_side(f"bancount:{address}")

    def crossed(self, address: str) -> str:
        """Hash: rule -> "TRIGGER DURATION" of the last window crossing the ledger
        judged for the address (DURATION empty: it did not ban), so a crossing
        handed back again after a crash is not judged twice."""
        return self.ban_side(f"crossed:{address}")

    # Indexes of the bans in force, kept by the ledger as it writes (ledger.lua,
    # "Ban indexes"), so the api reads a page, a count or one address without
    # reading every record. docs/decisions.md, "Bounded reads", has the layout.
    @property
    def ban_index(self) -> str:
        """Sorted set, every score 0, read by lexical range: for each ban in force one
        member per way it is looked up (time, rule, host, country, address; and
        "country not looked up yet")."""
        return self.ban_side("index")

    @property
    def ban_indexed(self) -> str:
        """Hash: address in force -> what its index members were built from."""
        return self.ban_side("indexed")

    @property
    def ban_counts(self) -> str:
        """Hash: the bans in force counted by host and rule ("host-rule\tweb1\tsshd") and by
        country ("country\tNL", "country\t?" for none known)."""
        return self.ban_side("counts")

    def ban_day(self, day: str) -> str:
        """Hash: the bans written on one UTC day (YYYY-MM-DD) counted, as `ban_counts`
        counts them; expires after a year and a month."""
        return self.ban_side(f"day:{day}")

    @property
    def ban_past(self) -> str:
        """Hash: address -> the history stream IDs of its latest bans, newest first."""
        return self.ban_side("past")

    @property
    def ban_past_until(self) -> str:
        """Sorted set: address -> when `ban_past` forgets it (its ban count's memory)."""
        return self.ban_side("past-until")

    # Per network (ledger.lua, "Per network"): a unit is "KEY\tUNIT", KEY a network
    # or an owner ("AS64500"), UNIT what one banned address counts as in it.
    @property
    def network_units(self) -> str:
        """Sorted set, every score 0, read by lexical range: the units each network
        (or owner) holds, counted by ZLEXCOUNT."""
        return self.ban_side("net-units")

    @property
    def network_seen(self) -> str:
        """Sorted set: unit -> when an address of it was last banned (older than the
        network's findtime: forgotten)."""
        return self.ban_side("net-seen")

    @property
    def network_members(self) -> str:
        """Hash: unit -> the address of it banned last (a network ban's evidence)."""
        return self.ban_side("net-members")

    @property
    def whitelist(self) -> str:
        """Set of CIDRs the operator whitelisted through the api."""
        return f"{self.prefix}whitelist"

    @property
    def whitelist_notes(self) -> str:
        """Hash: whitelisted CIDR -> JSON {"reason", "added_at"} (what the operator said)."""
        return f"{self.prefix}whitelist-notes"

    def own_addresses(self, host: str) -> str:
        """Hash of one host's own addresses, space-separated: field "host", published by its
        enforcer; field "source:NAME", the containers' addresses and networks a collector
        source reads."""
        return f"{self.prefix}own-addresses:{host}"

    # Notifications (the notifier)
    def notify_side(self, channel: str, name: str) -> str:
        """A key of one channel: all of them share the hash tag `{notify:CHANNEL}`."""
        return f"{self.prefix}{{notify:{channel}}}:{name}"

    def notify_queue(self, channel: str) -> str:
        """Sorted set: decision entry id -> when to try delivering it on a channel."""
        return self.notify_side(channel, "queue")

    def notify_items(self, channel: str) -> str:
        """Hash: decision entry id -> the notification still to deliver (MessagePack)."""
        return self.notify_side(channel, "items")

    def notify_hold(self, channel: str) -> str:
        """A digest channel's "not before": set while a mail is out or after it failed."""
        return self.notify_side(channel, "hold")

    # Status reports (common/status.py)
    def status(self, service: str, host: str) -> str:
        """A host's collector or enforcer status report (MessagePack), with a TTL: a dead host's ages out."""
        return f"{self.prefix}status:{service}:{host}"

    def status_seen(self, host: str) -> str:
        """Hash: service -> when the host's report was last written (kept after the report expires)."""
        return f"{self.prefix}status-seen:{host}"

    def counts(self, host: str, minute: int) -> str:
        """Hash of one minute's counters of a host ("lines:SOURCE", "failures:RULE" -> count), expiring."""
        return f"{self.prefix}counts:{host}:{minute}"


BAN_SIDE_TAG = "{bans}"


def _tag(address: str) -> str:
    """An address as a hash tag: its keys share one Redis Cluster slot."""
    return f"{{{address}}}"


def account_id(service: str, account: str) -> str:
    """What names one account of one service in keys: a hash, so that any name an
    attacker sends makes a well-formed key, of the slot of its own hash tag."""
    digest = hashlib.sha256(f"{service}\0{account}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"acct:{digest[:32]}"


def address_slot(address: str) -> int:
    """The Cluster slot of an address's windows (what Redis hashes: the tag's content)."""
    return key_slot(address.encode())


BAN_SIDE_SLOT = key_slot(BAN_SIDE_TAG[1:-1].encode())


def around_address(key: str) -> tuple[str, str]:
    """What comes before and after the address in a key of one address, given
    that key made for the address "" (`Keys.window_state(rule, "")`, `Keys.ban("")`). The ledger passes
    thousands of such keys per call and joins each address between these two
    (ledger.py); the templates stay here."""
    head, tag, tail = key.rpartition(_tag(""))
    if tag:  # an address's own key: the address is its hash tag
        return head + "{", "}" + tail
    if BAN_SIDE_TAG in key and key.endswith(":"):  # the ban side's: the address ends it
        return key, ""
    raise ValueError(f"not a key of one address: {key!r}")
