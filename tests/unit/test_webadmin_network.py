"""The web admin page shows a network the ledger banned with the member bans that filled it
(a real headless Chromium, a real API process and Redis, bans written by the detector's windows)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.request

import pytest
import redis.asyncio as aioredis

from pyfilter.common.config import NetworkConfig, Seconds
from pyfilter.common.network import Widening
from pyfilter.detector.windows import Observed, Windows
from tests.unit.apiserver import start_api
from tests.unit.apisupport import CONFIG_WHITELIST, PREFIX, rule
from tests.unit.test_webadmin import expect, page  # noqa: F401  (the browser fixture)

MEMBERS = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]


@pytest.fixture
def server(tmp_path, redis_url):
    now = time.time()

    async def seed():
        client = aioredis.from_url(redis_url)
        widening = Widening(NetworkConfig(enabled=True, threshold=3, ipv4=[26], bantime=Seconds(3600)))
        # As the detector judges: the whitelisted /25 is next door, not inside this /26.
        widening.judge_with(set(), [ipaddress.ip_network(CONFIG_WHITELIST)])
        windows = Windows(client, PREFIX, {"sshd": rule(window="instant", bantime=Seconds(7200))}, widening)
        await windows.record([Observed("sshd", a, "web-1", now, f"l:{a}", f"Failed password from {a}")
                              for a in MEMBERS], now)
        await client.aclose()
    asyncio.run(seed())
    proc, url = start_api(tmp_path, redis_url)
    yield url
    proc.terminate()
    proc.wait(10)


def test_a_network_ban_shows_its_members_and_the_bans_inside_it(server, page):  # noqa: F811
    url = server
    with urllib.request.urlopen(f"{url}/api/v1/bans/198.51.100.0%2F26", timeout=10) as answer:
        shown = json.load(answer)
    assert (shown["rule"], shown["window"], shown["active"]) == ("network", "network", True)
    assert sorted(shown["evidence"]) == MEMBERS

    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url + "/")
    row = page.locator('#bans tr[data-address="198.51.100.0/26"]')
    expect(row).to_contain_text("network")
    expect(row).to_contain_text("3 banned addresses of 198.51.100.0/26")
    row.locator("button", has_text="Details").click()
    details = page.locator("#bans tr.details")
    expect(details).to_contain_text("Banned as a network: 3 member ban(s)")
    expect(details.locator("[data-member]")).to_have_count(3)

    details.locator('[data-member="198.51.100.2"]').click()
    expect(page.locator("#bans tbody tr:not(.details)")).to_have_count(1)
    expect(page.locator('#bans tr[data-address="198.51.100.2"]')).to_contain_text("sshd")

    page.click("#search-clear")  # its details stay open
    page.locator('[data-inside="198.51.100.0/26"]').click()
    expect(page.locator('#search-form input[name="prefix"]')).to_have_value("198.51.100.0/26")
    expect(page.locator("#bans tbody tr:not(.details)")).to_have_count(4)  # the network and its members
    assert problems == []
