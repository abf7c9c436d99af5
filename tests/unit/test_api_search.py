"""Reading bans through the API: search, one address's story, statistics, GeoIP, OpenAPI."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest


from tests.unit.apisupport import AUTH, call, detector_ban
from tests.unit.test_geo import write_db

DAY = 86400


async def seed(client, redis, now: float):
    """Three detector bans in force, one expired days ago, one manual, all relative to `now`."""
    await detector_ban(redis, "198.51.100.7", now - 60, "sshd", "web-1")
    await detector_ban(redis, "198.51.100.20", now - 30, "nginx-http-auth", "web-2")
    await detector_ban(redis, "2001:db8::5", now - 10, "sshd", "web-2")
    await detector_ban(redis, "198.51.100.100", now - 3 * DAY, "postfix", "mail-1")
    r = await client.post("/api/v1/bans", json={"address": "198.51.100.40", "reason": "seen in a report"},
                          headers=AUTH)
    assert r.status == 201


async def addresses(client, query: str = "") -> list[str]:
    r = await client.get(f"/api/v1/bans{query}")
    assert r.status == 200, await r.text()
    return [b["address"] for b in (await r.json())["bans"]]


def test_filters_narrow_the_bans_in_force(redis_url):
    now = time.time()

    async def steps(client, redis):
        await seed(client, redis, now)
        return {q: await addresses(client, q) for q in [
            "", "?rule=sshd", "?host=web-2", "?prefix=198.51.100.0/27", "?prefix=2001:db8::/32",
            "?address=198.51.100.7", "?address=198.51.100.77", "?country=unknown", "?country=NL",
            f"?since={now - 45}", f"?until={now - 45}", "?rule=sshd&host=web-2",
        ]}
    got = call(redis_url, steps)
    # Newest first; the expired ban is not in force.
    assert got[""] == ["198.51.100.40", "2001:db8::5", "198.51.100.20", "198.51.100.7"]
    assert got["?rule=sshd"] == ["2001:db8::5", "198.51.100.7"]
    assert got["?host=web-2"] == ["2001:db8::5", "198.51.100.20"]
    assert got["?prefix=198.51.100.0/27"] == ["198.51.100.7", "198.51.100.20"]  # by address
    assert got["?prefix=2001:db8::/32"] == ["2001:db8::5"]
    assert got["?address=198.51.100.7"] == ["198.51.100.7"]
    assert got["?address=198.51.100.77"] == []
    assert len(got["?country=unknown"]) == 4 and got["?country=NL"] == []
    assert got[f"?since={now - 45}"] == ["198.51.100.40", "2001:db8::5", "198.51.100.20"]
    assert got[f"?until={now - 45}"] == ["198.51.100.7"]
    assert got["?rule=sshd&host=web-2"] == ["2001:db8::5"]


def test_all_includes_history_and_marks_what_is_in_force(redis_url):
    now = time.time()

    async def steps(client, redis):
        await seed(client, redis, now)
        await client.delete("/api/v1/bans/198.51.100.7", headers=AUTH)
        r = await (await client.get("/api/v1/bans?all=1")).json()
        since = datetime.fromtimestamp(now - 4 * DAY, timezone.utc).isoformat()
        until = (datetime.fromtimestamp(now - 2 * DAY, timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        old = await addresses(client, f"?all=true&since={since}&until={until}")
        return r, old
    listed, old = call(redis_url, steps)
    assert listed["total"] == 5
    state = {b["address"]: b["active"] for b in listed["bans"]}
    assert state == {"198.51.100.40": True, "2001:db8::5": True, "198.51.100.20": True,
                     "198.51.100.7": False, "198.51.100.100": False}
    assert old == ["198.51.100.100"]


def test_pagination_pages_through_every_ban_once(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json=[{"address": f"198.51.100.{i}"} for i in range(1, 121)],
                          headers=AUTH)
        pages, query = [], "limit=50"
        while query:
            pages.append(await (await client.get(f"/api/v1/bans?{query}")).json())
            query = pages[-1]["next"] and f"limit=50&cursor={pages[-1]['next']}"
        by_prefix, query = [], "limit=7&prefix=198.51.100.0/25"
        while query:
            by_prefix.append(await (await client.get(f"/api/v1/bans?{query}")).json())
            query = by_prefix[-1]["next"] and f"limit=7&prefix=198.51.100.0/25&cursor={by_prefix[-1]['next']}"
        default = await (await client.get("/api/v1/bans")).json()
        return pages, by_prefix, default
    pages, by_prefix, default = call(redis_url, steps)
    assert [len(p["bans"]) for p in pages[:3]] == [50, 50, 20] and sum(len(p["bans"]) for p in pages) == 120
    assert {p["total"] for p in pages} == {120}
    seen = [b["address"] for p in pages for b in p["bans"]]
    assert len(set(seen)) == 120
    in_prefix = [b["address"] for p in by_prefix for b in p["bans"]]
    assert in_prefix == [f"198.51.100.{i}" for i in range(1, 121)]  # by address, each once
    assert (default["limit"], len(default["bans"])) == (50, 50) and default["next"]


def test_a_cursor_of_another_search_is_refused(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json=[{"address": f"198.51.100.{i}"} for i in range(1, 4)],
                          headers=AUTH)
        first = await (await client.get("/api/v1/bans?limit=1")).json()
        r = await client.get(f"/api/v1/bans?limit=1&rule=sshd&cursor={first['next']}")
        return r.status, (await r.json())["error"]
    status, error = call(redis_url, steps)
    assert status == 422 and error.startswith("cursor:")


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("cursor=nope", "cursor"),
    ("prefix=198.51.100.1/24", "prefix"), ("address=nope", "address"), ("since=yesterday", "since"),
    ("until=nan", "until"), ("all=maybe", "all"),
    ("address=fe80::1%25eth0", "address"),
])
def test_bad_search_parameters_are_422_naming_the_field(redis_url, query, field):
    async def steps(client, redis):
        r = await client.get(f"/api/v1/bans?{query}")
        return r.status, (await r.json())["error"]
    status, error = call(redis_url, steps)
    assert status == 422 and error.startswith(f"{field}:")


def test_times_beyond_any_stream_id_are_clamped_not_a_server_error(redis_url):
    async def steps(client, redis):
        far = await client.get("/api/v1/bans?since=1e17&all=1")
        before = await client.get("/api/v1/bans?until=-5&all=1")
        return far.status, (await far.json())["bans"], before.status, (await before.json())["bans"]
    assert call(redis_url, steps) == (200, [], 200, [])


def test_one_address_shows_why_when_where_and_its_past_bans(redis_url):
    now = time.time()

    async def steps(client, redis):
        await detector_ban(redis, "198.51.100.7", now - 7200, "sshd", "web-1", bantime=60)
        await detector_ban(redis, "198.51.100.7", now - 5, "sshd", "web-3", bantime=60)
        return await (await client.get("/api/v1/bans/198.51.100.7")).json()
    one = call(redis_url, steps)
    assert one["active"] is True and one["rule"] == "sshd" and one["host"] == "web-3"
    assert one["origin"] == "detector" and one["failures"] == 3
    assert one["lines"][0] == "Failed password for root from 198.51.100.7 port 4000 ssh2"
    assert one["first_failure"] == pytest.approx(now - 8) and one["last_failure"] == pytest.approx(now - 6)
    assert one["ban_count"] == 2 and one["duration"] == 60 and one["country"] is None
    assert [(h["host"], h["active"]) for h in one["history"]] == [("web-3", True), ("web-1", False)]


def test_stats_count_days_countries_rules_hosts_and_lag(redis_url, tmp_path):
    now = time.time()
    db = write_db(tmp_path / "c.mmdb", "GeoLite2-Country", {
        "198.51.100.0/27": {"country": {"iso_code": "NL"}}, "198.51.100.32/27": {"country": {"iso_code": "FR"}}})

    async def steps(client, redis):
        await seed(client, redis, now)
        await redis.sadd("t:hosts", "web-1", "web-2")
        await redis.xgroup_create("t:lines:web-1", "detect", id="0", mkstream=True)
        await redis.xadd("t:lines:web-1", {"m": b"x"})
        await redis.set("t:decisions-read:web-1", "0-0")  # web-2's enforcer has not read yet
        return await (await client.get("/api/v1/stats?days=5")).json()
    stats = call(redis_url, steps, country_db=db)
    today = datetime.fromtimestamp(now, timezone.utc).date()
    assert stats["total_bans"] == 5 and stats["active_bans"] == 4 and stats["days"] == 5
    assert [d["day"] for d in stats["bans_per_day"]] == [(today - timedelta(days=i)).isoformat()
                                                         for i in range(4, -1, -1)]
    by_day = {d["day"]: d["count"] for d in stats["bans_per_day"]}
    assert by_day[today.isoformat()] == 4
    assert by_day[(today - timedelta(days=3)).isoformat()] == 1
    assert stats["bans_in_range"] == 5
    assert stats["latest_ban"]["address"] == "198.51.100.40" and stats["latest_ban"]["active"]
    assert stats["latest_ban"]["country"] == "FR"
    assert {c["name"]: c["count"] for c in stats["top_countries"]} == {"NL": 2, "unknown": 2, "FR": 1}
    assert stats["top_rules"][0] == {"name": "sshd", "count": 2}
    assert {h["name"] for h in stats["top_hosts"]} == {"web-1", "web-2", "mail-1", "api-host"}
    pipe = stats["pipeline"]
    assert pipe["lines_length"] == 1 and pipe["detect_pending"] == 0 and pipe["detect_lag"] == 1
    assert pipe["enforcers"] == [{"host": "web-1", "pending": 0, "lag": 5}]


def test_stats_of_an_empty_deployment_and_bad_days(redis_url):
    async def steps(client, redis):
        empty = await (await client.get("/api/v1/stats")).json()
        bad = [(await client.get(f"/api/v1/stats?days={d}")).status for d in ("0", "367", "x")]
        return empty, bad
    empty, bad = call(redis_url, steps)
    assert empty["total_bans"] == 0 and empty["latest_ban"] is None and len(empty["bans_per_day"]) == 10
    assert empty["pipeline"] == {"lines_length": 0, "detect_pending": 0, "detect_lag": None, "enforcers": []}
    assert bad == [422, 422, 422]


def test_geoip_country_written_for_manual_bans_and_looked_up_for_detector_bans(redis_url, tmp_path):
    now = time.time()
    country = write_db(tmp_path / "c.mmdb", "GeoLite2-Country", {"198.51.100.0/24": {"country": {"iso_code": "NL"}}})
    asn = write_db(tmp_path / "a.mmdb", "GeoLite2-ASN", {
        "198.51.100.0/24": {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Hosting"}})

    async def steps(client, redis):
        await client.post("/api/v1/bans", json={"address": "198.51.100.9"}, headers=AUTH)
        await detector_ban(redis, "198.51.100.7", now - 5)
        from pyfilter.common import bans
        from pyfilter.common.keys import Keys
        stored = await bans.record(redis, Keys("t:"), "198.51.100.9")
        detected = await bans.record(redis, Keys("t:"), "198.51.100.7")
        shown = await (await client.get("/api/v1/bans/198.51.100.7")).json()
        nl = await addresses(client, "?country=nl")
        return stored, detected, shown, nl
    stored, detected, shown, nl = call(redis_url, steps, country_db=country, asn_db=asn)
    assert stored.country == "NL"  # written with the manual ban
    assert detected.country is None  # the detector does not look up
    assert (shown["country"], shown["asn"], shown["as_org"]) == ("NL", 64500, "Example Hosting")
    assert nl == ["198.51.100.9", "198.51.100.7"]


def test_openapi_document_describes_every_route(redis_url):
    async def steps(client, redis):
        r = await client.get("/api/v1/openapi.json")
        return r.status, await r.json()
    status, doc = call(redis_url, steps)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/api/v1/bans", "/api/v1/bans/{address}", "/api/v1/whitelist", "/api/v1/whitelist/{network}",
            "/api/v1/stats"} <= set(doc["paths"])
    assert doc["paths"]["/api/v1/bans"]["post"]["security"] == [{"bearer": []}]
    ban = doc["components"]["schemas"]["Ban"]
    assert {"address", "rule", "host", "lines", "country", "asn", "active", "expires_at"} <= set(ban["properties"])
    assert "history" in doc["components"]["schemas"]["BanDetail"]["properties"]


def test_a_prefix_search_holds_the_networks_inside_it_not_a_wider_one_starting_there(redis_url):
    async def steps(client, redis):
        await client.post("/api/v1/bans", json=[{"address": a} for a in (
            "198.51.100.0/26", "198.51.100.0/28", "198.51.100.5", "198.51.100.40")], headers=AUTH)
        return await addresses(client, "?prefix=198.51.100.0/27")
    assert call(redis_url, steps) == ["198.51.100.0/28", "198.51.100.5"]
