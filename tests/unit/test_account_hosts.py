"""A real detector reading three hosts' streams, each host's log too quiet to ban anyone:
the per-account window sees the whole attack on one account and bans its addresses."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from pyfilter.common import messages
from tests.unit.test_detector_replicas import KEYS, start_detector, sync_client, wait, write_config

HOSTS = ("web1", "web2", "db1")


def host_logs() -> dict[str, list[str]]:
    """12 addresses try root twice each, the hosts taking turns: every host sees 8 failures,
    at most one per address (sshd's maxretry is 5). One of them logged in as root on db1 last
    week; another logged in as deploy, which spares nothing on root."""
    now = datetime.now(timezone.utc)
    week_ago = datetime.fromtimestamp(now.timestamp() - 7 * 86400, timezone.utc)
    stamp = now.isoformat(timespec="seconds")
    logs: dict[str, list[str]] = {h: [] for h in HOSTS}
    logs["db1"].append(f"{week_ago.isoformat(timespec='seconds')} db1 sshd[77]: Accepted publickey for root "
                       f"from 198.51.100.3 port 50000 ssh2: ED25519 SHA256:k")
    logs["web2"].append(f"{stamp} web2 sshd[78]: Accepted password for deploy from 198.51.100.4 port 50001 ssh2")
    k = 0
    for _ in range(2):
        for i in range(1, 13):
            host = HOSTS[k % 3]
            logs[host].append(f"{stamp} {host} sshd[{2000 + k}]: Failed password for root from 198.51.100.{i} "
                              f"port {41000 + k} ssh2")
            k += 1
    return logs


def test_three_quiet_hosts_reveal_an_attack_on_one_account(redis_url, tmp_path):
    config = write_config(tmp_path, settings="{}")
    client = sync_client(redis_url)
    client.flushall()
    client.sadd(KEYS.hosts, *HOSTS)
    detector = start_detector(config, redis_url)
    log = config.parent / "detectors.log"
    try:
        wait(lambda: all(client.exists(KEYS.lines(h)) and client.xinfo_groups(KEYS.lines(h)) for h in HOSTS),
             60, "the consumer groups", log)
        for host, lines in host_logs().items():
            batch = messages.LineBatch(host=host, source="auth", read_at=time.time(),
                                       lines=[messages.Line(f"auth:{host}:{n}", t) for n, t in enumerate(lines)])
            client.xadd(KEYS.lines(host), {"m": messages.encode(batch)})
        wait(lambda: not any(client.xlen(KEYS.lines(h)) or client.xinfo_groups(KEYS.lines(h))[0]["pending"]
                             for h in HOSTS), 60, "every line to be read", log)
    finally:
        detector.terminate()
        detector.wait(10)
    banned = sorted(a.decode() for a in client.zrange(KEYS.active_bans, 0, -1))
    attackers = sorted(f"198.51.100.{i}" for i in range(1, 13) if i != 3)
    assert banned == attackers
    records = [messages.decode_record(client.get(KEYS.ban(a))) for a in banned]
    assert {(r.window, r.account, r.rule, r.duration) for r in records} == {("account", "root", "sshd", 600)}
    assert all(sorted(r.evidence) == attackers for r in records)
    assert {r.host for r in records} <= set(HOSTS)
    assert all("1 spared" in r.reason for r in records)
