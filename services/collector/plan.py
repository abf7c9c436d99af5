"""Which source carries each enabled rule's lines, decided once at start.

On a host with systemd, every syslog message goes through the journal, and
rsyslog (Ubuntu, Debian with rsyslog, RHEL) writes copies of them into
auth.log, secure or mail.log. Read naively, each failure would count twice
and ban at half the threshold. So for every enabled rule:

- a rule that names its programs, when a journal source has readable
  files, is carried by the journal (entries chosen by SYSLOG_IDENTIFIER);
  its lines in syslog files (file sources that declare no `program:`) are
  copies and are left out: those sources' batches name the rule in `skip`,
  and the detector does not feed it from them;
- otherwise it is carried by the file sources it may read that exist.

Why the journal, not the file: which file rsyslog writes a program's lines
into (auth.log, secure, mail.log, maillog, syslog...) depends on its
configuration, which the collector cannot see; the journal holds every
program's messages under its identifier, in UTC with microseconds (no zone
to guess), whatever the distribution. A daemon's own file (`program:`
declared: nginx's error.log) is never a copy and always read.

The same plan gives each source its lookback: the longest window of the
rules it carries, from which a log met for the first time is read.

Rules are the collector's own enabled rules: in a many-host deployment the
agents' configuration must enable the rules the detectors run (the default
configuration does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from pyfilter.common.config import Rule, Source as SourceConfig

from .sources import SourcePlan
from .sources.rotated import watched_paths
from .sources.journal import journal_files, machine_id, readable

# Fed by the detector's own bans, not by lines (its `sources` only name an
# optional fail2ban log): never reported as lacking a source.
SELF_FED = {"recidive"}


@dataclass(frozen=True)
class Found:
    """What the collector finds of one source's paths at start."""

    readable: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # configured paths with nothing there
    judged: bool = True  # False: a kind of source this plan does not look into (container logs)


@dataclass(frozen=True)
class Choice:
    """Where one enabled rule's lines come from."""

    rule: str
    carriers: list[str]  # source names
    journal: bool  # carried by the journal (its copies in syslog files left out)
    left_out: list[str]  # syslog file sources whose copies of its lines are not read
    problem: str | None = None  # why no source carries it, in plain words


@dataclass(frozen=True)
class Plan:
    sources: dict[str, SourcePlan]
    rules: list[Choice]


def probe(cfg: SourceConfig) -> Found:
    """Look at a source's paths: which exist and which the collector may read."""
    if cfg.type == "file":
        paths = watched_paths(cfg.paths)
        present = [p for p in paths if os.path.isfile(p)]
        ok, bad = [p for p in present if os.access(p, os.R_OK)], [p for p in present if not os.access(p, os.R_OK)]
        missing = [p for p in cfg.paths if not any(_named_by(q, p) for q in present)]
        return Found(ok, bad, missing)
    if cfg.type == "journal":
        if not cfg.paths:  # the system journal: journalctl finds it, or says why not
            return Found(["(system journal)"])
        files = journal_files(cfg.paths, machine_id())
        ok, bad = readable(files)
        missing = [p for p in cfg.paths if not any(f == p or f.startswith(p.rstrip("/") + "/") for f in files)]
        return Found(ok, bad, missing)
    return Found(judged=False)


def _named_by(path: str, pattern: str) -> bool:
    return path == pattern or fnmatchcase(path, pattern)


def make(rules: dict[str, Rule], sources: list[SourceConfig], found: dict[str, Found]) -> Plan:
    """The plan for these enabled rules and sources, given what was found of each source.

    A source that feeds no enabled rule (a syslog file whose every rule the
    journal carries, a journal no rule needs) gets no plan: it is not read.
    """
    if not rules:  # nothing to choose for: every source as configured, logs from their end
        return Plan({s.name: SourcePlan() for s in sources}, [])
    choices = [_choose(name, rule, sources, found) for name, rule in rules.items()]
    plans = {}
    for s in sources:
        if s.type == "journal":
            feeds = [c.rule for c in choices if s.name in c.carriers]
        else:
            feeds = [c.rule for c in choices if _may_feed(rules[c.rule], s) and s.name not in c.left_out]
        if not feeds:
            continue
        skip = [c.rule for c in choices if s.name in c.left_out]
        programs = None
        if s.type == "journal":
            programs = sorted({p for r in feeds for p in rules[r].programs})
            # Whole-line rules (no programs, no sources) read every source:
            # the journal's entries must not feed them beside their files.
            skip = [n for n, r in rules.items() if not r.programs and not r.sources]
        lookback = max(_reach(rules[r]) for r in feeds)
        plans[s.name] = SourcePlan(lookback=lookback, programs=programs, skip=tuple(sorted(skip)))
    return Plan(plans, choices)


def _choose(name: str, rule: Rule, sources: list[SourceConfig], found: dict[str, Found]) -> Choice:
    may = [s for s in sources if _may_feed(rule, s)]
    have = [s for s in may if found[s.name].readable or not found[s.name].judged]
    journals = [s for s in have if s.type == "journal"]
    if journals:
        own = [s for s in have if s.type != "journal" and not _syslog_copy(s)]
        copies = [s.name for s in may if _syslog_copy(s)]
        return Choice(name, [s.name for s in journals + own], True, copies)
    carriers = [s.name for s in have]
    problem = None
    if not any(found[s.name].judged and found[s.name].readable for s in have) and name not in SELF_FED:
        problem = _why_none(name, rule, may, found)
    return Choice(name, carriers, False, [], problem)


def _may_feed(rule: Rule, s: SourceConfig) -> bool:
    """Whether lines of source `s` may reach the rule (as the detector routes them)."""
    if rule.sources:
        return s.name in rule.sources
    if s.type == "journal":
        return bool(rule.programs)
    if s.program and rule.programs:
        return any(fnmatchcase(s.program.lower(), p.lower()) for p in rule.programs)
    return True


def _syslog_copy(s: SourceConfig) -> bool:
    """A file a syslog daemon writes (no `program:`): on a systemd host, copies of journal entries."""
    return s.type == "file" and not s.program


def _reach(rule: Rule) -> int:
    """How old a failure may be and still count (as the window script judges it)."""
    if rule.window == "consecutive":
        return int(rule.request_time) * rule.failed_attempts
    return int(rule.findtime)


def _why_none(name: str, rule: Rule, may: list[SourceConfig], found: dict[str, Found]) -> str:
    what = f"{name} is enabled but no source carries {rule.service} lines"
    if not may:
        wanted = ", ".join(rule.sources) if rule.sources else "any"
        return f"{what}: it reads only sources {wanted}, and none is configured"
    missing, unreadable, journals = [], [], []
    for s in may:
        f = found[s.name]
        if s.type == "journal":
            journals.append(s)
        elif f.judged:
            missing += f.missing
            unreadable += f.unreadable
    parts = []
    if missing:
        parts.append(f"{_listed(missing)} {'does' if len(missing) == 1 else 'do'} not exist")
    if unreadable:
        parts.append(f"{_listed(unreadable)} {'is' if len(unreadable) == 1 else 'are'} not readable")
    for s in journals:
        if found[s.name].unreadable:
            parts.append(f"the journal files in {', '.join(s.paths)} are not readable by the collector "
                         "(it needs their group: PYFILTER_JOURNAL_GID, which `make up` sets)")
        else:
            parts.append(f"the journal ({', '.join(s.paths) or 'system'}) is not mounted or holds no files "
                         f"(if this host's {rule.service} logs to the journal, mount the host's /var/log/journal "
                         "and /run/log/journal: compose mounts $PYFILTER_LOG_DIR/journal and /run/log/journal)")
    if rule.programs and not journals:
        parts.append("no journal source is configured (if this host's "
                     f"{rule.service} logs to the journal, add one)")
    return f"{what}: {'; '.join(parts)}"


def _listed(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " and " + paths[-1]
