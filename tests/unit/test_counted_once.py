"""The same attack in the journal and in auth.log (rsyslog's copy) counts once.

Real collector and detector processes, a real journal file and a real Redis:
both sources are read to their end, and the failure windows in Redis hold
each failure once. A rule that only auth.log feeds still counts its own lines
there, so the file is read, not dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
import redis

from pyfilter.common.keys import DETECT_GROUP, Keys
from tests.journal_files import MISSING, write_journal

from .test_collector_plan import AUTH_ONLY
from .test_collector_support import HOST, Collector, wait_for, write

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

SSHD_ATTACKER, APP_ATTACKER = "198.51.100.7", "198.51.100.8"
ATTEMPTS = 6


def start_detector(config: Path, url: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "PYFILTER_CONFIG": str(config), "PYFILTER_REDIS_URL": url,
           "PYFILTER_HOST": HOST, "PYFILTER_METRICS_PORT": "0", "PYFILTER_HEARTBEAT": str(tmp / "hb-detector")}
    with open(tmp / "detector.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "pyfilter.detector"], env=env, stderr=log, stdout=log)


def last_cursor(folder: Path) -> str:
    out = subprocess.run(["journalctl", f"--directory={folder}", "-n", "1", "-o", "json"],
                         capture_output=True, check=True).stdout
    return json.loads(out)["__CURSOR"]


def test_an_attack_in_the_journal_and_in_auth_log_counts_once(tmp_path, redis_url):
    when = time.time() - 60  # a minute before the start: counted too
    failures = [("sshd", f"Failed password for root from {SSHD_ATTACKER} port {40000 + i} ssh2")
                for i in range(ATTEMPTS)]
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", failures, when)
    # rsyslog's copy (Debian's RFC 3339 format), and lines only auth.log has.
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="microseconds")
    auth = tmp_path / "auth.log"
    write(auth, *(f"{stamp} web1 {ident}[4242]: {message}" for ident, message in failures),
          *(f"{stamp} web1 app[77]: login failed from {APP_ATTACKER}" for _ in range(3)))

    sources = [{"name": "journal", "type": "journal", "paths": [str(journal)]},
               {"name": "auth", "paths": [str(auth)]}]
    rules = {"sshd": {"maxretry": 100}, "app": {**AUTH_ONLY, "maxretry": 100}}
    collector = Collector(tmp_path, redis_url, sources, rules=rules)
    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    detector = start_detector(collector.config, redis_url, tmp_path)
    try:
        with collector.start() as c:
            def read_to_the_end() -> bool:
                done = client.hget(keys.checkpoint(HOST, "journal"), "cursor") == last_cursor(journal).encode()
                positions = [msgspec.json.decode(v) for k, v in
                             client.hgetall(keys.checkpoint(HOST, "auth")).items() if b":" in k]
                return done and [p["offset"] for p in positions] == [auth.stat().st_size]

            wait_for(read_to_the_end, 20, "both sources read to their end")
            wait_for(lambda: drained(client, keys), 20, "the detector to take every batch")
            assert c.stop() == 0
    finally:
        detector.terminate()
        detector.wait(10)

    assert client.zcard(keys.window("sshd", SSHD_ATTACKER)) == ATTEMPTS
    assert client.zcard(keys.window("app", APP_ATTACKER)) == 3
    # Every sshd failure counted is a journal entry (its id a cursor), none a line of auth.log.
    assert all(member.startswith(b"s=") for member in client.zrange(keys.window("sshd", SSHD_ATTACKER), 0, -1))
    assert "sshd: lines from the journal (journal); their copies in auth are left out" in collector.logs()


def drained(client: redis.Redis, keys: Keys) -> bool:
    if not client.exists(keys.lines(HOST)) or client.xlen(keys.lines(HOST)):
        return False
    return all(g["pending"] == 0 for g in client.xinfo_groups(keys.lines(HOST)) if g["name"] == DETECT_GROUP.encode())
