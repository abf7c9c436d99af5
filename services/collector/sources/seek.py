"""Where a log's recent part begins: the first line inside a window, found by the lines' times.

A log the collector meets for the first time is read from its first line of
the last `lookback` seconds (the longest window of the rules it feeds), not
from its end, so an attack in progress when PyFilter starts counts; fail2ban
seeks to `findtime` the same way. A binary search over byte offsets reads the
time at the start of the first whole line after each probe (an access log's
`[21/Nov/2026:20:19:28 +0000]` after the address too), then lines are scanned
forward over the last stretch. A huge old log costs a few dozen small reads.

Logs are assumed to be in time order. Lines without a time we can read
(continuations, stack traces) are stepped over; a log with none at all, or
with nothing recent, is read from its end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from pyfilter.common.timeparse import parse_time

BLOCK = 65536  # bytes per read while scanning lines
LINEAR = 65536  # below this span the search scans lines instead of halving it
UNDATED_REACH = 262144  # bytes past a probe searched for a line with a time
STAMP_REACH = 256  # characters of a line where its time may be

TimeOf = Callable[[bytes], float | None]


def recent_start(fd: int, size: int, since: float, tz: str | None, now: float) -> int:
    """Offset of the first line stamped at or after `since`; after the last
    complete line if there is none (a log read "from its end")."""
    return first_at_or_after(fd, size, since, lambda line: line_time(line, tz, now))


def line_time(line: bytes, tz: str | None, now: float) -> float | None:
    """The time a line starts with, or the one after its first " [" (access logs)."""
    text = line[:STAMP_REACH].decode("utf-8", "replace")
    found = parse_time(text, tz, now)
    if found is None and (cut := text.find(" [")) >= 0:
        found = parse_time(text[cut + 1 :], tz, now)
    return found


def first_at_or_after(fd: int, size: int, since: float, time_of: TimeOf) -> int:
    lo, top, best = 0, size, size
    # Every dated line starting before `lo` is older than `since`; no dated
    # line starts in [top, best); `best` is the earliest recent one seen.
    while top - lo > LINEAR:
        mid = (lo + top) // 2
        found = next(_dated_lines(fd, mid, top, time_of, UNDATED_REACH), None)
        if found is None:
            top = mid
        elif found[2] >= since:
            best, top = found[0], mid
        else:
            lo = found[1]
    for start, _, when in _dated_lines(fd, lo, top, time_of, None):
        if when >= since:
            best = start
            break
    return best if best < size else end_of_last_line(fd, size)


def end_of_last_line(fd: int, size: int) -> int:
    """Where reading "from the end" starts: after the last complete line."""
    window = min(size, BLOCK)
    data = os.pread(fd, window, size - window)
    cut = data.rfind(b"\n")
    if cut < 0:
        return 0 if window == size else size
    return size - window + cut + 1


def _dated_lines(fd: int, pos: int, end: int, time_of: TimeOf,
                 reach: int | None) -> Iterator[tuple[int, int, float]]:
    """(start, end, time) of the complete lines with a time that start in
    [line start at or after `pos`, `end`); undated lines are stepped over,
    for at most `reach` bytes in a row (None: no limit)."""
    if pos > 0:  # a probe lands inside a line: begin after its newline
        pos -= 1
        while True:
            data = os.pread(fd, BLOCK, pos)
            if not data:
                return
            cut = data.find(b"\n")
            if cut >= 0:
                pos += cut + 1
                break
            pos += len(data)
    buf, i = b"", 0  # unread bytes, and where the next line starts in them
    at = undated_from = pos  # file offset of buf[i]
    while at < end:
        cut = buf.find(b"\n", i)
        if cut < 0:
            if reach is not None and at + len(buf) - i - undated_from > reach:
                return
            data = os.pread(fd, BLOCK, at + len(buf) - i)
            if not data:
                return  # a last line without its newline is not read as a whole line
            buf, i = buf[i:] + data, 0
            continue
        start, at = at, at + cut + 1 - i
        when = time_of(buf[i:cut])
        i = cut + 1
        if when is not None:
            yield start, at, when
            undated_from = at
        elif reach is not None and at - undated_from > reach:
            return
