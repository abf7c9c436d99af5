"""What the three-host stacks (test_multihost: shared password, Sentinel;
test_identities: a Redis user per host, TLS) both check: an attack seen on one
host is dropped by every host's kernel."""

from __future__ import annotations

import time

from tests.integration.stack import AIRGAPPED, BASE_IMAGE, Stack, make_log_dir, wait_for
from tests.integration.test_pipeline import sshd_failures

HOSTS = {"a": "198.51.100.81", "b": "198.51.100.82", "c": "198.51.100.83"}
ATTACKER = "198.51.100.70"


class ThreeHosts(Stack):
    """Hosts a, b and c, each with its own log folder (LOG_A...), and the server's Redis."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.logs = {h: make_log_dir(auth_log=True) for h in HOSTS}
        for h, path in self.logs.items():
            self.env[f"LOG_{h.upper()}"] = str(path)
        # agent.yml insists on a URL; the test's services set their own.
        self.env["PYFILTER_REDIS_URL"] = "redis://unused"
        if AIRGAPPED:
            self.env["PYFILTER_REDIS_IMAGE"] = BASE_IMAGE

    def banned_on(self, host: str) -> set[str]:
        return set(self.kernel_set("ban4", enforcer=f"enforcer-{host}"))

    def network(self) -> str:
        return f"{self.project}_default"


def ban_reaches_every_host(hosts) -> None:
    """Three failures in host a's auth.log: the attacker reaches every host before,
    none after, and the api's record names host a and sshd. Prints when the ban
    reached each host's kernel."""
    for ip in HOSTS.values():
        assert hosts.tcp_connects("attacker", ip, 8080)

    with open(hosts.logs["a"] / "auth.log", "a") as log:
        log.write(sshd_failures(ATTACKER, 3))
    written = time.monotonic()

    arrived = {}
    def everywhere():
        for h in HOSTS:
            if h not in arrived and ATTACKER in hosts.banned_on(h):
                arrived[h] = time.monotonic() - written
        return len(arrived) == len(HOSTS)
    wait_for(everywhere, 30, f"{ATTACKER} in the kernel of every host", interval=0.02)
    spread = max(arrived.values()) - min(arrived.values())
    print(f"\nban of {ATTACKER} reached hosts after (s from the log write): "
          + ", ".join(f"{h}={t:.3f}" for h, t in sorted(arrived.items()))
          + f"; last host {spread:.3f} s after the first")

    status, record = hosts.api("GET", f"/api/v1/bans/{ATTACKER}")
    assert status == 200 and record["host"] == "host-a" and record["rule"] == "sshd"
    for ip in HOSTS.values():
        assert not hosts.tcp_connects("attacker", ip, 8080), f"attacker still reaches {ip}"
