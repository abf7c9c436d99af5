"""Netlink plumbing for the ipset backend, on top of pyroute2's AsyncIPSet.

pyroute2 owns the socket, the protocol version handshake, sequence numbers,
acks and errors, and creates and destroys sets. Element lists are packed and
parsed here with `struct` and travel as one opaque IPSET_ATTR_ADT attribute:
one ADD or DEL message then carries about 2,000 elements (the attribute
holds at most 64 KiB), where pyroute2's `add()` sends one message per
element and decodes each attribute generically (seconds for 100,000 bans).

Wire facts used below (include/uapi/linux/netfilter/ipset/ip_set.h and
net/netfilter/ipset/ip_set_core.c):
- an ADD or DEL message holds either one IPSET_ATTR_DATA or an IPSET_ATTR_ADT
  nest of many (then with an IPSET_ATTR_LINENO); the kernel applies them in
  order;
- without NLM_F_EXCL, adding an element that is there replaces its timeout
  and deleting one that is not there is no error (`ipset -exist`);
- an element is DATA {IP {IPADDR_IPV4 | IPADDR_IPV6}, CIDR (u8, networks),
  TIMEOUT (be32 seconds)}; integers in network byte order carry
  NLA_F_NET_BYTEORDER, which the kernel checks;
- a listed element's TIMEOUT is the time it has left, 0 if it is permanent;
- timeouts above IPSET_MAX_TIMEOUT (about 24.8 days) are cut to it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pyroute2.ipset import AsyncIPSet
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_IPSET, nfgen_msg
from pyroute2.netlink.nfnetlink.ipset import (
    IPSET_CMD_ADD,
    IPSET_CMD_DEL,
    IPSET_CMD_LIST,
    IPSET_FLAG_LIST_HEADER,
    IPSET_FLAG_LIST_SETNAME,
)

from pyfilter.enforcer.backends.nlattr import (
    BE32 as _BE32,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    attr as _attr,
    chunks,
    walk as _walk,
)


# enum ipset_adt_attr / ipset_attr_ip
IPSET_ATTR_DATA = 7
IPSET_ATTR_IP = 1
IPSET_ATTR_CIDR = 3
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_IPADDR_IPV4 = 1
IPSET_ATTR_IPADDR_IPV6 = 2
MAX_TIMEOUT = (0xFFFFFFFF >> 1) // 1000


Target = ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network


class RawIpsetMsg(nfgen_msg):
    """An ipset message whose element list (IPSET_ATTR_ADT) stays raw bytes."""

    nla_map = (
        ("IPSET_ATTR_UNSPEC", "none"),
        ("IPSET_ATTR_PROTOCOL", "uint8"),
        ("IPSET_ATTR_SETNAME", "asciiz"),
        ("IPSET_ATTR_TYPENAME", "asciiz"),
        ("IPSET_ATTR_REVISION", "uint8"),
        ("IPSET_ATTR_FAMILY", "uint8"),
        ("IPSET_ATTR_FLAGS", "be32"),
        ("IPSET_ATTR_DATA", "cdata"),
        ("IPSET_ATTR_ADT", "cdata", NLA_F_NESTED),
        ("IPSET_ATTR_LINENO", "be32"),
        ("IPSET_ATTR_PROTOCOL_MIN", "uint8"),
    )


class IpsetSocket(AsyncIPSet):
    """pyroute2's ipset socket, decoding set listings with raw element lists."""

    def __init__(self) -> None:
        super().__init__()
        self.register_policy({(NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST: RawIpsetMsg})


class Element(NamedTuple):
    """One element as the kernel lists it: seconds left, None if permanent."""

    target: Target
    remaining: int | None


# -- element lists -------------------------------------------------------------


def pack_element(target: Target, timeout: int | None = None) -> bytes:
    """One DATA nest. `timeout` None: no timeout attribute (the set's default, or delete)."""
    network = isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    address = target.network_address if network else target
    family = IPSET_ATTR_IPADDR_IPV4 if address.version == 4 else IPSET_ATTR_IPADDR_IPV6
    body = _attr(IPSET_ATTR_IP | NLA_F_NESTED, _attr(family | NLA_F_NET_BYTEORDER, address.packed))
    if network:
        body += _attr(IPSET_ATTR_CIDR, bytes([target.prefixlen]))
    if timeout is not None:
        body += _attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, _BE32.pack(min(timeout, MAX_TIMEOUT)))
    return _attr(IPSET_ATTR_DATA | NLA_F_NESTED, body)


def parse_elements(raw: bytes, network: bool) -> Iterator[Element]:
    """The elements of one IPSET_ATTR_ADT payload of a listing."""
    for kind, start, end in _walk(raw):
        if kind != IPSET_ATTR_DATA:
            continue
        address, cidr, left = None, None, None
        for akind, astart, aend in _walk(raw, start, end):
            if akind == IPSET_ATTR_IP:
                for _, dstart, dend in _walk(raw, astart, aend):
                    address = ipaddress.ip_address(raw[dstart:dend])
            elif akind == IPSET_ATTR_CIDR:
                cidr = raw[astart]
            elif akind == IPSET_ATTR_TIMEOUT:
                left = _BE32.unpack_from(raw, astart)[0] or None
        if address is not None:
            target = ipaddress.ip_network((address, cidr)) if network and cidr is not None else address
            yield Element(target, left)




# -- requests ------------------------------------------------------------------


def _is_error(msg) -> bool:
    return msg["header"]["type"] == NLMSG_ERROR


async def change(sock: IpsetSocket, command: int, set_name: str, elements: Iterable[bytes]) -> None:
    """Add (IPSET_CMD_ADD) or delete (IPSET_CMD_DEL) packed elements, ~2,000 per message.

    No NLM_F_EXCL: adding replaces the timeout of an element already there,
    deleting an absent one is no error. Raises pyroute2's IPSetError.
    """
    assert command in (IPSET_CMD_ADD, IPSET_CMD_DEL)
    for payload in chunks(elements):
        msg = RawIpsetMsg()
        msg["attrs"] = [
            ["IPSET_ATTR_PROTOCOL", sock._proto_version],
            ["IPSET_ATTR_SETNAME", set_name],
            ["IPSET_ATTR_ADT", payload],
            ["IPSET_ATTR_LINENO", 0],  # the kernel wants it with an ADT list
        ]
        await sock.request(msg, command, msg_flags=NLM_F_REQUEST | NLM_F_ACK, terminate=_is_error)


async def list_elements(sock: IpsetSocket, set_name: str, network: bool) -> list[Element]:
    """Every element of one set (the kernel leaves out expired ones)."""
    msg = RawIpsetMsg()
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", sock._proto_version], ["IPSET_ATTR_SETNAME", set_name]]
    found: list[Element] = []
    async for reply in sock.request_iter(msg, IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP):
        raw = reply.get_attr("IPSET_ATTR_ADT")
        if raw:
            found.extend(parse_elements(raw, network))
    return found


async def set_names(sock: IpsetSocket) -> list[str]:
    """The names of every set in this network namespace (`ipset list -n`)."""
    msg = RawIpsetMsg()
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", sock._proto_version], ["IPSET_ATTR_FLAGS", IPSET_FLAG_LIST_SETNAME]]
    return [r.get_attr("IPSET_ATTR_SETNAME") async for r in
            sock.request_iter(msg, IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP)]


async def set_header(sock: IpsetSocket, set_name: str) -> tuple[str, int, bool]:
    """(type, address family, whether elements can time out) of one set (`ipset list -t`)."""
    msg = RawIpsetMsg()
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", sock._proto_version], ["IPSET_ATTR_SETNAME", set_name],
                    ["IPSET_ATTR_FLAGS", IPSET_FLAG_LIST_HEADER]]
    async for reply in sock.request_iter(msg, IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP):
        data = reply.get_attr("IPSET_ATTR_DATA") or b""
        timeout = any(kind == IPSET_ATTR_TIMEOUT for kind, _, _ in _walk(data))
        return reply.get_attr("IPSET_ATTR_TYPENAME"), reply.get_attr("IPSET_ATTR_FAMILY"), timeout
    return "", 0, False


AF = {4: socket.AF_INET, 6: socket.AF_INET6}
