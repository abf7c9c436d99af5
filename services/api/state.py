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


class Api:
    def __init__(self, settings: Settings, geo: Geo | None = None):
        cfg = settings.config
        self.settings = settings
        self.keys = Keys(cfg.redis.prefix)
        self.client = connect(cfg.redis)
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
