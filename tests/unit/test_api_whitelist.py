"""The whitelist through the API: listing both parts, adding lifts bans, removing.

Every test runs on a single Redis and on a 3-primary Redis Cluster."""

from __future__ import annotations

import time

import pytest

from tests.unit.apisupport import AUTH, CONFIG_WHITELIST, call, decisions, detector_ban


@pytest.fixture
def redis_url(any_redis_url):
    return any_redis_url


def test_whitelist_lists_config_entries_read_only_and_operator_entries(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/whitelist", json={"network": "198.51.100.0/26", "reason": "office"},
                              headers=AUTH)
        return r.status, await (await client.get("/api/v1/whitelist")).json()
    status, listed = call(redis_url, steps)
    assert status == 201
    entries = {e["network"]: e for e in listed["entries"]}
    assert entries[CONFIG_WHITELIST]["source"] == "config" and entries[CONFIG_WHITELIST]["read_only"]
    office = entries["198.51.100.0/26"]
    assert office["source"] == "api" and not office["read_only"] and office["reason"] == "office"
    assert office["added_at"] == pytest.approx(time.time(), abs=60)


def test_whitelisting_a_network_lifts_every_ban_inside_it_on_every_host(redis_url):
    async def steps(client, redis):
        now = time.time()
        await detector_ban(redis, "198.51.100.71", now - 5)
        await detector_ban(redis, "198.51.100.90", now - 4)
        await detector_ban(redis, "198.51.100.7", now - 3)
        await client.post("/api/v1/bans", json={"address": "198.51.100.64/27"}, headers=AUTH)
        r = await client.post("/api/v1/whitelist", json={"network": "198.51.100.64/28"}, headers=AUTH)
        again = await client.post("/api/v1/whitelist", json={"network": "198.51.100.64/28"}, headers=AUTH)
        listed = await (await client.get("/api/v1/bans")).json()
        return await r.json(), again.status, (await again.json())["unbanned"], listed, await decisions(redis)
    added, again_status, again_unbanned, listed, sent = call(redis_url, steps)
    # The /27 ban overlaps the whitelisted /28, so it is lifted too.
    assert added["added"] and added["unbanned"] == ["198.51.100.64/27", "198.51.100.71"]
    assert "lifted 2 active ban(s)" in added["message"]
    assert again_status == 200 and again_unbanned == []
    assert sorted(b["address"] for b in listed["bans"]) == ["198.51.100.7", "198.51.100.90"]
    unbans = [(d.address, d.reason) for d in sent if d.action == "unban"]
    assert unbans == [("198.51.100.64/27", "whitelisted (198.51.100.64/28)"),
                      ("198.51.100.71", "whitelisted (198.51.100.64/28)")]


def test_remove_by_encoded_path_or_query_and_config_entries_stay(redis_url):
    async def steps(client, redis):
        for net in ("198.51.100.0/26", "2001:db8::/48"):
            await client.post("/api/v1/whitelist", json={"network": net}, headers=AUTH)
        a = await client.delete("/api/v1/whitelist/198.51.100.0%2F26", headers=AUTH)
        b = await client.delete("/api/v1/whitelist?network=2001:db8::/48", headers=AUTH)
        c = await client.delete("/api/v1/whitelist?network=2001:db8::/48", headers=AUTH)
        d = await client.delete("/api/v1/whitelist/198.51.100.128%2F25", headers=AUTH)
        e = await client.delete("/api/v1/whitelist", headers=AUTH)
        listed = await (await client.get("/api/v1/whitelist")).json()
        banned = await client.post("/api/v1/bans", json={"address": "198.51.100.9"}, headers=AUTH)
        # A configured network the api also holds: removing the copy would change nothing.
        await redis.sadd("t:whitelist", CONFIG_WHITELIST)
        f = await client.delete(f"/api/v1/whitelist?network={CONFIG_WHITELIST}", headers=AUTH)
        return [(r.status, await r.json()) for r in (a, b, c, d, e, f)], listed, banned.status
    results, listed, banned = call(redis_url, steps)
    assert results[0] == (200, {"removed": "198.51.100.0/26"})
    assert results[1] == (200, {"removed": "2001:db8::/48"})
    assert results[2][0] == 404
    assert results[3][0] == 409 and "configuration file" in results[3][1]["error"]
    assert results[4][0] == 422 and results[4][1]["error"].startswith("network:")
    assert results[5][0] == 409 and "configuration file" in results[5][1]["error"]
    assert [e["network"] for e in listed["entries"]] == [CONFIG_WHITELIST]
    assert banned == 201  # no longer whitelisted: banning works again at once


@pytest.mark.parametrize("body, field", [
    ({"network": "198.51.100.1/24"}, "network"),
    ({"network": "nope"}, "network"),
    ({"net": "198.51.100.0/26"}, "net"),
    ({"network": "198.51.100.0/26", "reason": 5}, "reason"),
    ({}, "network"),
])
def test_bad_whitelist_entries_are_422_and_change_nothing(redis_url, body, field):
    async def steps(client, redis):
        r = await client.post("/api/v1/whitelist", json=body, headers=AUTH)
        return r.status, (await r.json())["error"], await redis.keys("*")
    status, error, keys = call(redis_url, steps)
    assert status == 422 and field in error and keys == []
