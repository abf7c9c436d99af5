"""The ledger's library on a clock of log time, for `pyfilter replay` (logtime.lua says why).

The very functions of ledger.lua, loaded under the library's own name, with
`redis.call` standing in for Redis's expiry, and the window calls moving the
clock to their `now` first. Only for a Redis of replay's own: its keys never
get a Redis TTL.
"""

from __future__ import annotations

import importlib.resources
import json

import redis.asyncio as redis

from pyfilter.common import ledger

# The window calls replay makes on its one Redis (ARGV[1] of each is `now`).
CLOCKED = [f"{ledger.FUNCTION_PREFIX}{name}" for name in ("record_and_ban", "record_accounts")]


# ledger.lua's switch for lines that come once only (replay reads each line of its files once).
DELIVERED_ONCE = ("local DELIVERED_ONCE = false\n", "local DELIVERED_ONCE = true\n")


def library_code() -> str:
    """ledger.CODE with the clock between its first line (the library's name) and the rest,
    and the switch for lines that come once on."""
    first, rest = ledger.CODE.split("\n", 1)
    off, on = DELIVERED_ONCE
    if rest.count(off) != 1:
        raise RuntimeError("ledger.lua: its DELIVERED_ONCE switch is not where logtime.py looks for it")
    rest = rest.replace(off, on)
    clock = importlib.resources.files("pyfilter.common").joinpath("logtime.lua").read_text()
    clocked = ", ".join(f"[{json.dumps(name)}] = true" for name in CLOCKED)
    return f"{first}\nlocal CLOCKED = {{{clocked}}}\n{clock}\n{rest}"


async def load(client: redis.Redis) -> None:
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", library_code())

