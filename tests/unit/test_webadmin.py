"""The web admin page in a real headless Chromium, against a real API process and Redis.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` Python
package; playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from pyfilter.common import messages
from pyfilter.common.keys import Keys
from tests.unit.apiserver import start_api
from tests.unit.apisupport import PREFIX, TOKEN, account_bans, detector_ban
from tests.unit.test_geo import write_db

import playwright.sync_api as playwright_api  # noqa: E402  (a test dependency: `make dev`)
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path("/tmp/pyfilter-webadmin.png")
DAY = 86400


@pytest.fixture
def server(tmp_path, redis_url):
    db = write_db(tmp_path / "country.mmdb", "GeoLite2-Country", {
        "198.51.100.0/27": {"country": {"iso_code": "NL"}},
        "198.51.100.32/27": {"country": {"iso_code": "BR"}},
    })
    now = time.time()

    async def seed():
        client = aioredis.from_url(redis_url)
        await detector_ban(client, "198.51.100.7", now - 2 * DAY - 60, "sshd", "web-1", bantime=-1)
        await detector_ban(client, "198.51.100.8", now - DAY, "sshd", "web-2", bantime=-1)
        await detector_ban(client, "198.51.100.41", now - 120, "nginx-http-auth", "web-1")
        await detector_ban(client, "2001:db8::7", now - 60, "postfix", "mail-1")
        await client.aclose()
    asyncio.run(seed())
    proc, url = start_api(tmp_path, redis_url, country_db=db)
    yield url, redis_url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def page(tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as p:
        # A fresh profile folder per test: no state carried between runs.
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
            viewport={"width": 1400, "height": 1300},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield context.new_page()
        context.close()


def active(redis_url: str) -> set[str]:
    return {a.decode() for a in redis.Redis.from_url(redis_url).zrange(Keys(PREFIX).active_bans, 0, -1)}


def test_dashboard_login_ban_search_unban(server, page):
    url, redis_url = server
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))

    page.goto(url + "/")
    # The dashboard, from the seeded bans.
    expect(page.locator("#total-bans")).to_have_text("4")
    expect(page.locator("#range-bans")).to_have_text("4")
    expect(page.locator("#active-bans")).to_have_text("4")
    expect(page.locator("#latest-ban")).to_contain_text("2001:db8::7")
    expect(page.locator("#chart-days rect.bar")).to_have_count(10)
    counts = [int(t) for t in page.locator("#chart-days text.count").all_text_contents()]
    assert sum(counts) == 4 and counts[-1] == 2
    expect(page.locator('#chart-countries rect[data-country="NL"]')).to_have_count(1)
    expect(page.locator('#chart-countries rect[data-country="unknown"]')).to_have_count(1)
    expect(page.locator("#bans tbody tr")).to_have_count(4)
    expect(page.locator('#bans tr[data-address="198.51.100.7"]')).to_contain_text("NL")

    # Details: why, and the log lines that led to the ban.
    page.locator('#bans tr[data-address="198.51.100.7"] button', has_text="Details").click()
    expect(page.locator("#bans tr.details")).to_contain_text("Failed password for root from 198.51.100.7")
    expect(page.locator("#bans tr.details")).to_contain_text("3 failures of sshd")

    # Writes need a login; a wrong token is refused.
    expect(page.locator("#ban-form")).to_be_hidden()
    expect(page.locator("[data-unban]").first).to_be_hidden()
    page.fill("#token", "not-the-token")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_have_text("wrong token")
    page.fill("#token", TOKEN)
    page.click("#login-form button")
    expect(page.locator("#ban-form")).to_be_visible()

    # A manual ban through the form.
    page.fill("#ban-form textarea", "198.51.100.84\n198.51.100.85")
    page.fill('#ban-form input[name="duration"]', "2h")
    page.fill('#ban-form input[name="reason"]', "seen in a honeypot")
    page.click("#ban-form button")
    expect(page.locator("#message")).to_contain_text("Banned 2 address(es)")
    expect(page.locator('#bans tr[data-address="198.51.100.84"]')).to_contain_text("seen in a honeypot")
    expect(page.locator("#active-bans")).to_have_text("6")
    assert {"198.51.100.84", "198.51.100.85"} <= active(redis_url)

    # A refused ban shows the API's reason.
    page.fill("#ban-form textarea", "127.0.0.1")
    page.click("#ban-form button")
    expect(page.locator("#message")).to_contain_text("loopback")

    # Search by rule, then by prefix and country.
    page.fill('#search-form input[name="rule"]', "sshd")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#bans tbody tr:not(.details)")).to_have_count(2)
    page.click("#search-clear")
    page.fill('#search-form input[name="prefix"]', "198.51.100.32/27")
    page.fill('#search-form input[name="country"]', "br")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#bans tbody tr")).to_have_count(1)
    expect(page.locator("#bans tbody tr")).to_contain_text("198.51.100.41")
    page.click("#search-clear")

    # A search through the history runs once, not on every poll: it costs the api a pass
    # over every past ban. The rest of the page keeps polling.
    page.check('#search-form input[name="all"]')
    page.click("#search-form button[type=submit]")
    expect(page.locator('#bans tr[data-address="198.51.100.7"]')).to_have_count(1)
    history, stats = sum("all=1" in r for r in requests), sum(r.endswith("/stats") for r in requests)
    page.wait_for_timeout(6000)  # longer than one poll (5 s)
    assert sum("all=1" in r for r in requests) == history
    assert sum(r.endswith("/stats") for r in requests) > stats
    page.click("#search-clear")

    # Unban.
    page.click('[data-unban="198.51.100.84"]')
    expect(page.locator('#bans tr[data-address="198.51.100.84"]')).to_have_count(0)
    assert "198.51.100.84" not in active(redis_url)
    sent = [messages.decode_decision(f[b"m"]) for _, f in
            redis.Redis.from_url(redis_url).xrange(Keys(PREFIX).decisions)]
    assert ("unban", "198.51.100.84") in [(d.action, d.address) for d in sent]

    # Whitelist: add lifts the ban inside, then remove.
    page.fill('#whitelist-form input[name="network"]', "198.51.100.85/32")
    page.fill('#whitelist-form input[name="reason"]', "partner")
    page.click("#whitelist-form button")
    expect(page.locator("#message")).to_contain_text("lifted 1 active ban(s)")
    expect(page.locator('#whitelist tr[data-network="198.51.100.85/32"]')).to_contain_text("partner")
    assert "198.51.100.85" not in active(redis_url)

    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.locator('#whitelist tr[data-network="198.51.100.85/32"] button').click()
    expect(page.locator('#whitelist tr[data-network="198.51.100.85/32"]')).to_have_count(0)

    # Pages of 100: the next page holds the rest, the previous one comes back.
    page.fill("#ban-form textarea", "\n".join(f"2001:db8::{i:x}" for i in range(1, 121)))
    page.click("#ban-form button")
    expect(page.locator("#message")).to_contain_text("Banned 120 address(es)")
    expect(page.locator("#bans-summary")).to_have_text("page 1: 100 of 123 ban(s)")
    page.click("#bans-next")
    expect(page.locator("#bans-summary")).to_have_text("page 2: 23 of 123 ban(s)")
    expect(page.locator("#bans-next")).to_be_disabled()
    page.click("#bans-previous")
    expect(page.locator("#bans-summary")).to_have_text("page 1: 100 of 123 ban(s)")

    # Logging out hides the writes again.
    page.click("#logout")
    expect(page.locator("#ban-form")).to_be_hidden()

    # No script errors, no CSP violations; the browser's notes about the
    # refusals this test provoked on purpose (wrong token, loopback ban) aside.
    expected = ("status of 401", "status of 409")
    assert [p for p in problems if not any(e in p for e in expected)] == []
    assert all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]


def test_the_protection_panel_shows_each_hosts_rules_firewall_and_problems(server, page):
    url, redis_url = server
    now = time.time()
    collector = messages.CollectorStatus(
        host="web-1", at=now, started_at=now - 60,
        sources=[messages.SourceStatus("journal", "journal", "found", True, ["/host/log/journal/abc"]),
                 messages.SourceStatus("nginx-error", "file", "missing", True,
                                       missing=["/host/log/nginx/error.log"])],
        rules=[messages.RuleSources("sshd", ["journal"], True, ["auth"]),
               messages.RuleSources("nginx-http-auth", [], False, [],
                                    "nginx-http-auth is enabled but no source carries nginx lines: "
                                    "/host/log/nginx/error.log does not exist")])
    enforcer = messages.EnforcerStatus(host="web-1", at=now, started_at=now - 60, backend="nftables",
                                       table="inet pyfilter", table_present=True, hooks=["input", "forward"],
                                       docker_covered=True, sets=[messages.SetStatus("ban4", 2)])
    keys = Keys(PREFIX)
    client = redis.Redis.from_url(redis_url)
    for service, report in (("collector", collector), ("enforcer", enforcer)):
        client.set(keys.status(service, "web-1"), messages.encode(report))
        client.hset(keys.status_seen("web-1"), service, repr(now))
    client.sadd(keys.hosts, "web-1", "mail-1")
    client.hset(keys.status_seen("mail-1"), "enforcer", repr(now - 3600))  # its report expired

    page.goto(url + "/")
    web1, mail1 = page.locator('#protection [data-host="web-1"]'), page.locator('#protection [data-host="mail-1"]')
    expect(web1.locator('tr[data-rule="sshd"]')).to_contain_text("journal")
    expect(web1.locator('tr[data-rule="nginx-http-auth"]')).to_have_class("bad")
    expect(web1).to_contain_text("Firewall: nftables, table inet pyfilter in place, hooks: input, forward; "
                                 "Docker-published ports covered; elements: ban4 2")
    expect(web1).to_contain_text("nginx-error: missing")
    expect(web1.locator(".problems li")).to_have_text([
        "nginx-http-auth is enabled but no source carries nginx lines: /host/log/nginx/error.log does not exist"])
    expect(mail1).to_contain_text("enforcer NOT reporting since")
    expect(mail1.locator(".problems li").first).to_contain_text("no collector reports from this host")


def test_a_per_account_ban_shows_its_account_and_evidence(server, page):
    """Addresses banned together for failing on one account: the row names the account (the
    attacker's text, shown as text), the details list every address of the evidence."""
    url, redis_url = server
    attackers = ["198.51.100.51", "198.51.100.52", "2001:db8::53"]
    # Markup, and what would act instead of showing: an override reversing what follows, a control.
    account = "<img src=x onerror=alert(1)>\u202eroot\x1b[2J"
    shown = r"<img src=x onerror=alert(1)>\u202eroot\x1b[2J"  # as services/common/shown.py writes it

    async def seed():
        client = aioredis.from_url(redis_url)
        assert await account_bans(client, attackers, account, time.time()) == sorted(attackers)
        await client.aclose()
    with ThreadPoolExecutor(1) as pool:  # the page's driver holds this thread's event loop
        pool.submit(asyncio.run, seed()).result()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: problems.append(d.message))
    page.goto(url + "/")
    row = page.locator('#bans tr[data-address="2001:db8::53"]')
    expect(row.locator('[data-window="account"]')).to_have_text(f"per account: {shown}")
    expect(page.locator('#bans tr[data-address="198.51.100.41"] [data-window]')).to_have_count(0)
    row.locator("button", has_text="Details").click()
    evidence = page.locator("#bans tr.details .evidence li")
    expect(evidence).to_have_text(attackers)
    expect(page.locator("#bans tr.details")).to_contain_text("3 address(es) failed on account")
    expect(page.locator("#bans tr.details pre")).to_contain_text(f"Failed password for {shown} from ")
    assert "\u202e" not in page.locator("#bans tr.details").inner_text()
    assert page.locator("#bans img").count() == 0 and problems == []
