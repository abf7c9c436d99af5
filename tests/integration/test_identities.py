"""Many hosts, each with its own Redis identity, over TLS: bans still reach every
host, a host's credentials open nothing but its part, and a removed host is
shut out while the others keep banning (docs/security.md).

Three "hosts" (containers, each its own network namespace) run the agent
profile from compose/agent.yml; the server profile from compose/server.yml
holds Redis (TLS on, with the deployment's CA from compose/tls.sh), the
detector and the api, each with its own Redis user (`pyfilter server init`).
As in a deployment, each host's user is made by `pyfilter server add-host`
once the server is up (what `make host-credentials` runs).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyfilter.common.keys import Keys
from tests.integration.stack import ROOT, make_log_dir, running, wait_for
from tests.integration.hosts import ATTACKER, HOSTS, ThreeHosts, ban_reaches_every_host
from tests.integration.test_pipeline import sshd_failures

pytestmark = pytest.mark.integration

OVERRIDE = os.path.join(os.path.dirname(__file__), "compose.identities.yml")


class Identities(ThreeHosts):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.tls = Path(tempfile.mkdtemp(prefix="pyfilter-it-tls-")) / "tls"
        subprocess.run([ROOT / "compose/tls.sh", self.tls, "redis"], check=True, capture_output=True)
        self.env |= {"PYFILTER_TLS_DIR": str(self.tls), "PYFILTER_REDIS_CA": str(self.tls / "ca.crt"),
                     **{f"PYFILTER_{role}_REDIS_PASSWORD": secrets.token_urlsafe(16)
                        for role in ("DETECTOR", "API", "NOTIFIER")}}
        self.urls: dict[str, str] = {}

    def up(self) -> None:
        """The server first; then each host's user, as `make host-credentials` makes it; then the agents."""
        server = ["redis", "users", "detector", "api", "attacker", *(f"host-{h}" for h in HOSTS)]
        self.compose("up", "-d", "--wait", "--wait-timeout", "120", *server)
        for h in HOSTS:
            self.urls[h] = self.add_host(f"host-{h}")
            self.env[f"URL_{h.upper()}"] = self.urls[h]
        super().up()

    def add_host(self, name: str) -> str:
        out = self.compose("--profile", "admin", "run", "--rm", "-T", "admin", "pyfilter", "server", "add-host",
                           name, "--url", "rediss://redis:6380/0").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)["PYFILTER_REDIS_URL"]

    def as_host(self, host: str, *command: str) -> str:
        """A Redis command with host `host`'s credentials, from inside its collector; its reply or error."""
        script = ("import os, sys, redis\n"
                  "c = redis.Redis.from_url(os.environ['PYFILTER_REDIS_URL'], ssl_ca_certs=os.environ['PYFILTER_REDIS_CA'])\n"
                  "try: print(c.execute_command(*sys.argv[1:]))\n"
                  "except redis.RedisError as e: print(type(e).__name__, e)\n")
        code, out = self.exec(f"collector-{host}", "python", "-c", script, *command)
        assert code == 0, out
        return out.strip()


@pytest.fixture(scope="module")
def hosts():
    stack = Identities(project=f"pyfilter-id-{os.getpid()}", log_dir=make_log_dir(),
                      files=[OVERRIDE])
    try:
        with running(stack):
            yield stack
    finally:
        if not os.environ.get("PYFILTER_KEEP_LOGS"):  # the hosts' logs; `running` removes log_dir
            for path in stack.logs.values():
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(stack.tls.parent, ignore_errors=True)


def test_hosts_with_their_own_users_over_tls_share_bans(hosts):
    ban_reaches_every_host(hosts)


# What a compromised host could try with its own credentials, in the real stack.
KEYS = Keys()
FORBIDDEN = {
    "write a decision": ("XADD", KEYS.decisions, "*", "m", "x"),
    "unban through the ledger": ("FCALL", "pyfilter_v1_unban", "1", KEYS.active_bans),
    "read another host's lines": ("XRANGE", KEYS.lines("host-b"), "-", "+"),
    "append to another host's lines": ("XADD", KEYS.lines("host-b"), "*", "m", "x"),
    "whitelist": ("SADD", KEYS.whitelist, "198.51.100.0/24"),
    "read a ban record": ("GET", KEYS.ban(ATTACKER)),
    "config set": ("CONFIG", "SET", "appendonly", "no"),
    "flushall": ("FLUSHALL",),
}


def test_a_hosts_user_is_refused_everything_but_its_part(hosts):
    for what, command in FORBIDDEN.items():
        assert hosts.as_host("a", *command).startswith("NoPermissionError"), what
    assert hosts.as_host("a", "XLEN", KEYS.lines("host-a")).isdigit()


def test_a_removed_host_is_shut_out_and_the_others_keep_banning(hosts):
    out = hosts.compose("--profile", "admin", "run", "--rm", "-T", "admin", "pyfilter", "server",
                        "remove-host", "host-c").stdout
    assert "its Redis user is gone" in out
    assert hosts.as_host("c", "PING").startswith("AuthenticationError")
    with open(hosts.logs["a"] / "auth.log", "a") as log:
        log.write(sshd_failures("198.51.100.74", 3))
    wait_for(lambda: all("198.51.100.74" in hosts.banned_on(h) for h in "ab"), 30,
             "hosts A and B to apply a ban after C was removed")
