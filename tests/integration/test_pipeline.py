"""End to end: a line in a host's log becomes a drop in that host's kernel firewall.

Everything is real: the images `make up` runs, Redis, the collector reading
the mounted log folder, a detector, the enforcer writing nftables sets
inside the target container's network namespace, and TCP from other
containers.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.integration.stack import wait_for

TARGET = "198.51.100.2"
ATTACKER = "198.51.100.10"
PORT = 8080

pytestmark = pytest.mark.integration


def sshd_failures(address: str, count: int) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    lines = []
    for i in range(count):
        pid = 4000 + i
        lines += [
            f"{now} target sshd[{pid}]: Invalid user oracle from {address} port {50000 + i}",
            f"{now} target sshd[{pid}]: Failed password for invalid user oracle from {address} port {50000 + i} ssh2",
            f"{now} target sshd[{pid}]: Connection closed by authenticating user root {address} port {50000 + i} [preauth]",
        ]
    return "\n".join(lines) + "\n"


def test_failed_logins_get_the_attacker_dropped_in_the_kernel(stack):
    # Before: both containers reach the protected host.
    assert stack.tcp_connects("attacker", TARGET, PORT), "attacker cannot connect even before any ban"
    assert stack.tcp_connects("bystander", TARGET, PORT)

    with open(stack.log_dir / "auth.log", "a") as log:
        log.write(sshd_failures(ATTACKER, 3))

    def banned():
        status, body = stack.api("GET", "/api/v1/bans")
        assert status == 200
        return next((b for b in body["bans"] if b["address"] == ATTACKER), None)

    ban = wait_for(banned, 60, f"a ban of {ATTACKER} in the API")
    assert ban["rule"] == "sshd"
    assert ban["host"] == "target-host"
    assert ban["failures"] >= 5
    assert ban["expires_at"] > ban["banned_at"]
    assert any(ATTACKER in line for line in ban["lines"])

    wait_for(lambda: ATTACKER in stack.kernel_set("ban4"), 30, "the address in the kernel set")

    assert not stack.tcp_connects("attacker", TARGET, PORT), "banned attacker still connects"
    assert stack.tcp_connects("bystander", TARGET, PORT), "an innocent bystander was cut off"


def test_unban_through_the_api_lets_the_address_in_again(stack):
    wait_for(lambda: ATTACKER in stack.kernel_set("ban4"), 60, "the ban from the previous test")

    status, _ = stack.api("DELETE", f"/api/v1/bans/{ATTACKER}")
    assert status == 401, "unban without a token must be refused"
    assert ATTACKER in stack.kernel_set("ban4")

    status, body = stack.api("DELETE", f"/api/v1/bans/{ATTACKER}", token=stack.token)
    assert status == 200 and body["was_active"] is True

    wait_for(lambda: ATTACKER not in stack.kernel_set("ban4"), 30, "the element to leave the set")
    assert stack.tcp_connects("attacker", TARGET, PORT)
    status, body = stack.api("GET", "/api/v1/bans")
    assert ATTACKER not in [b["address"] for b in body["bans"]]


def test_manual_ban_reaches_the_kernel_and_refuses_loopback(stack):
    status, body = stack.api("POST", "/api/v1/bans", {"address": "127.0.0.1"}, token=stack.token)
    assert status == 409 and "loopback" in body["error"]

    status, body = stack.api("POST", "/api/v1/bans", {"address": "198.51.100.300"}, token=stack.token)
    assert status == 422 and "address" in body["error"]

    status, _ = stack.api("POST", "/api/v1/bans",
                          {"address": "198.51.100.11", "duration": "5m", "reason": "test"},
                          token=stack.token)
    assert status == 201
    wait_for(lambda: "198.51.100.11" in stack.kernel_set("ban4"), 30, "the manual ban in the kernel")
    assert not stack.tcp_connects("bystander", TARGET, PORT)
    stack.api("DELETE", "/api/v1/bans/198.51.100.11", token=stack.token)
    wait_for(lambda: stack.tcp_connects("bystander", TARGET, PORT, timeout=2), 30,
             "the bystander to connect after its unban")


def test_api_healthz(stack):
    status, body = stack.api("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
