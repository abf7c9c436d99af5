"""Firewall backends of the enforcer, chosen by name (config `enforcer.backend`).

"auto" picks nftables when the kernel has nf_tables, iptables (with ipset)
otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Any

from pyfilter.enforcer.backends.base import Backend, Ban

__all__ = ["BACKENDS", "Backend", "Ban", "make_backend", "nftables_available"]

BACKENDS = ("nftables", "iptables", "log-only", "auto")

log = logging.getLogger("pyfilter.enforcer.backend")

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2


def make_backend(name: str, **options: Any) -> Backend:
    """The backend called `name`; `options` go to its constructor."""
    if name == "auto":
        name = "nftables" if nftables_available() else "iptables"
        log.info("firewall backend chosen", extra={"backend": name})
    # Imported here so that a log-only enforcer never needs nftables support.
    if name == "nftables":
        from pyfilter.enforcer.backends.nftables import NftablesBackend

        return NftablesBackend(**options)
    if name == "iptables":
        from pyfilter.enforcer.backends.ipset import IpsetBackend

        return IpsetBackend(**options)
    if name == "log-only":
        from pyfilter.enforcer.backends.log_only import LogOnlyBackend

        return LogOnlyBackend(**options)
    raise ValueError(f"unknown firewall backend {name!r}: expected one of {', '.join(BACKENDS)}")


def nftables_available() -> bool:
    """Whether this kernel answers nftables requests (nf_tables built in or loadable).

    Asks for the ruleset generation, the smallest nftables request: a kernel
    without nf_tables answers EOPNOTSUPP (or has no netfilter netlink at all).
    Plain sockets, so it also works inside a running event loop.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return False
    with sock:
        sock.settimeout(2)
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg: family, version, res_id
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                             NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        try:
            sock.send(header + body)
            while True:
                reply = sock.recv(65536)
                _, kind = struct.unpack_from("=IH", reply)
                if kind != NLMSG_ERROR:
                    return True  # the generation itself (its ack follows)
                code = -struct.unpack_from("=i", reply, 16)[0]
                if code:
                    log.info("nftables not available", extra={"error": os.strerror(code)})
                    return False
                return True  # a bare ack
        except OSError as exc:
            log.info("nftables not available", extra={"error": str(exc)})
            return False
