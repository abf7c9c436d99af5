"""A service task that ends on an error nobody planned for stops the service, with the
task and the error in its log, so that Docker starts it again (common/service.py,
`Tasks`); a configuration a restart cannot mend does not make it restart."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import redis
import yaml

from .test_collector_support import CATALOG, HOST, Collector, file_source, wait_for


def with_user(redis_url: str, name: str) -> tuple[redis.Redis, str]:
    """A Redis user `name` that may do anything, until a test takes a command from it:
    no retry covers that refusal (NOPERM). Returns an admin client and the user's URL."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=["+secret"], keys=["*"], channels=["*"], commands=["+@all"])
    return admin, redis_url.replace("unix://", f"unix://{name}:secret@", 1)


@contextlib.contextmanager
def service(name: str, tmp: Path, url: str, config: dict, unset: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """`python -m pyfilter.<name>` on its own config and log (`tmp/<name>.log`), without the
    environment variables `unset`; killed at the end if it still runs."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"redis": {"url": url}, "catalog_dir": str(CATALOG), **config}))
    env = {**os.environ, "PYFILTER_CONFIG": str(path), "PYFILTER_REDIS_URL": url, "PYFILTER_HOST": HOST,
           "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(tmp / f"{name}.heartbeat")}
    env = {k: v for k, v in env.items() if k not in unset}
    with open(tmp / f"{name}.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"pyfilter.{name}"], env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_collector_task_ending_on_an_unexpected_error_stops_the_collector_and_says_why(tmp_path, logs,
                                                                                          redis_url):
    """Its heartbeat loses PING. The collector says which task ended and why, and exits
    1; before, it ran on, unhealthy, with no line saying why."""
    admin, url = with_user(redis_url, "collector")
    (logs / "app.log").write_text("")
    beat = tmp_path / "heartbeat"
    with Collector(tmp_path, url, [file_source("app", logs / "app.log")]) as collector:
        collector.start()
        wait_for(beat.exists, 15, "the collector's first heartbeat")
        admin.acl_setuser("collector", commands=["-ping"])
        assert collector.proc.wait(15) == 1
        log = collector.logs()
    assert "heartbeat ended unexpectedly" in log and "NoPermissionError" in log, log


def test_a_detector_whose_loop_fails_unexpectedly_stops_and_says_why(tmp_path, redis_url):
    """Its look at the hosts it reads refused: the detector names the task that ended
    (its windows loop), logs the error in its own log format, stops its pruner too and
    exits 1 (before, the error escaped as a bare traceback)."""
    admin, url = with_user(redis_url, "detector")
    with service("detector", tmp_path, url, {"rules": {"sshd": {}}}) as proc:
        wait_for((tmp_path / "detector.heartbeat").exists, 15, "the detector's first heartbeat")
        admin.acl_setuser("detector", commands=["-smembers"])
        code = proc.wait(15)
    log = (tmp_path / "detector.log").read_text(errors="replace")
    assert code == 1, log
    ended = [json.loads(line) for line in log.splitlines() if "ended unexpectedly" in line]
    assert [e["msg"] for e in ended] == [
        "windows ended unexpectedly; stopping so that the service is restarted"], log
    assert "NoPermissionError" in ended[0]["error"], log


def test_a_notifier_task_ending_on_an_unexpected_error_stops_the_notifier(tmp_path, redis_url):
    admin, url = with_user(redis_url, "notifier")
    with service("notifier", tmp_path, url, {"rules": {}}) as proc:
        wait_for((tmp_path / "notifier.heartbeat").exists, 15, "the notifier's first heartbeat")
        admin.acl_setuser("notifier", commands=["-ping"])
        code = proc.wait(15)
    log = (tmp_path / "notifier.log").read_text(errors="replace")
    assert code == 1, log
    assert "heartbeat ended unexpectedly" in log and "NoPermissionError" in log, log


def test_a_notifier_whose_only_channel_is_unusable_says_so_and_stays_up(tmp_path, redis_url):
    """Mail configured with its password's variable unset: a restart would not mend it, so
    the notifier logs why once and stays up (healthy: Redis answers), not in a restart loop."""
    mail = {"host": "127.0.0.1", "port": 2525, "from": "pyfilter@example.org", "to": ["ops@example.org"],
            "username": "pyfilter", "password_env": "PYFILTER_SMTP_PASSWORD"}
    log = tmp_path / "notifier.log"
    with service("notifier", tmp_path, redis_url, {"rules": {}, "notify": {"email": mail}},
                 unset=("PYFILTER_SMTP_PASSWORD",)) as proc:
        wait_for(lambda: "mail notifications are off" in log.read_text(errors="replace"), 15,
                 "the notifier's error about the mail password")
        beat = tmp_path / "notifier.heartbeat"
        wait_for(beat.exists, 15, "the notifier's heartbeat")
        first = beat.stat().st_mtime_ns
        wait_for(lambda: beat.stat().st_mtime_ns != first, 15, "a later heartbeat")
        assert proc.poll() is None, log.read_text(errors="replace")
        proc.terminate()
        assert proc.wait(15) == 0
    assert log.read_text().count("mail notifications are off") == 1
