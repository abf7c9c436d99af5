"""The original PyFilter's ban list, read from its SQLite file or its Redis, posted to our API.

Where the original kept its bans (config.json's `settings.database`):
- SQLite: table `banned_ip`, one row per ban: `ip`, `time_banned` (epoch
  seconds, `time.time()`), `server_name`, `log_msg`, later `country`. The
  first versions had the address column alone (no time).
- Redis: one hash per address, the key being the address itself: the field
  named after the banning server (`sync_bans.name`) holds its local time
  (`%Y-%m-%d %H:%M:%S`), `banned_server` names it, `reason` says why; every
  host that applied the ban adds its own field. PyFilter-Admin's manual bans
  have the same shape. The first versions set the key to the string "Banned".

The original never lifted a ban. Ours last `--bantime` from the original ban
time: what remains of it is posted, an expired ban is skipped, and a ban with
no recorded time gets the whole of it.

The bans go through the API (POST /api/v1/bans, lists of up to 1000): it is
the one place that checks an address against the whitelist and the host's own
addresses and publishes the ban to every host, and the remaining time is
counted when the ban is written, not when an export was made. An address the
API refuses is reported and left out; the others are still banned.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from pyfilter.api.client import Client, Unreachable
from pyfilter.api.schemas import MAX_REASON
from pyfilter.cli.api import REFUSED, UNREACHABLE, USAGE, CommandError
from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_address

CHUNK = 1000  # bans per API call (it takes up to 10,000)
V1_TIME = "%Y-%m-%d %H:%M:%S"
_REFUSED = re.compile(r"^\[(\d+)\]\.(\w+): (.*)$", re.DOTALL)


@dataclass
class OldBan:
    address: str
    banned_at: float | None  # epoch seconds; None: not recorded
    server: str
    reason: str


@dataclass
class Outcome:
    posted: list[str]
    expired: list[str]
    skipped: list[tuple[str, str]]  # (address, why) left out before posting
    refused: list[tuple[str, str]]  # (address, the API's reason)
    untimed: int  # bans without a recorded time, given the whole ban time


# Reading ----------------------------------------------------------------------

def read_sqlite(path: Path) -> list[OldBan]:
    if not path.is_file():
        raise CommandError(USAGE, f"{path}: no such file (the original's sqlite.database; use --database FILE)")
    try:
        # Read-only: the import changes nothing of the original's.
        with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(banned_ip)")}
            if "ip" not in columns:
                raise CommandError(USAGE, f"{path}: no table banned_ip with an ip column: not the original's database")
            wanted = [c if c in columns else "NULL" for c in ("ip", "time_banned", "server_name", "log_msg")]
            rows = db.execute(f"SELECT {', '.join(wanted)} FROM banned_ip ORDER BY rowid").fetchall()
    except sqlite3.Error as exc:
        raise CommandError(USAGE, f"{path}: cannot read it as SQLite: {exc}") from None
    return [OldBan(str(ip), _epoch(t), str(server or ""), str(msg or "")) for ip, t, server, msg in rows if ip]


def _epoch(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_redis(url: str, zone: tzinfo | None) -> list[OldBan]:
    """Every ban of the original's Redis database; its times are local times of `zone` (None: this host's)."""
    import redis

    try:
        # Bytes, not decoded: a Redis shared with other programs may hold keys that are not UTF-8.
        client = redis.Redis.from_url(url, socket_timeout=30)
        keys = [k for k in client.scan_iter(count=1000) if _is_address(k)]
        with client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.type(k)
            kinds = pipe.execute()
        hashes = [k for k, kind in zip(keys, kinds) if kind == b"hash"]
        with client.pipeline(transaction=False) as pipe:
            for k in hashes:
                pipe.hgetall(k)
            fields = pipe.execute()
    except (redis.RedisError, ValueError) as exc:
        raise CommandError(UNREACHABLE, f"the original's Redis at {redact(url)}: {exc}") from None
    bans = [OldBan(k.decode(), None, "", "") for k, kind in zip(keys, kinds) if kind == b"string"]
    for key, raw in zip(hashes, fields):
        f = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        server = f.get("banned_server", "")
        bans.append(OldBan(key.decode(), _local_time(f.get(server), zone), server, f.get("reason", "")))
    return bans


def _is_address(key: bytes) -> bool:
    try:
        ipaddress.ip_address(key.decode("ascii"))
        return True
    except (UnicodeDecodeError, ValueError):
        return False


def _local_time(text: str | None, zone: tzinfo | None) -> float | None:
    try:
        # A naive time's timestamp() is this host's local time, summer time included.
        return datetime.strptime(text or "", V1_TIME).replace(tzinfo=zone).timestamp()
    except ValueError:
        return None


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//[^@/]*@", "//***@", url)


# Choosing and posting ---------------------------------------------------------

def prepare(bans: list[OldBan], bantime: int, now: float, ignored: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
            outcome: Outcome) -> list[dict]:
    """The API's ban requests: the latest ban of each address, with the time it has left."""
    latest: dict[str, OldBan] = {}
    for ban in bans:
        try:
            address = str(parse_address(ban.address))
        except InvalidAddress as exc:
            outcome.skipped.append((ban.address, str(exc)))
            continue
        old = latest.get(address)
        if old is None or (ban.banned_at or 0) >= (old.banned_at or 0):
            latest[address] = ban
    wanted = []
    for address, ban in latest.items():
        if reason := never_ban_reason(parse_address(address), ignored):
            outcome.skipped.append((address, f"{reason} (the original's ignored_ips, or never banned by us)"))
            continue
        if bantime < 0:
            duration = -1
        elif ban.banned_at is None:
            duration = bantime
            outcome.untimed += 1
        else:
            left = min(ban.banned_at + bantime - now, bantime)
            if left < 1:
                outcome.expired.append(address)
                continue
            duration = math.ceil(left)
        wanted.append({"address": address, "duration": duration, "reason": _reason(ban)})
    return wanted


def _reason(ban: OldBan) -> str:
    when = (datetime.fromtimestamp(ban.banned_at).astimezone().isoformat(timespec="seconds")
            if ban.banned_at else "at an unknown time")
    server = f" on {ban.server}" if ban.server else ""
    text = f"PyFilter v1 ban{server}, {when}" + (f": {ban.reason.strip()}" if ban.reason.strip() else "")
    return text[:MAX_REASON]


def post(client: Client, wanted: list[dict], outcome: Outcome) -> None:
    """POST the bans in lists; an entry the API refuses is reported and the rest sent again."""
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        while chunk:
            try:
                status, data = client.request("POST", "/bans", chunk)
            except Unreachable as exc:
                raise CommandError(UNREACHABLE, f"{exc}; {len(outcome.posted)} ban(s) were posted before") from None
            if status < 300:
                outcome.posted += data["banned"]
                break
            message = data.get("error", "") if isinstance(data, dict) else str(data)
            refused = _REFUSED.match(message)
            if status == 401 or refused is None or not int(refused.group(1)) < len(chunk):
                raise CommandError(REFUSED, f"the API refused ({status}): {message}; "
                                            f"{len(outcome.posted)} ban(s) were posted before")
            entry = chunk.pop(int(refused.group(1)))
            outcome.refused.append((entry["address"], refused.group(3)))
