"""HTTP API: query bans, ban and unban by hand.

Manual bans and unbans are published as decisions, exactly like the
detector's, so every host's enforcer applies them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from aiohttp import web

from pyfilter.common import bans, hosts, log, messages
from pyfilter.common.addresses import InvalidAddress, never_ban_reason, parse_network, parse_target
from pyfilter.common.config import ConfigError, Settings, load, parse_duration
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import connect
from pyfilter.api.auth import TOKEN, require_token

logger = logging.getLogger("pyfilter.api")

DEFAULT_MANUAL_BANTIME = 86400
MAX_BULK = 10_000


class BanRequest(msgspec.Struct, forbid_unknown_fields=True):
    address: str
    duration: int | str = DEFAULT_MANUAL_BANTIME
    reason: str = ""


_ban_request = msgspec.json.Decoder(BanRequest | list[BanRequest])


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Api:
    def __init__(self, settings: Settings):
        cfg = settings.config
        self.settings = settings
        self.keys = Keys(cfg.redis.prefix)
        self.client = connect(cfg.redis.url)
        self.whitelist = [parse_network(n) for n in cfg.whitelist]
        self.own = hosts.OwnAddresses(self.client, self.keys)

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await self.client.ping()
        except Exception as exc:  # any failure to reach Redis means unhealthy
            return _error(503, f"redis unreachable: {exc}")
        return _json({"status": "ok"})

    async def list_bans(self, request: web.Request) -> web.Response:
        active = await bans.active(self.client, self.keys)
        found = await bans.records(self.client, self.keys, sorted(active))
        return _json({"bans": found, "total": len(found)})

    async def show_ban(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        try:
            address = str(parse_target(address))
        except InvalidAddress as exc:
            return _error(422, f"address: {exc}")
        rec = await bans.record(self.client, self.keys, address)
        if rec is None or address not in await bans.active(self.client, self.keys):
            return _error(404, f"{address} is not banned")
        return _json(rec)

    @require_token
    async def create_bans(self, request: web.Request) -> web.Response:
        try:
            body = _ban_request.decode(await request.read())
        except msgspec.ValidationError as exc:
            return _error(422, f"body: {exc}")
        except msgspec.DecodeError as exc:
            return _error(422, f"body: not valid JSON ({exc})")
        wanted = body if isinstance(body, list) else [body]
        if len(wanted) > MAX_BULK:
            return _error(422, f"body: at most {MAX_BULK} bans per call, got {len(wanted)}")
        prepared = []
        own = await self.own.get()
        for i, req in enumerate(wanted):
            where = f"[{i}]." if isinstance(body, list) else ""
            try:
                target = parse_target(req.address)
            except InvalidAddress as exc:
                return _error(422, f"{where}address: {exc}")
            try:
                duration = parse_duration(req.duration)
            except ValueError as exc:
                return _error(422, f"{where}duration: {exc}")
            if reason := never_ban_reason(target, self.whitelist, own):
                return _error(409, f"{where}address: {target} must not be banned: {reason}")
            prepared.append((str(target), duration, req.reason))
        now = time.time()
        for address, duration, reason in prepared:
            expires = None if duration < 0 else now + duration
            reason = reason or "manual ban"
            rec = messages.BanRecord(address=address, rule="manual", host=self.settings.host,
                                     origin="manual", banned_at=now, duration=duration,
                                     expires_at=expires, reason=reason)
            decision = messages.Decision(action="ban", address=address, rule="manual",
                                         origin="manual", host=self.settings.host, created_at=now,
                                         duration=duration, expires_at=expires, reason=reason)
            await bans.publish_ban(self.client, self.keys, rec, decision)
            logger.info("manual ban", extra={"address": address, "duration": duration})
        return _json({"banned": [p[0] for p in prepared]}, 201)

    @require_token
    async def delete_ban(self, request: web.Request) -> web.Response:
        try:
            address = str(parse_target(request.match_info["address"]))
        except InvalidAddress as exc:
            return _error(422, f"address: {exc}")
        decision = messages.Decision(action="unban", address=address, rule="manual",
                                     origin="manual", host=self.settings.host,
                                     created_at=time.time(), reason="manual unban")
        was_active = address in await bans.active(self.client, self.keys)
        await bans.publish_unban(self.client, self.keys, decision)
        logger.info("manual unban", extra={"address": address, "was_active": was_active})
        return _json({"unbanned": address, "was_active": was_active})

    async def prune_forever(self) -> None:
        while True:
            try:
                await bans.prune_expired(self.client, self.keys)
            except Exception as exc:  # keep pruning on the next round
                logger.warning("pruning expired bans failed", extra={"error": str(exc)})
            await asyncio.sleep(30)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        if self.settings.config.api.token:
            app[TOKEN] = self.settings.config.api.token
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/api/v1/bans", self.list_bans),
            web.post("/api/v1/bans", self.create_bans),
            web.get("/api/v1/bans/{address}", self.show_ban),
            web.delete("/api/v1/bans/{address}", self.delete_ban),
        ])

        async def background(app: web.Application):
            task = asyncio.create_task(self.prune_forever())
            yield
            task.cancel()
            await self.client.aclose()

        app.cleanup_ctx.append(background)
        return app


def main() -> int:
    log.setup("api")
    try:
        settings = load()
    except ConfigError as exc:
        logger.error(str(exc))
        return 2
    api = settings.config.api
    if not api.token:
        logger.warning("no API token configured: writes (ban, unban) are refused")
    web.run_app(Api(settings).app(), host=api.listen, port=api.port, print=None,
                access_log=None, reuse_address=True)
    return 0
