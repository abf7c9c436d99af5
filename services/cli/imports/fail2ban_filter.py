"""A fail2ban filter as one jail runs it: files, [Init] and jail arguments, `<tag>` substitution.

After `%(name)s` expansion (fail2ban_ini), a filter's values hold `<name>`
tags (jail.conf(5), FILTER FILES): a tag naming an option of the filter
([Init] over [Definition] over [DEFAULT], the jail's `filter = name[k=v]`
arguments over all of them) is replaced by its value, innermost first, so
`<mdre-<mode>>` picks a mode's patterns; `<section/option>` reads another
section and `<known/option>` the option's value before the jail's argument.
Tags that name no option (`<HOST>`, `<F-USER>`) are left for the translation.

common.conf's `__prefix_line` (the syslog header: date leftovers, host,
daemon[pid]) is not expanded: it becomes PREFIX, which the translation
drops, since PyFilter's envelope reads that header (docs/rules.md).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyfilter.cli.imports.fail2ban_ini import MAX_DEPTH, Definition, Fail2banError, Ini, Scope
from pyfilter.cli.imports.fail2ban_stock import STOCK_FILTERS, STOCK_RELEASE

PREFIX = "\x00syslog-prefix\x00"
COMMON = {"common.conf", "common.local"}
_TAG = re.compile(r"<([^<>\s]+)>")
# Jail options that change its filter (jail.conf(5)): the first two add patterns, the rest replace.
ADDED = ("failregex", "ignoreregex")
REPLACED = ("prefregex", "datepattern", "journalmatch", "maxlines")


@dataclass
class Filter:
    """What a jail's filter says, every option expanded."""

    name: str
    files: list[Path]
    prefregex: str
    failregex: list[str]
    ignoreregex: list[str]
    datepattern: str | None
    journalmatch: list[str]
    maxlines: int
    daemon: str | None
    mode: str | None
    changes: list[str] = field(default_factory=list)  # why it is not fail2ban's own filter

    @property
    def syslog(self) -> bool:
        """Whether its lines are syslog lines (it reads common.conf's prefix)."""
        return any(PREFIX in r for r in [self.prefregex, *self.failregex])


def split_spec(text: str, where: str) -> tuple[str, dict[str, str]]:
    """`name[key=value, key2="a, b"]` -> (name, {key: value}); the form of `filter`, `action`, `backend`."""
    text = text.strip()
    m = re.match(r"([^\[\s]+)\s*(?:\[(.*)\])?\s*$", text, re.S)
    if m is None:
        raise Fail2banError(f"{where}: expected name or name[key=value, ...], got {text!r}")
    args: dict[str, str] = {}
    rest = m.group(2) or ""
    pos = 0
    item = re.compile(r"\s*([\w.-]+)\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'|([^,]*))\s*(?:,|$)", re.S)
    while pos < len(rest.strip()) and rest[pos:].strip():
        a = item.match(rest, pos)
        if a is None:
            raise Fail2banError(f"{where}: cannot read the arguments of {text!r} at {rest[pos:]!r}")
        value = next(v for v in (a.group(2), a.group(3), a.group(4)) if v is not None)
        args[a.group(1)] = value.strip()
        pos = a.end()
    return m.group(1), args


def lines(value: str | None) -> list[str]:
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


class Tags:
    """`<tag>` substitution over a filter's scope."""

    def __init__(self, scope: Scope, plain: Scope) -> None:
        self.scope, self.plain = scope, plain  # plain: without the jail's arguments (for <known/...>)

    def __call__(self, text: str, where: str, depth: int = 0) -> str:
        if depth > MAX_DEPTH:
            raise Fail2banError(f"{where}: <tags> nest too deep (a loop?)")
        for _ in range(MAX_DEPTH):
            new = _TAG.sub(lambda m: self._value(m.group(1), where, depth), text)
            if new == text:
                return new
            text = new
        raise Fail2banError(f"{where}: <tags> keep expanding (a loop?)")

    def _value(self, name: str, where: str, depth: int) -> str:
        section, _, option = name.rpartition("/")
        if not section:
            scope = self.scope
        elif section == "known":
            scope = self.plain
        elif self.scope.ini.has(section):
            scope = Scope(self.scope.ini, [section], verbatim=self.scope.verbatim)
        else:
            return f"<{name}>"
        found = scope.definition(option)
        if found is None:
            return f"<{name}>"
        return self(scope.expand(option, found), found.where, depth + 1)


def load_filter(confdir: Path, spec_name: str, args: dict[str, str], jail: Scope,
                spec: Definition) -> Filter:
    """The filter `filter.d/NAME` as the jail configures it; Fail2banError if absent or bad."""
    ini = Ini()
    base = confdir / "filter.d" / spec_name
    files = ini.read_name(base)
    if not files:
        raise FileNotFoundError(f"no filter.d/{spec_name}.conf or .local")
    verbatim = {"__prefix_line": (COMMON, PREFIX)}
    overrides = {k: Definition(v, spec.file, spec.line) for k, v in args.items()}
    plain = Scope(ini, ["Init", "Definition"], verbatim=verbatim)
    scope = Scope(ini, ["Init", "Definition"], overrides, verbatim)
    tags = Tags(scope, plain)

    def value(option: str) -> str | None:
        found = scope.definition(option)
        if found is None:
            return None
        return tags(scope.expand(option, found), found.where)

    def from_jail(option: str) -> str | None:
        found = jail.definition(option)
        if found is None:
            return None
        return tags(jail.expand(option, found), found.where)

    failregex, ignoreregex = lines(value("failregex")), lines(value("ignoreregex"))
    failregex += lines(from_jail("failregex"))
    ignoreregex += lines(from_jail("ignoreregex"))
    replaced = {name: from_jail(name) for name in REPLACED}
    journal = replaced["journalmatch"] if replaced["journalmatch"] is not None else value("journalmatch")
    maxlines_text = replaced["maxlines"] or value("maxlines") or "1"
    try:
        maxlines = int(maxlines_text)
    except ValueError:
        raise Fail2banError(f"{base}: maxlines: expected a number, got {maxlines_text!r}") from None
    found = Filter(
        name=spec_name, files=ini.files,
        prefregex=replaced["prefregex"] if replaced["prefregex"] is not None else value("prefregex") or "",
        failregex=failregex, ignoreregex=ignoreregex,
        datepattern=replaced["datepattern"] if replaced["datepattern"] is not None else value("datepattern"),
        journalmatch=(journal or "").split(), maxlines=maxlines,
        daemon=value("_daemon"), mode=value("mode"),
    )
    found.changes = changes(ini.files, args, {n for n in ADDED + REPLACED if from_jail(n)})
    return found


def changes(files: list[Path], args: dict[str, str], jail_options: set[str]) -> list[str]:
    """Why a filter is not fail2ban's own: edited or added files, jail options and arguments."""
    out = []
    for path in files:
        if path.name in COMMON:
            continue  # its prefix is dropped anyway
        if path.suffix == ".local" or path.parent.name.endswith(".d") and path.parent.name != "filter.d":
            out.append(f"{path.parent.name}/{path.name} changes it")
        elif STOCK_FILTERS.get(path.name) != hashlib.sha256(path.read_bytes()).hexdigest():
            out.append(f"filter.d/{path.name} is not fail2ban {STOCK_RELEASE}'s (edited, or another release)")
    out += [f"the jail sets {name}" for name in sorted(jail_options)]
    out += [f"the jail passes {k}={v}" for k, v in sorted(args.items()) if k != "mode"]
    return out
