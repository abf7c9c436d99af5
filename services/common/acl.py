"""Redis users: what each part of PyFilter may do in the shared Redis (docs/security.md).

Every protected host gets a user of its own (`pyfilter-host-NAME`), made by
`pyfilter server add-host NAME`; the detectors, the api and the notifier
one each. A user's rules are `ACL SETUSER` arguments built here from
`Keys`, so they follow the key names. Commands are allowed by name, not by
category, and key patterns are per key: a Redis user may run an allowed
command on any key its patterns allow, so a command that only one key needs
is confined with a selector (`(...)`: those commands on those keys).

What the agent of host H may do:
- append to its lines stream and keep its checkpoints, its own addresses,
  its status reports and its read position in the decisions stream;
- read the decisions stream (XREAD: a read), the active bans and their scopes,
  the whitelist, the list of hosts and every host's own addresses (which it
  must never ban);
- nothing else: no other host's lines, no windows, no records, no ledger
  function, no admin command.

With Sentinel (compose/server-ha.yml) every data node holds the same users
(`pyfilter server` writes each change to every node), and every sentinel
holds each of them too, with the one right a client needs there: asking
where the primary is (`sentinel_client`). The two users the nodes need among
themselves, `pyfilter-replica` (the replication link) and
`pyfilter-sentinel` (the sentinels' link to the nodes), are written by
compose/redis-start.sh at every start, before any replica connects; the
sentinels' link to each other, `pyfilter-sentinel-peer`, by compose/sentinel.sh.
On Redis Cluster (compose/server-cluster.yml) every node holds the same users
likewise: each node checks only the commands sent to it.
"""

from __future__ import annotations

import hashlib
import re

from pyfilter.common.hosts import check_name
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import library_code

ROLES = ("detector", "api", "notifier")

# What every client does on connecting and staying connected (redis-py sends
# CLIENT SETINFO (Redis 7.2 on) and ignores the refusal; SELECT only for a database other than 0).
# On Redis Cluster the client also learns which node holds which slots (CLUSTER SLOTS),
# where each command's keys are (COMMAND) and follows a slot being moved (ASKING): nothing
# of any key. A single Redis refuses CLUSTER SLOTS to everyone (cluster support disabled).
CONNECTION = ["+ping", "+auth", "+hello", "+select", "+client|setname", "+quit", "+reset",
              "+cluster|slots", "+command", "+asking"]
# WAIT: with replicas, a write that must not be lost counts once one holds it (redisio.Durability).
TRANSACTIONS = ["+multi", "+exec", "+discard", "+wait"]


def _ledger_commands() -> list[str]:
    """The commands the ledger's functions run: a function runs with its caller's
    rights, so whoever calls them needs these (still only on its own keys)."""
    return sorted({f"+{name.lower()}" for name in re.findall(r"redis\.call\('(\w+)'", library_code())})


LEDGER = ["+fcall", "+function|list", *_ledger_commands()]


# Users of the nodes and sentinels themselves (compose/redis-start.sh and
# compose/sentinel.sh make them): never made, copied or removed by `pyfilter server`.
NODE_USERS = ("default", "pyfilter-replica", "pyfilter-sentinel", "pyfilter-sentinel-peer")


def host_user(host: str) -> str:
    return f"pyfilter-host-{check_name(host)}"


def role_user(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"no Redis user for {role!r}: expected one of {', '.join(ROLES)}")
    return f"pyfilter-{role}"


def agent(keys: Keys, host: str) -> list[str]:
    """An agent's rules: collector and enforcer of `host`."""
    p = keys.prefix
    check_name(host)
    own = [keys.lines(host), keys.checkpoint(host, "*"), keys.own_addresses(host),
           keys.status("collector", host), keys.status("enforcer", host), keys.status_seen(host),
           keys.decisions_read(host)]
    read = [keys.decisions, keys.active_bans, keys.ban_scopes, keys.whitelist, keys.hosts,
            keys.own_addresses("*")]
    commands = [
        # collector: lines and checkpoints in one transaction, the stream's length for back-pressure
        "+xadd", "+xlen", "+hgetall", "+hset", "+hdel",
        # status reports (SET with EX) and the host list (SISMEMBER: listed by add-host)
        "+set", "+sismember", "+smembers", "+hvals",
        # enforcer: decisions from its position, the bans to reconcile with
        "+xread", "+get", "+zrangebyscore",
        # the first start's position, from the consumer group of the version before
        "+xinfo|groups", "+xpending", "+xrevrange",
    ]
    return ["resetchannels", "-@all", *CONNECTION, *TRANSACTIONS, *commands,
            *(f"~{_glob(k, p)}" for k in own), *(f"%R~{_glob(k, p)}" for k in read)]


def detector(keys: Keys) -> list[str]:
    """The detectors: every host's lines stream (consumer group), the windows and the
    ledger's bans (through its functions), the per-minute counts."""
    p = keys.prefix
    rw = [keys.lines("*"), keys.legacy_lines, keys.window("*", "*"), keys.window_lines("*", "*"),
          keys.window_state("*", "*"), keys.window_conns("*", "*"), *_ledger(keys), keys.counts("*", 0)[:-1] + "*"]
    rw += [keys.account_window("*"), keys.account_lines("*"), keys.account_state("*"), keys.account_logins("*"),
           keys.account_crossed("*")]
    rw += [keys.slow_window("*", "*"), keys.slow_lines("*", "*"), keys.slow_state("*", "*"), keys.slow_ids("*", "*")]
    read = [keys.hosts, keys.own_addresses("*"), keys.whitelist]
    commands = ["+xreadgroup", "+xack", "+xdel", "+xautoclaim", "+xgroup|create", "+xinfo|groups", "+xlen",
                "+xadd",  # dead letters (lines:HOST:dead, within its streams' pattern)
                "+smembers", "+hvals", "+hincrby", "+expire", *LEDGER]
    return ["resetchannels", "-@all", *CONNECTION, *TRANSACTIONS, *commands,
            *(f"~{_glob(k, p)}" for k in rw), *(f"%R~{_glob(k, p)}" for k in read)]


def api(keys: Keys) -> list[str]:
    """The api: reads of everything PyFilter keeps (never key names: no KEYS, no SCAN);
    manual bans and unbans through the ledger's functions; the whitelist."""
    p = keys.prefix
    rw = [*_ledger(keys), keys.whitelist, keys.whitelist_notes]
    commands = ["+get", "+mget", "+exists", "+type", "+ttl", "+pttl", "+strlen",
                "+hget", "+hmget", "+hgetall", "+hvals", "+hkeys", "+hlen", "+hexists",
                "+smembers", "+sismember", "+scard",
                "+zscore", "+zcard", "+zcount", "+zlexcount", "+zrange", "+zrangebyscore", "+zrevrange",
                "+zrevrangebyscore", "+zrank", "+zrevrank", "+zmscore",
                "+xlen", "+xrange", "+xrevrange", "+xread", "+xinfo|stream", "+xinfo|groups",
                "+lrange", "+llen",
                # writes: the whitelist (set and notes), the ledger's functions for the rest
                "+sadd", "+srem", "+hset", "+hdel", *LEDGER]
    return ["resetchannels", "-@all", *CONNECTION, *TRANSACTIONS, *commands,
            *(f"~{_glob(k, p)}" for k in rw), f"%R~{p}*"]


def notifier(keys: Keys) -> list[str]:
    """The notifier: the decisions stream through its group (which nothing else of it
    may touch), its queues, the ban records it describes, the pruning of expired bans."""
    p = keys.prefix
    rw = [keys.notify_queue("*"), keys.notify_items("*"), keys.notify_hold("*"),
          Keys.dead_letters(keys.decisions), keys.active_bans, keys.ban_scopes]
    # A channel's keys from before they were tagged, moved at start (Ledger.upgrade_channels:
    # RENAMENX, or on Cluster DUMP, PTTL, EXISTS, RESTORE and DEL).
    rw += [f"{p}notify:{kind}:*" for kind in ("queue", "items", "hold")]
    read = [keys.ban("*")]
    commands = ["+xadd", "+hset", "+hget", "+hgetall", "+hmget", "+hdel", "+zadd", "+zrem", "+zrange",
                "+zrangebyscore", "+zscore", "+get", "+mget", "+set", "+del",
                "+renamenx", "+dump", "+pttl", "+exists", "+restore", *LEDGER]
    group = ["+xreadgroup", "+xack", "+xautoclaim", "+xgroup|create", "+xinfo|groups", "+xpending"]
    return ["resetchannels", "-@all", *CONNECTION, *TRANSACTIONS, *commands,
            *(f"~{_glob(k, p)}" for k in rw), *(f"%R~{_glob(k, p)}" for k in read),
            "(" + " ".join([*group, f"~{_glob(keys.decisions, p)}"]) + ")"]


def sentinel_client() -> list[str]:
    """Every user's rules on a sentinel: find the primary (redis-py asks SENTINEL MASTERS,
    redis-cli and others GET-MASTER-ADDR-BY-NAME), nothing else: no FAILOVER, SET,
    REMOVE, RESET or CONFIG, no ACL, no pub/sub."""
    return ["resetchannels", "-@all", "+ping", "+auth", "+hello", "+client|setname",
            "+sentinel|masters", "+sentinel|get-master-addr-by-name"]


def rules_of(keys: Keys, role: str) -> list[str]:
    return {"detector": detector, "api": api, "notifier": notifier}[role](keys)


def _ledger(keys: Keys) -> list[str]:
    """What the ledger's functions write for a ban or an unban (every key they are given)."""
    return [keys.ban("*"), keys.ban_count("*"), keys.crossed("*"), keys.active_bans, keys.ban_scopes,
            keys.ban_history, keys.decisions, keys.ban_index, keys.ban_indexed, keys.ban_counts,
            keys.ban_day("*"), keys.ban_past, keys.ban_past_until,
            keys.network_units, keys.network_seen, keys.network_members]


def _glob(key: str, prefix: str) -> str:
    """A key template as an ACL pattern: `*` stands for a part; the prefix is matched as
    written (a `*`, `?` or `[` in it is escaped)."""
    return _escape(prefix) + key[len(prefix):].replace("{*}", "*")


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def password_hash(password: str) -> str:
    """How an ACL file and `ACL SETUSER #...` hold a password."""
    return hashlib.sha256(password.encode()).hexdigest()


def parse_acl_list_line(line: str) -> tuple[str, list[str]]:
    """An `ACL LIST` line as (user, rules): what `ACL SETUSER user reset *rules` makes
    again, a selector `(...)` kept as one rule."""
    words = line.split(" ")
    if len(words) < 2 or words[0] != "user":
        raise ValueError(f"not an ACL LIST line: {line!r}")
    rules: list[str] = []
    open_selector: list[str] = []
    for word in words[2:]:
        if open_selector or word.startswith("("):
            open_selector.append(word)
            if word.endswith(")"):
                rules.append(" ".join(open_selector))
                open_selector = []
        else:
            rules.append(word)
    return words[1], rules


def file_line(user: str, password: str, rules: list[str]) -> str:
    """One user of an ACL file."""
    return " ".join(["user", user, "on", "#" + password_hash(password), *rules])
