"""Rotations and a crash between rounds of an attack: every failure counts, in the windows.

Real collector and detector processes and a real Redis. 200 attackers fail
once per round in auth.log, five rounds; between rounds the log is rotated
(rename, copytruncate) and the collector killed. With line ids made only of
the file's identity and offset, the round written after the copytruncate
took the ids of round 2's lines (same inode, same offsets) and the window
script dropped it as a redelivery: no attacker reached 5 failures.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import redis

from pyfilter.common.keys import Keys

from .test_collector_support import HOST, Collector, wait_for, write
from .test_counted_once import drained, start_detector

ATTACKERS = [f"2001:db8:c011::{i:x}" for i in range(1, 201)]
ROUNDS = 5


def attack_round(log: Path, n: int) -> None:
    """Each attacker fails once, in a connection of its own."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    write(log, *(f"{stamp} web1 sshd[{10000 * n + i}]: Failed password for root from {address} "
                 f"port {40000 + i} ssh2" for i, address in enumerate(ATTACKERS)))


def read_to_its_end(client: redis.Redis, log: Path) -> bool:
    """Whether the collector's checkpoint of the live file is at its end."""
    st = log.stat()
    saved = client.hget(Keys().checkpoint(HOST, "auth"), f"{st.st_dev}:{st.st_ino}")
    return saved is not None and msgspec.json.decode(saved)["offset"] == st.st_size


def rename_rotation(log: Path) -> None:
    """logrotate `create`: older copies move up one, the log becomes `.1`, a new one is made."""
    shift(log)
    os.rename(log, f"{log}.1")
    log.touch()


def copytruncate(log: Path) -> None:
    shift(log)
    shutil.copyfile(log, f"{log}.1")
    os.truncate(log, 0)


def shift(log: Path) -> None:
    for n in (2, 1):
        if os.path.exists(f"{log}.{n}"):
            os.rename(f"{log}.{n}", f"{log}.{n + 1}")


def test_copytruncate_after_counted_offsets_loses_no_failure(tmp_path, redis_url):
    folder = tmp_path / "log"
    folder.mkdir()
    log = folder / "auth.log"
    log.touch()
    rules = {"sshd": {"maxretry": ROUNDS, "findtime": "1h", "bantime": "1h"}}
    collector = Collector(tmp_path, redis_url, [{"name": "auth", "paths": [str(log)]}], rules=rules)
    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    detector = start_detector(collector.config, redis_url, tmp_path)
    c = collector.start()
    try:
        c.ready("auth")
        for n in range(1, ROUNDS + 1):
            attack_round(log, n)
            if n == 2:  # a crash with the round perhaps half sent
                c.kill()
                c = collector.start()
            wait_for(lambda: read_to_its_end(client, log), 20, f"round {n} to be read")
            if n in (1, 4):
                rename_rotation(log)
            elif n == 3:
                copytruncate(log)
        wait_for(lambda: drained(client, keys), 20, "the detector to take every batch")
    finally:
        c.__exit__()
        detector.terminate()
        detector.wait(10)

    banned = [a for a in ATTACKERS if client.zscore(keys.active_bans, a) is not None]
    counted = {client.zcard(keys.window("sshd", a)) for a in ATTACKERS if a not in banned}
    assert len(banned) == len(ATTACKERS), f"{len(banned)} banned; failures in the others' windows: {counted}"
