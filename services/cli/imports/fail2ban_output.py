"""Writing an imported fail2ban configuration: collector sources, pyfilter.yaml, rules/.

fail2ban reads host paths; the collector sees the host's log folder
(PYFILTER_LOG_DIR, default /var/log; the import's --log-dir) at /host/log, so
/var/log/X becomes /host/log/X. Each log file is one source however many jails read it (a line
read twice would count twice). A journal source per journalmatch, with no
paths: the system journal, as fail2ban's systemd backend reads.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from pyfilter.cli.imports.fail2ban import Outcome

HOST_LOG_DIR, COLLECTOR_LOG_DIR = "/var/log", "/host/log"
IMPORTED = ("catalog_dir", "whitelist", "rules")  # sections the import writes; the others come from the base


@dataclass
class Source:
    name: str
    type: str
    paths: list[str]
    match: list[str] = field(default_factory=list)
    program: str | None = None
    jails: list[str] = field(default_factory=list)

    def entry(self) -> dict:
        out: dict = {"name": self.name}
        if self.type != "file":
            out["type"] = self.type
        out["paths"] = self.paths
        if self.match:
            out["match"] = self.match
        if self.program:
            out["program"] = self.program
        return out


class Sources:
    def __init__(self, log_dir: str = HOST_LOG_DIR) -> None:
        self.all: list[Source] = []
        self.log_dir = log_dir.rstrip("/") or "/"

    def collector_path(self, path: str) -> str:
        """Where the collector sees a host path: the log folder (PYFILTER_LOG_DIR) is /host/log."""
        if path == self.log_dir or path.startswith(self.log_dir + "/"):
            return COLLECTOR_LOG_DIR + path[len(self.log_dir):]
        return path

    def _name(self, wanted: str) -> str:
        names = {s.name for s in self.all}
        name, n = wanted or "log", 2
        while name in names:
            name, n = f"{wanted}-{n}", n + 1
        return name

    def file(self, host_path: str, program: str | None, jail: str) -> tuple[Source, str]:
        """The source of one log file (or glob), shared by every jail that reads it; and a note."""
        path = self.collector_path(host_path)
        note = "" if path != host_path else f"outside {self.log_dir}: mount it into the collector"
        for src in self.all:
            if src.type == "file" and src.paths == [path]:
                if src.program != program:
                    note = f"{note}; " if note else ""
                    note += f"the source declares program {src.program or '(none)'} (another jail's)"
                src.jails.append(jail)
                return src, note
        stem = re.sub(r"\.log$", "", path.removeprefix(COLLECTOR_LOG_DIR + "/").replace("*", ""))
        src = Source(self._name(re.sub(r"[^\w]+", "-", stem).strip("-")), "file", [path], program=program,
                     jails=[jail])
        self.all.append(src)
        return src, note

    def journal(self, jail: str, match: list[str], paths: list[str]) -> Source:
        for src in self.all:
            if src.type == "journal" and src.match == match and src.paths == paths:
                src.jails.append(jail)
                return src
        src = Source(self._name(f"journal-{jail}"), "journal", [self.collector_path(p) for p in paths], match, jails=[jail])
        self.all.append(src)
        return src


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=100000, sort_keys=False).strip()


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_][\w.-]*", name) else json.dumps(name)


def _comment(text: str, indent: str = "") -> str:
    lead = indent if indent.rstrip().endswith("#") else indent + "# "
    return "".join(f"{lead}{line}\n" for line in text.splitlines())


def write_config(folder: Path, confdir: Path, base_path: str, catalog_dir: Path, outcomes: list["Outcome"],
                 disabled: list[str], sources: Sources, whitelist: list[str], notes: list[str]) -> None:
    """pyfilter.yaml and rules/ in `folder`: every section of the base configuration but the
    imported ones, and the imported ones with the import's report as comments."""
    rules = folder / "rules"
    rules.mkdir()
    for o in outcomes:
        if o.catalog is not None:
            shutil.copyfile(catalog_dir / f"{o.catalog}.yaml", rules / f"{o.rule}.yaml")
        elif o.text is not None:
            (rules / f"{o.rule}.yaml").write_text(
                _comment(f"Translated by `pyfilter import fail2ban` from {confdir} on {date.today()}.")
                + yaml.safe_dump(o.text, sort_keys=False, width=100000, allow_unicode=True), encoding="utf-8")
    base = yaml.safe_load(Path(base_path).read_text(encoding="utf-8")) or {}
    head = (f"PyFilter configuration imported from the fail2ban configuration {confdir}\n"
            f"by `pyfilter import fail2ban` on {date.today()}. Settings other than the sources,\n"
            f"whitelist and rules are {base_path}'s. rules/ holds the translated rules and copies\n"
            f"of the catalog rules enabled here. Check it: pyfilter config check pyfilter.yaml\n")
    parts = [_comment(head)]
    collector = dict(base.get("collector") or {})
    collector["sources"] = [s.entry() for s in sources.all]
    for key, value in base.items():
        if key not in IMPORTED and key != "collector":
            parts.append(yaml.safe_dump({key: value}, sort_keys=False, width=100000))
    parts.append("catalog_dir: rules\n\n")
    parts.append(_comment("fail2ban's ignoreip shared by every imported jail.") + _comment("\n".join(notes)))
    parts.append(f"whitelist: {_flow(whitelist)}\n\n")
    parts.append("collector:\n")
    for key, value in collector.items():
        if key != "sources":
            parts.append("  " + yaml.safe_dump({key: value}, sort_keys=False).strip() + "\n")
    parts.append("  sources:\n" if sources.all else "  sources: []\n")
    for src in sources.all:
        parts.append(_comment(f"read for: {', '.join(src.jails)}", "    "))
        parts.append(f"    - {_flow(src.entry())}\n")
    imported = any(o.rule for o in outcomes)
    parts.append("\n" + _comment("One entry per fail2ban jail enabled there, with what became of it.")
                 + ("rules:\n" if imported else "rules: {}\n"))
    for o in outcomes:
        parts.append(_comment(f"{o.jail}: {o.summary}", "  ") + "".join(_comment(n, "  #     ") for n in o.notes))
        if o.rule:
            parts.append(f"  {_key(o.rule)}: {_flow(o.settings)}\n")
    if disabled:
        parts.append(_comment(f"Not enabled in fail2ban, not imported: {', '.join(disabled)}", "  "))
    (folder / "pyfilter.yaml").write_text("".join(parts), encoding="utf-8")

