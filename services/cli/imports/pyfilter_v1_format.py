"""The original PyFilter's config.json, read as it read it, and its patterns judged.

The original (one Python process per host) kept everything in one JSON file:
`settings` (global thresholds, `deny_type`, `ignored_ips`, `database`, and
`rules`: name -> `log_file`/`log_files`, `regex_patterns`, `time_format`),
`sqlite` (`database`: the file), `redis` (`host`, `password`, `database`,
`sync_bans`: `active`, `name`, `check_time`) and `logging`. Its behaviour, which
the import keeps or corrects (docs/import.md):

- A pattern is searched anywhere in a line (`re.findall`, first match). In a
  rule named `apache` or `nginx` group 1 is the address, 2 the time and 4 the
  status, which must be one of `http_status_blocks`; in any other rule group 1
  is the time (read with `time_format`) and group 2 the address. An address
  that is not an IP address is resolved through DNS.
- `[pattern, "key"]` puts the rule's list `key` into the pattern's `{}` as an
  alternation (`"|".join`); `[pattern, true]` bans on the first match (the
  original only checks that the flag is a boolean: `false` bans at once too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

WEB_RULES = ("apache", "nginx")  # the names the original reads as access-log rules


class V1Error(Exception):
    """config.json cannot be read as the original would have read it."""


class V1Sync(msgspec.Struct):
    active: bool = False
    name: str | int = "1"
    check_time: float = 600


class V1Redis(msgspec.Struct):
    host: str = "127.0.0.1"
    password: str | None = None
    database: int = 0
    sync_bans: V1Sync = msgspec.field(default_factory=V1Sync)


class V1Sqlite(msgspec.Struct):
    database: str = "PyFilter.db"


class V1Settings(msgspec.Struct):
    rules: dict[str, dict[str, Any]]
    database: str = "sqlite"
    failed_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    request_time: Annotated[float, msgspec.Meta(ge=0)] = 5
    deny_type: str = "DROP"
    ignored_ips: list[str] = []


class V1Config(msgspec.Struct):
    settings: V1Settings
    sqlite: V1Sqlite = msgspec.field(default_factory=V1Sqlite)
    redis: V1Redis = msgspec.field(default_factory=V1Redis)


class V1RuleFields(msgspec.Struct):
    regex_patterns: list[str | tuple[str, bool | str]] = []
    time_format: str = ""
    log_file: str | list[str] = ""
    log_files: str | list[str] = ""
    http_status_blocks: list[int] = []


@dataclass
class V1Pattern:
    index: int  # in the rule's regex_patterns
    source: str  # as written
    regex: str  # as the original compiled it ({} filled)
    instant: bool
    list_key: str | None  # the rule list filled into {}


@dataclass
class V1Rule:
    name: str
    patterns: list[V1Pattern]
    time_format: str
    log_paths: list[str]  # files or globs
    lists: dict[str, list[str]]  # lists a pattern names ("urls")
    http_status_blocks: list[int]

    @property
    def web(self) -> bool:
        return self.name in WEB_RULES

    @property
    def address_group(self) -> int:
        return 1 if self.web else 2

    @property
    def time_group(self) -> int:
        return 2 if self.web else 1


def _where(exc: msgspec.ValidationError) -> tuple[str, str]:
    message, _, where = str(exc).rpartition(" - at ")
    if not message:
        message, where = str(exc), "$"
    where = where.strip("`").removeprefix("$").lstrip(".")
    return where or "(top level)", message.replace("`", "").lower()


def load(path: Path) -> tuple[V1Config, list[V1Rule]]:
    """The configuration and its rules, or V1Error with the path of the bad field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise V1Error(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise V1Error(f"{path}: not valid JSON: {exc}") from None
    try:
        config = msgspec.convert(raw, V1Config)
    except msgspec.ValidationError as exc:
        where, message = _where(exc)
        raise V1Error(f"{path}: {where}: {message}") from None
    if config.settings.database not in ("sqlite", "redis"):
        raise V1Error(f'{path}: settings.database: expected "sqlite" or "redis", got {config.settings.database!r}')
    return config, [_rule(path, name, fields) for name, fields in config.settings.rules.items()]


def _rule(path: Path, name: str, raw: dict[str, Any]) -> V1Rule:
    here = f"{path}: settings.rules.{name}"
    try:
        fields = msgspec.convert(raw, V1RuleFields)
    except msgspec.ValidationError as exc:
        where, message = _where(exc)
        raise V1Error(f"{here}.{where}: {message}") from None
    paths: list[str] = []
    for value in (fields.log_file, fields.log_files):
        paths += [value] if isinstance(value, str) else value
    lists: dict[str, list[str]] = {}
    patterns = []
    for i, entry in enumerate(fields.regex_patterns):
        instant, key, source = False, None, entry
        if isinstance(entry, tuple):
            source, flag = entry
            if isinstance(flag, bool):
                instant = True
            else:
                key = flag
                values = raw.get(key)
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise V1Error(f"{here}.regex_patterns[{i}]: names the list {key!r}, "
                                  f"but settings.rules.{name}.{key} is not a list of strings")
                lists[key] = values
        regex = source.format("|".join(lists[key])) if key else source
        try:
            re.compile(regex)
        except re.error as exc:
            raise V1Error(f"{here}.regex_patterns[{i}]: not a regular expression ({exc}): {source}") from None
        patterns.append(V1Pattern(i, source, regex, instant, key))
    return V1Rule(name, patterns, fields.time_format, [p for p in paths if p], lists, fields.http_status_blocks)


# Reading a pattern's text --------------------------------------------------

_OPEN = re.compile(r"\(\?P<\w+>|\(\?P=\w+\)|\(\?#[^)]*\)|\(\?[aiLmsux-]*[:)]|\(\?<?[=!>]|\(")


def tokens(regex: str) -> list[tuple[str, str, int]]:
    """(kind, text, position): "escape" (\\d, (?P=n), (?i)), "class" ([^x]), "open" ((, (?:, (?P<n>),
    "close", "char"."""
    out = []
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            out.append(("escape", regex[i:i + 2], i))
            i += 2
        elif c == "[":
            j = i + 1 + regex.startswith("^", i + 1)
            j += regex.startswith("]", j)  # a first "]" is a literal
            while j < n and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            out.append(("class", regex[i:j + 1], i))
            i = j + 1
        elif c == "(":
            m = _OPEN.match(regex, i)
            text = m.group(0) if m else "("
            # `(?P=name)`, `(?i)`, `(?#...)` open no group: one token, like an escape
            out.append(("escape" if text.endswith(")") else "open", text, i))
            i += len(text)
        else:
            out.append(("close" if c == ")" else "char", c, i))
            i += 1
    return out


def group_spans(regex: str) -> list[tuple[int, int]]:
    """(start, end) of each capturing group, parentheses included, in group-number order."""
    spans: list[list[int]] = []
    stack: list[int | None] = []
    for kind, text, pos in tokens(regex):
        if kind == "open":
            capturing = text in ("(",) or text.startswith("(?P<")
            stack.append(len(spans) if capturing else None)
            if capturing:
                spans.append([pos, -1])
        elif kind == "close" and stack:
            k = stack.pop()
            if k is not None:
                spans[k][1] = pos + 1
    return [(s, e) for s, e in spans]


_ADDRESS_CLASS = re.compile(r"\[\^?(?:\\d|[0-9a-fA-F.:-])+\]")


def address_only(group: str) -> bool:
    """Whether a group's text can only match address characters (digits, hex, dots, colons)."""
    for kind, text, _ in tokens(group):
        if kind == "escape" and text not in (r"\d", r"\.", r"\:"):
            return False
        if kind == "class" and (text.startswith("[^") or not _ADDRESS_CLASS.fullmatch(text)):
            return False
        if kind == "char" and text not in "0123456789abcdefABCDEF:{},|*+?":
            return False  # "." matches anything; letters past f make names
    return True


def spans_text(regex: str) -> bool:
    """Whether some part can match any text: an unescaped `.` or a negated class `[^...]`."""
    return any((kind == "char" and text == ".") or (kind == "class" and text.startswith("[^"))
               for kind, text, _ in tokens(regex))


def unsafe_reason(rule: V1Rule, pattern: V1Pattern) -> str | None:
    """Why the pattern lets a client choose the address it reports (None: it does not)."""
    spans = group_spans(pattern.regex)
    if len(spans) != re.compile(pattern.regex).groups:
        return "its groups could not be told apart"
    if len(spans) < rule.address_group:
        return f"it has no group {rule.address_group} for the address"
    start, end = spans[rule.address_group - 1]
    group = pattern.regex[start:end]
    if not address_only(group):
        return f"its address group {group} takes any text (the original resolved names through DNS)"
    if not pattern.regex.startswith(("^", r"\A")):
        return "it is searched anywhere in the line, so a copy of its words in client text matches first"
    if spans_text(pattern.regex[:start]):
        return "a wildcard before its address can run over client text to a planted address"
    return None
