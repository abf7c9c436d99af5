"""A fail2ban filter's regular expressions as a PyFilter rule (docs/import.md says why each step).

fail2ban matches a line in three steps: it cuts the date out (`datepattern`),
matches `prefregex` (whose `<F-CONTENT>` part goes on), then each `failregex`
(searched, so only a leading `^` anchors it). A rule's patterns match the
message after the envelope, from its first character, after the rule's
`prefix` (docs/rules.md). So:

- syslog filters (those using common.conf's `__prefix_line`): the envelope
  reads the header; the prefix mark and the `^` before it are dropped, and
  `_daemon` becomes `programs`;
- other filters read a daemon's own file: the date is put back where fail2ban
  cut it (optional, as fail2ban accepts lines without one), and the jail's
  name is the program its source declares;
- `<HOST>`, `<ADDR>` stay; `<IP4>`/`<IP6>` are `<ADDR>` restricted to a family;
  `<F-USER>`, `<F-ALT_USER>`, `<F-ID>` become the `user`, `ruser`, `host` captures;
- a pattern starting with `<F-NOFAIL>` notes a connection's address, one with
  `<F-MLFGAINED>` is a success, `<F-NOFAIL><F-MLFFORGET>` ends a connection;
- a pattern fail2ban does not anchor gets a leading `.*?` (it is searched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from pyfilter.cli.imports.fail2ban_filter import PREFIX, Filter
from pyfilter.cli.imports.fail2ban_forms import Dates, Untranslatable, daemon_globs, dates, with_date
from pyfilter.common.config import Rule
from pyfilter.detector.matching import Matcher, RuleError


@dataclass
class Translation:
    rule: dict
    notes: list[str] = field(default_factory=list)


MARK = "\x00lead\x00"  # where the date a syslog prefix allows goes, once the pattern is converted
_F_TAG = re.compile(r"<(/?)F-([A-Za-z0-9_]+)>")
_OURS = re.compile(r"(?<!\?P)<(USER|PID|SYSLOG|NOTE|SUCCESS|CLOSE|ONCE)>")
_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")
UNSUPPORTED_TAGS = {
    "<DNS>": "matches host names only, and PyFilter never resolves a name an attacker controls",
    "<CIDR>": "bans networks, which PyFilter's rules do not (ipv6_prefix aside)",
    "<SUBNET>": "bans networks, which PyFilter's rules do not (ipv6_prefix aside)",
    "<SKIPLINES>": "matches across lines (maxlines), which PyFilter's rules do not",
}


def _group_end(rx: str, start: int) -> int:
    """Index of the `)` closing the group open before `start` (len(rx) at top level)."""
    depth, i, klass = 0, start, False
    while i < len(rx):
        c = rx[i]
        if c == "\\":
            i += 2
            continue
        if klass:
            klass = c != "]" or rx[i - 1] == "["
        elif c == "[":
            klass = True
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return len(rx)


def scoped_flags(rx: str) -> str:
    """`((?i)LOGIN|PLAIN)` -> `((?i:LOGIN|PLAIN))`: Python 3.11 takes global flags at the start only."""
    while True:
        m = next((m for m in _FLAGS.finditer(rx) if m.start() > 0), None)
        if m is None:
            return rx
        end = _group_end(rx, m.end())
        rx = rx[:m.start()] + f"(?{m.group(1)}:" + rx[m.end():end] + ")" + rx[end:]


def convert(rx: str, *, failure: bool) -> tuple[str, list[str]]:
    """One fail2ban regex (prefix mark and `^` already handled) in our syntax, and notes.

    Raises Untranslatable for what PyFilter cannot match the same way.
    """
    notes: list[str] = []
    for tag, why in UNSUPPORTED_TAGS.items():
        if tag in rx:
            raise Untranslatable(f"{tag} {why}")
    if "(?(" in rx:
        raise Untranslatable("a conditional group (?(name)...): patterns are joined, which renames groups")
    kind = ""
    if failure:
        skip = len(MARK) if rx.startswith(MARK) else 0
        lead = re.match(r"(?:<F-(?:NOFAIL|MLFFORGET|MLFGAINED)>)+", rx[skip:])
        opened = set(re.findall(r"<F-(\w+)>", lead.group(0))) if lead else set()
        if "MLFGAINED" in opened:
            kind = "<SUCCESS>"
        elif {"NOFAIL", "MLFFORGET"} <= opened:
            kind = "<CLOSE>"
        elif "NOFAIL" in opened:
            kind = "<NOTE>"
        if "<F-NOFAIL>" in rx[skip + (len(lead.group(0)) if lead else 0):]:
            raise Untranslatable("<F-NOFAIL> inside the pattern (a failure or not by branch)")
    if "<F-MLFID>" in rx:
        raise Untranslatable("<F-MLFID> (a multi-line failure id) other than the syslog prefix")
    has_host = bool(re.search(r"<(?:HOST|ADDR|IP4|IP6)>|<F-(?:IP4|IP6|ADDR|HOST)>", rx))
    used: set[str] = set()
    stack: list[str] = []

    def tag(m: re.Match[str]) -> str:
        closing, name = m.group(1), m.group(2).upper()
        if closing:
            if not stack or stack.pop() != name:
                raise Untranslatable(f"</F-{m.group(2)}> does not close the last <F-...> opened")
            return ")"
        stack.append(name)
        capture = {"USER": "user", "IP4": "host", "IP6": "host", "ADDR": "host", "HOST": "host"}.get(name)
        if name.startswith("ALT_USER"):
            capture = "ruser"
        elif name == "ID":
            capture = None if has_host else "host"
            if failure and not has_host:
                notes.append("<F-ID> is read as the address: an id that is not one is never banned")
        if capture and capture not in used:
            used.add(capture)
            return f"(?P<{capture}>"
        return "(?:"

    out = _F_TAG.sub(tag, rx)
    if stack:
        raise Untranslatable(f"<F-{stack[-1]}> is never closed")
    # fail2ban's (?P<USER>...) is our user capture; other names of ours are not to be expanded
    out = out.replace("(?P<USER>", "(?P<user>").replace("(?P=USER)", "(?P=user)")
    out = re.sub(r"\(\?P([<=])(PID|SYSLOG|HOST|ADDR)\b", r"(?P\1f2b_\2", out)
    out = _OURS.sub(lambda m: "\\" + m.group(0), out)  # our own tags, written literally by fail2ban's
    out = out.replace("<IP4>", r"(?=\d{1,3}\.\d)<ADDR>").replace("<IP6>", r"(?=[0-9A-Fa-f]{0,4}:)<ADDR>")
    return kind + scoped_flags(out), notes


def strip_start(rx: str, lead: str = "") -> tuple[str, bool]:
    """(`rx` with `lead` for the syslog prefix mark and no leading `^`, whether fail2ban anchored it).

    The envelope reads a syslog header; what is left of the prefix for a
    daemon's own file (fail2ban's `__prefix_line` is all optional parts) is its
    date, which `lead` reads."""
    anchored = rx.startswith("^")
    rx = rx.lstrip("^")
    if rx.startswith("<F-MLFID>" + PREFIX):
        # The connection id is the prefix (and what follows it up to </F-MLFID>):
        # our connections are the envelope's pid.
        rest = rx[len("<F-MLFID>" + PREFIX):]
        end = rest.find("</F-MLFID>")
        rx = lead + (rest if end < 0 else "(?:" + rest[:end] + ")" + rest[end + len("</F-MLFID>"):])
        anchored = True
    elif rx.startswith(PREFIX):
        rx, anchored = lead + rx[len(PREFIX):], True  # searched or not, the prefix reads from the start
    if PREFIX in rx:
        raise Untranslatable("the syslog prefix (%(__prefix_line)s) inside a pattern, not at its start")
    return rx, anchored


def split_prefregex(prefregex: str, lead: str) -> tuple[str, bool]:
    """(our `prefix` from fail2ban's prefregex, whether failregexes see only its <F-CONTENT>)."""
    if not prefregex:
        return "", False
    rx, anchored = strip_start(prefregex, MARK)
    m = re.search(r"<F-CONTENT>(.*)</F-CONTENT>\$?$", rx)
    if m is not None:
        head, content = rx[:m.start()], True
        if m.group(1) not in (".+", ".*"):  # the content must also match its own regex, to the end
            head += f"(?=(?:{m.group(1)})$)"
    elif "<F-CONTENT>" in rx:
        raise Untranslatable("prefregex has text after its <F-CONTENT>: the content is not the message's end")
    else:
        head, content = rx, False
    head, _ = convert(head, failure=False)
    head = head.replace(MARK, lead)  # after convert: the lead is ours, not fail2ban's syntax
    if not anchored:
        head = ".*?" + head
    return (head if content else f"(?={head})"), content


def translate(flt: Filter, name: str, service: str) -> Translation:
    """The rule for filter `flt` as jail `name` runs it; Untranslatable if no pattern can be kept."""
    notes: list[str] = []
    if flt.maxlines > 1:
        raise Untranslatable(f"maxlines = {flt.maxlines}: matches across lines, which PyFilter's rules do not")
    syslog = flt.syslog
    start = dates(flt.datepattern).start or dates(None).start
    lead = rf"(?:\[(?:{start})\]\s*|(?:{start})\s*)?" if syslog else ""
    prefix, content = split_prefregex(flt.prefregex, lead)
    date = None
    if not syslog:
        date = dates(flt.datepattern)
        if not flt.datepattern:
            notes.append("no datepattern: fail2ban finds the date anywhere; translated for a date at the start")
        if date.inner:
            notes.append("the date is inside the line: patterns read it where fail2ban's leave its empty "
                         "brackets [], or span it")
        if flt.prefregex:
            prefix = with_date(prefix, date)

    def pattern(raw: str, failure: bool) -> str:
        rx, anchored = strip_start(raw, MARK)
        rx, found = convert(rx, failure=failure)
        rx = rx.replace(MARK, lead)
        notes.extend(found)
        kind = re.match(r"<(?:NOTE|SUCCESS|CLOSE)>", rx)
        tag = kind.group(0) if kind else ""
        rx = rx[len(tag):]
        if date and not flt.prefregex:
            rx = with_date(rx, date) if anchored else with_date(rx, Dates(inner=date.inner))
        if not anchored:
            rx = ".*?" + rx
        return tag + rx

    patterns, ignore, skipped = [], [], []
    for i, raw in enumerate(flt.failregex):
        try:
            patterns.append(pattern(raw, True))
            if not raw.startswith("^") and not raw.startswith(PREFIX):
                notes.append(f"failregex {i + 1} is not anchored: fail2ban searches it anywhere in the line,"
                             f" so text a client writes before the address can choose it")
        except Untranslatable as exc:
            skipped.append(f"failregex {i + 1} left out: {exc}")
    for i, raw in enumerate(flt.ignoreregex):
        try:
            ignore.append(pattern(raw, False))
        except Untranslatable as exc:
            skipped.append(f"ignoreregex {i + 1} left out: {exc}")
    if not patterns:
        raise Untranslatable("; ".join(skipped) or "the filter has no failregex")
    if syslog:
        programs = daemon_globs(flt.daemon)
        if programs is None or programs == ["*"]:
            notes.append(f"_daemon {flt.daemon!r} read as any program: the rule reads every program's lines")
            programs = ["*"]
    else:
        programs = [name]
    rule: dict = {
        "service": service,
        "description": f"Translated by `pyfilter import fail2ban` from fail2ban's filter {flt.name} as jail "
                       f"{name} runs it" + (f" (mode {flt.mode})." if flt.mode else "."),
        "forms": "fail2ban: " + ", ".join(str(p) for p in flt.files),
        "programs": programs,
    }
    if prefix:
        rule["prefix"] = prefix
    rule["patterns"] = patterns
    if ignore:
        rule["ignore"] = ignore
    kept, errors = check(name, rule)
    return Translation(kept, notes + skipped + errors)


def check(name: str, rule: dict) -> tuple[dict, list[str]]:
    """The rule without the patterns our engine refuses (and why); Untranslatable if no pattern is left."""
    errors: list[str] = []

    def compiles(patterns: list[str], ignore: list[str]) -> str | None:
        try:
            Matcher({name: msgspec.convert({**rule, "patterns": patterns, "ignore": ignore}, Rule)})
        except (RuleError, msgspec.ValidationError, ValueError) as exc:
            return str(exc)
        return None

    for key in ("patterns", "ignore"):
        kept = []
        for i, rx in enumerate(rule.get(key, [])):
            error = compiles([rx], []) if key == "patterns" else compiles(rule["patterns"][:1], [rx])
            if error is None:
                kept.append(rx)
            else:
                errors.append(f"{'failregex' if key == 'patterns' else 'ignoreregex'} {i + 1} left out: "
                              f"PyFilter cannot compile it: {error}")
        rule[key] = kept
        if not rule["patterns"]:
            raise Untranslatable("; ".join(errors))
    if not rule["ignore"]:
        del rule["ignore"]
    return rule, errors
