"""The placeholders a rule's patterns are written with, and the address forms they capture.

    <HOST>    an IPv4 or IPv6 address or a host name, captured as `host`
              (a leading `::ffff:` of an IPv4-mapped address is not captured;
              `[...]` around an address and an IPv6 zone `%eth0` are taken off)
    <ADDR>    the same, IP addresses only
    <USER>    any text, as little as possible, captured as `user`
    <PID>     a process or connection id, captured as `pid` (the connection key)
    <PATH>    a request path (from its `/` up to a query, a quote or a space;
              backslash escapes, JSON's and Apache's, read whole), captured as
              `value`: what a distinct window counts, percent-decoded once
              (`decode_path`) before it is compared and counted
    <SYSLOG>  a whole syslog header, for rules without `programs` (which match
              whole lines, as before envelopes existed): `^`, an optional
              timestamp, an optional host name
"""

from __future__ import annotations

import re

__all__ = ["PLACEHOLDERS", "decode_path", "expand", "normalize_host", "strip_placeholders"]

_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_IPV6 = (r"(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,6}(?:" + _IPV4 + r"|[0-9A-Fa-f]{1,4})?"
         r"(?:%[\w.\-]{1,32})?")
_HOSTNAME = r"(?=[\w.-]*[A-Za-z])[A-Za-z0-9_](?:[\w-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[\w-]*[A-Za-z0-9])?)*"
_TIMESTAMP = (
    r"(?:(?:<\d{1,3}>\d{1,2} )?\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\w{3} +\d{1,2} +\d{1,2}:\d{2}:\d{2}(?:\.\d+)?"
    r"|\d{1,2}-\w{3}-\d{4} \d{1,2}:\d{2}:\d{2}(?:\.\d+)?"
    r"|@[0-9a-fA-F]{24})"
)
PLACEHOLDERS = {
    "<HOST>": rf"(?:::ffff:)?(?P<host>{_IPV4}|{_IPV6}|{_HOSTNAME})",
    "<ADDR>": rf"(?:::ffff:)?(?P<host>{_IPV4}|{_IPV6})",
    "<USER>": r"(?P<user>.*?)",
    "<PID>": r"(?P<pid>\d+)",
    "<PATH>": r"(?P<value>/[^\s\"\\?]*+(?:\\.[^\s\"\\?]*+)*+)",
    "<SYSLOG>": rf"^\s*(?:{_TIMESTAMP} +)?(?:[^\s\[\]]+ +)??",
}
_PLACEHOLDER = re.compile("|".join(re.escape(k) for k in PLACEHOLDERS))


def expand(pattern: str) -> str:
    """Replace the placeholders of a catalog pattern by their regular expressions."""
    return _PLACEHOLDER.sub(lambda m: PLACEHOLDERS[m.group(0)], pattern)


def strip_placeholders(pattern: str) -> str:
    """The pattern with each placeholder replaced by an empty group (for literal extraction)."""
    return _PLACEHOLDER.sub("(?:)", pattern)


# What a decoded path may hold: what <PATH> reads (printable ASCII but a quote, a
# backslash and `?`), so the line matched again with it keeps its shape.
_DECODED = frozenset(chr(b) for b in range(0x21, 0x7F)) - set('"\\?')
# Each escape's two hex digits, in either case, -> what it is read as. (A table and a
# split, not re.sub with a function: a 16 KB path of escapes took 9 ms that way.)
_ESCAPES = {f"{hi}{lo}": (chr(int(hi + lo, 16)) if chr(int(hi + lo, 16)) in _DECODED else f"%{hi}{lo}".upper())
            for hi in "0123456789abcdefABCDEF" for lo in "0123456789abcdefABCDEF"}


def decode_path(path: str) -> str:
    """A request path's percent-encoding decoded once, as the server reads it: `/%2eenv`
    is `/.env`, `/.git%2Fconfig` is `/.git/config` (scanners encode probes so that a
    filter comparing text misses them). Kept encoded (hex in capitals, so `%0a` and `%0A`
    are one path): what is no printable ASCII (NUL, control characters, a space, the bytes
    of UTF-8), a quote, a backslash and `?`, which would change the line's shape; and
    what is no escape (`%zz`, a `%` at the end) stays as it is. Once: `%252e` is `%2e`."""
    if "%" not in path:
        return path
    head, *rest = path.split("%")
    out = [head]
    for part in rest:
        read = _ESCAPES.get(part[:2])
        out.append(read + part[2:] if read is not None else "%" + part)
    return "".join(out)


def normalize_host(host: str) -> str:
    """`::ffff:a.b.c.d` -> `a.b.c.d`; `[2001:db8::1]` -> `2001:db8::1`; `fe80::1%eth0` -> `fe80::1`."""
    if host.startswith("["):
        host = host.strip("[]")
    if "%" in host:
        host = host.partition("%")[0]
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host
