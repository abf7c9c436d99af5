"""HTTP API and web admin: wiring, health, and the process entry point.

Routes live in their own modules (`routes_bans`, `routes_whitelist`,
`stats`, `status`, `openapi`, `webadmin`). Manual bans and unbans are published as
decisions, exactly like the detector's, so every host's enforcer applies them.
Notifications and the pruning of expired bans are the notifier's (services/notifier).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from pyfilter.api import countries, guard, metrics, openapi, routes_bans, routes_whitelist, state, stats, status, webadmin
from pyfilter.api.auth import TOKEN, require_token
from pyfilter.api.responses import FieldError, error, json
from pyfilter.api.schemas import AuthCheck, Health
from pyfilter.api.state import API, Api
from pyfilter.common import service
from pyfilter.common.config import Settings
from pyfilter.common.redisio import TRANSIENT

logger = logging.getLogger("pyfilter.api")
FILLER = web.AppKey("country-filler", asyncio.Task)

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


READS_AT_ONCE = 1


def bounded_reads():
    """At most READS_AT_ONCE reads of Redis data at a time; the others wait their turn.

    A page of 1,000 bans costs the one event loop tens of milliseconds of CPU:
    sixteen at once made /healthz (and every write) wait for all of them. In
    turn, a request waits for one read's step at most, and the api holds one
    answer at a time in memory (docs/benchmarks.md, "Reads at a million bans").
    """
    turns = asyncio.Semaphore(READS_AT_ONCE)

    @web.middleware
    async def bounded(request: web.Request, handler) -> web.StreamResponse:
        if request.method != "GET" or not request.path.startswith("/api/"):
            return await handler(request)
        async with turns:
            return await handler(request)

    return bounded


def build(api: Api) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024,
                          middlewares=[metrics.count_requests, guard.middleware(api.settings.config.api),
                                       bounded_reads(), errors])
    app[API] = api
    if api.settings.config.api.token:
        app[TOKEN] = api.settings.config.api.token
    app.add_routes([web.get("/healthz", healthz), web.get("/api/v1/auth", check_token)])
    for module in (routes_bans, routes_whitelist, stats, status, openapi, metrics):
        app.add_routes(module.routes())
    webadmin.setup(app)

    async def start(app: web.Application) -> None:
        app[FILLER] = asyncio.create_task(countries.fill_forever(api))

    async def close(app: web.Application) -> None:
        app[FILLER].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[FILLER]
        await api.client.aclose()
        api.geo.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app


async def serve(settings: Settings) -> None:
    """Answer HTTP until SIGTERM or SIGINT; requests under way then finish."""
    cfg = settings.config.api
    if not cfg.token:
        logger.warning("no API token configured: writes (ban, unban, whitelist) are refused")
    runner = web.AppRunner(build(Api(settings)), access_log=None)
    await runner.setup()
    stopping = asyncio.Event()
    service.stop_on_signals(stopping)
    try:
        await web.TCPSite(runner, cfg.listen, cfg.port, reuse_address=True).start()
        logger.info("api started", extra={"listen": cfg.listen, "port": cfg.port})
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    return service.run("api", serve)
