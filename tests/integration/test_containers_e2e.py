"""End to end with nginx in a real container: whoever guesses its basic-auth password is dropped.

Nothing is written into a log by the test: nginx answers 401 and writes
"user "alice": password mismatch" to its stderr, Docker's json-file driver
puts that in the container's log under Docker's containers folder, and the
stack, as `make up` runs it with no configuration change, reads it there,
reads the image's name (nginx) to choose the rules, bans, and the enforcer in
nginx's network namespace drops the guesser.

The addresses of this machine's containers are never banned, and the test's
clients are containers of this machine: so they have no Docker network. The
test links each one to nginx with a veth pair it makes inside the two
containers' namespaces, with made-up addresses, the way a machine outside
reaches a published service.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

from tests.integration import sshd_images
from tests.integration.stack import ROOT, TEST_OVERRIDE, Stack, compose_files, make_log_dir, running, wait_for

ATTACKER, NGINX_FOR_ATTACKER = "198.51.100.194", "198.51.100.193"
CLIENT, NGINX_FOR_CLIENT = "198.51.100.198", "198.51.100.197"
PASSWORD = "correct-horse-battery"  # images/nginx/htpasswd
MAXRETRY = 5  # the nginx-http-auth rule's shipped threshold
CONTAINERS_OVERRIDE = Path(__file__).with_name("compose.containers.yml")

pytestmark = pytest.mark.integration


def require_the_rule_to_read_container_lines() -> None:
    """Fail at once, not after a 30 s wait, when the shipped configuration cannot ban this."""
    from pyfilter.common.config import load
    from pyfilter.detector.matching import Matcher

    line = ('2026/11/21 20:19:28 [error] 7#7: *1 user "alice": password mismatch, client: 198.51.100.7, '
            'server: localhost, request: "GET / HTTP/1.1", host: "web"')
    found = Matcher(load(ROOT / "config/pyfilter.yaml").rules).match(line, source="containers", program="nginx")
    if not any(f.rule == "nginx-http-auth" for f in found):
        pytest.fail("the shipped nginx-http-auth rule does not read nginx's lines from a container "
                    "(source 'containers', program nginx): check its `programs` and `sources`")


@pytest.fixture(scope="module")
def stack():
    require_the_rule_to_read_container_lines()
    engine = docker.from_env()
    image = sshd_images.build(engine, "nginx")
    files = [f for f in compose_files() if f != TEST_OVERRIDE] + [CONTAINERS_OVERRIDE]
    s = Stack(project=f"pyfilter-containers-{os.getpid()}", log_dir=make_log_dir(), files=files,
              docker_dir=Path(engine.info()["DockerRootDir"]) / "containers")
    s.env["PYFILTER_TEST_NGINX_IMAGE"] = image
    with running(s):
        link(s, "attacker", ATTACKER, NGINX_FOR_ATTACKER)
        link(s, "client", CLIENT, NGINX_FOR_CLIENT)
        yield s


def link(stack: Stack, who: str, address: str, nginx_address: str) -> None:
    """A veth pair made right inside `who`'s and nginx's namespaces (never this machine's)."""
    pid, nginx = (str(stack.container(name).attrs["State"]["Pid"]) for name in (who, "nginx"))
    peer = f"to-{who}"
    sh("ip", "link", "add", "eth0", "netns", pid, "type", "veth", "peer", "name", peer, "netns", nginx)
    for target, dev, addr in ((pid, "eth0", address), (nginx, peer, nginx_address)):
        sh("nsenter", "-t", target, "-n", "ip", "addr", "add", f"{addr}/30", "dev", dev)
        sh("nsenter", "-t", target, "-n", "ip", "link", "set", dev, "up")


def sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"


def get(stack: Stack, who: str, password: str) -> str:
    """One request from `who` with alice's name and `password`: the status, or "unreachable"."""
    nginx = NGINX_FOR_ATTACKER if who == "attacker" else NGINX_FOR_CLIENT
    script = (
        "import base64, urllib.error, urllib.request\n"
        f"token = base64.b64encode(b'alice:{password}').decode()\n"
        f"req = urllib.request.Request('http://{nginx}/', headers={{'Authorization': 'Basic ' + token}})\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=3).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
        "except OSError:\n"
        "    print('unreachable')\n")
    code, out = stack.exec(who, "python", "-c", script)
    assert code == 0, out
    return out.strip()


def active_ban(stack: Stack, address: str) -> dict | None:
    status, body = stack.api("GET", "/api/v1/bans")
    assert status == 200, body
    return next((b for b in body["bans"] if b["address"] == address), None)


def test_before_any_ban_both_clients_reach_nginx(stack):
    assert get(stack, "client", PASSWORD) == "200"
    assert get(stack, "attacker", PASSWORD) == "200"
    assert ATTACKER not in stack.kernel_set("ban4")


def test_password_guesser_is_banned_from_the_containers_log(stack):
    for attempt in range(MAXRETRY):
        assert get(stack, "attacker", f"guess-{attempt}") == "401"

    wait_for(lambda: ATTACKER in stack.kernel_set("ban4"), 30, f"{ATTACKER} in the kernel set ban4")
    ban = wait_for(lambda: active_ban(stack, ATTACKER), 10, f"a ban of {ATTACKER} in the API")
    assert ban["rule"] == "nginx-http-auth" and ban["host"] == "target-host"
    assert any('user "alice": password mismatch, client: ' + ATTACKER in line for line in ban["lines"])

    assert get(stack, "attacker", PASSWORD) == "unreachable"
    assert get(stack, "client", PASSWORD) == "200"
    assert active_ban(stack, CLIENT) is None


def test_status_shows_the_nginx_container_followed_and_its_rules_counts(stack):
    def containers_source():
        status, body = stack.api("GET", "/api/v1/status")
        assert status == 200, body
        host = next(h for h in body["hosts"] if h["host"] == "target-host")
        source = next(s for s in host["collector"]["sources"] if s["name"] == "containers")
        return (host, source) if source["containers"] else None

    host, source = wait_for(containers_source, 30, "the containers source's report with nginx followed")
    assert source["state"] == "found" and source["readable"] == ["/host/docker/containers"]
    assert [c for c in source["containers"] if c.endswith("-nginx-1 (nginx)")], source["containers"]
    rule = next(r for r in host["rules"] if r["rule"] == "nginx-http-auth")
    assert "containers" in rule["sources"] and rule["problem"] is None
    assert rule["failures_last_hour"] == MAXRETRY and rule["bans_last_hour"] == 1
    assert source["lines_last_hour"] >= MAXRETRY


def test_the_address_of_a_container_of_this_machine_is_never_banned(stack):
    redis = stack.container("redis").attrs["NetworkSettings"]["Networks"]
    (address,) = [n["IPAddress"] for n in redis.values() if n["IPAddress"]]
    status, body = stack.api("POST", "/api/v1/bans", {"address": address, "duration": "1h"}, token=stack.token)
    assert status == 409, body
    assert "this host" in str(body)
