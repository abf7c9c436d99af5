"""`pyfilter replay`: the bans the running stack makes, from the log alone, in log time.

The first test feeds one log to real collector and detector processes and a
real Redis, then replays the same file: the same bans (address, rule,
duration), through escalation, recidive, connection state (<ONCE> lines),
the whitelist and an IPv6 attacker. The others replay logs a live stack
could not be run through in a test: weeks of log time, two configurations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis
import yaml

from pyfilter.common import messages
from pyfilter.common.keys import Keys

from .test_collector_support import CATALOG, Collector, wait_for, write
from .test_counted_once import drained, start_detector

PYFILTER = Path(sys.executable).with_name("pyfilter")
A1, A2, A3, A4 = (f"198.51.100.{n}" for n in (1, 2, 3, 4))
WHITELISTED = "198.51.100.200"
V6 = "2001:db8::5"


def replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(PYFILTER)] if PYFILTER.exists() else [sys.executable, "-m", "pyfilter.cli"]
    return subprocess.run([*command, "replay", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def replayed(*args: str) -> dict:
    result = replay("--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def bans_of(document: dict, n: int = 0) -> list[tuple[str, str, int]]:
    return sorted((b["address"], b["rule"], b["duration"]) for b in document["replays"][n]["bans"])


def now_stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def failures(address: str, n: int, pid: int, closing: bool = False) -> list[str]:
    """`n` failed logins from `address`, each in a connection (pid) of its own; with
    `closing`, each connection also logs sshd's closing words (<ONCE>: no failure more)."""
    lines = []
    for i in range(n):
        stamp = now_stamp()
        lines.append(f"{stamp} web1 sshd[{pid + i}]: Failed password for root from {address} port {40000 + i} ssh2")
        if closing:
            lines.append(f"{stamp} web1 sshd[{pid + i}]: Connection closed by authenticating user root "
                         f"{address} port {40000 + i} [preauth]")
    return lines


def history(client: redis.Redis) -> list[messages.BanRecord]:
    return [messages.decode_record(fields[b"m"]) for _, fields in client.xrange(Keys().ban_history)]


def test_replay_makes_the_bans_the_running_stack_made(tmp_path, redis_url):
    folder = tmp_path / "log"
    folder.mkdir()
    log = folder / "auth.log"
    log.touch()
    rules = {"sshd": {"maxretry": 3, "findtime": "1h", "bantime": "2s", "escalation": {"factor": 2}},
             "recidive": {"maxretry": 2, "findtime": "1h", "bantime": "1h"}}
    collector = Collector(tmp_path, redis_url, [{"name": "auth", "paths": [str(log)]}], rules=rules)
    config = yaml.safe_load(collector.config.read_text())
    collector.config.write_text(yaml.safe_dump({**config, "whitelist": [f"{WHITELISTED}/32"]}))
    client = redis.Redis.from_url(redis_url)
    detector = start_detector(collector.config, redis_url, tmp_path)
    c = collector.start()
    try:
        c.ready("auth")
        # Round 1: A1, A3 (once per connection: 3, not 6) and V6 reach 3 failures;
        # A4 has 2 (4 lines), A2 2, the whitelisted address 5.
        write(log, *failures(A1, 3, 100), *failures(A2, 2, 200), *failures(A3, 3, 300, closing=True),
              *failures(A4, 2, 400, closing=True), *failures(WHITELISTED, 5, 500), *failures(V6, 3, 600))
        wait_for(lambda: len(history(client)) == 3, 30, "round 1's three bans")
        ends = max(b.expires_at for b in history(client))
        wait_for(lambda: time.time() > ends + 0.5, 10, "round 1's bans to run out")
        # Round 2: A1 again (ban #2, twice as long, and its second ban: recidive);
        # A2's third failure; then A2 logs in.
        write(log, *failures(A1, 3, 700), *failures(A2, 1, 800),
              f"{now_stamp()} web1 sshd[900]: Accepted password for alice from {A2} port 41000 ssh2")
        wait_for(lambda: drained(client, Keys()) and len(history(client)) == 6, 30, "round 2's bans")
    finally:
        c.__exit__()
        detector.terminate()
        detector.wait(10)

    live = sorted((b.address, b.rule, b.duration) for b in history(client))
    assert live == sorted([(A1, "sshd", 2), (A3, "sshd", 2), (V6, "sshd", 2), (A1, "sshd", 4),
                           (A1, "recidive", 3600), (A2, "sshd", 2)])
    document = replayed("--config", str(collector.config), str(log))
    assert bans_of(document) == live
    rules_seen = document["replays"][0]["rules"]
    assert rules_seen["sshd"]["logged_in_later"] == [A2]
    assert rules_seen["recidive"] == {"bans": 1, "addresses": 1, "logged_in_later": []}


def long_config(tmp_path: Path, maxretry: int = 3, name: str = "pyfilter.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "catalog_dir": str(CATALOG),
        "rules": {"sshd": {"maxretry": maxretry, "findtime": "10m", "bantime": "1h",
                           "escalation": {"memory": "7d"}}},
    }))
    return path


def attempts(start: datetime, address: str, n: int, pid: int) -> list[str]:
    return [f"{(start + timedelta(seconds=i)).isoformat()} web1 sshd[{pid + i}]: Failed password for root "
            f"from {address} port {40000 + i} ssh2" for i in range(n)]


def test_a_long_log_keeps_bans_and_forgets_ban_counts_in_log_time(tmp_path):
    """Weeks of a log from last year, replayed in a second: a ban in force (in log
    time) holds back the next one as long, and a ban count is forgotten `memory`
    after the last ban. Redis's own TTLs (wall-clock) would have dropped the ban
    record at once (a second ban at 00:30) and kept the count (ban #3 on day 10)."""
    day0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
    log = tmp_path / "auth.log"
    log.write_text("\n".join([
        *attempts(day0, A1, 3, 100),                                  # ban #1: 1h
        *attempts(day0 + timedelta(minutes=30), A1, 3, 200),          # that ban is in force: none
        *attempts(day0 + timedelta(hours=2), A1, 3, 300),             # ban #2
        *attempts(day0 + timedelta(days=10), A1, 3, 400),             # 7d after: #1 again
    ]) + "\n")
    document = replayed("--config", str(long_config(tmp_path)), str(log))
    bans = [(b["duration"], b["ban_count"], b["banned_at"]) for b in document["replays"][0]["bans"]]
    assert [(d, n) for d, n, _ in bans] == [(3600, 1), (3600, 2), (3600, 1)]
    assert bans[0][2] == (day0 + timedelta(seconds=2)).timestamp()  # banned at the log time of its third failure


def test_compare_shows_the_bans_only_one_configuration_makes(tmp_path):
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    log = tmp_path / "auth.log"
    log.write_text("\n".join([*attempts(start, A1, 4, 100), *attempts(start, A2, 6, 200)]) + "\n")
    three, five = long_config(tmp_path, 3, "three.yaml"), long_config(tmp_path, 5, "five.yaml")
    document = replayed("--config", str(three), "--compare", str(five), str(log))
    assert bans_of(document, 0) == [(A1, "sshd", 3600), (A2, "sshd", 3600)]
    assert bans_of(document, 1) == [(A2, "sshd", 3600)]
    assert [(b["address"], b["rule"]) for b in document["only_first"]] == [(A1, "sshd")]
    assert document["only_second"] == []
    text = replay("--config", str(three), "--compare", str(five), str(log))
    assert text.returncode == 0, text.stderr
    assert f"Compared: 1 ban(s) only with {three}, 0 only with {five}" in text.stdout
    assert "4 failures of sshd" in text.stdout


def test_logs_of_two_files_are_merged_in_log_time(tmp_path):
    """A1 fails at 00:00 and 00:20 in one file, at 00:01 and 00:02 in the other: in log
    time, three failures within findtime (10m), banned at 00:02. One file after the
    other, the second file's failures would come after 00:20 and be too old to count."""
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    first, second = tmp_path / "auth.log", tmp_path / "web2-auth.log"
    first.write_text("\n".join([*attempts(start, A1, 1, 100),
                                *attempts(start + timedelta(minutes=20), A1, 1, 200)]) + "\n")
    second.write_text("\n".join([*attempts(start + timedelta(minutes=1), A1, 1, 300),
                                 *attempts(start + timedelta(minutes=2), A1, 1, 400)]) + "\n")
    document = replayed("--config", str(long_config(tmp_path)), str(first), str(second))
    [ban] = document["replays"][0]["bans"]
    assert (ban["address"], ban["failures"]) == (A1, 3)
    assert ban["banned_at"] == (start + timedelta(minutes=2)).timestamp()


def test_window_kinds_of_other_parts_replay_as_the_detector_runs_them(tmp_path):
    """Per-network widening (common/network.py) needs nothing of replay's own: two banned
    addresses of 198.51.100.0/24 ban the /24, with them as evidence, unless the network
    holds a whitelisted one (the whitelist reaches the widening as in the detector)."""
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    log = tmp_path / "auth.log"
    log.write_text("\n".join([*attempts(start, A1, 3, 100), *attempts(start + timedelta(minutes=1), A2, 3, 200)]) + "\n")
    configs = []
    for name, whitelist in (("open.yaml", []), ("whitelisted.yaml", ["198.51.100.128/25"])):
        configs.append(tmp_path / name)
        configs[-1].write_text(yaml.safe_dump({
            "catalog_dir": str(CATALOG), "whitelist": whitelist, "network": {"enabled": True, "threshold": 2},
            "rules": {"sshd": {"maxretry": 3, "findtime": "10m", "bantime": "1h"}}}))
    document = replayed("--config", str(configs[0]), "--compare", str(configs[1]), str(log))
    [network] = document["only_first"]
    assert (network["address"], network["window"], network["evidence"]) == ("198.51.100.0/24", "network", [A1, A2])
    assert bans_of(document, 1) == [(A1, "sshd", 3600), (A2, "sshd", 3600)]


def test_a_login_in_the_log_spares_its_address_in_a_per_account_window(tmp_path):
    """Twelve addresses fail twice each on `admin` (24 failures from 12 addresses: sshd's
    per-account default bans them all); the one that logged in as admin earlier in the
    log is spared, as the detector spares it, and the report counts its later login."""
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    attackers = [f"198.51.100.{n}" for n in range(20, 32)]
    login = f"{start.isoformat()} web1 sshd[90]: Accepted password for admin from {attackers[0]} port 40000 ssh2"
    tries = [f"{(start + timedelta(minutes=1, seconds=i)).isoformat()} web1 sshd[{100 + i}]: Failed password "
             f"for admin from {address} port {41000 + i} ssh2"
             for i, address in enumerate(attackers * 2)]
    later = login.replace(start.isoformat(), (start + timedelta(hours=1)).isoformat()).replace(
        attackers[0], attackers[1]).replace("sshd[90]", "sshd[91]")
    log = tmp_path / "auth.log"
    log.write_text("\n".join([login, *tries, later]) + "\n")
    config = tmp_path / "pyfilter.yaml"
    config.write_text(yaml.safe_dump({"catalog_dir": str(CATALOG),
                                      "rules": {"sshd": {"maxretry": 50, "bantime": "1h"}}}))
    document = replayed("--config", str(config), str(log))
    bans = document["replays"][0]["bans"]
    assert sorted(b["address"] for b in bans) == sorted(attackers[1:])
    assert {(b["window"], b["account"]) for b in bans} == {("account", "admin")}
    assert document["replays"][0]["rules"]["sshd"]["logged_in_later"] == [attackers[1]]


def test_without_redis_server_replay_says_so(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("\n".join(attempts(datetime(2025, 3, 1, tzinfo=timezone.utc), A1, 3, 100)) + "\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = replay("--config", str(long_config(tmp_path)), str(log), env={"PATH": str(empty)})
    assert result.returncode == 2
    assert "redis-server is not on PATH" in result.stderr


def test_a_replay_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    """Replay runs the collector less often while it replays (replay._few_collections):
    a command run in-process (tests, bench) gets it back as it was, with its bans."""
    import asyncio
    import gc

    from pyfilter.cli import matching, replay as replaying

    log = tmp_path / "auth.log"
    log.write_text("\n".join(attempts(datetime(2025, 3, 1, tzinfo=timezone.utc), A1, 3, 100)) + "\n")
    settings = matching.settings(long_config(tmp_path))
    before = gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()
    outcome = asyncio.run(replaying.replay(settings, replaying.logs_of(settings, [str(log)], None, None), "web1", None))
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
    assert [(b.address, b.rule) for b in outcome.bans] == [(A1, "sshd")]
