"""The HTTP API against a real Redis: tokens, validation, and what a ban publishes."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pyfilter.api.app import Api
from pyfilter.common import messages
from pyfilter.common.config import Config, Settings
from pyfilter.common.keys import Keys

TOKEN = "s3cret-token"


def settings(url: str) -> Settings:
    config = Config(host="api-host", whitelist=["198.51.100.128/25"])
    config.redis.url = url
    config.redis.prefix = "t:"
    config.api.token = TOKEN
    return Settings(config=config, rules={}, path="test")


def call(redis_url: str, steps):
    """Run `steps(client, redis)` against a live app on a real socket."""
    async def go():
        api = Api(settings(redis_url))
        async with TestClient(TestServer(api.app())) as client:
            return await steps(client, api.client)
    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def decisions(redis) -> list[messages.Decision]:
    return [messages.decode_decision(f[b"m"]) for _, f in await redis.xrange(Keys("t:").decisions)]


def test_manual_ban_is_published_as_a_decision_and_listed(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json={"address": "198.51.100.7", "duration": "1h",
                                                    "reason": "scanner"}, headers=AUTH)
        assert r.status == 201, await r.text()
        listed = await (await client.get("/api/v1/bans")).json()
        one = await client.get("/api/v1/bans/198.51.100.7")
        return listed, await one.json(), await decisions(redis)
    listed, one, sent = call(redis_url, steps)
    assert [b["address"] for b in listed["bans"]] == ["198.51.100.7"]
    assert one["reason"] == "scanner" and one["origin"] == "manual" and one["duration"] == 3600
    assert [(d.action, d.address, d.duration, d.origin) for d in sent] == [("ban", "198.51.100.7", 3600, "manual")]


def test_bulk_ban_of_ten_thousand_addresses_in_one_call(redis_url):
    addresses = [f"2001:db8::{i:x}" for i in range(1, 10_001)]

    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json=[{"address": a} for a in addresses], headers=AUTH)
        assert r.status == 201
        return await (await client.get("/api/v1/bans")).json()
    listed = call(redis_url, steps)
    assert listed["total"] == 10_000


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_writes_without_the_right_token_get_401_and_change_nothing(redis_url, headers):
    async def steps(client, redis):
        r1 = await client.post("/api/v1/bans", json={"address": "198.51.100.7"}, headers=headers)
        r2 = await client.delete("/api/v1/bans/198.51.100.7", headers=headers)
        return r1.status, r2.status, await decisions(redis), await redis.keys("*")
    s1, s2, sent, keys = call(redis_url, steps)
    assert (s1, s2) == (401, 401)
    assert sent == [] and keys == []


@pytest.mark.parametrize("body, status, field", [
    ({"address": "198.51.100.300"}, 422, "address"),
    ({"address": "198.51.100.1/24"}, 422, "address"),
    ({"address": "198.51.100.7", "duration": "soon"}, 422, "duration"),
    ({"adress": "198.51.100.7"}, 422, "adress"),
    ([{"address": "198.51.100.7"}, {"address": "nope"}], 422, "[1].address"),
    ({"address": "127.0.0.1"}, 409, "loopback"),
    ({"address": "198.51.100.200"}, 409, "whitelisted"),
])
def test_bad_or_forbidden_bans_are_refused_and_change_nothing(redis_url, body, status, field):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json=body, headers=AUTH)
        return r.status, await r.json(), await decisions(redis)
    got, payload, sent = call(redis_url, steps)
    assert got == status
    assert field in payload["error"]
    assert sent == []


def test_garbage_body_is_a_422(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", data=b"\xff\x00not json", headers=AUTH)
        return r.status
    assert call(redis_url, steps) == 422


def test_unban_publishes_a_decision_and_removes_the_ban(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json={"address": "198.51.100.7"}, headers=AUTH)
        r = await client.delete("/api/v1/bans/198.51.100.7", headers=AUTH)
        listed = await (await client.get("/api/v1/bans")).json()
        missing = await client.get("/api/v1/bans/198.51.100.7")
        return await r.json(), listed, missing.status, await decisions(redis)
    body, listed, missing, sent = call(redis_url, steps)
    assert body == {"unbanned": "198.51.100.7", "was_active": True}
    assert listed["bans"] == [] and missing == 404
    assert [d.action for d in sent] == ["ban", "unban"]


def test_no_permissive_cors_headers(redis_url):
    async def steps(client, redis):
        r = await client.get("/api/v1/bans", headers={"Origin": "http://evil.example"})
        return dict(r.headers)
    headers = call(redis_url, steps)
    assert not any(h.lower().startswith("access-control-") for h in headers)


def test_an_address_of_any_protected_host_is_refused(redis_url):
    from pyfilter.common import hosts
    from pyfilter.common.addresses import parse_address

    async def steps(client, redis):
        await hosts.publish(redis, Keys("t:"), "edge-1", {parse_address("198.51.100.50")})
        r = await client.post("/api/v1/bans", json={"address": "198.51.100.50"}, headers=AUTH)
        return r.status, (await r.json())["error"], await decisions(redis)
    status, error, sent = call(redis_url, steps)
    assert status == 409 and "198.51.100.50" in error and "this host" in error
    assert sent == []
