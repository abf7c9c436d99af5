"""What fail2ban's filters say about their lines' form: where the date is, which programs write them.

- `datepattern` (jail.conf(5)): one pattern a line, strptime directives
  (`%Y`, `%ExY`, `%b`...), `{^LN-BEG}` for the line start, `{DATE}` for
  fail2ban's usual formats, `Epoch`/`TAI64N`/`ISO8601`. fail2ban cuts the date
  out before matching (a group of the pattern: only the group), so a
  translated pattern reads it again where it was cut.
- `_daemon`: the regex common.conf's prefix takes for the program name,
  as program globs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class Untranslatable(Exception):
    """A filter feature PyFilter lacks; the message says which and why."""


# fail2ban's date templates, for a date at the start of a daemon's own line
# (`{^LN-BEG}` or no datepattern): ISO 8601, numeric day or month first,
# syslog, ctime, nginx/Apache error and access logs, BIND, ASSP, MySQL 5,
# epoch seconds and TAI64N.
ANY_DATE = (r"(?:\d{4}[-/.]\d\d?[-/.]\d\d?[T ] ?\d\d?:\d\d:\d\d(?:[.,]\d+)?(?:\s*(?:Z|[+-]\d\d:?\d\d))?"
            r"|\d\d?[-/.]\d\d?[-/.]\d{2,4}[ T]\d\d?:\d\d:\d\d(?:[.,]\d+)?(?: [+-]\d{4})?"
            r"|(?:[A-Z][a-z]{2} )?[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)?(?: \d{4})?"
            r"|\d\d?/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d(?: [+-]\d{4})?"
            r"|\d\d?-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d(?:\.\d+)?|[A-Z][a-z]{2}-\d\d-\d\d(?:\d\d)? \d\d:\d\d:\d\d"
            r"|\d{6} +\d\d?:\d\d:\d\d|\d{10}(?:\.\d+)?|@[0-9a-fA-F]{24})")
_DIRECTIVES = {
    "Y": r"\d{4}", "ExY": r"\d{4}", "y": r"\d\d", "Exy": r"\d\d", "m": r"\d\d?", "Exm": r"\d\d?",
    "d": r"\d\d?", "Exd": r"\d\d?", "e": r" ?\d\d?", "H": r"\d\d?", "ExH": r"\d\d?", "I": r"\d\d?",
    "M": r"\d\d", "ExM": r"\d\d", "S": r"\d\d", "ExS": r"\d\d", "f": r"\d+", "z": r"(?:Z|[+-]\d\d:?\d\d)",
    "Z": r"\w+", "b": r"[A-Za-z]{3,}\.?", "Exb": r"[A-Za-z]{3,}\.?", "B": r"[A-Za-z]{3,}",
    "a": r"[A-Za-z]{3,}", "A": r"[A-Za-z]{3,}", "p": r"[AaPp][Mm]", "j": r"\d{1,3}", "%": "%",
}
_SPECIAL_DATES = {"epoch": r"\d{10}(?:\.\d+)?", "tai64n": r"@[0-9a-fA-F]{24}",
                  "iso8601": ANY_DATE.split("|")[0] + ")"}


@dataclass
class Dates:
    """Where fail2ban's datepattern finds the date: at the line start (`start`), or inside the
    line (`inner`: fail2ban cuts it out, leaving its brackets `[]` for the patterns)."""

    start: str | None = None
    inner: str | None = None


def dates(datepattern: str | None) -> Dates:
    """The date regexes of a datepattern (one pattern a line, strptime directives, {DATE})."""
    found = Dates()
    for line in (datepattern or "{^LN-BEG}").splitlines() or ["{^LN-BEG}"]:
        text = line.strip().replace("{^LN-BEG}", "^").replace("{UNB}", "")
        at_start = text.startswith("^")
        body = text.lstrip("^")
        if body.lower() in _SPECIAL_DATES:
            rx = _SPECIAL_DATES[body.lower()]
        elif body in ("", "{DEFAULT}"):
            rx = ANY_DATE
        else:
            rx = _directives(body, line)
            group = re.search(r"\((?!\?)(.*)\)", rx)
            if group is not None:  # fail2ban cuts the group only
                rx, at_start = group.group(1), False
        key = "start" if at_start else "inner"
        setattr(found, key, rx if getattr(found, key) is None else f"{getattr(found, key)}|{rx}")
    return found


def _directives(body: str, line: str) -> str:
    out, i = [], 0
    while i < len(body):
        if body.startswith("{DATE}", i):
            out.append(ANY_DATE)
            i += 6
        elif body[i] == "%":
            m = re.match(r"%(Ex[YymdHMSb]|[A-Za-z%])", body[i:])
            if m is None or m.group(1) not in _DIRECTIVES:
                raise Untranslatable(f"datepattern {line!r}: unknown directive {body[i:i + 4]!r}")
            out.append(_DIRECTIVES[m.group(1)])
            i += m.end()
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def with_date(rx: str, date: Dates) -> str:
    """`rx` (matched after fail2ban cut the date) reading the date itself, where it was cut."""
    if date.inner:
        head = rx[:4] if date.start and rx.startswith(r"\[\]") else ""
        rx = head + rx[len(head):].replace(r"\[\]", r"\[(?:" + date.inner + r")\]")
    if date.start:
        for empty in (r"\[\]", "(?:\\[\\])?", r"\[\]?"):
            if rx.startswith(empty):
                optional = empty != r"\[\]"
                return (r"(?:\[(?:" + date.start + r")\])" + ("?" if optional else "")) + rx[len(empty):]
        return f"(?:{date.start})?" + rx
    return rx


_GLOB_ATOMS = {r"\S+": "*", r"\S*": "*", r"\w+": "*", r"\w*": "*", ".+": "*", ".*": "*", r"\d+": "*",
               r"[^/]+": "*", r"[^\s]+": "*"}


def daemon_globs(rx: str | None, limit: int = 32) -> list[str] | None:
    """fail2ban's `_daemon` regex as program globs (`postfix(-\\w+)?/\\w+` -> postfix/*, postfix-*/*);
    None when it is more than literals, wildcards, optional parts and alternatives."""
    if rx is None:
        return ["*"]

    def alternatives(i: int) -> tuple[list[str], int]:
        options, current = [], [""]
        while i < len(rx) and rx[i] != ")":
            if rx[i] == "|":
                options += current
                current, i = [""], i + 1
                continue
            piece, i = atom(i)
            if i < len(rx) and rx[i] == "?":
                piece, i = piece + [""], i + 1
            current = [a + b for a in current for b in piece]
            if len(current) > limit:
                raise ValueError
        return options + current, i

    def atom(i: int) -> tuple[list[str], int]:
        for text, glob in _GLOB_ATOMS.items():
            if rx.startswith(text, i):
                return [glob], i + len(text)
        c = rx[i]
        if c == "(":
            j = i + 3 if rx.startswith("(?:", i) else i + 1
            found, k = alternatives(j)
            if k >= len(rx):
                raise ValueError
            return found, k + 1
        if c == "[":
            k = rx.index("]", i + 2)
            body = rx[i + 1:k]
            if "\\" in body:
                raise ValueError
            return ["[!" + body[1:] + "]" if body.startswith("^") else f"[{body}]"], k + 1
        if c == "\\":
            if rx[i + 1].isalnum():
                raise ValueError
            return [rx[i + 1]], i + 2
        if c in "+*{}^$.":
            raise ValueError
        return [c], i + 1

    try:
        found, end = alternatives(0)
    except (ValueError, IndexError):
        return None
    if end != len(rx):
        return None
    return sorted(set(g.replace("**", "*") for g in found if g)) or None
