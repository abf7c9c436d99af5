"""Netlink plumbing for the nftables backend, on top of pyroute2.

pyroute2 owns the socket, sequence numbers, acks and errors. Set element
lists are packed and parsed here with `struct` and travel as one opaque
attribute: pyroute2's generic attribute codec needs about 40 us per element
(4 s to encode 100,000 bans, measured), this needs about 1 us.

Wire facts used below (include/uapi/linux/netfilter/nf_tables.h):
- one attribute holds at most 64 KiB, so element lists go out in chunks;
- every change goes inside a BATCH_BEGIN .. BATCH_END pair and is applied
  atomically: if one message fails, nothing in the batch happens;
- a set element is a nest of KEY {DATA_VALUE}, FLAGS, TIMEOUT (ms, be64) and,
  when dumped, EXPIRATION (ms left, be64). An interval set holds a network
  as two elements: its first address, and the address just past its end
  flagged INTERVAL_END.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import NamedTuple

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_GETSETELEM,
    NFT_MSG_NEWSETELEM,
    nft_set_elem_list_msg,
)
from pyroute2.nftables.main import AsyncNFTables

from pyfilter.enforcer.backends.nlattr import (
    BE32 as _BE32,
    BE64 as _BE64,
    NLA_F_NESTED,
    attr as _attr,
    NLA_MAX_PAYLOAD,  # noqa: F401  (re-exported: the backend uses nft_netlink.*)
    chunks,  # noqa: F401
    walk as _walk,
)


log = logging.getLogger("pyfilter.enforcer.nftables")

NFPROTO_INET = 1
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11


# Attribute numbers of a set element (enum nft_set_elem_attributes).
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_DATA_VALUE = 1
NFT_SET_ELEM_INTERVAL_END = 0x1



class Element(NamedTuple):
    """One set element as the kernel reports it."""

    key: bytes
    interval_end: bool
    timeout_ms: int | None
    expires_ms: int | None


class RawElementList(nft_set_elem_list_msg):
    """A set element message whose element list stays raw bytes (packed here)."""

    nla_map = (
        ("NFTA_SET_ELEM_LIST_UNSPEC", "none"),
        ("NFTA_SET_ELEM_LIST_TABLE", "asciiz"),
        ("NFTA_SET_ELEM_LIST_SET", "asciiz"),
        ("NFTA_SET_ELEM_LIST_ELEMENTS", "cdata"),
        ("NFTA_SET_ELEM_LIST_SET_ID", "be32"),
    )


class NftSocket(AsyncNFTables):
    """pyroute2's nftables socket, decoding set element dumps as raw bytes."""

    policy = {
        **AsyncNFTables.policy,
        NFT_MSG_NEWSETELEM: RawElementList,
        NFT_MSG_GETSETELEM: RawElementList,
        NFT_MSG_DELSETELEM: RawElementList,
    }

    def __init__(self) -> None:
        # nfgen_family=1: the inet family; pyroute2 defaults to ip (2).
        super().__init__(nfgen_family=NFPROTO_INET)


# -- element lists -----------------------------------------------------------


def pack_element(key: bytes, timeout_ms: int | None = None, interval_end: bool = False) -> bytes:
    """One NFTA_LIST_ELEM nest: key, then flags and timeout if any."""
    body = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key))
    if interval_end:
        body += _attr(NFTA_SET_ELEM_FLAGS, _BE32.pack(NFT_SET_ELEM_INTERVAL_END))
    if timeout_ms is not None:
        body += _attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout_ms))
    return _attr(NFTA_LIST_ELEM | NLA_F_NESTED, body)


def parse_elements(raw: bytes) -> Iterator[Element]:
    """The elements of one NFTA_SET_ELEM_LIST_ELEMENTS payload."""
    for kind, start, end in _walk(raw):
        if kind != NFTA_LIST_ELEM:
            continue
        key, interval_end, timeout, expires = b"", False, None, None
        for akind, astart, aend in _walk(raw, start, end):
            if akind == NFTA_SET_ELEM_KEY:
                for dkind, dstart, dend in _walk(raw, astart, aend):
                    if dkind == NFTA_DATA_VALUE:
                        key = raw[dstart:dend]
            elif akind == NFTA_SET_ELEM_FLAGS:
                interval_end = bool(_BE32.unpack_from(raw, astart)[0] & NFT_SET_ELEM_INTERVAL_END)
            elif akind == NFTA_SET_ELEM_TIMEOUT:
                timeout = _BE64.unpack_from(raw, astart)[0]
            elif akind == NFTA_SET_ELEM_EXPIRATION:
                expires = _BE64.unpack_from(raw, astart)[0]
        yield Element(key, interval_end, timeout, expires)




def element_message(command: int, table: str, set_name: str, payload: bytes) -> RawElementList:
    """A NEWSETELEM / DELSETELEM message carrying an already packed element list."""
    msg = RawElementList()
    msg["attrs"] = [
        ["NFTA_SET_ELEM_LIST_TABLE", table],
        ["NFTA_SET_ELEM_LIST_SET", set_name],
        ["NFTA_SET_ELEM_LIST_ELEMENTS", payload],
    ]
    flags = NLM_F_REQUEST | NLM_F_ACK
    if command == NFT_MSG_NEWSETELEM:
        flags |= NLM_F_CREATE  # no NLM_F_EXCL: an existing element is not an error
    return prepare(msg, command, flags)


# -- requests ----------------------------------------------------------------


def prepare(msg, command: int, flags: int):
    """Fill the netlink and nfgen headers of an nftables message."""
    msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | command
    msg["header"]["flags"] = flags
    msg["nfgen_family"] = NFPROTO_INET
    return msg


def _batch_marker(kind: int) -> nfgen_msg:
    msg = nfgen_msg()
    msg["res_id"] = NFNL_SUBSYS_NFTABLES
    msg["header"]["type"] = kind
    msg["header"]["flags"] = NLM_F_REQUEST
    return msg


async def transact(sock: NftSocket, messages: list) -> None:
    """Send `messages` as one atomic nftables transaction and wait for every answer.

    Each message is acked (or refused) on its own. A refusal of the whole
    batch, such as EPERM without CAP_NET_ADMIN, is addressed to the BATCH_BEGIN
    marker instead, so that marker is watched too: without it the call would
    wait forever. Unlike pyroute2's nlm_request_batch, every answer is read
    before raising, so nothing is left queued on the socket. Raises the first
    error as pyroute2's NetlinkError (with the errno).
    """
    begin = NetlinkRequest(sock, _batch_marker(NFNL_MSG_BATCH_BEGIN))
    end = NetlinkRequest(sock, _batch_marker(NFNL_MSG_BATCH_END))
    acked = [NetlinkRequest(sock, msg) for msg in messages]
    data = bytearray()
    for request in [begin, *acked, end]:
        await request.prepare()
        data += request.msg.data
    end.cleanup()  # nothing ever comes back for the end marker
    sock.send(bytes(data))

    answers = asyncio.ensure_future(_first_error(acked))
    refusal = asyncio.ensure_future(_first_error([begin]))
    try:
        await asyncio.wait({answers, refusal}, return_when=asyncio.FIRST_COMPLETED)
        if refusal.done() and refusal.result() is not None:
            raise refusal.result()
        error = await answers
        if error is not None:
            raise error
    finally:
        for task in (answers, refusal):
            task.cancel()
        await asyncio.gather(answers, refusal, return_exceptions=True)


async def _first_error(requests: list[NetlinkRequest]) -> Exception | None:
    """Read every answer to `requests`; the first error among them, if any."""
    first = None
    pending = list(requests)
    try:
        while pending:
            request = pending.pop(0)
            try:
                async for _ in request.response():  # frees its sequence number when done
                    pass
            except NetlinkError as exc:
                first = first or exc
    finally:
        for request in pending:  # cancelled before reading these
            request.cleanup()
    return first


async def dump(sock: NftSocket, msg, command: int) -> list:
    """All messages of a dump request (GETSET, GETCHAIN, GETRULE, GETSETELEM)."""
    prepare(msg, command, NLM_F_REQUEST | NLM_F_DUMP)
    return [m async for m in await sock.nlm_request(msg, msg["header"]["type"], msg["header"]["flags"])]


async def dump_elements(sock: NftSocket, table: str, set_name: str, attempts: int = 5) -> list[Element]:
    """Every live element of one set (the kernel leaves out expired ones).

    A dump spans many messages, and the kernel resumes each one by skipping
    as many elements as it already sent. While a hash set is being resized
    (just after a large batch) the order changes between messages, and the
    dump repeats some elements and misses as many others. Repeats betray it:
    the dump is then taken again once the resize had time to finish.
    """
    elements: list[Element] = []
    for attempt in range(1, attempts + 1):
        msg = RawElementList()
        msg["attrs"] = [["NFTA_SET_ELEM_LIST_TABLE", table], ["NFTA_SET_ELEM_LIST_SET", set_name]]
        elements = []
        for reply in await dump(sock, msg, NFT_MSG_GETSETELEM):
            raw = reply.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
            if raw:
                elements.extend(parse_elements(raw))
        if len({(e.key, e.interval_end) for e in elements}) == len(elements):
            return elements
        await asyncio.sleep(0.05 * attempt)
    log.warning("a set kept changing order while being read; some elements may be missing",
                extra={"set": set_name, "elements": len(elements)})
    return list({(e.key, e.interval_end): e for e in elements}.values())
