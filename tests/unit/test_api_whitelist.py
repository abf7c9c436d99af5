"""The whitelist through the API: listing both parts, adding lifts bans, removing."""

from __future__ import annotations

import time

import pytest

from tests.unit.apisupport import AUTH, CONFIG_WHITELIST, call, decisions, detector_ban


def test_whitelist_lists_config_entries_read_only_and_operator_entries(redis_url):
    async def steps(client, redis):
        r = await client.post("/api/v1/whitelist", json={"network": "203.0.113.0/24", "reason": "office"},
                              headers=AUTH)
        return r.status, await (await client.get("/api/v1/whitelist")).json()
    status, listed = call(redis_url, steps)
    assert status == 201
    entries = {e["network"]: e for e in listed["entries"]}
    assert entries[CONFIG_WHITELIST]["source"] == "config" and entries[CONFIG_WHITELIST]["read_only"]
    office = entries["203.0.113.0/24"]
    assert office["source"] == "api" and not office["read_only"] and office["reason"] == "office"
    assert office["added_at"] == pytest.approx(time.time(), abs=60)


def test_whitelisting_a_network_lifts_every_ban_inside_it_on_every_host(redis_url):
    async def steps(client, redis):
        now = time.time()
        await detector_ban(redis, "203.0.113.7", now - 5)
        await detector_ban(redis, "203.0.113.200", now - 4)
        await detector_ban(redis, "198.51.100.7", now - 3)
        await client.post("/api/v1/bans", json={"address": "203.0.112.0/23"}, headers=AUTH)
        r = await client.post("/api/v1/whitelist", json={"network": "203.0.113.0/25"}, headers=AUTH)
        again = await client.post("/api/v1/whitelist", json={"network": "203.0.113.0/25"}, headers=AUTH)
        listed = await (await client.get("/api/v1/bans")).json()
        return await r.json(), again.status, (await again.json())["unbanned"], listed, await decisions(redis)
    added, again_status, again_unbanned, listed, sent = call(redis_url, steps)
    # The /23 ban overlaps the whitelisted /25, so it is lifted too.
    assert added["added"] and added["unbanned"] == ["203.0.112.0/23", "203.0.113.7"]
    assert "lifted 2 active ban(s)" in added["message"]
    assert again_status == 200 and again_unbanned == []
    assert sorted(b["address"] for b in listed["bans"]) == ["198.51.100.7", "203.0.113.200"]
    unbans = [(d.address, d.reason) for d in sent if d.action == "unban"]
    assert unbans == [("203.0.112.0/23", "whitelisted (203.0.113.0/25)"),
                      ("203.0.113.7", "whitelisted (203.0.113.0/25)")]


def test_remove_by_encoded_path_or_query_and_config_entries_stay(redis_url):
    async def steps(client, redis):
        for net in ("203.0.113.0/24", "2001:db8::/48"):
            await client.post("/api/v1/whitelist", json={"network": net}, headers=AUTH)
        a = await client.delete("/api/v1/whitelist/203.0.113.0%2F24", headers=AUTH)
        b = await client.delete("/api/v1/whitelist?network=2001:db8::/48", headers=AUTH)
        c = await client.delete("/api/v1/whitelist?network=2001:db8::/48", headers=AUTH)
        d = await client.delete("/api/v1/whitelist/198.51.100.128%2F25", headers=AUTH)
        e = await client.delete("/api/v1/whitelist", headers=AUTH)
        listed = await (await client.get("/api/v1/whitelist")).json()
        banned = await client.post("/api/v1/bans", json={"address": "203.0.113.9"}, headers=AUTH)
        return [(r.status, await r.json()) for r in (a, b, c, d, e)], listed, banned.status
    results, listed, banned = call(redis_url, steps)
    assert results[0] == (200, {"removed": "203.0.113.0/24"})
    assert results[1] == (200, {"removed": "2001:db8::/48"})
    assert results[2][0] == 404
    assert results[3][0] == 409 and "configuration file" in results[3][1]["error"]
    assert results[4][0] == 422 and results[4][1]["error"].startswith("network:")
    assert [e["network"] for e in listed["entries"]] == [CONFIG_WHITELIST]
    assert banned == 201  # no longer whitelisted: banning works again at once


@pytest.mark.parametrize("body, field", [
    ({"network": "203.0.113.1/24"}, "network"),
    ({"network": "nope"}, "network"),
    ({"net": "203.0.113.0/24"}, "net"),
    ({"network": "203.0.113.0/24", "reason": 5}, "reason"),
    ({}, "network"),
])
def test_bad_whitelist_entries_are_422_and_change_nothing(redis_url, body, field):
    async def steps(client, redis):
        r = await client.post("/api/v1/whitelist", json=body, headers=AUTH)
        return r.status, (await r.json())["error"], await redis.keys("*")
    status, error, keys = call(redis_url, steps)
    assert status == 422 and field in error and keys == []
