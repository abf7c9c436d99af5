"""The original PyFilter's rules mapped onto ours: catalog rules, translations, or nothing.

For each rule of config.json, in this order:
- no log file: the original never ran it, nothing to import;
- `apache`/`nginx` (the original's access-log rules): our own pattern built from
  its `urls`, `http_status_blocks` and method, reading the address at the start
  of the line; none of its patterns is kept (they read it with a greedy `(.*)`);
- a service our catalog has (`ssh`, `mysql`, or a catalog rule's own name):
  that catalog rule. Which of its modes, and which of its patterns stand for
  the original's instant patterns, is found by running both on the catalog's
  sample lines (`NAME.cases`): the original's patterns are greedy, ours are not;
- any other rule: each pattern translated as it is when it cannot report a
  client-chosen address (`unsafe_reason`), left out with the reason otherwise.

Every rule gets the original's thresholds (`window: consecutive`) and deny type.
The original's per-pattern instant flag has no place in our rule format (the
window belongs to the rule), so instant patterns become a second rule,
`NAME-instant`, with `window: instant`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyfilter.cli.imports.pyfilter_v1_format import V1Config, V1Pattern, V1Rule, group_spans, unsafe_reason
from pyfilter.cli.imports.pyfilter_v1_samples import Compared, compare, sample_lines
from pyfilter.common.config import Rule, Source
from pyfilter.common import timeparse

# The original's usual rule names for services our catalog knows by another name.
CATALOG_NAMES = {"ssh": "sshd", "openssh": "sshd", "mysql": "mysqld-auth", "mysqld": "mysqld-auth",
                 "mariadb": "mysqld-auth"}
# Program of an access log, for a source the default configuration does not have.
WEB_PROGRAMS = {"nginx": "nginx", "apache": "apache2"}
CONTAINER_LOG_DIR = "/host/log"
# What the catalog's access-log rules read before the request: an optional
# vhost, the address (first: before any client text), identity, user (nginx
# writes `"` as \x22, Apache as \"), time.
CLF_HEAD = (r'^(?:[\w.-]+:\d+ )?<ADDR> \S+ (?P<user>(?:[^"\\]|\\.)*?) '
            r'\[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] ')
_REQUEST = re.compile(r'"\(?((?:[A-Z]+\|)*[A-Z]+)\)? (\S*?)\(\{\}\)')  # "POST ({}) or "POST /({})
_PATH = re.compile(r"(?:[\w/~-]|\\[./-])*")  # literal path text before the `({})`


@dataclass
class Plan:
    """What the import writes: pyfilter.yaml's parts, rule files, and what it says about them."""

    sources: list[dict] = field(default_factory=list)
    rules: dict[str, dict] = field(default_factory=dict)  # name -> overrides in pyfilter.yaml
    comments: dict[str, list[str]] = field(default_factory=dict)  # name -> lines above it
    files: dict[str, str] = field(default_factory=dict)  # rules/NAME.yaml -> text
    copies: list[str] = field(default_factory=list)  # catalog rules copied as they are
    report: list[str] = field(default_factory=list)


@dataclass
class Context:
    config: V1Config
    rules: list[V1Rule]
    config_path: Path
    catalog_dir: Path
    catalog: dict[str, Rule]
    defaults: list[Source]  # the default configuration's sources
    log_dir: str  # the host folder the collector sees as /host/log
    bantime: str | int


def plan_rules(ctx: Context) -> Plan:
    plan = Plan()
    for v1 in ctx.rules:
        if not v1.log_paths:
            plan.report.append(f"{v1.name}: not imported: it names no log file, so the original never ran it")
        elif not v1.patterns:
            plan.report.append(f"{v1.name}: not imported: it has no pattern")
        elif v1.web:
            _web(ctx, plan, v1)
        elif (name := CATALOG_NAMES.get(v1.name.lower(), v1.name)) in ctx.catalog:
            _catalog(ctx, plan, v1, name)
        else:
            _translate(ctx, plan, v1)
    if "recidive" in ctx.catalog:
        plan.rules["recidive"], plan.comments["recidive"] = {}, ["added: repeat offenders get a long ban"]
        plan.copies.append("recidive")
    return plan


def _add(ctx: Context, plan: Plan, v1: V1Rule, name: str, body: dict | None, overrides: dict,
         said: list[str]) -> None:
    """Enable rule `name` with its overrides (and write its file, unless it is a catalog copy)."""
    if body is None:
        plan.copies.append(name)
    else:
        plan.files[name] = _rule_file(ctx, v1, body)
    plan.rules[name] = overrides
    plan.comments[name] = said
    plan.report += said


def instant_overrides(ctx: Context) -> dict:
    return {k: v for k, v in thresholds(ctx).items() if k in ("bantime", "verdict")}


def thresholds(ctx: Context) -> dict:
    s = ctx.config.settings
    verdict = s.deny_type.strip().upper()
    return {"window": "consecutive", "failed_attempts": s.failed_attempts,
            "request_time": math.ceil(s.request_time), "bantime": ctx.bantime,
            "verdict": "reject" if verdict == "REJECT" else "drop"}


# Sources --------------------------------------------------------------------

def container_path(ctx: Context, path: str) -> tuple[str, bool]:
    """The path as the collector sees it, and whether it is inside the mounted log folder."""
    base = ctx.log_dir.rstrip("/")
    if path == base or path.startswith(base + "/"):
        return CONTAINER_LOG_DIR + path[len(base):], True
    return path, False


def _source(ctx: Context, plan: Plan, v1: V1Rule, wanted: list[str] | None = None,
            program: str | None = None) -> str:
    """The name of the collector source that reads `v1`'s files (added to the plan if new).

    A file the default configuration already reads keeps that source's name
    and program (catalog rules may be restricted to it); `wanted`: the names a
    catalog rule is restricted to.
    """
    paths = []
    for p in v1.log_paths:
        mapped, inside = container_path(ctx, p)
        paths.append(mapped)
        if not inside:
            plan.report.append(f"{v1.name}: {p} is outside {ctx.log_dir}, the folder the collector mounts "
                               f"(PYFILTER_LOG_DIR): mount its folder and fix the path in pyfilter.yaml")
    default = next((s for s in ctx.defaults if set(paths) & set(s.paths)), None)
    name, prog = (default.name, default.program) if default else (f"v1-{v1.name}", program)
    if wanted and name not in wanted:
        name = wanted[0]
        prog = next((s.program for s in ctx.defaults if s.name == name), prog)
    for s in plan.sources:
        if s["name"] == name:
            s["paths"] += [p for p in paths if p not in s["paths"]]
            return name
    entry: dict = {"name": name, "paths": paths}
    if prog:
        entry["program"] = prog
    plan.sources.append(entry)
    return name


# Catalog rules ----------------------------------------------------------------

def _catalog(ctx: Context, plan: Plan, v1: V1Rule, name: str) -> None:
    rule = ctx.catalog[name]
    source = _source(ctx, plan, v1, wanted=rule.sources or None)
    cases = ctx.catalog_dir / f"{name}.cases"
    lines = sample_lines(cases) if cases.is_file() else []
    compared = compare(name, rule, lines, v1.patterns) if lines else Compared(rule.mode, {}, {})
    if not lines:
        plan.report.append(f"{v1.name}: {name} has no sample lines ({cases.name}) to compare the original's "
                           f"patterns with: its default mode is kept")
    greedy = [p.index for p in v1.patterns if unsafe_reason(v1, p)]
    overrides = {**({"mode": compared.mode} if rule.modes else {}), **thresholds(ctx)}
    said = [f"{v1.name}: mapped onto catalog rule {name}" + (f" (mode {compared.mode})" if rule.modes else "")
            + f", reading source {source}"]
    if greedy:
        said.append(f"{v1.name}: its pattern(s) {_list(greedy)} are greedy (a client can plant the address "
                    f"they report); replaced by {name}'s")
    for i, (matched, counted) in sorted(compared.counted.items()):
        if matched and counted < matched:
            said.append(f"{v1.name}: pattern {i} matches {matched} of {name}'s sample lines; "
                        f"{name} counts {counted} of them (the others are not failures, or not "
                        f"in mode {compared.mode})")
        elif not matched:
            said.append(f"{v1.name}: pattern {i} matches none of {name}'s sample lines: check that "
                        f"{name} covers what it was written for")
    _add(ctx, plan, v1, name, None, overrides, said)
    instant = [p for p in v1.patterns if p.instant]
    if instant:
        _instant_companion(ctx, plan, v1, name, rule, instant, compared)


def _instant_companion(ctx: Context, plan: Plan, v1: V1Rule, name: str, rule: Rule,
                       instant: list[V1Pattern], compared: Compared) -> None:
    ours = sorted({k for p in instant for k in compared.instant.get(p.index, [])})
    missing = [p.index for p in instant if not compared.instant.get(p.index)]
    if missing:
        plan.report.append(f"{v1.name}: instant pattern(s) {_list(missing)}: no pattern of {name} fails on "
                           f"the same sample lines; not imported as instant (they still count in {name})")
    if not ours:
        return
    companion = f"{name}-instant"
    texts = [p if isinstance(p, str) else p.re for p in (rule.patterns[k] for k in ours)]
    body: dict = {"service": rule.service,
                  "description": f"The patterns of {name} that the original PyFilter's rule {v1.name!r} "
                                 f"banned on at the first match (its `[pattern, true]`): {name}'s patterns "
                                 f"{_list(ours)}, with a window of their own, instant."}
    for key in ("programs", "sources", "prefix", "ignore", "timezone"):
        if getattr(rule, key):
            body[key] = getattr(rule, key)
    body["patterns"] = texts
    body["window"] = "instant"
    _add(ctx, plan, v1, companion, body, instant_overrides(ctx),
         [f"{v1.name}: its instant pattern(s) {_list([p.index for p in instant])}: {name}'s patterns "
          f"{_list(ours)} in a rule of their own that bans at once"])


# Translations -----------------------------------------------------------------

def _web(ctx: Context, plan: Plan, v1: V1Rule) -> None:
    if not v1.http_status_blocks:
        plan.report.append(f"{v1.name}: not imported: http_status_blocks is empty, so the original never banned")
        return
    statuses = "|".join(str(s) for s in v1.http_status_blocks)
    patterns = []
    for p in v1.patterns:
        request = _REQUEST.search(p.source) if p.list_key else None
        if request is None or not _PATH.fullmatch(request.group(2)):
            plan.report.append(f"{v1.name}: pattern {p.index} not imported: not the original's "
                               f'"METHOD ({{}}) HTTP" form, so its meaning is unknown; write a rule (docs/rules.md)')
            continue
        prefix = re.sub(r"\\(.)", r"\1", request.group(2))
        urls = "|".join(re.escape(prefix + u) for u in v1.lists[p.list_key])  # type: ignore[index]
        # The original required the exact path and HTTP/1.1; a query string or
        # another version no longer slips past.
        patterns.append(CLF_HEAD + rf'"(?:{request.group(1)}) (?:{urls})(?:\?\S*)? HTTP/\d(?:\.\d)?" '
                                   rf"(?:{statuses}) ")
    if not patterns:
        return
    name = f"v1-{v1.name}"
    source = _source(ctx, plan, v1, program=WEB_PROGRAMS[v1.name])
    body = {"service": v1.name,
            "description": f"What the original PyFilter's rule {v1.name!r} counted: requests to its urls "
                           f"answered with a status of its http_status_blocks ({statuses}), in an access "
                           "log (Common or Combined Log Format). The address is read at the start of the "
                           "line, before any client text; the original read it with a greedy group.",
            "sources": [source], "patterns": list(dict.fromkeys(patterns))}
    _add(ctx, plan, v1, name, body, thresholds(ctx),
         [f"{v1.name}: translated into {name} (rules/{name}.yaml): its urls and http_status_blocks, with "
          "the address read where the client cannot reach; the original's greedy pattern is not kept"])


def _translate(ctx: Context, plan: Plan, v1: V1Rule) -> None:
    """A rule of a service the catalog lacks: its safe patterns as they are."""
    kept: list[tuple[V1Pattern, str]] = []
    for p in v1.patterns:
        if reason := unsafe_reason(v1, p):
            plan.report.append(f"{v1.name}: pattern {p.index} not imported: {reason}; no catalog rule covers "
                               "this service: write one (docs/rules.md)")
        else:
            kept.append((p, _named(p.regex, v1, _reads_time(v1.time_format))))
    if not kept:
        plan.report.append(f"{v1.name}: not imported: none of its patterns is safe to keep")
        return
    if not _reads_time(v1.time_format):
        plan.report.append(f"{v1.name}: its time_format {v1.time_format!r} is not one we read: "
                           "failures count at the time they are read")
    source = _source(ctx, plan, v1)
    for instant, name in ((False, f"v1-{v1.name}"), (True, f"v1-{v1.name}-instant")):
        patterns = [text for p, text in kept if p.instant == instant]
        if not patterns:
            continue
        body = {"service": v1.name,
                "description": f"The original PyFilter's rule {v1.name!r}"
                               + (" (its instant patterns)" if instant else "") + ", as it was written: "
                               "each pattern reads the address at a fixed place from the start of the line.",
                "sources": [source], "patterns": patterns}
        if instant:
            body["window"] = "instant"
        _add(ctx, plan, v1, name, body, instant_overrides(ctx) if instant else thresholds(ctx),
             [f"{v1.name}: translated into {name} (rules/{name}.yaml), patterns "
              f"{_list([p.index for p, _ in kept if p.instant == instant])}"])


def _named(regex: str, v1: V1Rule, with_time: bool) -> str:
    """The pattern with its address group named `host` (and its time group `time`)."""
    spans = group_spans(regex)
    names = {v1.address_group: "host"}
    if with_time and len(spans) >= v1.time_group:
        names[v1.time_group] = "time"
    for number in sorted(names, reverse=True):  # from the end: earlier offsets stay valid
        start, end = spans[number - 1]
        inner = re.sub(r"^\(\?P<\w+>", "(", regex[start:end])
        regex = regex[:start] + f"(?P<{names[number]}>" + inner[1:] + regex[end:]
    return regex


def _reads_time(time_format: str) -> bool:
    """Whether our time parser reads what `time_format` writes."""
    if not time_format:
        return False
    moment = datetime(2026, 11, 21, 20, 19, 28, tzinfo=timezone.utc)
    try:
        text = moment.strftime(time_format)
    except ValueError:
        return False
    return timeparse.parse_time(text, "UTC", moment.timestamp() + 60) == moment.timestamp()


def _rule_file(ctx: Context, v1: V1Rule, body: dict) -> str:
    import yaml

    head = (f"# Written by `pyfilter import pyfilter-v1` from the original PyFilter's rule {v1.name!r}\n"
            f"# in {ctx.config_path}. Its format: docs/rules.md; the mapping: docs/import.md.\n")
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)


def _list(items: list[int]) -> str:
    return ", ".join(str(i) for i in items)
