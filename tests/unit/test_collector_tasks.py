"""A collector task that ends on an error nobody planned for stops the collector, with
the error in its log, so that Docker starts it again (common/service.py, `Tasks`)."""

from __future__ import annotations

import redis

from .test_collector_support import Collector, file_source, wait_for


def test_a_task_ending_on_an_unexpected_error_stops_the_collector_and_says_why(tmp_path, logs, redis_url):
    """Its Redis user loses PING: no retry covers that refusal (NOPERM), so the heartbeat
    ends. The collector says which task ended and why, and exits 1; before, it ran on,
    unhealthy, with no line saying why."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("collector", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                      commands=["+@all"])
    url = redis_url.replace("unix://", "unix://collector:secret@", 1)
    (logs / "app.log").write_text("")
    beat = tmp_path / "heartbeat"
    with Collector(tmp_path, url, [file_source("app", logs / "app.log")]) as collector:
        collector.start()
        wait_for(beat.exists, 15, "the collector's first heartbeat")
        admin.acl_setuser("collector", commands=["-ping"])
        assert collector.proc.wait(15) == 1
        log = collector.logs()
    assert "heartbeat ended unexpectedly" in log and "NoPermissionError" in log, log
