"""The api's Prometheus metrics at /metrics.

Besides its own counters, the api is where the whole pipeline's lag is
exported: at each scrape it reads the stream lengths and group lags from
Redis (the same numbers as GET /api/v1/stats), so one scrape target shows
whether collectors, detectors or any host's enforcer fall behind.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import Counter, Gauge

from pyfilter.api import state, stats
from pyfilter.common import bans
from pyfilter.common.metrics import exposition

REQUESTS = Counter("pyfilter_api_requests_total", "HTTP requests, by method and status",
                   ["method", "status"])
WRITES = Counter("pyfilter_api_writes_total", "Manual bans, unbans and whitelist changes accepted",
                 ["kind"])
LINES_LENGTH = Gauge("pyfilter_lines_stream_length", "Entries waiting in the lines stream")
DETECT_PENDING = Gauge("pyfilter_detect_pending_entries", "Entries taken by detectors, unfinished")
DETECT_LAG = Gauge("pyfilter_detect_lag_entries", "Entries no detector has taken yet")
ENFORCER_LAG = Gauge("pyfilter_enforcer_lag_decisions", "Decisions a host's enforcer has not read",
                     ["host"])
ACTIVE_BANS = Gauge("pyfilter_active_bans", "Bans in force")


@web.middleware
async def count_requests(request: web.Request, handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(request.method, str(exc.status)).inc()
        raise
    REQUESTS.labels(request.method, str(response.status)).inc()
    if request.method in ("POST", "DELETE") and response.status < 300:
        WRITES.labels(request.path.split("/")[3] if request.path.count("/") >= 3 else "other").inc()
    return response


async def get_metrics(request: web.Request) -> web.Response:
    api = state.of(request)
    pipe = await stats.pipeline(api)
    LINES_LENGTH.set(pipe.lines_length)
    DETECT_PENDING.set(pipe.detect_pending)
    DETECT_LAG.set(pipe.detect_lag or 0)
    for enforcer in pipe.enforcers:
        ENFORCER_LAG.labels(enforcer.host).set(enforcer.lag or 0)
    ACTIVE_BANS.set(len(await bans.active(api.client, api.keys, time.time())))
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def routes() -> list[web.RouteDef]:
    return [web.get("/metrics", get_metrics)]
