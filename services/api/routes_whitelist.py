"""Routes under /api/v1/whitelist: list, add (lifting the bans inside), remove.

Entries of the configuration file are shown but read-only: they change with
the file, not through the API.
"""

from __future__ import annotations

import ipaddress
import logging
import time

import msgspec
from aiohttp import web

from pyfilter.api import manual, state
from pyfilter.api.auth import require_token
from pyfilter.api.responses import FieldError, decode_body, error, json
from pyfilter.api.schemas import (MAX_REASON, WhitelistAdded, WhitelistEntry, WhitelistList,
                                  WhitelistRemoved, WhitelistRequest)
from pyfilter.common import bans, whitelist
from pyfilter.common.addresses import InvalidAddress, Network, parse_network, parse_target

logger = logging.getLogger("pyfilter.api")


class Note(msgspec.Struct):
    reason: str = ""
    added_at: float | None = None


_request = msgspec.json.Decoder(WhitelistRequest)
_note = msgspec.json.Decoder(Note)


def _network(text: str) -> Network:
    try:
        return parse_network(text)
    except InvalidAddress as exc:
        raise FieldError("network", str(exc)) from None


def _notes(raw: dict[bytes, bytes]) -> dict[str, Note]:
    notes = {}
    for key, value in raw.items():
        try:
            notes[key.decode()] = _note.decode(value)
        except msgspec.DecodeError:
            continue
    return notes


async def list_whitelist(request: web.Request) -> web.Response:
    api = state.of(request)
    entries = [WhitelistEntry(network=str(n), source="config", read_only=True)
               for n in api.whitelist.configured]
    notes = _notes(await api.client.hgetall(api.keys.whitelist_notes))
    for net in await whitelist.entries(api.client, api.keys):
        note = notes.get(str(net), Note())
        entries.append(WhitelistEntry(network=str(net), source="api", read_only=False,
                                      reason=note.reason, added_at=note.added_at))
    return json(WhitelistList(entries=entries))


def _overlaps(address: str, network: Network) -> bool:
    try:
        target = ipaddress.ip_network(parse_target(address))
    except InvalidAddress:
        return False
    return target.version == network.version and target.overlaps(network)


@require_token
async def add_whitelist(request: web.Request) -> web.Response:
    api = state.of(request)
    body: WhitelistRequest = await decode_body(request, _request)
    network = _network(body.network)
    if len(body.reason) > MAX_REASON:
        raise FieldError("reason", f"at most {MAX_REASON} characters")
    note = msgspec.json.encode(Note(reason=body.reason, added_at=time.time()))
    added = await whitelist.add(api.client, api.keys, network, note, replace_note=bool(body.reason))
    api.whitelist.invalidate()
    # A whitelisted address must not stay banned: lift every ban in force
    # that touches the network, on every host, through the decisions stream.
    inside = sorted(a for a in await bans.active(api.client, api.keys) if _overlaps(a, network))
    await manual.unban_all(api.client, api.keys, api.host, inside, f"whitelisted ({network})")
    logger.info("whitelist add", extra={"network": str(network), "unbanned": len(inside)})
    what = "added to the whitelist" if added else "already whitelisted"
    message = f"{network} {what}; lifted {len(inside)} active ban(s) inside it"
    return json(WhitelistAdded(network=str(network), added=added, unbanned=inside,
                               message=message), 201 if added else 200)


@require_token
async def remove_whitelist(request: web.Request) -> web.Response:
    api = state.of(request)
    text = request.match_info.get("network") or request.query.get("network")
    if not text:
        raise FieldError("network", "give the CIDR in the path (URL-encoded) or as ?network=")
    network = _network(text)
    if network in api.whitelist.configured:  # also when the api holds a copy: it would stay whitelisted
        return error(409, f"network: {network} is whitelisted in the configuration file "
                          f"({api.settings.path}); edit the file to remove it")
    if not await whitelist.remove(api.client, api.keys, network):
        return error(404, f"network: {network} is not on the whitelist")
    api.whitelist.invalidate()
    logger.info("whitelist remove", extra={"network": str(network)})
    return json(WhitelistRemoved(removed=str(network)))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/whitelist", list_whitelist),
        web.post("/api/v1/whitelist", add_whitelist),
        web.delete("/api/v1/whitelist", remove_whitelist),
        web.delete("/api/v1/whitelist/{network}", remove_whitelist),
    ]
