"""Routes under /api/v1/bans: search, one address, manual ban, unban."""

from __future__ import annotations

import logging
import time

import msgspec
from aiohttp import web

from pyfilter.api import countries, manual, state
from pyfilter.api.auth import require_token
from pyfilter.api.responses import FieldError, bool_param, decode_body, error, int_param, json
from pyfilter.api.schemas import MAX_DURATION, MAX_REASON, BanRequest, Banned, Unbanned
from pyfilter.api.search import parse_filter
from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_target
from pyfilter.common.config import parse_duration

logger = logging.getLogger("pyfilter.api")

MAX_BULK = 10_000
MAX_LIMIT = 1000

_ban_request = msgspec.json.Decoder(BanRequest | list[BanRequest])


def _target(text: str, field: str = "address") -> str:
    try:
        return str(parse_target(text))
    except InvalidAddress as exc:
        raise FieldError(field, str(exc)) from None


async def list_bans(request: web.Request) -> web.Response:
    api = state.of(request)
    query = request.query
    include_history = bool_param(query, "all")
    limit = int_param(query, "limit", 50, 1, MAX_LIMIT)
    cursor = query.get("cursor", "").strip() or None
    flt = parse_filter(query)
    if flt.country is not None:
        await countries.fill_pending(api)
    return json(await api.reader.search(flt, include_history, limit, cursor))


async def show_ban(request: web.Request) -> web.Response:
    address = _target(request.match_info["address"])
    detail = await state.of(request).reader.detail(address)
    if detail is None:
        return error(404, f"{address}: no ban on record (none, or the last ended over "
                          "escalation.memory ago and left the history)")
    return json(detail)


async def _prepare(api: state.Api, body: BanRequest | list[BanRequest]) -> list[manual.Wanted]:
    """Validate every requested ban before writing any: one bad entry refuses the call."""
    wanted = body if isinstance(body, list) else [body]
    if not wanted:
        raise FieldError("body", "no bans given (an empty list)")
    if len(wanted) > MAX_BULK:
        raise FieldError("body", f"at most {MAX_BULK} bans per call, got {len(wanted)}")
    api.whitelist.invalidate()  # an entry another api added a moment ago counts
    whitelist = await api.whitelist.networks()
    own = await api.own.get()
    prepared: dict[str, manual.Wanted] = {}
    for i, req in enumerate(wanted):
        where = f"[{i}]." if isinstance(body, list) else ""
        try:
            target = parse_target(req.address)
        except InvalidAddress as exc:
            raise FieldError(f"{where}address", str(exc)) from None
        duration = req.duration
        if isinstance(duration, float):
            if not duration.is_integer():
                raise FieldError(f"{where}duration", f"expected whole seconds, got {duration}")
            duration = int(duration)
        try:
            duration = parse_duration(duration)
        except ValueError as exc:
            raise FieldError(f"{where}duration", str(exc)) from None
        if duration == 0:
            raise FieldError(f"{where}duration", "a ban of 0 seconds does nothing; give a duration or -1")
        if duration > MAX_DURATION:
            raise FieldError(f"{where}duration", f"at most {MAX_DURATION} seconds (10 years); "
                                                 "-1 bans for ever")
        if len(req.reason) > MAX_REASON:
            raise FieldError(f"{where}reason", f"at most {MAX_REASON} characters")
        if reason := never_ban_reason(target, whitelist, own):
            raise FieldError(f"{where}address", f"{target} must not be banned: {reason}", 409)
        if reason := manual.too_wide(target, api.settings.config.api):
            raise FieldError(f"{where}address", reason)
        # The same address twice in one import: the last entry wins.
        prepared[str(target)] = manual.Wanted(str(target), duration, req.reason)
    return list(prepared.values())


@require_token
async def create_bans(request: web.Request) -> web.Response:
    api = state.of(request)
    body = await decode_body(request, _ban_request)
    wanted = await _prepare(api, body)
    await manual.ban_all(api.client, api.keys, api.host, api.geo, wanted)
    logger.info("manual ban", extra={"count": len(wanted), "address": wanted[0].address})
    await _lift_whitelisted_meanwhile(api, wanted)
    return json(Banned(banned=[w.address for w in wanted], count=len(wanted)), 201)


async def _lift_whitelisted_meanwhile(api: state.Api, wanted: list[manual.Wanted]) -> None:
    """Undo the bans of this call that a whitelist entry added while it ran now covers.

    Adding to the whitelist lifts the bans it finds in force; a ban written
    after that scan is caught here instead, so one of the two always sees
    the other.
    """
    api.whitelist.invalidate()
    whitelist = await api.whitelist.networks()
    late = {w.address: reason for w in wanted
            if (reason := never_ban_reason(parse_target(w.address), whitelist))}
    if late:
        await manual.unban_all(api.client, api.keys, api.host, sorted(late), "whitelisted while being banned")
        first = min(late)
        raise FieldError("address", f"{first} must not be banned: {late[first]}, since this call began; "
                                    f"lifted {len(late)} of its {len(wanted)} ban(s), the others stand", 409)


@require_token
async def delete_ban(request: web.Request) -> web.Response:
    api = state.of(request)
    address = _target(request.match_info["address"])
    entry = await api.reader.index.entry(address)
    was_active = entry is not None and entry.in_force(time.time())
    await manual.unban_all(api.client, api.keys, api.host, [address], "manual unban")
    logger.info("manual unban", extra={"address": address, "was_active": was_active})
    return json(Unbanned(unbanned=address, was_active=was_active,
                         covered_by=await api.reader.index.covering(address)))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/bans", list_bans),
        web.post("/api/v1/bans", create_bans),
        web.get("/api/v1/bans/{address}", show_ban),
        web.delete("/api/v1/bans/{address}", delete_ban),
    ]
