"""Helpers for the API tests: an app on a real socket over a real Redis, and real bans.

Detector bans are made by the detector's own window script (`Windows.record`),
so the API is tested against records exactly as the detector writes them.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp.test_utils import TestClient, TestServer

from pyfilter.api.app import Api
from pyfilter.common import messages
from pyfilter.common.config import Config, Rule, Seconds, Settings
from pyfilter.common.keys import Keys
from pyfilter.detector.windows import Observed, Windows
from tests.conftest import CLUSTER_URLS

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "t:"
CONFIG_WHITELIST = "198.51.100.128/25"


def settings(url: str, **geoip: str) -> Settings:
    config = Config(host="api-host", whitelist=[CONFIG_WHITELIST])
    config.redis.url = url
    config.redis.cluster = url in CLUSTER_URLS
    config.redis.prefix = PREFIX
    config.api.token = TOKEN
    for key, value in geoip.items():
        setattr(config.geoip, key, value)
    return Settings(config=config, rules={}, path="test.yaml")


def call(redis_url: str, steps, **geoip: str):
    """Run `steps(client, redis)` against a live app on a real socket."""
    async def go():
        api = Api(settings(redis_url, **geoip))
        async with TestClient(TestServer(api.app())) as client:
            return await steps(client, api.client)
    return asyncio.run(go())


async def decisions(redis) -> list[messages.Decision]:
    return [messages.decode_decision(f[b"m"]) for _, f in await redis.xrange(Keys(PREFIX).decisions)]


def rule(**kw) -> Rule:
    base = dict(service="sshd", sources=["auth"], patterns=["x"], maxretry=3,
                findtime=Seconds(600), bantime=Seconds(3600))
    base.update(kw)
    return msgspec.convert(base, Rule, dec_hook=lambda t, v: Seconds(v))


async def detector_ban(redis, address: str, now: float, rule_name: str = "sshd",
                       host: str = "web-1", bantime: int = 3600) -> None:
    """Make the detector ban `address` at `now` (three failures just before it)."""
    windows = Windows(redis, PREFIX, {rule_name: rule(bantime=Seconds(bantime))})
    observed = [Observed(rule_name, address, host, now - 3 + i, f"{address}:{now}:{i}",
                         f"Failed password for root from {address} port {4000 + i} ssh2")
                for i in range(3)]
    assert await windows.record(observed, now), f"{address} was not banned"



