"""What a request must be before the api acts on it (services/api/guard.py, manual.py):
the api's own Host names (421), JSON bodies (415), the token on reads when asked for,
and no manual ban wider than the configured maximum (422). Each refusal changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pyfilter.api.app import Api
from pyfilter.common.keys import Keys
from tests.unit.apisupport import AUTH, PREFIX, settings


def call(redis_url: str, steps, **api_config):
    async def go():
        cfg = settings(redis_url)
        for key, value in api_config.items():
            setattr(cfg.config.api, key, value)
        api = Api(cfg)
        async with TestClient(TestServer(api.app())) as client:
            return await steps(client, api.client)
    return asyncio.run(go())


async def active(redis) -> list[bytes]:
    return await redis.zrange(Keys(PREFIX).active_bans, 0, -1)


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:8470", 200), ("localhost", 200), ("[::1]:8470", 200), ("LOCALHOST:1", 200),
    ("pyfilter.example.org", 200), ("attacker.example", 421), ("127.0.0.1.attacker.example", 421), ("", 421),
])
def test_only_the_apis_own_host_names_are_answered(redis_url, host, status):
    async def steps(client, redis):
        r = await client.get("/api/v1/bans", headers={"Host": host})
        return r.status, await r.json()
    got, body = call(redis_url, steps, names=["pyfilter.example.org"])
    assert got == status
    if status == 421:
        assert "api.names" in body["error"]


def test_a_rebound_host_cannot_ban_and_health_needs_no_host(redis_url):
    async def steps(client, redis):
        ban = await client.post("/api/v1/bans", json={"address": "198.51.100.7"},
                                headers={**AUTH, "Host": "attacker.example"})
        health = await client.get("/healthz", headers={"Host": "attacker.example"})
        return ban.status, health.status, await active(redis)
    assert call(redis_url, steps) == (421, 200, [])


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_write_whose_body_is_not_declared_json_is_415_and_bans_nothing(redis_url, content_type):
    async def steps(client, redis):
        headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
        r = await client.post("/api/v1/bans", data=b'{"address": "198.51.100.7"}', headers=headers)
        w = await client.post("/api/v1/whitelist", data=b'{"network": "198.51.100.0/24"}', headers=headers)
        return r.status, w.status, await active(redis), await redis.smembers("t:whitelist")
    assert call(redis_url, steps) == (415, 415, [], set())


def test_json_writes_and_bodiless_deletes_pass(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", data=b'{"address": "198.51.100.7"}',
                              headers={**AUTH, "Content-Type": "application/json; charset=utf-8"})
        d = await client.delete("/api/v1/bans/198.51.100.7", headers=AUTH)
        return r.status, d.status
    assert call(redis_url, steps) == (201, 200)


def test_reads_need_the_token_when_the_option_is_on(redis_url):
    async def steps(client, redis):
        paths = ["/api/v1/bans", "/api/v1/bans/198.51.100.7", "/api/v1/stats", "/api/v1/status",
                 "/api/v1/whitelist"]
        without = [(await client.get(p)).status for p in paths]
        wrong = (await client.get("/api/v1/bans", headers={"Authorization": "Bearer nope"})).status
        with_token = [(await client.get(p, headers=AUTH)).status for p in paths]
        open_ = [(await client.get(p)).status for p in ("/healthz", "/api/v1/openapi.json", "/")]
        return without, wrong, with_token, open_
    without, wrong, with_token, open_ = call(redis_url, steps, read_token=True)
    assert without == [401] * 5 and wrong == 401
    assert with_token == [200, 404, 200, 200, 200] and open_ == [200, 200, 200]


def test_reads_are_open_by_default(redis_url):
    async def steps(client, redis):
        return (await client.get("/api/v1/bans")).status
    assert call(redis_url, steps) == 200


@pytest.mark.parametrize("address, limit", [
    ("2000::/3", "/32 for IPv6"), ("2001:db8::/31", "/32 for IPv6"), ("198.18.0.0/15", "/16 for IPv4"),
])
def test_a_manual_ban_wider_than_the_maximum_is_422_naming_the_limit(redis_url, address, limit):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json=[{"address": "198.51.100.7"}, {"address": address}],
                              headers=AUTH)
        return r.status, (await r.json())["error"], await active(redis)
    status, error, banned = call(redis_url, steps)
    assert status == 422 and error.startswith("[1].address:") and limit in error and banned == []


def test_the_widest_manual_ban_is_configurable(redis_url):
    async def steps(client, redis):
        wide = await client.post("/api/v1/bans", json={"address": "198.51.100.0/27"}, headers=AUTH)
        fits = await client.post("/api/v1/bans", json={"address": "198.51.100.0/28"}, headers=AUTH)
        v6 = await client.post("/api/v1/bans", json={"address": "2001:db8::/47"}, headers=AUTH)
        return wide.status, (await wide.json())["error"], fits.status, v6.status
    status, error, fits, v6 = call(redis_url, steps, widest_ban_v4=28, widest_ban_v6=48)
    assert (status, fits, v6) == (422, 201, 422) and "/28 for IPv4 (api.widest_ban_v4" in error
