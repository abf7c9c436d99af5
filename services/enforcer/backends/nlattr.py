"""Netlink attributes packed and walked by hand, for the two set backends.

pyroute2's generic encoders cost microseconds per element; a 100,000-ban
batch is built here as raw bytes instead (type-length-value, 4-byte aligned).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF
NLA_MAX_PAYLOAD = 0xFFFF - 4

HEADER = struct.Struct("=HH")
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute: header, payload, padding to 4 bytes."""
    return HEADER.pack(4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def walk(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(attribute type, payload start, payload end) of each attribute in buf[start:end]."""
    end = len(buf) if end is None else end
    offset = start
    while offset + 4 <= end:
        length, kind = HEADER.unpack_from(buf, offset)
        if length < 4:
            raise ValueError(f"malformed netlink attribute at byte {offset}: length {length}")
        yield kind & NLA_TYPE_MASK, offset + 4, offset + length
        offset += (length + 3) & ~3


def chunks(elements: Iterable[bytes], limit: int = NLA_MAX_PAYLOAD) -> Iterator[bytes]:
    """Concatenate packed elements into payloads of at most `limit` bytes each."""
    current: list[bytes] = []
    size = 0
    for element in elements:
        if size + len(element) > limit and current:
            yield b"".join(current)
            current, size = [], 0
        current.append(element)
        size += len(element)
    if current:
        yield b"".join(current)
