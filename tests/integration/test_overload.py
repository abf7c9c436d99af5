"""Overload: lines arrive while no detector keeps up. Nothing is dropped, the lag
shows in the metrics and the API's stats, and adding a replica brings it down.

The only detector is frozen (docker pause) while 150,000 lines arrive, so
they can only wait in the lines stream; then a second replica is added while
the first stays frozen, and the lag must drain through the new one alone.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from tests.integration.stack import Stack, make_log_dir, running, wait_for

pytestmark = pytest.mark.integration

LINES = 150_000
ATTACKERS = [f"2001:db8:e::{i:x}" for i in range(1, 21)]


def scrape(stack: Stack, service: str, port: int, index: int = 1) -> dict[str, float]:
    """One container's Prometheus metrics, read from inside it."""
    container = stack.docker.containers.get(f"{stack.project}-{service}-{index}")
    code, out = container.exec_run(["python", "-c", f"import urllib.request; print(urllib.request."
                                    f"urlopen('http://127.0.0.1:{port}/metrics').read().decode())"])
    assert code == 0, out
    values = {}
    for line in out.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def lines_read(stack: Stack, index: int) -> float:
    return scrape(stack, "detector", 9102, index).get('pyfilter_detector_lines_total{source="auth"}', 0.0)


def add_detector_replica(stack: Stack) -> None:
    """What `--scale detector=2` does, done by hand: compose refuses to scale a
    service while one of its containers is paused."""
    first = stack.container("detector")
    config = first.attrs["Config"]
    labels = {**config["Labels"], "com.docker.compose.container-number": "2"}
    stack.docker.containers.run(
        config["Image"], config["Cmd"], environment=config["Env"], user=config["User"],
        labels=labels, name=f"{stack.project}-detector-2", hostname="detector-2",
        network=f"{stack.project}_default", init=True, detach=True,
        volumes=[f"{m['Source']}:{m['Destination']}:ro" for m in first.attrs["Mounts"]])


@pytest.fixture(scope="module")
def stack():
    with running(Stack(project=f"pyfilter-load-{os.getpid()}", log_dir=make_log_dir(auth_log=True))) as s:
        try:
            yield s
        finally:
            if s.container("detector").status == "paused":
                s.container("detector").unpause()


def test_overload_drops_nothing_shows_lag_and_a_new_replica_drains_it(stack):
    stack.container("detector").pause()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(stack.log_dir / "auth.log", "a") as log:
        for i in range(LINES):
            if i % 1000 < 6:  # six failures per attacker, spread over the log
                address = ATTACKERS[(i // 1000) % len(ATTACKERS)]
                log.write(f"{stamp} target sshd[{i}]: Failed password for root from {address} port 2 ssh2\n")
            else:
                log.write(f"{stamp} target sshd[{i}]: pam_unix(sshd:session): session closed for user app\n")

    def lag_in_stats():
        status, body = stack.api("GET", "/api/v1/stats")
        return status == 200 and body["pipeline"]["lines_length"] >= LINES // 1000 - 5 and body
    stats = wait_for(lag_in_stats, 60, "the collector to queue every line while no detector reads")
    metrics = scrape(stack, "api", 8470)
    print(f"\nqueued while the detector is frozen: {stats['pipeline']['lines_length']} batches "
          f"(metrics: {metrics['pyfilter_lines_stream_length']:.0f})")
    assert metrics["pyfilter_lines_stream_length"] >= LINES // 1000 - 5

    add_detector_replica(stack)
    wait_for(lambda: stack.api("GET", "/api/v1/stats")[1]["pipeline"]["lines_length"] == 0, 120,
             "the added replica to drain the stream")
    assert lines_read(stack, 2) >= LINES - 2000, "the new replica did not do the work"

    stack.container("detector").unpause()
    wait_for(lambda: lines_read(stack, 1) + lines_read(stack, 2) == LINES, 60,
             "every line to be read exactly once")
    status, body = stack.api("GET", "/api/v1/bans?limit=100")
    assert {b["address"] for b in body["bans"]} == set(ATTACKERS)
