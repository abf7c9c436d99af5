"""The ledger: every write to the shared ban state, through one Redis Function library.

Who calls what (docs/decisions.md, "Ledger", has the whole map):
- the detector's windows: on a single Redis `record_and_ban` (windows and the
  bans they cause, in one call); on Cluster `record_failures` (windows; then, for
  the thresholds they crossed, `ban_crossings` and `confirm_crossings`: ledger.lua
  says why three);
- the api: `ban` and `unban` (manual bans, imports), `set_countries` (the
  country of bans written without one, looked up once);
- every detector's pruner: `prune` (expired bans);
- the notifier: `claim_due`, `claim_digest`.
Each function that writes, lifts or prunes a ban keeps the ban indexes the api
reads (ledger.lua, "Ban indexes") in the same step.
Enforcers only read (`bans.active`, `bans.scopes`) and apply decisions.

The functions live in ledger.lua. What both languages must agree on is
written here once and put before the Lua text when it is loaded: the
message structs' fields, tags and version (from messages.py), the record's
grace, the streams' caps and the library's name. Key names come from
keys.py only: a function touches the keys it is given in KEYS and no other.

The library is loaded (FUNCTION LOAD REPLACE) by whoever needs it first:
at start, and again when Redis answers that a function is missing (a Redis
that restarted without its data). Its name carries LIBRARY_VERSION, and so
do its functions' names: a host still running the previous version keeps
calling its own functions while the next version's are loaded beside them.

On Redis Cluster (redisio.connect with `redis.cluster`) a function call may
touch the keys of one slot only: the calls are grouped here by slot (an
address's windows, or the ban side) and sent to the primary that holds it;
the library is loaded on every primary.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import math
import time
from datetime import datetime, timezone
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from pyfilter.common import bans, messages
from pyfilter.common.config import MAX_ACCOUNT_FAILURES, MAX_DISTINCT, Escalation
from pyfilter.common.keys import BAN_SIDE_SLOT, Keys, address_slot, around_address
from pyfilter.common.network import Widening
from pyfilter.common.redisio import durability

# Bump when a function's KEYS, ARGV or effect changes.
LIBRARY_VERSION = 7
LIBRARY = f"pyfilter_v{LIBRARY_VERSION}"
FUNCTION_PREFIX = f"{LIBRARY}_"

# A ban record is read while its ban is in force (and by the notifier just
# after); it then expires, and the history stream keeps the past.
RECORD_GRACE = 86400
HISTORY_MAXLEN = 100_000
DECISIONS_MAXLEN = 1_000_000
DEFAULT_MEMORY = int(Escalation().memory)  # manual bans follow the default of the rules
CHUNK = 500  # bans per call: a call holds Redis alone, an import of 10,000 is 20 of them
# Failures per window call: a call runs alone in Redis, so a big batch would
# stall every other client (about 26-37 µs of Redis CPU per failure, docs/scaling.md).
FAILURES_PER_CALL = 1000
ACCOUNTS_PACKED = 10_000  # accounts whose keys a detector keeps packed (attackers name any)
FIELDS = 7  # per failure in a group: line id, log time, text, connection, once, weight, value
# The structs the functions write (messages.py): their fields and tags go into the Lua.
STRUCTS = (messages.BanRecord, messages.Decision, messages.BanScope)


def utc_day(epoch: float) -> str:
    """The UTC day of a time, as ban_day keys name it."""
    return datetime.fromtimestamp(epoch, timezone.utc).date().isoformat()


def index_ms(epoch: float) -> str:
    """A ban time as the index writes it (ledger.lua's entry_from_record)."""
    return "%015d" % math.floor(epoch * 1000)


class Crossing(msgspec.Struct):
    """What Python reads of a crossing record_failures returns (the rest is for the Lua)."""

    address: str
    rule: str
    mode: str = ""  # the window kind; "slow" has keys of its own


class AccountCrossing(msgspec.Struct):
    """What Python reads of a per-account window's crossing (record_accounts)."""

    id: str  # the account's keys' name (keys.account_id)
    rule: str
    host: str
    trigger: float
    at: float  # when it crossed: its bans count for recidive under this time
    evidence: list[str]


class NewBan(msgspec.Struct):
    """A ban written whole from Python: its record, and the scope its decision carries."""

    record: messages.BanRecord
    ports: list[int] = []
    verdict: str = "drop"


def _lua(value) -> str:
    """A Python number or string as a Lua literal (JSON's string escapes are Lua's too)."""
    return json.dumps(value)


def _struct_table(cls: type[msgspec.Struct]) -> str:
    info = msgspec.inspect.type_info(cls)
    fields = ", ".join(f"[{_lua(f.encode_name)}] = true" for f in info.fields)
    tag = ""
    if info.tag is not None:
        tag = f", tag_field = {_lua(info.tag_field)}, tag = {_lua(info.tag)}"
    return f"  {cls.__name__} = {{fields = {{{fields}}}{tag}}},"


def library_code() -> str:
    """The library as loaded: the shared definitions, then ledger.lua."""
    body = importlib.resources.files("pyfilter.common").joinpath("ledger.lua").read_text()
    prelude = "\n".join([
        f"#!lua name={LIBRARY}",
        "-- Written by services/common/ledger.py from messages.py; ledger.lua follows.",
        f"local FUNCTION_PREFIX = {_lua(FUNCTION_PREFIX)}",
        f"local VERSION = {messages.VERSION}",
        f"local RECORD_GRACE = {RECORD_GRACE}",
        f"local HISTORY_MAXLEN = {HISTORY_MAXLEN}",
        f"local DECISIONS_MAXLEN = {DECISIONS_MAXLEN}",
        f"local FIELDS = {FIELDS}",
        f"local MAX_DISTINCT = {MAX_DISTINCT}",
        f"local ACCOUNT_KEEP = {MAX_ACCOUNT_FAILURES}",
        "local STRUCTS = {",
        *(_struct_table(cls) for cls in STRUCTS),
        "}",
    ])
    return f"{prelude}\n{body}"


CODE = library_code()
_encode = msgspec.msgpack.Encoder().encode


# The calls are packed here, not by redis-py: a detector's call passes thousands
# of KEYS (6 per failure in a flood), and redis-py's packer, a Python loop over
# its arguments, made the detector's CPU 40% higher (bench/scaling.py; see
# docs/decisions.md, "Ledger"). Arguments are encoded as redis-py encodes them.
def _bulk(value: bytes | str | int | float) -> bytes:
    """One argument in the Redis protocol."""
    if isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes):
        value = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _bulks(values: Iterable[bytes | str | int | float]) -> bytes:
    return b"".join(map(_bulk, values))


def _command(args: Sequence[bytes | str | int | float]) -> bytes:
    return b"*%d\r\n%s" % (len(args), _bulks(args))


def _fcall(name: str, key_count: int, keys: bytes, args: Sequence[bytes | str | int | float]) -> bytes:
    """FCALL of one of our functions as sent: `keys`, `key_count` of them, come packed."""
    return b"*%d\r\n%s%s%s" % (3 + key_count + len(args), _bulks((b"FCALL", FUNCTION_PREFIX + name, key_count)),
                                 keys, _bulks(args))


def _is_missing(exc: ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def _code_of(entry) -> bytes | str | None:
    """The code of one FUNCTION LIST entry (RESP2 gives flat lists, RESP3 maps)."""
    fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2]))
    return fields.get(b"library_code", fields.get("library_code"))


# A call as sent: the slot of its keys (which Cluster node runs it), and the packed FCALL.
Call = tuple[int, bytes]


class Planned(NamedTuple):
    """A step's calls as `Ledger.plan` packed them: window calls, account calls, their `now`
    and the recidive rule's settings."""

    windows: list[Call]
    accounts: list[Call]
    now: float
    recidive: bytes


# Redis Cluster's answer when a slot moved (resharding, failover): find the node again.
# redis-py raises these as their own classes (MovedError is an AskError), the code cut off.
_MOVED = (AskError, ClusterDownError, TryAgainError)


class Ledger:
    def __init__(self, client: redis.Redis | RedisCluster, keys: Keys):
        self.client = client
        self.keys = keys
        self.cluster = isinstance(client, RedisCluster)
        # Whether a crossed threshold bans in three calls, each in one slot (the
        # windows' calls cut by slot): needed on Cluster. A single Redis counts
        # a read's failures and writes their bans in one call (record_and_ban).
        # Tests set it on a single Redis to run the three calls there too.
        self.split = self.cluster
        # A window call's KEYS of a group, packed, cut where its address goes:
        # per (rule, recidive on, address length, split, slow), see _group_layout.
        self._group_layouts: dict[tuple[str, bool, int, bool, bool], list[bytes]] = {}
        # What the detector's bans widen to (network.py); None: they do not.
        self.widening: Widening | None = None
        # An account's four window keys, packed (record_accounts): a few accounts
        # (root, admin) take most failures. Forgotten whole when full.
        self._account_keys: dict[str, bytes] = {}

    async def _on_primaries(self, *command) -> list:
        """A command run on every primary (one: a single Redis), with its replies."""
        if not self.cluster:
            return [await self.client.execute_command(*command)]
        await self.client.initialize()  # learns the nodes at first use (then does nothing)
        return [await self.client.execute_command(*command, target_nodes=node)
                for node in self.client.get_primaries()]

    async def load(self, rule_scopes: dict[str, messages.BanScope] | None = None) -> None:
        """Load the library (on every primary) unless Redis already holds this very
        code; the first load into a Redis written by an older version upgrades its
        keys (`rule_scopes`: the scope of each rule that does not ban every port with drop)."""
        listed = await self._on_primaries("FUNCTION LIST", "LIBRARYNAME", LIBRARY, "WITHCODE")
        if not all(any(_code_of(e) in (CODE, CODE.encode()) for e in entries) for entries in listed):
            await self._on_primaries("FUNCTION LOAD", "REPLACE", CODE)
            if not any(listed):
                await self.upgrade(rule_scopes or {})

    async def upgrade(self, rule_scopes: dict[str, messages.BanScope]) -> int:
        """Move the ban side's keys of older versions to their names under `{bans}`.

        Before the ledger they were `PREFIX ban:ADDRESS` and `PREFIX bancount:ADDRESS`;
        its version 1 tagged them by address (`ban:{ADDRESS}`), and named the shared
        ones `bans:active`, `bans:scopes`, `bans:history` and `decisions`. Records and
        counts outlive an upgrade (a day past the ban, `escalation.memory`), and the
        decisions stream keeps its consumer groups (enforcers' positions), so all of
        them are renamed, keeping their expiry. Windows keep their names. Renaming
        twice (two services starting at once) is harmless: the second finds nothing.
        The bans in force from before the ledger get their rule's scope
        (`rule_scopes`), as enforcers found it then. Returns how many keys it moved.
        """
        k, old = self.keys, self.keys.prefix
        moved = 0
        for name, new in ((f"{old}bans:active", k.active_bans), (f"{old}bans:scopes", k.ban_scopes),
                          (f"{old}bans:history", k.ban_history), (f"{old}decisions", k.decisions)):
            moved += await self._move(name, new)
        templates = {"ban:": k.ban, "bancount:": k.ban_count}
        for kind, template in templates.items():
            async for key in self.client.scan_iter(match=f"{old}{kind}*", count=1000):
                address = key.decode()[len(old) + len(kind):]
                if address.startswith("{") and address.endswith("}"):
                    address = address[1:-1]
                moved += await self._move(key, template(address))
        if rule_scopes:
            in_force = list(await bans.active(self.client, self.keys))
            for i in range(0, len(in_force), CHUNK):
                for rec in await bans.records(self.client, self.keys, in_force[i:i + CHUNK]):
                    if scope := rule_scopes.get(rec.rule):
                        await self.client.hsetnx(self.keys.ban_scopes, rec.address, messages.encode(scope))
        await self.index_existing()
        return moved

    async def upgrade_channels(self, channels: Iterable[str]) -> int:
        """Move notification channels' keys of the version before Redis Cluster
        (`PREFIX notify:queue:CHANNEL`, `notify:items:`, `notify:hold:`) to their
        names under `{notify:CHANNEL}`, keeping their expiry. Harmless twice.
        Returns how many keys it moved."""
        moved = 0
        for channel in channels:
            for kind, new in (("queue", self.keys.notify_queue(channel)), ("items", self.keys.notify_items(channel)),
                              ("hold", self.keys.notify_hold(channel))):
                moved += await self._move(f"{self.keys.prefix}notify:{kind}:{channel}", new)
        return moved

    async def _move(self, old: str | bytes, new: str) -> int:
        """Rename a key unless `new` exists (1 if moved). On Redis Cluster the two
        names are in different slots, where RENAME cannot go: the value is copied
        with its expiry (DUMP, RESTORE), then the old key deleted."""
        try:
            if not self.cluster:
                return int(bool(await self.client.renamenx(old, new)))
            dumped, ttl = await self.client.dump(old), await self.client.pttl(old)
            if dumped is None or await self.client.exists(new):
                return 0
            await self.client.restore(new, max(ttl, 0), dumped)
            await self.client.delete(old)
            return 1
        except ResponseError as exc:  # gone meanwhile: moved by another service
            if "no such key" in str(exc).lower():
                return 0
            raise

    async def _calls(self, calls: Sequence[Call]) -> list:
        """Run packed calls (`_fcall`) in one round trip per node; each is atomic on
        its own. Replies come in the order of `calls`."""
        for attempt in (1, 2, 3):
            try:
                if self.cluster:
                    return await self._send_cluster(calls)
                return await self._send(self.client.connection_pool, [c for _, c in calls])
            except ResponseError as exc:
                # Redis lost the library (restarted empty): load it and call again,
                # which is harmless, since nothing ran.
                if attempt < 3 and _is_missing(exc):
                    await self.load()
                # A slot moved: learn where (the calls are harmless to repeat).
                elif attempt < 3 and self.cluster and isinstance(exc, _MOVED):
                    await self.client.nodes_manager.initialize()
                else:
                    raise
            except RedisConnectionError:
                if attempt == 3 or not self.cluster:
                    raise
                await self.client.nodes_manager.initialize()
        raise AssertionError("unreachable")

    async def _send_cluster(self, calls: Sequence[Call]) -> list:
        """The calls of each node in one round trip, all nodes at once."""
        await self.client.initialize()  # learns the slots at first use (then does nothing)
        by_node: dict = {}
        for i, (slot, _) in enumerate(calls):
            node = self.client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node, []).append(i)
        replies: list = [None] * len(calls)
        nodes = list(by_node)
        answers = await asyncio.gather(*(self._send(node, [calls[i][1] for i in by_node[node]])
                                         for node in nodes), return_exceptions=True)
        for node, answer in zip(nodes, answers):
            if isinstance(answer, BaseException):
                raise answer
            for i, reply in zip(by_node[node], answer):
                replies[i] = reply
        return replies

    async def _send(self, pool, calls: Sequence[bytes]) -> list:
        """What a redis-py pipeline does with commands it packed: one write, every
        reply read (so the connection stays in step), the first error raised,
        retried on a new connection as the client's retry policy says. `pool`: the
        client's connection pool, or a Cluster node (which lends connections too).

        With replicas to wait for (redisio.durability), a WAIT follows the calls
        on the same connection, in the same attempt: a call counts as done only
        once they hold it, else NotReplicated (TRANSIENT) says to call again.
        Every function is harmless to run twice: windows count a line id once,
        bans and unbans end in the same state."""
        wanted = durability(self.client)
        wait = [_command(wanted.wait_command())] if wanted.replicas else []
        conn = pool.acquire_connection() if self.cluster else await pool.get_connection()

        async def exchange() -> list:
            await conn.send_packed_command([*calls, *wait])
            replies = []
            for _ in range(len(calls) + len(wait)):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        try:
            replies = await conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect())
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            if self.cluster:
                pool.release(conn)
            else:
                await pool.release(conn)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        if wait:
            wanted.check(replies.pop())
        return replies

    async def _call(self, name: str, keys: list[str], args: list):
        """One call of keys in one slot (on Cluster: the slot of the first)."""
        [reply] = await self._calls([(key_slot(keys[0].encode()), _fcall(name, len(keys), _bulks(keys), args))])
        return reply

    def _shared(self, day: str) -> list[str]:
        """The keys every ban writes; `day`: the UTC day its counts go to."""
        k = self.keys
        return [k.active_bans, k.ban_scopes, k.ban_history, k.decisions,
                k.ban_index, k.ban_indexed, k.ban_counts, k.ban_day(day), k.ban_past, k.ban_past_until]

    def _index(self) -> list[str]:
        return [self.keys.ban_index, self.keys.ban_indexed, self.keys.ban_counts]

    # The detector

    def _group_layout(self, rule: str, recidive: bool, length: int, slow: bool = False) -> list[bytes]:
        """The KEYS of one group, packed and cut where its address goes (an address
        of `length` bytes): its window, window-lines, window-state, window-conns;
        then for record_failures (`split`), when the recidive rule is on, the
        address's recidive window-state; for record_and_ban, the address's ban
        record and ban count, and when the recidive rule is on, its recidive
        window-state, window and window-lines.
        A detector passes these for every failure of a flood (one group per
        failure when every address fails once per batch): each group's are then
        one join of this layout by its address. A `slow` group (the rule's slow
        window) has that window's four keys in place of the first four."""
        layout = self._group_layouts.get((rule, recidive, length, self.split, slow))
        if layout is None:
            k = self.keys
            keys = [k.window(rule, ""), k.window_lines(rule, ""), k.window_state(rule, ""),
                    k.window_conns(rule, "")]
            if slow:
                keys = [k.slow_window(rule, ""), k.slow_lines(rule, ""), k.slow_state(rule, ""),
                        k.slow_ids(rule, "")]
            if not self.split:
                keys += [k.ban(""), k.ban_count("")]
            if recidive:
                keys.append(k.window_state("recidive", ""))
                if not self.split:
                    keys += [k.window("recidive", ""), k.window_lines("recidive", "")]
            layout = [b""]
            for key in keys:
                before, after = (part.encode() for part in around_address(key))
                layout[-1] += b"$%d\r\n%s" % (len(before) + length + len(after), before)
                layout.append(after + b"\r\n")
            self._group_layouts[(rule, recidive, length, self.split, slow)] = layout
        return layout

    def _slot(self, address: str) -> int:
        """Where an address's windows are: on a single Redis, all in one (one call
        holds many addresses); on Cluster, the slot of its hash tag."""
        return address_slot(address) if self.split else 0

    async def record_failures(self, groups: Sequence[list[object]], now: float,
                              recidive: bytes) -> list[tuple[str, str, int]]:
        """Count groups of failures into their windows (ledger.lua's record_failures
        says what a group holds), then ban for the thresholds they crossed: in the
        same call on a single Redis, in two more on Cluster (`split`).
        Returns (address, rule, duration) for each ban they caused."""
        return await self.record(groups, [], now, recidive)

    async def record(self, groups: Sequence[list[object]], accounts: Sequence[list[object]], now: float,
                     recidive: bytes) -> list[tuple[str, str, int]]:
        """record_failures and record_accounts at once: their calls in one round trip
        per node (both idempotent: if one fails, the read is done again). One
        coroutine, no tasks: its request is written before it first waits, so the
        caller's next work (replay's matching) runs while Redis counts."""
        return await self.record_planned(self.plan(groups, accounts, now, recidive))

    def plan(self, groups: Sequence[list[object]], accounts: Sequence[list[object]], now: float,
             recidive: bytes) -> Planned:
        """`record`'s calls, packed: its CPU work before Redis (`pyfilter replay` packs a
        step while Redis runs the one before)."""
        return Planned(self._window_calls(groups, now, recidive) if groups else [],
                       self._account_calls(accounts, now, recidive) if accounts else [], now, recidive)

    async def record_planned(self, planned: Planned) -> list[tuple[str, str, int]]:
        """`record` of calls packed by `plan`."""
        windows, accounts, now, recidive = planned
        replies = await self._calls(windows + accounts) if windows or accounts else []
        return (await self._window_replies(replies[:len(windows)], now, recidive)
                + await self._account_replies(replies[len(windows):], now, recidive))

    async def _window_replies(self, replies: list, now: float, recidive: bytes) -> list[tuple[str, str, int]]:
        """The bans of the window calls' replies (on Cluster: made from their crossings)."""
        if self.split:
            return await self._ban_crossed([c for reply in replies for c in reply], now, recidive)
        banned = []
        for written, _ in replies:
            for ban in written:
                address, rule, duration = ban.decode().split(" ")
                banned.append((address, rule, int(duration)))
        # Crossings the three calls left pending (a detector of the version
        # before record_and_ban, stopped between two of them) go on as there.
        left = [c for _, pending in replies for c in pending]
        return banned + (await self._ban_crossed(left, now, recidive) if left else [])

    def _window_calls(self, groups: Sequence[list[object]], now: float, recidive: bytes) -> list[Call]:
        """The window calls of these groups: one per slot (single Redis: one slot),
        and per FAILURES_PER_CALL failures."""
        name, shared = ("record_failures", []) if self.split else ("record_and_ban", self._shared(utc_day(now)))
        by_slot: dict[int, list[list[object]]] = {}
        for group in groups:
            by_slot.setdefault(self._slot(group[1]), []).append(group)
        planned = []
        for slot, slot_groups in by_slot.items():
            cut, keys, count, failures, placed = [], [_bulks(shared)], len(shared), 0, {}
            for group in slot_groups:
                address = group[1].encode()
                layout = self._group_layout(group[0], bool(recidive), len(address), group[3] == "slow")
                # Lines already in this call (a rule's address and slow windows
                # count the same list: windows.py) go as that group's place.
                place = placed.setdefault(id(group[12]), len(cut) + 1)
                cut.append(group if place == len(cut) + 1 else [*group[:12], place, *group[13:]])
                keys.append(address.join(layout))
                count += len(layout) - 1
                failures += len(group[12]) // FIELDS
                if failures >= FAILURES_PER_CALL or group is slot_groups[-1]:
                    args = [now, recidive, _encode(cut)]
                    if not self.split:
                        tail, network = self._network([g[1] for g in cut], count)
                        keys.append(_bulks(tail))
                        count += len(tail)
                        args.append(network)
                    # The groups go as one MessagePack argument: a protocol
                    # argument per field cost the detector more CPU than matching.
                    planned.append((slot, _fcall(name, count, b"".join(keys), args)))
                    cut, keys, count, failures, placed = [], [_bulks(shared)], len(shared), 0, {}
        return planned

    async def _ban_crossed(self, crossings: list[bytes], now: float,
                           recidive: bytes) -> list[tuple[str, str, int]]:
        """Ban for crossed thresholds, then confirm each crossing to its window
        (which counts the bans into recidive windows: their crossings go round again)."""
        banned = []
        while crossings:
            crossings = list(dict.fromkeys(crossings))  # one window's may come from several groups
            read = [msgspec.msgpack.decode(c, type=Crossing) for c in crossings]
            answers = await self._ban_crossings(read, crossings, now)
            banned += [(c.address, c.rule, int(a)) for c, a in zip(read, answers) if a]
            replies = await self._confirm_crossings(read, crossings, answers, recidive)
            crossings = [c for reply in replies for c in reply]
        return banned

    async def _ban_crossings(self, read: list[Crossing], crossings: list[bytes], now: float) -> list[bytes]:
        calls = []
        for i in range(0, len(crossings), CHUNK):
            keys = self._shared(utc_day(now))  # a detector's ban is written at `now`
            for c in read[i:i + CHUNK]:
                keys += [self.keys.ban(c.address), self.keys.ban_count(c.address), self.keys.crossed(c.address)]
            tail, network = self._network([c.address for c in read[i:i + CHUNK]], len(keys))
            keys += tail
            calls.append((BAN_SIDE_SLOT, _fcall("ban_crossings", len(keys), _bulks(keys),
                                                [now, network, *crossings[i:i + CHUNK]])))
        return [a for reply in await self._calls(calls) for a in reply]

    async def _confirm_crossings(self, read: list[Crossing], crossings: list[bytes], answers: list[bytes],
                                 recidive: bytes) -> list:
        k = self.keys
        by_slot: dict[int, tuple[list[str], list[object]]] = {}
        for c, packed, answer in zip(read, crossings, answers):
            keys, args = by_slot.setdefault(self._slot(c.address), ([], [recidive]))
            keys.append(k.slow_state(c.rule, c.address) if c.mode == "slow" else k.window_state(c.rule, c.address))
            if recidive:
                keys += [k.window("recidive", c.address), k.window_lines("recidive", c.address),
                         k.window_state("recidive", c.address)]
            args += [packed, answer]
        return await self._calls([(slot, _fcall("confirm_crossings", len(keys), _bulks(keys), args))
                                  for slot, (keys, args) in by_slot.items()])

    # The detector's per-account windows (ledger.lua, "Per-account windows")

    async def record_accounts(self, groups: Sequence[list[object]], now: float,
                              recidive: bytes = b"") -> list[tuple[str, str, int]]:
        """Count account groups (windows.py: their last field is the account's id) into
        their windows and ban for the crossings: in the same call on a single Redis, in
        three more on Cluster (`split`), or where bans widen (the networks an address
        counts in are planned here, for a crossing's addresses once it is kept). Each ban
        counts in its address's recidive window (`recidive`: that rule's settings, as
        record_failures takes them). Returns (address, rule, duration) per ban."""
        return await self.record([], groups, now, recidive)

    def _accounts_split(self) -> bool:
        """Whether account crossings ban in calls of their own (record_accounts says when)."""
        return self.split or self.widening is not None

    def _account_calls(self, groups: Sequence[list[object]], now: float, recidive: bytes) -> list[Call]:
        """record_accounts' calls of these groups: per slot (single Redis: one) and CHUNK groups."""
        k = self.keys
        split = self._accounts_split()
        by_slot: dict[int, list[list[object]]] = {}
        for group in groups:
            by_slot.setdefault(key_slot(str(group[-1]).encode()) if self.split else 0, []).append(group)
        head = [] if split else self._shared(utc_day(now))
        tail = [] if split else [recidive, _encode([part for key in (k.ban(""), k.ban_count(""), k.window("recidive", ""),
                                                                     k.window_lines("recidive", ""))
                                                    for part in around_address(key)])]
        packed_head = _bulks(head)
        calls = []
        for slot, slot_groups in by_slot.items():
            for i in range(0, len(slot_groups), CHUNK):
                cut = slot_groups[i:i + CHUNK]
                keys = packed_head + b"".join([self._account_keys_of(str(group[-1])) for group in cut])
                calls.append((slot, _fcall("record_accounts", len(head) + 4 * len(cut), keys,
                                           [now, "" if split else "1", _encode(cut), *tail])))
        return calls

    async def _account_replies(self, replies: list, now: float, recidive: bytes) -> list[tuple[str, str, int]]:
        """The bans of record_accounts' replies (split: made from their crossings)."""
        if self._accounts_split():
            return await self._ban_account_crossed([c for reply in replies for c in reply], now, recidive)
        banned = []
        for written, _ in replies:
            for ban in written:
                address, rule, duration = ban.decode().split(" ")
                banned.append((address, rule, int(duration)))
        left = [c for _, pending in replies for c in pending]  # the three calls', interrupted
        return banned + (await self._ban_account_crossed(left, now, recidive) if left else [])

    def _account_keys_of(self, account: str) -> bytes:
        """An account's window, lines, state and logins keys (its id's), packed."""
        packed = self._account_keys.get(account)
        if packed is None:
            if len(self._account_keys) >= ACCOUNTS_PACKED:
                self._account_keys.clear()
            k = self.keys
            packed = self._account_keys[account] = _bulks([k.account_window(account), k.account_lines(account),
                                                            k.account_state(account), k.account_logins(account)])
        return packed

    async def _ban_account_crossed(self, crossings: list[bytes], now: float,
                                   recidive: bytes) -> list[tuple[str, str, int]]:
        """Ban for account windows' crossings (on the ban side, widening), count the bans
        in their addresses' recidive windows, then confirm the crossings to their windows
        (in this order: a crash in between repeats steps that add nothing); the recidive
        crossings go on as an address window's."""
        if not crossings:
            return []
        crossings = list(dict.fromkeys(crossings))
        read = [msgspec.msgpack.decode(c, type=AccountCrossing) for c in crossings]
        # A later crossing of an account answers for its earlier ones: judge the earlier first.
        order = sorted(range(len(read)), key=lambda i: read[i].trigger)
        read, crossings = [read[i] for i in order], [crossings[i] for i in order]
        k = self.keys
        keys = self._shared(utc_day(now))
        for c in read:
            keys.append(k.account_crossed(c.id))
            for address in c.evidence:
                keys += [k.ban(address), k.ban_count(address)]
        tail, network = self._network([a for c in read for a in c.evidence], len(keys))
        keys += tail
        [answers] = await self._calls([(BAN_SIDE_SLOT, _fcall("ban_account_crossings", len(keys), _bulks(keys),
                                                               [now, network, *crossings]))])
        banned, counted = [], []
        for c, (new, earlier) in zip(read, answers):
            for line in new.decode().splitlines():
                address, duration = line.split(" ")
                banned.append((address, c.rule, int(duration)))
                counted.append((address, c))
            counted += [(line.split(" ")[0], c) for line in earlier.decode().splitlines()]
        again = await self._count_account_bans(counted, recidive) if recidive and counted else []
        by_slot: dict[int, tuple[list[str], list[bytes]]] = {}
        for c, packed in zip(read, crossings):
            keys, args = by_slot.setdefault(key_slot(c.id.encode()) if self.split else 0, ([], []))
            keys.append(k.account_state(c.id))
            args.append(packed)
        await self._calls([(slot, _fcall("confirm_account_crossings", len(keys), _bulks(keys), args))
                           for slot, (keys, args) in by_slot.items()])
        return banned + (await self._ban_crossed(again, now, recidive) if again else [])

    async def _count_account_bans(self, counted: list[tuple[str, AccountCrossing]], recidive: bytes) -> list[bytes]:
        """Count account bans in their addresses' recidive windows (one call per slot);
        the recidive crossings they made or left pending."""
        k = self.keys
        by_slot: dict[int, tuple[list[str], list[object]]] = {}
        for address, c in counted:
            keys, args = by_slot.setdefault(self._slot(address), ([], [recidive]))
            keys += [k.window("recidive", address), k.window_lines("recidive", address),
                     k.window_state("recidive", address)]
            args += [address, c.rule, c.host, c.at]
        replies = await self._calls([(slot, _fcall("count_account_bans", len(keys), _bulks(keys), args))
                                     for slot, (keys, args) in by_slot.items()])
        return list(dict.fromkeys(c for reply in replies for c in reply))

    def _network(self, addresses: Iterable[str], at: int) -> tuple[list[str], bytes]:
        """The per-network KEYS and payload (ledger.lua, "Per network") of a call whose
        bans may be of `addresses` and whose KEYS so far number `at`: the three
        counting keys, then the record and count of each network it may ban.
        Nothing when bans do not widen. A manual ban never widens: it is an
        operator's exact decision, and an import would turn old bans into networks."""
        if self.widening is None:
            return [], b""
        k = self.keys
        tail = [k.network_units, k.network_seen, k.network_members]
        where: dict[str, int] = {}
        of: dict[str, list[list[object]]] = {}
        for address in dict.fromkeys(addresses):
            planned = []
            for step in self.widening.steps(address):
                if step.target not in where:
                    where[step.target] = at + len(tail) + 1  # Lua counts KEYS from 1
                    tail += [k.ban(step.target), k.ban_count(step.target)]
                planned.append([step.key, step.unit, step.target, where[step.target]])
            if planned:
                of[address] = planned
        if not of:
            return [], b""
        cfg = self.widening.cfg
        return tail, _encode({"at": at + 1, "threshold": cfg.threshold, "span": int(cfg.findtime),
                              "bantime": int(cfg.bantime), "memory": DEFAULT_MEMORY, "of": of})

    # Bans and unbans written from Python

    async def ban(self, bans: Sequence[NewBan], memory: int = DEFAULT_MEMORY) -> list[messages.BanRecord]:
        """Write bans (record, active set, scope, ban count, history, decision); returns
        the records as written, with their ban counts. Each CHUNK is all-or-nothing,
        so an enforcer never sees a decision whose record is missing."""
        calls = []
        for chunk in _chunks_by_day(bans):
            keys = self._shared(utc_day(chunk[0].record.banned_at))
            for b in chunk:
                keys += [self.keys.ban(b.record.address), self.keys.ban_count(b.record.address)]
            calls.append((BAN_SIDE_SLOT, _fcall("ban", len(keys), _bulks(keys), [memory, _encode(chunk)])))
        replies = await self._calls(calls) if calls else []
        return [messages.decode_record(r) for reply in replies for r in reply]

    async def unban(self, addresses: Sequence[str], host: str, reason: str, rule: str = "manual",
                    origin: str = "manual", now: float | None = None) -> None:
        """Lift bans: out of the active set, record gone, an unban decision each."""
        now = time.time() if now is None else now
        calls = []
        for i in range(0, len(addresses), CHUNK):
            chunk = list(addresses[i:i + CHUNK])
            keys = [self.keys.active_bans, self.keys.ban_scopes, self.keys.decisions, *self._index(),
                    *(self.keys.ban(a) for a in chunk)]
            calls.append((BAN_SIDE_SLOT, _fcall("unban", len(keys), _bulks(keys),
                                                [now, host, rule, origin, reason, *chunk])))
        if calls:
            await self._calls(calls)

    async def prune(self, now: float | None = None) -> int:
        """Forget bans whose time ran out (the kernel already dropped them)."""
        now = time.time() if now is None else now
        k = self.keys
        return await self._call("prune", [k.active_bans, k.ban_scopes, *self._index(), k.ban_past,
                                          k.ban_past_until], [now])

    async def set_countries(self, found: Sequence[tuple[str, float, str]]) -> int:
        """Give bans written without a country theirs: (address, banned_at, country;
        "?" when none is known). A ban lifted or replaced meanwhile is left alone.
        Returns how many were set."""
        calls = []
        for i in range(0, len(found), CHUNK):
            chunk = found[i:i + CHUNK]
            keys = [*self._index(), *(self.keys.ban_day(utc_day(at)) for _, at, _ in chunk)]
            calls.append((BAN_SIDE_SLOT, _fcall("set_countries", len(keys), _bulks(keys),
                                                [v for address, _, country in chunk for v in (address, country)])))
        replies = await self._calls(calls) if calls else []
        return sum(replies)

    async def index_existing(self) -> int:
        """Index the bans in force that are not yet (written before the indexes existed)."""
        done = 0
        in_force = list(await bans.active(self.client, self.keys))
        for i in range(0, len(in_force), CHUNK):
            keys = [*self._index(), *(self.keys.ban(a) for a in in_force[i:i + CHUNK])]
            done += await self._call("index_existing", keys, [])
        return done

    # The notifier

    async def claim_due(self, channel: str, now: float, lease: float, count: int) -> list[bytes]:
        """Take up to `count` notices due on a channel, leased for `lease` seconds."""
        return await self._call("claim_due", [self.keys.notify_queue(channel)], [now, lease, count])

    async def claim_digest(self, channel: str, now: float, lease: float, max_batch: int,
                           horizon: float = math.inf) -> list[bytes]:
        """A digest channel's notices, if its digest is due (and it is not held); none due
        after `horizon` (a network ban's end, still to come)."""
        keys = [self.keys.notify_queue(channel), self.keys.notify_hold(channel)]
        return await self._call("claim_digest", keys, [now, lease, max_batch, horizon])


def _chunks_by_day(bans: Sequence[NewBan]) -> Iterable[Sequence[NewBan]]:
    """Up to CHUNK bans at a time, each chunk's bans of one UTC day (their counts' key)."""
    start = 0
    while start < len(bans):
        day = utc_day(bans[start].record.banned_at)
        end = start + 1
        while end < len(bans) and end - start < CHUNK and utc_day(bans[end].record.banned_at) == day:
            end += 1
        yield bans[start:end]
        start = end
