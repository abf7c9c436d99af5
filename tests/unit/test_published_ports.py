"""A ban covers ports Docker publishes, with either backend, proven in namespaces the test makes.

What Docker does for `docker run -p 8080:8022 ...` (bridge network, iptables
enabled, the default) and what each namespace here stands for:

- "host": the Docker host. A bridge `docker0` with the gateway address, IP
  forwarding on, and the rules Docker writes, verbatim from `iptables-save`
  on a Docker host with only the addresses changed (172.17.0.0/16 becomes
  198.51.100.64/26): in `nat`, PREROUTING jumps to chain DOCKER for traffic
  to a local address, where `! -i docker0 -p tcp --dport 8080 -j DNAT
  --to-destination <container>:8022` rewrites it; in `filter`, FORWARD has
  policy DROP and jumps first to DOCKER-USER (which only RETURNs), then to
  the isolation chains, then accepts established traffic to docker0 and
  sends new traffic to chain DOCKER, whose ACCEPT lets the published port
  through. Plus the MASQUERADE rules of POSTROUTING.
- "container": a namespace whose veth is a port of that bridge, as Docker
  plugs each container's eth0; a server listens there on 8022 only.
- "client": a remote machine on the host's outside link, with two
  addresses (a banned one and one that is not).

So a client's connection to host:8080 takes exactly the path it takes on a
Docker host: DNAT in PREROUTING, then the FORWARD hook (never INPUT: nothing
on the host listens on 8080), where Docker's ACCEPT would let it through
unless our hook comes first. The nftables backend's forward chain runs at
priority -10, before iptables' filter table (priority 0) of either flavour;
the iptables backend jumps to chain `pyfilter` from the top of DOCKER-USER,
which Docker calls before its own rules. The rules are loaded with the nft
flavour of iptables (what Docker uses on Debian 12) and with the legacy one.
What is not reproduced, because it plays no part for remote clients:
docker-proxy (it only serves connections from the host itself, which never
pass PREROUTING) and the daemon itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil

import pytest

from pyfilter.enforcer.backends import make_backend
from pyfilter.enforcer.backends.base import Ban
from tests.unit.netns import PORT, connect_result, connects, inside, link, new_netns, sh, tcp_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "ipset", "iptables", "iptables-legacy")),
    reason="needs root, ip, ipset and iptables (apt-get install ipset iptables)",
)

PUBLISHED = 8080
HOST, BANNED, OTHER = "198.51.100.1", "198.51.100.2", "198.51.100.3"  # outside link, /26
GATEWAY, CONTAINER, BRIDGE_NET = "198.51.100.65", "198.51.100.66", "198.51.100.64/26"

DOCKER_RULES = f"""\
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {BRIDGE_NET} ! -o docker0 -j MASQUERADE
-A POSTROUTING -s {CONTAINER}/32 -d {CONTAINER}/32 -p tcp -m tcp --dport {PORT} -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport {PUBLISHED} -j DNAT --to-destination {CONTAINER}:{PORT}
COMMIT
*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d {CONTAINER}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {PORT} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""

FLAVOURS = {"nft": ("iptables", "ip6tables"), "legacy": ("iptables-legacy", "ip6tables-legacy")}


@pytest.fixture
def docker_host():
    """(host, container, client) namespaces wired as above; yields them once the port is published."""
    with new_netns() as host, new_netns() as container, new_netns() as client:
        link(host, "pf-ext", f"{HOST}/26", client, "pf-cli", f"{BANNED}/26")
        sh("ip", "-n", client, "addr", "add", f"{OTHER}/26", "dev", "pf-cli")
        sh("ip", "-n", host, "link", "add", "docker0", "type", "bridge")
        sh("ip", "-n", host, "addr", "add", f"{GATEWAY}/26", "dev", "docker0")
        sh("ip", "-n", host, "link", "set", "docker0", "up")
        link(host, "veth-c", "198.51.100.126/32", container, "eth0", f"{CONTAINER}/26")
        sh("ip", "-n", host, "addr", "flush", "dev", "veth-c")  # a bridge port has no address
        sh("ip", "-n", host, "link", "set", "veth-c", "master", "docker0")
        sh("ip", "-n", container, "route", "add", "default", "via", GATEWAY)
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield host, container, client


def publish(host: str, flavour: str) -> None:
    restore = f"{FLAVOURS[flavour][0]}-restore"
    sh("sh", "-c", f"ip netns exec {host} {restore} -w --noflush <<'EOF'\n{DOCKER_RULES}EOF")


def ban(host: str, backend_name: str, flavour: str, bans: list[Ban]) -> None:
    options = {}
    if backend_name == "iptables":
        options = dict(zip(("iptables", "ip6tables"), FLAVOURS[flavour]))

    async def main():
        backend = make_backend(backend_name, **options)
        try:
            await backend.init()
            await backend.ban(bans)
        finally:
            await backend.close()

    with inside(host):
        asyncio.run(main())


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
@pytest.mark.parametrize("backend_name", ["nftables", "iptables"])
def test_a_banned_client_cannot_reach_a_published_port_and_another_client_still_can(
        docker_host, backend_name, flavour):
    host, container, client = docker_host
    publish(host, flavour)

    with tcp_server(container, CONTAINER):
        # Reached through DNAT and FORWARD: the host itself listens on nothing.
        assert connects(client, BANNED, HOST, PUBLISHED)
        assert connect_result(client, BANNED, HOST, PORT) != "open"

        ban(host, backend_name, flavour, [Ban(ipaddress.ip_address(BANNED), 600)])

        assert connect_result(client, BANNED, HOST, PUBLISHED) == "timeout"
        assert connects(client, OTHER, HOST, PUBLISHED)


@pytest.mark.parametrize("backend_name", ["nftables", "iptables"])
def test_a_scoped_reject_on_the_container_port_refuses_the_published_port(docker_host, backend_name):
    """After DNAT the packet carries the container's port, so that is the port a scope names."""
    host, container, client = docker_host
    publish(host, "nft")

    with tcp_server(container, CONTAINER):
        ban(host, backend_name, "nft", [Ban(ipaddress.ip_address(BANNED), 600, (PORT,), "reject")])

        assert connect_result(client, BANNED, HOST, PUBLISHED) == "refused"
        assert connects(client, OTHER, HOST, PUBLISHED)
