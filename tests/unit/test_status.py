"""`pyfilter status`: the reports the collector and enforcer publish, the detector's counts,
and the api's assembly into one report per host, with problems in plain words.

Real Redis, real files and journal files; the firewall side of the report has
its tests with the backends (in a network namespace).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
import yaml

from pyfilter.cli.status import render
from pyfilter.collector import main as collector, plan, report
from pyfilter.common import messages, status
from pyfilter.common.config import load
from pyfilter.common.keys import DETECT_GROUP, Keys
from pyfilter.common.redisio import ensure_group
from tests.conftest import aclient
from tests.journal_files import MISSING, write_journal

from .apisupport import PREFIX, call, detector_ban
from .test_collector_support import CATALOG
from .test_detector_observe import batch, detector

KEYS = Keys(PREFIX)
NOW = time.time()


@pytest.fixture(autouse=True)
def clock():
    """Each test takes the time as it starts: reports expire by Redis's clock, so a long run must not age them."""
    global NOW
    NOW = time.time()


def host_settings(log: Path, rules: dict | None = None, host: str = "web-1"):
    """Settings of a collector on a host whose log folder is `log` (as the plan tests lay it out)."""
    config = log / "pyfilter.yaml"
    config.write_text(yaml.safe_dump({
        "host": host, "catalog_dir": str(CATALOG), "rules": rules or {"sshd": {}, "nginx-http-auth": {}},
        "collector": {"sources": [
            {"name": "journal", "type": "journal", "paths": [str(log / "journal")]},
            {"name": "auth", "paths": [str(log / "auth.log"), str(log / "secure")]},
            {"name": "nginx-error", "paths": [str(log / "nginx-error.log")], "program": "nginx"}]}}))
    return load(config)


def collector_report(settings) -> messages.CollectorStatus:
    sources = settings.config.collector.sources
    chosen = plan.make(settings.rules, sources, {s.name: plan.probe(s) for s in sources})
    return report.make(settings, chosen, {}, NOW - 60)


def enforcer_report(host: str = "web-1", **kw) -> messages.EnforcerStatus:
    base = dict(host=host, at=NOW, started_at=NOW - 60, backend="nftables", table="inet pyfilter",
                table_present=True, hooks=["input", "forward"], docker_covered=True,
                sets=[messages.SetStatus("ban4", 1), messages.SetStatus("ban6", 0)])
    return messages.EnforcerStatus(**{**base, **kw})


async def publish(url: str, *reports) -> None:
    client = aclient(url)
    for r in reports:
        service = "collector" if isinstance(r, messages.CollectorStatus) else "enforcer"
        await status.Publisher(client, KEYS, service, r.host).publish(r)
    await client.aclose()


def get_status(url: str) -> dict:
    async def steps(client, redis):
        response = await client.get("/api/v1/status")
        assert response.status == 200
        return await response.json()
    return call(url, steps)


# -- what the collector reports ------------------------------------------------------


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_the_collector_reports_each_source_found_missing_or_unreadable(tmp_path):
    write_journal(tmp_path / "journal" / "0123456789abcdef0123456789abcdef" / "system.journal",
                  [("systemd", "Started ssh.service.")])
    error_log = tmp_path / "nginx-error.log"
    error_log.touch(mode=0o000)
    r = collector_report(host_settings(tmp_path))
    sources = {s.name: s for s in r.sources}
    assert sources["journal"].state == "found" and sources["journal"].followed
    assert sources["journal"].readable == [str(tmp_path / "journal" / "0123456789abcdef0123456789abcdef")]
    # auth.log's lines would be copies of the journal's: not read, and it says why.
    assert sources["auth"].state == "missing" and not sources["auth"].followed
    assert sources["auth"].missing == [str(tmp_path / "auth.log"), str(tmp_path / "secure")]
    assert "the journal carries its rules' lines" in sources["auth"].note
    if not os.access(error_log, os.R_OK):  # root reads anything
        assert sources["nginx-error"].state == "unreadable"
        assert sources["nginx-error"].note.startswith(f"{error_log}: not readable by the collector")
    rules = {x.rule: x for x in r.rules}
    assert rules["sshd"].sources == ["journal"] and rules["sshd"].journal
    assert rules["sshd"].left_out == ["auth"] and rules["sshd"].problem is None


def test_a_journal_only_host_without_its_journal_is_said_in_plain_words(tmp_path):
    r = collector_report(host_settings(tmp_path, {"sshd": {}}))
    problem = r.rules[0].problem
    assert problem.startswith("sshd is enabled but no source carries sshd lines: ")
    assert f"the journal ({tmp_path}/journal) is not mounted or holds no files (if this host's sshd " \
           "logs to the journal, mount the host's /var/log/journal and /run/log/journal" in problem


def test_the_collector_warns_at_start_for_every_rule_without_a_readable_source(tmp_path, caplog):
    (tmp_path / "nginx-error.log").touch()
    settings = host_settings(tmp_path, {"sshd": {}, "nginx-http-auth": {}, "recidive": {}})
    with caplog.at_level(logging.INFO, logger="pyfilter.collector"):
        collector.make_plan(settings)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.rule for w in warnings] == ["sshd"]  # nginx has its file; recidive is fed by bans
    assert warnings[0].getMessage().startswith("sshd is enabled but no source carries sshd lines")


def test_a_file_that_appears_later_clears_the_problem_and_a_journal_asks_for_a_restart(tmp_path):
    settings = host_settings(tmp_path, {"sshd": {}})
    sources = settings.config.collector.sources
    chosen = plan.make(settings.rules, sources, {s.name: plan.probe(s) for s in sources})
    assert chosen.rules[0].problem
    (tmp_path / "auth.log").touch()  # followed from the start, read when it appears
    assert report.make(settings, chosen, {}, NOW).rules[0].problem is None
    if MISSING is None:
        write_journal(tmp_path / "journal" / "0123456789abcdef0123456789abcdef" / "system.journal",
                      [("systemd", "Started ssh.service.")])
        assert "journal appeared after the collector started; restart the collector" in \
            report.make(settings, chosen, {}, NOW).rules[0].problem


# -- publishing -----------------------------------------------------------------------


def test_a_report_is_written_when_it_changes_and_expires_when_its_host_is_gone(redis_url):
    async def go():
        client = aioredis.Redis.from_url(redis_url)
        publisher = status.Publisher(client, KEYS, "enforcer", "web-1")
        assert await publisher.publish(enforcer_report())
        assert not await publisher.publish(enforcer_report(at=NOW + 5))  # only its time moved
        assert await publisher.publish(enforcer_report(at=NOW + 6, sets=[messages.SetStatus("ban4", 2)]))
        ttl = await client.ttl(KEYS.status("enforcer", "web-1"))
        live, seen = await status.reports(client, KEYS, NOW)
        await client.aclose()
        return ttl, live, seen
    ttl, live, seen = asyncio.run(go())
    assert 0 < ttl <= status.TTL
    assert live["enforcer", "web-1"].sets == [messages.SetStatus("ban4", 2)]
    assert seen == {("enforcer", "web-1"): NOW + 6}


def test_the_detector_counts_lines_and_failures_per_minute_in_its_acknowledging_round_trip(redis_url):
    async def go():
        d = detector(redis_url)
        stream = d.keys.lines("web-1")
        await ensure_group(d.client, stream, DETECT_GROUP)
        b = msgspec.structs.replace(batch("198.51.100.7", "198.51.100.8"), host="web-1")
        b.lines.append(messages.Line("auth:0:0:9", "sshd[1]: Accepted publickey for root"))
        await d.client.xadd(stream, {"m": messages.encode(b)})
        reply = await d.client.xreadgroup(DETECT_GROUP, d.consumer, {stream: ">"})
        await d.handle([(stream, entry_id, fields) for entry_id, fields in reply[0][1]])
        counts = await status.last_hour(d.client, d.keys, "web-1")
        ttl = await d.client.ttl(d.keys.counts("web-1", int(time.time() // 60)))
        await d.client.aclose()
        return counts, ttl
    (lines, failures), ttl = asyncio.run(go())
    assert lines == Counter({"auth": 3}) and failures == Counter({"sshd": 2})
    assert 3600 < ttl <= status.COUNTS_TTL


# -- the api's report -------------------------------------------------------------------


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_the_report_joins_sources_counts_bans_and_the_firewall_per_host(redis_url, tmp_path):
    write_journal(tmp_path / "journal" / "0123456789abcdef0123456789abcdef" / "system.journal",
                  [("systemd", "Started ssh.service.")])

    async def feed():
        client = aioredis.Redis.from_url(redis_url)
        async with client.pipeline(transaction=True) as pipe:
            status.count(pipe, KEYS, NOW - 600, Counter({("web-1", "journal"): 40}),
                         Counter({("web-1", "sshd"): 3}))
            status.count(pipe, KEYS, NOW - 7200, Counter({("web-1", "journal"): 1000}), Counter())  # too old
            await pipe.execute()
        await detector_ban(client, "198.51.100.7", NOW - 300, host="web-1")
        await detector_ban(client, "198.51.100.9", NOW - 300, host="web-2")  # another host's
        await client.aclose()

    asyncio.run(feed())
    asyncio.run(publish(redis_url, collector_report(host_settings(tmp_path, {"sshd": {}})), enforcer_report()))
    body = get_status(redis_url)
    [host] = body["hosts"]
    assert host["host"] == "web-1" and host["problems"] == [] and body["problems"] == []
    assert host["rules"] == [{"rule": "sshd", "sources": ["journal"], "journal": True, "left_out": ["auth"],
                              "lines_last_hour": 40, "failures_last_hour": 3, "bans_active": 1,
                              "bans_last_hour": 1, "problem": None}]
    sources = {s["name"]: s for s in host["collector"]["sources"]}
    assert sources["journal"]["state"] == "found" and sources["journal"]["lines_last_hour"] == 40
    assert sources["auth"]["state"] == "missing"
    assert host["enforcer"]["hooks"] == ["input", "forward"] and host["enforcer"]["docker_covered"]
    assert host["enforcer"]["sets"] == [{"name": "ban4", "elements": 1}, {"name": "ban6", "elements": 0}]
    text = render(body)
    assert "host web-1: collector reporting" in text and "problems: none" in text
    assert any(line.split()[:6] == ["sshd", "journal", "40", "3", "1", "1"] for line in text.splitlines())


def test_problems_say_what_is_missing_and_a_silent_host_is_not_reporting(any_redis_url, tmp_path):
    """On a single Redis and on a 3-primary Redis Cluster (each host's report in its own slot)."""
    redis_url = any_redis_url

    async def stale():
        client = aclient(redis_url)
        await client.sadd(KEYS.hosts, "web-2")
        await client.hset(KEYS.status_seen("web-2"), "collector", repr(NOW - 3600))  # its report expired
        await client.aclose()

    asyncio.run(stale())
    asyncio.run(publish(redis_url, collector_report(host_settings(tmp_path, {"sshd": {}})),
                        enforcer_report(hooks=["input"], docker_covered=False,
                                        problems=["chain forward of table inet pyfilter is missing"])))
    body = get_status(redis_url)
    hosts = {h["host"]: h for h in body["hosts"]}
    web1, web2 = hosts["web-1"]["problems"], hosts["web-2"]["problems"]
    assert web1[0].startswith("sshd is enabled but no source carries sshd lines")
    assert web1[1] == "chain forward of table inet pyfilter is missing"
    assert web2[0].startswith("the collector has not reported since ")
    assert "it stopped or cannot reach Redis" in web2[0]
    assert web2[1].startswith("no enforcer reports from this host: bans are not applied in its firewall")
    assert body["problems"] == [f"web-1: {p}" for p in web1] + [f"web-2: {p}" for p in web2]
    assert "NOT reporting since" in render(body)


def test_with_nothing_reporting_the_report_says_so(redis_url):
    body = get_status(redis_url)
    assert body["hosts"] == []
    assert body["problems"] == ["no collector or enforcer has reported: is the stack running? (docker compose ps)"]


def test_status_is_in_the_openapi_document(redis_url):
    async def steps(client, redis):
        return await (await client.get("/api/v1/openapi.json")).json()
    doc = call(redis_url, steps)
    assert doc["paths"]["/api/v1/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/StatusReport"}
    assert "docker_covered" in doc["components"]["schemas"]["EnforcerView"]["properties"]


def test_the_enforcer_publishes_what_its_backend_finds(redis_url):
    from pyfilter.enforcer.backends.log_only import LogOnlyBackend
    from pyfilter.enforcer.main import Enforcer

    from .test_enforcer_loop import settings as enforcer_settings

    async def go():
        enforcer = Enforcer(enforcer_settings(redis_url), LogOnlyBackend())
        await enforcer.publish_status()
        live, _ = await status.reports(enforcer.client, Keys("t:"))
        await enforcer.client.aclose()
        return live
    report = asyncio.run(go())["enforcer", "host-b"]
    assert report.backend == "log-only" and report.table is None and not report.table_present
    assert report.problems == ["the enforcer runs log-only: bans are logged, nothing is blocked "
                               "(set enforcer.backend to nftables or iptables)"]
