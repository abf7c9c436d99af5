"""Envelopes: what wraps a log message, read once per line before any rule runs.

A syslog daemon, the journal or a container runtime wraps each message in a
header that says when, where and which program wrote it. Rules never see that
header: they are chosen by the program it names and match the message only.

    Nov 21 20:19:28 web1 sshd[4242]: Failed password for ...           RFC 3164
    <38>Nov 21 20:19:28 sshd[4242]: ...                                  (priority, no host)
    Oct 27 2015 09:24:46.123 web1 sshd[4242]: ...                        (year, fraction: macOS)
    2020-03-23 06:47:42.801612-0700  web1 sshd[3186]: ...                 (macOS `log show`)
    2026-11-21T20:19:28.551146+00:00 web1 sshd-session[65]: ...           rsyslog precise, our journal lines
    <38>1 2022-01-19T14:23:55+00:00 fw1 sshd 44255 - [meta x="1"] ...     RFC 5424
    web1 sshd[4242]: ...                                                  journal export, no time
    Jun 17 14:37:39 <mail.notice> robin sm-mta[2794]: ...                 BSD syslogd's facility.level
    ... sshd[4242]: [ID 800047 auth.info] ...                             Solaris message id
    ... sshd[4242]: kernel: [  970.699397] ...                            a kernel clock in the message
    Jun 20 02:18:39 vps auth.info sshd[13482]: ...                        syslog-ng/BusyBox priority
    2015-05-27T04:31:27.46667 auth.info: Invalid user ...                 socklog: no program
    2018-06-26 13:22:02.108781500 Failed password ...   @4000...         s6-log, multilog: no program
    ... vsftpd(pam_unix)[15522]: ...   [sshd]: ...   sogod [26818]: ...   proftpd[1] host (...)

rsyslog's `message repeated 5 times: [ msg]` is unwrapped: the message is
`msg` and it stands for 5 lines. A line with none of these headers is *plain*:
a daemon's own file (nginx's error log, an access log); its message is the
whole line, and its program is the one its source declares, if any.

`read_batch` does the work for a batch with one regex search over the joined
lines (C speed), which is why the header grammar lives in one expression.
Where the catalog is a few rules, `common_search` lets each rule's own search
read the common header instead (matcher.py, `FEW`).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from pyfilter.detector.matching.regex import ascii_digits, optional_branches

__all__ = ["Envelope", "BatchEnvelopes", "read", "read_batch", "common_search", "PLAIN"]

PLAIN = "plain"

# Timestamps a syslog header starts with. Year-less RFC 3164 (one- or
# two-digit day, space padded or not, maybe a year before the time, maybe a
# fraction); RFC 3339 as rsyslog's precise format and our journal lines write
# it, also with a space for the T (macOS: `2020-03-23 06:47:42.801612-0700  host`).
_STAMP_3164 = r"[A-Z][a-z]{2} {1,2}\d{1,2}(?: \d{4})? \d\d:\d\d:\d\d(?:\.\d+)?"
_STAMP_3339 = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z| ?[+-]\d\d:?\d\d)?"
_HOSTNAME = r"[\w.\-]++"
# A syslog priority written as text: syslog-ng's and BusyBox's `host auth.info sshd[1]:`,
# socklog's `stamp auth.info: message`.
_PROGRAM_NAME = r"[A-Za-z_][\w.\-/@]*+"
_PRIORITY = r"(?:auth|authpriv|cron|daemon|ftp|kern|lpr|mail|news|syslog|user|uucp|local\d)\.(?:emerg|alert|crit|err|warn|warning|notice|info|debug)"
_PROGRAM = _PROGRAM_NAME
# The batch form checks the shape of a priority only (cheaper than naming them).
_PRIORITY_SHAPE = r"[a-z]++\d?\.[a-z]++"

def _compile(source: str, flags: int = 0) -> re.Pattern[str]:
    # Optional groups as branches with an empty alternative, digits as [0-9]:
    # the same matches on real headers, faster in Python's engine (regex.py).
    return re.compile(ascii_digits(optional_branches(source)), flags)


# The RFC 3164 family. Groups: 1 the whole header (the message starts after
# it), 2 the stamp, 3 the stamp if RFC 3164, 4 host, 5 bracketed program
# (`[sshd]: `), 6 program, 7 pid, 8 repeat count.
# - A program is followed by ": ", or where a host precedes it by its pid and
#   a space (`host proftpd[12345] name`: without the host, asterisk's own
#   `[stamp] NOTICE[1638] ` would read as a program).
# - A bracketed program by ": ", or after an RFC 3164 stamp by a space alone
#   (metalog's `Jun 25 23:53:34 [sshd] User`): after other stamps, `[conn1] `
#   or `[Note] ` is a daemon's own file.
# - Without a stamp (journal export), the program must have a pid
#   (`web1 sshd[4242]: `), or every `word: text` line would read as a header.
_HEADER = (
    r"((?:<\d{1,3}>)?"
    r"(?:\[?((" + _STAMP_3164 + r")|" + _STAMP_3339 + r")\]? +(?:<[\w.]+> +)?"
    r"|(?=(?:" + _HOSTNAME + r" +)?" + _PROGRAM + r"(?:\([^()\s]*\))? ?\[\d+\]))"
    r"(?:(" + _HOSTNAME + r") +)?(?:" + _PRIORITY + r" +)?"
    r"(?:\[(" + _PROGRAM + r")\](?(3):? |: )"
    r"|(" + _PROGRAM + r")(?:\([^()\s]*\))?(?: ?\[(\d+)\])?(?:: |(?<=\])(?(4):? |: )))"
    r"(?:\[ID \d+ [\w.]+\] |kernel: ?\[ *\d+\.\d+\]:? )?"
    r"(?:message repeated (\d+) times: \[ ?)?)"
)
_LINE = _compile(_HEADER)


# The commonest header of all, `Mmm dd hh:mm:ss host prog[pid]: `, alone: a first pass
# with it costs about half the full grammar's. It takes a line only where the full
# grammar would read it the same (no Solaris id, kernel clock or repeat after it);
# the lines it leaves go through `_BATCH`. ASCII names only (cheaper to check): a host
# or program named in other letters is read by the full grammar too.
def _common(program: str, stamp: str = "", pid: str = "") -> str:
    """The common header, `program` (a regex) its program; `stamp`, `pid`: names for those groups."""
    return (r"(" + (stamp and f"?P<{stamp}>") + _STAMP_3164 + r") " + _HOSTNAME + r" " + program
            + r"(?:\[(" + (pid and f"?P<{pid}>") + r"\d+)\])?: (?!\[ID \d|kernel: ?\[|message repeated )")


_COMMON = _compile(r"\n(?:" + _common("(" + _PROGRAM_NAME + ")") + "|)", re.ASCII)
_IS_PROGRAM = _compile(_PROGRAM_NAME, re.ASCII)

# A rule's search reads the common header itself where the catalog is a few rules
# (`common_search`). The groups it adds, named as no rule's groups are.
STAMP, PID, MESSAGE, UNCOMMON = "env__stamp", "env__pid", "env__message", "env__uncommon"


def common_search(programs: Sequence[str], body: str) -> str | None:
    """A regex (source) over lines joined by newlines, a leading one included, that at each line:

    - where the line has the common header (`_COMMON`'s reading) and its program is one
      of `programs` (ASCII letters in any case: routing lowercases programs), matches
      `body` at the message: STAMP and PID are the header's, MESSAGE (empty) marks
      where the message starts;
    - where the line has no common header, matches its newline alone, UNCOMMON set:
      that line is for `read_batch` (another header, a repeat, a plain line);
    - else matches nothing (a common header of another program, or `body` fails).

    One search over a batch thus passes over other programs' lines without Python,
    and the lines it finds need no header read. `body` is a block regex
    (`regex.for_block`) that does not look back before the message's start.
    None where a program is not a plain name (a wildcard).
    """
    if not all(_IS_PROGRAM.fullmatch(p) for p in programs):
        return None
    names = "|".join(re.escape(p) for p in sorted(programs, key=len, reverse=True))
    header = _common(r"(?:(?P<env__ours>(?i:" + names + r"))|" + _PROGRAM_NAME + ")", STAMP, PID)
    # Atomic: a body that does not match must not send the search back into the
    # header, to read the line as one without a header.
    return (r"\n(?a:(?>" + ascii_digits(optional_branches(header)) + r"|))"
            r"(?(env__ours)(?P<" + MESSAGE + r">)(?:" + body + r")|(?(" + STAMP + r")(?!)|(?P<" + UNCOMMON + r">)))")


_IS_PRIORITY = _compile(_PRIORITY)
# Headers that name no program: socklog's `2015-05-27T04:31:27.46667 auth.info: `, s6-log's
# `2018-06-26 13:22:02.108781500 ` (nine digits) and multilog's `@4000000063a8...` (TAI64N).
# The message after them is a daemon's own text, routed as a plain line's.
_NO_PROGRAM = _compile(r"(?:(" + _STAMP_3339 + r") " + _PRIORITY + r": |(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\.\d{9}"
                         r"|@4000000[0-9a-fA-F]{17}) )")

# The batch form: the common headers only, with four groups (stamp, host,
# program, pid), so that `split` over the joined lines returns, per line,
# its stamp, host, program, pid and message in one flat list (C speed, no
# Python per line). Without a colon only `host prog[pid] ` is a header. A
# line it finds no header in is read again by `read` where it starts like
# one (the forms it leaves out: RFC 5424, metalog's `[prog] `, repeats).
_BATCH = _compile(
    r"\n(?:(?:<\d{1,3}>)?"
    r"(?:\[?(" + _STAMP_3164 + r"|" + _STAMP_3339 + r")\]? +(?:<[\w.]+> +)?"
    r"|(?=(?:" + _HOSTNAME + r" +)?" + _PROGRAM + r"(?:\([^()\s]*\))? ?\[\d+\]))"
    r"(?:(" + _HOSTNAME + r") +)?(?:" + _PRIORITY_SHAPE + r" +)?"
    r"\[?(" + _PROGRAM + r")(?:\([^()\s]*\))?\]?(?: ?\[(\d+)\])?(?:: |(?<=\d\])(?(2) |(?!)))"
    r"(?:\[ID \d+ [\w.]+\] |kernel: ?\[ *\d+\.\d+\]:? )?|)"
)

# RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID STRUCTURED-DATA MSG.
_RFC5424 = _compile(
    r"<\d{1,3}>1 (-|\S+) (-|\S+) (-|\S+) (-|\S+) (?:-|\S+) "
    r"(?:-|(?:\[(?:[^\]\"\\]|\\.|\"(?:[^\"\\]|\\.)*\")*\])+)(?: (?:\ufeff)?|$)"
    r"(?:message repeated (\d+) times: \[ ?)?"
)


class Envelope(NamedTuple):
    """One line's envelope. `start`: where the message begins in the line."""

    format: str  # "rfc3164", "rfc3339", "rfc5424", "no-time", "no-program" or PLAIN
    program: str | None
    pid: str | None
    stamp: str | None  # the timestamp text, as written
    host: str | None
    start: int
    repeat: int  # how many lines the message stands for (rsyslog's "message repeated")
    end: int | None = None  # where the message ends, if not at the line end (a repeat's "]")

    def message(self, text: str) -> str:
        return text[self.start:self.end]


def _repeat_end(text: str, repeat: str) -> int | None:
    return (len(text) - 1 if text.endswith("]") else None) if repeat else None


def read(text: str, program: str | None = None) -> Envelope:
    """The envelope of one line (`program`: what a plain line's source declares)."""
    m = _NO_PROGRAM.match(text)
    if m is not None:
        return Envelope("no-program", None, None, m.group(1) or m.group(2), None, m.end(), 1)
    m = _LINE.match(text)
    if m is not None:
        head, stamp, rfc3164, host, bracketed, prog, pid, repeat = m.groups()
        fmt = "rfc3164" if rfc3164 else "rfc3339" if stamp else "no-time"
        return Envelope(fmt, prog or bracketed, pid, stamp, host, len(head), int(repeat or 1),
                        _repeat_end(text, repeat))
    if text.startswith("<"):
        m = _RFC5424.match(text)
        if m is not None:
            stamp, host, app, pid, repeat = m.groups()
            return Envelope("rfc5424", None if app == "-" else app, None if pid == "-" else pid,
                            None if stamp == "-" else stamp, None if host == "-" else host, m.end(),
                            int(repeat or 1), _repeat_end(text, repeat))
    return Envelope(PLAIN, program, None, None, None, 0, 1)


_MONTHS = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
# An ISO stamp may start a header without a program (socklog, s6-log); only where the
# source declares none: a daemon's own file starting with a date is read as it is.
_CENTURIES = {"19", "20"}


class BatchEnvelopes:
    """The envelopes of a batch of lines, as parallel lists (the hot path's form).

    A plain line's program is None (`declared` is the one its source
    declares, if any), and so are its stamp and pid. `repeats`: line -> how many
    lines it stands for, where that is not one.
    """

    __slots__ = ("messages", "programs", "stamps", "pids", "declared", "repeats")

    def __init__(self, messages: list[str], programs: list[str | None], stamps: list[str | None],
                 pids: list[str | None], declared: str | None, repeats: dict[int, int]) -> None:
        self.messages = messages
        self.programs = programs
        self.stamps = stamps
        self.pids = pids
        self.declared = declared
        self.repeats = repeats

    def make_plain(self, i: int, text: str) -> None:
        """Read line `i` as a plain line after all (see matcher.py)."""
        self.messages[i] = text
        self.programs[i] = self.stamps[i] = self.pids[i] = None
        self.repeats.pop(i, None)


def read_batch(texts: Sequence[str], program: str | None = None) -> BatchEnvelopes:
    """`read` for every line of a batch: `split`s over the joined lines (`_COMMON`, then
    `_BATCH` for the lines it leaves).

    Lines the batch regexes find no header in are read again one by one where
    they may hold a rarer header (they start like one: "<", "[", "@", a month,
    or a year where the source declares no program), and so are repeats.
    """
    block = "\n" + "\n".join(texts)
    if block.count("\n") != len(texts):  # a line holds a newline: one by one
        parts = [""] + [x for text in texts for x in (None, None, None, text)]
    else:
        parts = _COMMON.split(block)
    stamps, programs, pids, messages = parts[1::4], parts[2::4], parts[3::4], parts[4::4]
    # The lines the common header did not take (it leaves repeats and the rarer
    # headers to the others): only they can need more than the common reading.
    rest = [i for i, prog in enumerate(programs) if prog is None] if None in programs else []
    if rest:  # the other headers: the full grammar over those lines
        full = _BATCH.split("\n" + "\n".join([texts[i] for i in rest]))
        for k, i in enumerate(rest):
            stamps[i], programs[i], pids[i], messages[i] = full[5 * k + 1], full[5 * k + 3], full[5 * k + 4], \
                full[5 * k + 5]
    repeats: dict[int, int] = {}
    if socklog := {p for p in set(programs) if p and _IS_PRIORITY.fullmatch(p)}:
        for i, prog in enumerate(programs):
            if prog in socklog:
                programs[i] = None  # read below, as a header that names no program
        rest = range(len(programs))  # (rare) every line is looked at again
    for i in rest:
        prog, text = programs[i], texts[i]
        if (prog is None and (text[:1] in "<[@" or text[:3] in _MONTHS
                              or (program is None and text[:2] in _CENTURIES))) \
                or "message repeated " in text:
            env = read(text, program)
            if env.format == PLAIN and prog is None:
                continue
            messages[i] = env.message(text)
            programs[i] = env.program if env.format not in (PLAIN, "no-program") else None
            stamps[i], pids[i] = env.stamp, env.pid
            if env.repeat != 1:
                repeats[i] = env.repeat
    return BatchEnvelopes(messages, programs, stamps, pids, program, repeats)
