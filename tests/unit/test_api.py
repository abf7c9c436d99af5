"""The HTTP API against a real Redis: tokens, validation, and what a ban publishes."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pyfilter.api import state
from pyfilter.api.app import Api
from pyfilter.common import messages
from pyfilter.common.keys import Keys
from tests.conftest import start_redis
from tests.unit.apisupport import AUTH, TOKEN, call, decisions, settings


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
        r = await client.post("/api/v1/bans", json=[{"address": a, "duration": "2h"} for a in addresses],
                              headers=AUTH)
        assert r.status == 201
        keys = Keys("t:")
        return (await r.json(), await (await client.get("/api/v1/bans?limit=1000")).json(),
                await redis.xlen(keys.decisions), await redis.xlen(keys.ban_history),
                await (await client.get(f"/api/v1/bans/{addresses[-1]}")).json())
    created, listed, sent, history, last = call(redis_url, steps)
    assert created["count"] == 10_000 and len(created["banned"]) == 10_000
    assert listed["total"] == 10_000 and len(listed["bans"]) == 1000
    assert sent == 10_000 and history == 10_000
    assert last["active"] and last["duration"] == 7200 and last["origin"] == "manual"


WRITES = [
    ("POST", "/api/v1/bans", {"address": "198.51.100.7"}),
    ("POST", "/api/v1/bans", [{"address": "198.51.100.7"}, {"address": "198.51.100.8"}]),
    ("DELETE", "/api/v1/bans/198.51.100.9", None),
    ("POST", "/api/v1/whitelist", {"network": "198.51.100.32/27"}),
    ("DELETE", "/api/v1/whitelist/198.51.100.64%2F27", None),
    ("DELETE", "/api/v1/whitelist?network=198.51.100.64/27", None),
]


@pytest.mark.parametrize("method, path, body", WRITES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "}])
def test_writes_without_the_right_token_get_401_and_change_nothing(redis_url, method, path, body, headers):
    async def steps(client, redis):
        # State a write could change: a ban to lift and a whitelist entry to remove.
        await client.post("/api/v1/bans", json={"address": "198.51.100.9"}, headers=AUTH)
        await client.post("/api/v1/whitelist", json={"network": "198.51.100.64/27"}, headers=AUTH)
        before = {k: await redis.dump(k) for k in await redis.keys("*")}
        r = await client.request(method, path, json=body, headers=headers)
        after = {k: await redis.dump(k) for k in await redis.keys("*")}
        return r.status, r.headers.get("WWW-Authenticate"), before, after
    status, challenge, before, after = call(redis_url, steps)
    assert status == 401 and challenge.startswith("Bearer")
    assert after == before


def test_a_server_without_a_token_refuses_every_write(redis_url):
    async def go():
        cfg = settings(redis_url)
        cfg.config.api.token = None
        api = Api(cfg)
        async with TestClient(TestServer(api.app())) as client:
            statuses = [(await client.request(m, p, json=b, headers={"Authorization": "Bearer "})).status
                        for m, p, b in WRITES]
            return statuses, await api.client.keys("*")
    statuses, keys = asyncio.run(go())
    assert set(statuses) == {401} and keys == []


@pytest.mark.parametrize("body, status, field", [
    ({"address": "198.51.100.300"}, 422, "address"),
    ({"address": "198.51.100.1/24"}, 422, "address"),
    ({"address": "198.51.100.7", "duration": "soon"}, 422, "duration"),
    ({"adress": "198.51.100.7"}, 422, "adress"),
    ([{"address": "198.51.100.7"}, {"address": "nope"}], 422, "[1].address"),
    ({"address": "198.51.100.7", "duration": 0}, 422, "duration"),
    ({"address": "198.51.100.7", "duration": -2}, 422, "duration"),
    ({"address": "198.51.100.7", "duration": True}, 422, "duration"),
    ({"address": 7}, 422, "address"),
    ({"address": "198.51.100.7", "reason": "x" * 1001}, 422, "reason"),
    ([], 422, "body"),
    ("198.51.100.7", 422, "body"),
    ({"address": "127.0.0.1"}, 409, "loopback"),
    ({"address": "::1"}, 409, "loopback"),
    ({"address": "fe80::1"}, 409, "link-local"),
    ({"address": "198.51.100.0/24"}, 409, "whitelisted"),
    ({"address": "198.51.100.200"}, 409, "whitelisted"),
    # Forms that used to slip past the checks: mapped networks, networks around special ranges, zones.
    ({"address": "::ffff:127.0.0.1/128"}, 409, "loopback"),
    ({"address": "::ffff:198.51.100.200/128"}, 409, "whitelisted"),
    ({"address": "169.0.0.0/8"}, 409, "link-local"),
    ({"address": "8000::/1"}, 409, "link-local"),
    ({"address": "2001:db8::2%a\r\nBcc: x@example.org"}, 422, "address"),
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
        r = await client.post("/api/v1/bans", data=b"\xff\x00not json",
                              headers={**AUTH, "Content-Type": "application/json"})
        return r.status
    assert call(redis_url, steps) == 422


def test_unban_publishes_a_decision_and_removes_the_ban(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json={"address": "198.51.100.7"}, headers=AUTH)
        r = await client.delete("/api/v1/bans/198.51.100.7", headers=AUTH)
        listed = await (await client.get("/api/v1/bans")).json()
        missing = await client.get("/api/v1/bans/198.51.100.7")
        return await r.json(), listed, missing.status, await decisions(redis)
    body, listed, after, sent = call(redis_url, steps)
    assert body == {"unbanned": "198.51.100.7", "was_active": True, "covered_by": []}
    # Gone from the bans in force; its record stays readable as a past ban.
    assert listed["bans"] == [] and after == 200
    assert [d.action for d in sent] == ["ban", "unban"]


def test_a_manual_ban_record_and_count_expire(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json={"address": "198.51.100.7", "duration": "1h"}, headers=AUTH)
        keys = Keys("t:")
        return await redis.ttl(keys.ban("198.51.100.7")), await redis.ttl(keys.ban_count("198.51.100.7"))
    record_ttl, count_ttl = call(redis_url, steps)
    assert 3600 + 86400 - 10 < record_ttl <= 3600 + 86400 + 1
    assert 30 * 86400 - 10 < count_ttl <= 30 * 86400


def test_a_slash_32_and_its_address_are_one_ban(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json={"address": "198.51.100.7/32"}, headers=AUTH)
        created = await r.json()
        r = await client.delete("/api/v1/bans/198.51.100.7", headers=AUTH)
        return created, await r.json(), await (await client.get("/api/v1/bans")).json()
    created, unbanned, listed = call(redis_url, steps)
    assert created["banned"] == ["198.51.100.7"]
    assert unbanned == {"unbanned": "198.51.100.7", "was_active": True, "covered_by": []} and listed["bans"] == []


def test_no_permissive_cors_headers(redis_url):
    async def steps(client, redis):
        r = await client.get("/api/v1/bans", headers={"Origin": "http://evil.example"})
        return dict(r.headers)
    headers = call(redis_url, steps)
    assert not any(h.lower().startswith("access-control-") for h in headers)


def test_a_network_whitelisted_while_a_ban_is_written_lifts_it(redis_url, monkeypatch):
    """Another api whitelists the network after this call checked the whitelist, before it wrote."""
    from pyfilter.api import manual

    write = manual.ban_all

    async def whitelisted_meanwhile(client, keys, *args):
        await client.sadd(keys.whitelist, "198.51.100.0/27")
        return await write(client, keys, *args)
    monkeypatch.setattr(manual, "ban_all", whitelisted_meanwhile)

    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json=[{"address": "198.51.100.10"}, {"address": "198.51.100.60"}],
                              headers=AUTH)
        listed = await (await client.get("/api/v1/bans")).json()
        return r.status, (await r.json())["error"], [b["address"] for b in listed["bans"]], await decisions(redis)
    status, error, active, sent = call(redis_url, steps)
    assert status == 409 and "198.51.100.10" in error and "whitelisted (198.51.100.0/27)" in error
    assert active == ["198.51.100.60"]
    assert [(d.action, d.address) for d in sent] == [
        ("ban", "198.51.100.10"), ("ban", "198.51.100.60"), ("unban", "198.51.100.10")]


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


def test_address_whitelisted_through_the_api_cannot_be_banned(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/whitelist", json={"network": "198.51.100.32/28"}, headers=AUTH)
        r = await client.post("/api/v1/bans", json={"address": "198.51.100.37"}, headers=AUTH)
        return r.status, (await r.json())["error"], await decisions(redis)
    status, error, sent = call(redis_url, steps)
    assert status == 409 and "whitelisted (198.51.100.32/28)" in error and sent == []


def test_permanent_ban_and_network_ban(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/bans", json=[{"address": "2001:db8:1::/64", "duration": -1},
                                                    {"address": "198.51.100.9", "duration": 90}],
                              headers=AUTH)
        assert r.status == 201, await r.text()
        net = await (await client.get("/api/v1/bans/2001:db8:1::%2F64")).json()
        one = await (await client.get("/api/v1/bans/198.51.100.9")).json()
        inside = await client.delete("/api/v1/bans/2001:db8:1::5", headers=AUTH)
        gone = await client.delete("/api/v1/bans/2001:db8:1::%2F64", headers=AUTH)
        return net, one, await inside.json(), await gone.json(), await decisions(redis)
    net, one, inside, gone, sent = call(redis_url, steps)
    assert net["duration"] == -1 and net["expires_at"] is None and net["active"]
    assert one["expires_at"] - one["banned_at"] == 90
    # An address inside a banned network: nothing of its own to lift, and the answer says what blocks it.
    assert inside == {"unbanned": "2001:db8:1::5", "was_active": False, "covered_by": ["2001:db8:1::/64"]}
    assert gone == {"unbanned": "2001:db8:1::/64", "was_active": True, "covered_by": []}
    assert [(d.action, d.address) for d in sent][-1] == ("unban", "2001:db8:1::/64")


def test_repeat_manual_ban_counts_up(redis_url):
    async def steps(client, redis):
        for _ in range(3):
            await client.post("/api/v1/bans", json={"address": "198.51.100.9"}, headers=AUTH)
        return await (await client.get("/api/v1/bans/198.51.100.9")).json()
    detail = call(redis_url, steps)
    assert detail["ban_count"] == 3 and len(detail["history"]) == 3


def test_never_banned_address_is_404_and_bad_address_422(redis_url):
    async def steps(client, redis):
        a = await client.get("/api/v1/bans/198.51.100.77")
        b = await client.get("/api/v1/bans/not-an-ip")
        c = await client.delete("/api/v1/bans/not-an-ip", headers=AUTH)
        return a.status, b.status, (await b.json())["error"], c.status
    assert call(redis_url, steps) == (404, 422, "address: not an IP address: 'not-an-ip'", 422)


def test_page_and_api_carry_security_headers(redis_url):
    async def steps(client, redis):
        return [dict((await client.get(p)).headers) for p in ("/", "/api/v1/bans", "/static/app.js")]
    for headers in call(redis_url, steps):
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert not any(h.lower().startswith("access-control-") for h in headers)


def test_metrics_show_requests_active_bans_and_pipeline_lag(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json={"address": "198.51.100.7"}, headers=AUTH)
        batch = messages.LineBatch(host="h", source="auth", lines=[messages.Line("a:1", "x")],
                                   read_at=0.0)
        await redis.sadd(Keys("t:").hosts, "h")
        for _ in range(3):
            await redis.xadd(Keys("t:").lines("h"), {"m": messages.encode(batch)})
        r = await client.get("/metrics")
        return r.status, r.headers["Content-Type"], await r.text()
    status, content_type, text = call(redis_url, steps)
    assert status == 200 and content_type.startswith("text/plain")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["pyfilter_active_bans"] == 1
    assert values["pyfilter_lines_stream_length"] == 3
    assert values['pyfilter_api_requests_total{method="POST",status="201"}'] >= 1


def test_a_redis_that_stops_answering_gets_a_503_not_a_request_that_waits(tmp_path, monkeypatch):
    """A primary lost without closing its connections (a frozen VM, a host gone) would hold
    each request until the kernel gives up on the connection: the api's socket timeout
    ends it with a 503, and the api answers again once Redis does."""
    monkeypatch.setattr(state, "SOCKET_TIMEOUT", 0.5)
    proc, url = start_redis(tmp_path)

    async def steps(client, redis):
        assert (await client.get("/api/v1/bans", headers=AUTH)).status == 200  # connected
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # Not a timing check: without a socket timeout the request never ends.
            frozen = await asyncio.wait_for(client.get("/api/v1/bans", headers=AUTH), 60)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        again = await client.get("/api/v1/bans", headers=AUTH)
        return frozen.status, (await frozen.json())["error"], again.status
    try:
        status, error, again = call(url, steps)
    finally:
        proc.terminate()
        proc.wait(10)
    assert status == 503 and "redis unreachable" in error
    assert again == 200
