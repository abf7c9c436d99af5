"""HTTP API and web admin: wiring, health, and the process entry point.

Routes live in their own modules (`routes_bans`, `routes_whitelist`,
`stats`, `status`, `openapi`, `webadmin`). Manual bans and unbans are published as
decisions, exactly like the detector's, so every host's enforcer applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from pyfilter.api import metrics, openapi, routes_bans, routes_whitelist, state, stats, status, webadmin
from pyfilter.api.auth import TOKEN, require_token
from pyfilter.api.notify import start_notifier
from pyfilter.api.responses import FieldError, error, json
from pyfilter.api.schemas import AuthCheck, Health
from pyfilter.api.state import API, Api
from pyfilter.common import log
from pyfilter.common.config import ConfigError, load
from pyfilter.common.redisio import TRANSIENT

logger = logging.getLogger("pyfilter.api")

__all__ = ["Api", "build", "main"]


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """Bad input raised anywhere in a handler becomes a 4xx naming the field;
    Redis being away becomes a 503 instead of a traceback."""
    try:
        return await handler(request)
    except FieldError as exc:
        return error(exc.status, str(exc))
    except TRANSIENT as exc:
        logger.warning("redis unreachable", extra={"path": request.path, "error": str(exc)})
        return error(503, f"redis unreachable: {exc}")
    except web.HTTPException as exc:
        # aiohttp's own 404/405 are plain text; API clients get the JSON error shape.
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        response = error(exc.status, f"{request.method} {request.path}: {exc.reason}")
        if "Allow" in exc.headers:  # a 405 must say which methods the path takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def healthz(request: web.Request) -> web.Response:
    try:
        await state.of(request).client.ping()
    except Exception as exc:  # any failure to reach Redis means unhealthy
        return error(503, f"redis unreachable: {exc}")
    return json(Health(status="ok"))


@require_token
async def check_token(request: web.Request) -> web.Response:
    return json(AuthCheck(ok=True))


async def prune_until(api: Api, stop: asyncio.Event) -> None:
    """Forget expired bans every 30 s until `stop` is set."""
    while not stop.is_set():
        try:
            await api.ledger.prune()
        except Exception as exc:  # keep pruning on the next round
            logger.warning("pruning expired bans failed", extra={"error": str(exc)})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 30)


def build(api: Api) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024,
                          middlewares=[metrics.count_requests, errors])
    app[API] = api
    if api.settings.config.api.token:
        app[TOKEN] = api.settings.config.api.token
    app.add_routes([web.get("/healthz", healthz), web.get("/api/v1/auth", check_token)])
    for module in (routes_bans, routes_whitelist, stats, status, openapi, metrics):
        app.add_routes(module.routes())
    webadmin.setup(app)

    async def background(app: web.Application):
        stop = asyncio.Event()
        pruning = asyncio.create_task(prune_until(api, stop))
        stop_notifier = start_notifier(api.settings, api.client)
        yield
        # Let what uses the Redis client finish its command before closing it:
        # cancelling a redis-py command midway can leave a task hanging.
        stop.set()
        await pruning
        await stop_notifier()
        await api.client.aclose()
        api.geo.close()

    app.cleanup_ctx.append(background)
    return app


def main() -> int:
    log.setup("api")
    try:
        settings = load()
    except ConfigError as exc:
        logger.error(str(exc))
        return 2
    cfg = settings.config.api
    if not cfg.token:
        logger.warning("no API token configured: writes (ban, unban, whitelist) are refused")
    web.run_app(build(Api(settings)), host=cfg.listen, port=cfg.port, print=None,
                access_log=None, reuse_address=True)
    return 0
