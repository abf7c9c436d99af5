"""What every route needs: the settings, Redis, the whitelist, own addresses, GeoIP."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pyfilter.api.records import Reader
from pyfilter.common import hosts
from pyfilter.common.config import Settings
from pyfilter.common.geo import Geo
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import connect
from pyfilter.common.whitelist import Whitelist

# (s) A reply that takes longer ends the request with a 503 (after the client's retries):
# a primary lost without closing its connections (a host gone, a frozen VM) would
# otherwise hold each request until the kernel gives up on the connection.
SOCKET_TIMEOUT = 10.0


class Api:
    def __init__(self, settings: Settings, geo: Geo | None = None):
        cfg = settings.config
        self.settings = settings
        self.keys = Keys(cfg.redis.prefix)
        # A confirmed write's WAIT may take up to wait_timeout_ms on top.
        self.client = connect(cfg.redis, socket_timeout=SOCKET_TIMEOUT + cfg.redis.wait_timeout_ms / 1000)
        self.whitelist = Whitelist(self.client, self.keys, cfg.whitelist)
        self.own = hosts.OwnAddresses(self.client, self.keys)
        self.geo = geo or Geo(cfg.geoip.country_db, cfg.geoip.asn_db)
        self.reader = Reader(self.client, self.keys, self.geo)
        self.filling = asyncio.Lock()  # countries.fill_pending

    @property
    def host(self) -> str:
        return self.settings.host

    def app(self) -> web.Application:
        from pyfilter.api.app import build  # the routes import this module
        return build(self)


API = web.AppKey("api", Api)


def of(request: web.Request) -> Api:
    return request.app[API]
