"""The ledger: every write to the shared ban state, through one Redis Function library.

Who calls what (docs/decisions.md, "Ledger", has the whole map):
- the detector's windows: `record_failures` (windows, and the bans they cause);
- the api: `ban` and `unban` (manual bans, imports);
- the notifier: `prune` (expired bans), `claim_due`, `claim_digest`.
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
"""

from __future__ import annotations

import importlib.resources
import json
import time
from collections.abc import Iterable, Sequence

import msgspec
import redis.asyncio as redis
from redis.exceptions import ResponseError

from pyfilter.common import bans, messages
from pyfilter.common.config import Escalation
from pyfilter.common.keys import Keys, around_address
from pyfilter.common.redisio import durability

# Bump when a function's KEYS, ARGV or effect changes.
LIBRARY_VERSION = 1
LIBRARY = f"pyfilter_v{LIBRARY_VERSION}"
FUNCTION_PREFIX = f"{LIBRARY}_"

# A ban record is read while its ban is in force (and by the notifier just
# after); it then expires, and the history stream keeps the past.
RECORD_GRACE = 86400
HISTORY_MAXLEN = 100_000
DECISIONS_MAXLEN = 1_000_000
DEFAULT_MEMORY = int(Escalation().memory)  # manual bans follow the default of the rules
CHUNK = 500  # bans per call: a call holds Redis alone, an import of 10,000 is 20 of them
# The structs the functions write (messages.py): their fields and tags go into the Lua.
STRUCTS = (messages.BanRecord, messages.Decision, messages.BanScope)


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


class Ledger:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.keys = keys
        # record_failures' KEYS of a group, packed, cut where its address goes:
        # per (rule, recidive on, address length), see _group_layout.
        self._group_layouts: dict[tuple[str, bool, int], list[bytes]] = {}

    async def load(self, rule_scopes: dict[str, messages.BanScope] | None = None) -> None:
        """Load the library unless Redis already holds this very code; the first
        load into a Redis that has bans from before the ledger upgrades them
        (`rule_scopes`: the scope of each rule that does not ban every port with drop)."""
        listed = await self.client.function_list(library=LIBRARY, withcode=True)
        if not any(_code_of(e) in (CODE, CODE.encode()) for e in listed):
            await self.client.function_load(CODE, replace=True)
            if not listed:
                await self.upgrade(rule_scopes or {})

    async def upgrade(self, rule_scopes: dict[str, messages.BanScope]) -> int:
        """Give the ban records and counts of versions before the ledger their hash tag.

        They were `PREFIX ban:ADDRESS` and `PREFIX bancount:ADDRESS`; records and
        counts outlive an upgrade (a day past the ban, `escalation.memory`), so they
        are renamed, keeping their expiry. Windows are left to expire (minutes): an
        upgrade forgets the failures of windows under way. Renaming twice (two
        services starting at once) is harmless: the second finds nothing to rename.
        The bans in force get their scope from their rule's (`rule_scopes`), as
        enforcers found it before. Returns how many keys it renamed.
        """
        renamed = 0
        templates = {"ban:": self.keys.ban, "bancount:": self.keys.ban_count}
        for kind, template in templates.items():
            old = f"{self.keys.prefix}{kind}"
            async for key in self.client.scan_iter(match=f"{old}*", count=1000):
                address = key.decode()[len(old):]
                if address.startswith("{"):
                    continue  # already tagged
                try:
                    renamed += bool(await self.client.renamenx(key, template(address)))
                except ResponseError:  # gone meanwhile: renamed by another service
                    continue
        if rule_scopes:
            in_force = list(await bans.active(self.client, self.keys))
            for i in range(0, len(in_force), CHUNK):
                for rec in await bans.records(self.client, self.keys, in_force[i:i + CHUNK]):
                    if scope := rule_scopes.get(rec.rule):
                        await self.client.hsetnx(self.keys.ban_scopes, rec.address, messages.encode(scope))
        return renamed

    async def _calls(self, calls: Sequence[bytes]) -> list:
        """Run packed calls (`_fcall`) in one round trip; each is atomic on its own."""
        for attempt in (1, 2):
            try:
                return await self._send(calls)
            except ResponseError as exc:
                # Redis lost the library (restarted empty): load it and call again,
                # which is harmless, since nothing ran.
                if attempt == 2 or not _is_missing(exc):
                    raise
                await self.load()
        raise AssertionError("unreachable")

    async def _send(self, calls: Sequence[bytes]) -> list:
        """What a redis-py pipeline does with commands it packed: one write, every
        reply read (so the connection stays in step), the first error raised,
        retried on a new connection as the client's retry policy says.

        With replicas to wait for (redisio.durability), a WAIT follows the calls
        on the same connection, in the same attempt: a call counts as done only
        once they hold it, else NotReplicated (TRANSIENT) says to call again.
        Every function is harmless to run twice: windows count a line id once,
        bans and unbans end in the same state."""
        wanted = durability(self.client)
        wait = [_command(wanted.wait_command())] if wanted.replicas else []
        pool = self.client.connection_pool
        conn = await pool.get_connection()

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
        finally:
            await pool.release(conn)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        if wait:
            wanted.check(replies.pop())
        return replies

    async def _call(self, name: str, keys: list, args: list):
        [reply] = await self._calls([_fcall(name, len(keys), _bulks(keys), args)])
        return reply

    def _shared(self) -> list[str]:
        k = self.keys
        return [k.active_bans, k.ban_scopes, k.ban_history, k.decisions]

    # The detector

    def _group_layout(self, rule: str, recidive: bool, length: int) -> list[bytes]:
        """The KEYS of one group, packed and cut where its address goes (an address
        of `length` bytes): its window, window-lines, window-state, window-conns,
        the address's ban record and ban count, and when the recidive rule is
        on, the address's recidive window and window-lines.
        A detector passes these for every failure of a flood (one group per
        failure when every address fails once per batch): each group's are then
        one join of this layout by its address."""
        layout = self._group_layouts.get((rule, recidive, length))
        if layout is None:
            k = self.keys
            keys = [k.window(rule, ""), k.window_lines(rule, ""), k.window_state(rule, ""),
                    k.window_conns(rule, ""), k.ban(""), k.ban_count("")]
            if recidive:
                keys += [k.window("recidive", ""), k.window_lines("recidive", "")]
            layout = [b""]
            for key in keys:
                before, after = (part.encode() for part in around_address(key))
                layout[-1] += b"$%d\r\n%s" % (len(before) + length + len(after), before)
                layout.append(after + b"\r\n")
            self._group_layouts[(rule, recidive, length)] = layout
        return layout

    async def record_failures(self, calls: Iterable[list[list[object]]], now: float,
                              recidive: bytes) -> list[bytes]:
        """Count groups of failures into their windows (one function call per list of
        groups; ledger.lua's record_failures says what a group holds). Returns
        "address rule duration" for each ban they caused."""
        shared = self._shared()
        planned = []
        for groups in calls:
            keys, count = [_bulks(shared)], len(shared)
            for group in groups:
                address = group[1].encode()
                layout = self._group_layout(group[0], bool(recidive), len(address))
                keys.append(address.join(layout))
                count += len(layout) - 1
            # The groups go as one MessagePack argument: a protocol argument
            # per field cost the detector more CPU than matching.
            planned.append(_fcall("record_failures", count, b"".join(keys), [now, recidive, _encode(groups)]))
        replies = await self._calls(planned) if planned else []
        return [r for reply in replies for r in reply]

    # Bans and unbans written from Python

    async def ban(self, bans: Sequence[NewBan], memory: int = DEFAULT_MEMORY) -> list[messages.BanRecord]:
        """Write bans (record, active set, scope, ban count, history, decision); returns
        the records as written, with their ban counts. Each CHUNK is all-or-nothing,
        so an enforcer never sees a decision whose record is missing."""
        calls = []
        for i in range(0, len(bans), CHUNK):
            chunk = bans[i:i + CHUNK]
            keys = self._shared()
            for b in chunk:
                keys += [self.keys.ban(b.record.address), self.keys.ban_count(b.record.address)]
            calls.append(_fcall("ban", len(keys), _bulks(keys), [memory, _encode(chunk)]))
        replies = await self._calls(calls) if calls else []
        return [messages.decode_record(r) for reply in replies for r in reply]

    async def unban(self, addresses: Sequence[str], host: str, reason: str, rule: str = "manual",
                    origin: str = "manual", now: float | None = None) -> None:
        """Lift bans: out of the active set, record gone, an unban decision each."""
        now = time.time() if now is None else now
        calls = []
        for i in range(0, len(addresses), CHUNK):
            chunk = list(addresses[i:i + CHUNK])
            keys = [self.keys.active_bans, self.keys.ban_scopes, self.keys.decisions,
                    *(self.keys.ban(a) for a in chunk)]
            calls.append(_fcall("unban", len(keys), _bulks(keys), [now, host, rule, origin, reason, *chunk]))
        if calls:
            await self._calls(calls)

    async def prune(self, now: float | None = None) -> int:
        """Forget bans whose time ran out (the kernel already dropped them)."""
        now = time.time() if now is None else now
        return await self._call("prune", [self.keys.active_bans, self.keys.ban_scopes], [now])

    # The notifier

    async def claim_due(self, channel: str, now: float, lease: float, count: int) -> list[bytes]:
        """Take up to `count` notices due on a channel, leased for `lease` seconds."""
        return await self._call("claim_due", [self.keys.notify_queue(channel)], [now, lease, count])

    async def claim_digest(self, channel: str, now: float, lease: float, max_batch: int) -> list[bytes]:
        """A digest channel's notices, if its digest is due (and it is not held)."""
        keys = [self.keys.notify_queue(channel), self.keys.notify_hold(channel)]
        return await self._call("claim_digest", keys, [now, lease, max_batch])
