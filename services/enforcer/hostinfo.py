"""The host's own addresses, for the never-ban list.

Banning any of them cuts the host off: its interface addresses, its default
gateways (behind NAT or a proxy every client can appear to come from the
gateway) and its DNS resolvers.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from pyroute2 import AsyncIPRoute

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger("pyfilter.enforcer.hostinfo")

RESOLV_CONF = Path("/etc/resolv.conf")


async def own_addresses(resolv_conf: Path = RESOLV_CONF) -> set[Address]:
    """Interface addresses, default gateways and resolvers of the network namespace we run in.

    Async because pyroute2's synchronous IPRoute cannot run inside a running
    event loop.
    """
    async with AsyncIPRoute() as ipr:
        found = {*await _interface_addresses(ipr), *await _default_gateways(ipr)}
    try:
        found |= parse_resolv_conf(resolv_conf.read_text())
    except OSError as exc:
        log.warning("cannot read resolv.conf: resolvers are not on the never-ban list",
                    extra={"path": str(resolv_conf), "error": str(exc)})
    return found


def parse_resolv_conf(text: str) -> set[Address]:
    """The `nameserver` addresses of a resolv.conf text.

    Comments (# or ;) and other options are ignored, as is a zone suffix
    (fe80::1%eth0); a nameserver line that is not an address is logged and
    skipped.
    """
    found: set[Address] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        value = fields[1].split("%", 1)[0]
        try:
            found.add(_plain(ipaddress.ip_address(value)))
        except ValueError:
            log.warning("resolv.conf: a nameserver that is not an IP address, ignored",
                        extra={"line": number, "nameserver": fields[1]})
    return found


async def _interface_addresses(ipr: AsyncIPRoute) -> set[Address]:
    found: set[Address] = set()
    async for msg in await ipr.get_addr():
        # IFA_LOCAL is our side of a point-to-point link, IFA_ADDRESS the
        # peer there (and our address elsewhere): both stay unbanned.
        for attr in ("IFA_LOCAL", "IFA_ADDRESS"):
            value = msg.get_attr(attr)
            if value:
                found.add(_plain(ipaddress.ip_address(value.split("%", 1)[0])))
    return found


async def _default_gateways(ipr: AsyncIPRoute) -> set[Address]:
    found: set[Address] = set()
    for family in (2, 10):  # AF_INET, AF_INET6
        async for route in await ipr.get_default_routes(family=family):
            gateways = [route.get_attr("RTA_GATEWAY")]
            for hop in route.get_attr("RTA_MULTIPATH") or ():  # ECMP: one gateway per hop
                gateways.append(hop.get_attr("RTA_GATEWAY"))
            found.update(_plain(ipaddress.ip_address(g)) for g in gateways if g)
    return found


def _plain(addr: Address) -> Address:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4, the form bans use."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr
