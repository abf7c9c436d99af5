"""fail2ban's jails (jail.conf, jail.d/, jail.local) as plain values, in fail2ban's units.

Time values follow jail.conf(5), TIME ABBREVIATION FORMAT: seconds, or
tokens like `10m`, `1h`, `1d12h30m`, `1y 6mo`, `-1` (for ever). A year is
read as 365 days and a month as 30 (the page does not say).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyfilter.cli.imports.fail2ban_filter import split_spec
from pyfilter.cli.imports.fail2ban_ini import DEFAULT, Definition, Fail2banError, Ini, Scope

_UNITS = [  # longest alternatives first: "mo" is a month, "m" a minute
    ("years?|yea?|yy?", 365 * 86400), ("months?|mon?", 30 * 86400), ("weeks?|wee?|ww?", 7 * 86400),
    ("days?|da|dd?", 86400), ("hours?|hou?|hh?", 3600), ("minutes?|min?|mm?", 60), ("seconds?|sec?|ss?", 1),
]
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(" + "|".join(f"(?:{u})" for u, _ in _UNITS) + r")?(?![a-z])", re.I)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def seconds(text: str, where: str, option: str) -> int:
    """fail2ban's time syntax in seconds (-1: for ever)."""
    value = text.strip().lower()
    sign = -1 if value.startswith("-") else 1
    body, pos, total = value.lstrip("+-"), 0, 0.0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            raise Fail2banError(f'{where}: {option}: expected a time like 600, "10m", "1h" or "1d12h", got {text!r}')
        unit = next((s for u, s in _UNITS if m.group(2) and re.fullmatch(u, m.group(2))), 1)
        total += float(m.group(1)) * unit
        pos = m.end()
        while pos < len(body) and body[pos] in " \t":
            pos += 1
    if not body:
        raise Fail2banError(f"{where}: {option}: expected a time, got nothing")
    return int(sign * total)


def boolean(text: str, where: str, option: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise Fail2banError(f"{where}: {option}: expected true or false, got {text!r}")


@dataclass
class Jail:
    """One jail's settings, expanded; `where` is each option's file:line."""

    name: str
    enabled: bool
    scope: Scope
    filter: str = ""
    filter_args: dict[str, str] = field(default_factory=dict)
    filter_spec: Definition | None = None
    backend: str = "auto"
    backend_args: dict[str, str] = field(default_factory=dict)
    logpaths: list[str] = field(default_factory=list)
    maxretry: int = 5
    findtime: int = 600
    bantime: int = 600
    increment: dict[str, str] = field(default_factory=dict)  # bantime.* options, as written
    ignoreip: list[str] = field(default_factory=list)
    ignoreself: bool = True
    actions: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: str = ""

    def where(self, option: str) -> str:
        found = self.scope.definition(option)
        return found.where if found else f"[{self.name}]"


def read_jails(confdir: Path) -> tuple[Ini, list[str]]:
    """Every jail file of `confdir`; (the sections, the jail names in file order)."""
    ini = Ini()
    if not ini.read_name(confdir / "jail"):
        raise Fail2banError(f"{confdir}: no jail.conf or jail.local (is this a fail2ban configuration folder?)")
    return ini, [s for s in ini.sections if s != DEFAULT]


def load_jail(ini: Ini, name: str) -> Jail:
    """The jail's settings; only an enabled jail's are expanded (as fail2ban does)."""
    scope = ini.scope(name)
    enabled = boolean(scope.get("enabled", "false") or "false", _where(scope, "enabled"), "enabled")
    jail = Jail(name, enabled, scope)
    if not enabled:
        return jail
    get = scope.get
    jail.filter_spec = scope.definition("filter")
    spec = get("filter") or ""
    if spec.strip():
        jail.filter, jail.filter_args = split_spec(spec, jail.where("filter"))
    jail.backend, jail.backend_args = split_spec(get("backend", "auto") or "auto", jail.where("backend"))
    jail.logpaths = [p.split()[0] for p in (get("logpath") or "").splitlines() if p.strip()]
    for option in ("maxretry",):
        text = get(option, "5") or "5"
        if not text.strip().isdigit() or int(text) < 1:
            raise Fail2banError(f"{jail.where(option)}: {option}: expected a whole number of 1 or more, got {text!r}")
        jail.maxretry = int(text)
    jail.findtime = seconds(get("findtime", "600") or "600", jail.where("findtime"), "findtime")
    jail.bantime = seconds(get("bantime", "600") or "600", jail.where("bantime"), "bantime")
    for option in ("bantime.increment", "bantime.factor", "bantime.maxtime", "bantime.multipliers",
                   "bantime.formula", "bantime.rndtime", "bantime.overalljails"):
        if scope.definition(option) is not None:
            jail.increment[option] = get(option) or ""
    jail.ignoreip = (get("ignoreip") or "").replace(",", " ").split()
    jail.ignoreself = boolean(get("ignoreself", "true") or "true", jail.where("ignoreself"), "ignoreself")
    for line in (get("action") or "").splitlines():
        if line.strip():
            jail.actions.append(split_spec(line, jail.where("action")))
    jail.port = get("port", "") or ""
    return jail


def _where(scope: Scope, option: str) -> str:
    found = scope.definition(option)
    return found.where if found else f"[{scope.chain[0]}]"


def networks(entries: list[str]) -> tuple[list[str], list[str]]:
    """ignoreip entries as networks (`127.0.0.1/8` -> 127.0.0.0/8), and those that are host names."""
    out, names = [], []
    for entry in entries:
        try:
            out.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            names.append(entry)
    return out, names


# Service names jail.conf uses in `port`, for hosts whose /etc/services lacks them.
SERVICES = {
    "ssh": [22], "http": [80], "https": [443], "smtp": [25], "ssmtp": [465], "submission": [587],
    "pop3": [110], "pop3s": [995], "imap": [143], "imap2": [143], "imaps": [993], "ftp": [21],
    "ftp-data": [20], "ftps": [990], "ftps-data": [989], "sieve": [4190], "ldap": [389], "ldaps": [636],
    "domain": [53], "socks": [1080], "mysql": [3306], "telnet": [23], "rsync": [873],
}
MAX_PORTS = 64  # a longer list or range bans every port


def ports(text: str) -> list[int] | None:
    """`ssh,http` / `8000:8010` as port numbers; [] for every port; None if a name is unknown."""
    out: list[int] = []
    for item in text.replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if re.fullmatch(r"\d+[:-]\d+", item):
            low, high = (int(x) for x in re.split("[:-]", item))
            if high - low + 1 > MAX_PORTS:
                return []
            out += range(max(low, 1), min(high, 65535) + 1)
        elif item.isdigit():
            out.append(int(item))
        elif item.lower() in SERVICES:
            out += SERVICES[item.lower()]
        else:
            return None
    return [] if len(out) > MAX_PORTS else sorted(set(out))
