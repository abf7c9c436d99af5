"""GET /api/v1/status: what is protected, host by host, and what is wrong in plain words.

The api only reads and assembles: each host's collector and enforcer publish
their own reports (common/status.py), the detectors count lines and failures
per minute, and bans come from the ledger's counts and index of the bans in force.
`assemble` is the I/O; `host_status` and `problems` are pure.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone

from aiohttp import web

from pyfilter.api import state
from pyfilter.api.responses import json
from pyfilter.api.schemas import CollectorView, EnforcerView, HostStatus, RuleView, SourceView, StatusReport
from pyfilter.api.index import SEP
from pyfilter.common import messages
from pyfilter.common.status import last_hour, reports


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def collector_view(report: messages.CollectorStatus | None, seen: float | None,
                   lines: Counter) -> CollectorView:
    if report is None:
        return CollectorView(reporting=False, last_report=seen)
    sources = [SourceView(**{f: getattr(s, f) for f in s.__struct_fields__}, lines_last_hour=lines[s.name])
               for s in report.sources]
    return CollectorView(reporting=True, last_report=report.at, started_at=report.started_at, sources=sources)


def enforcer_view(report: messages.EnforcerStatus | None, seen: float | None) -> EnforcerView:
    if report is None:
        return EnforcerView(reporting=False, last_report=seen)
    return EnforcerView(reporting=True, last_report=report.at, started_at=report.started_at,
                        backend=report.backend, table=report.table, table_present=report.table_present,
                        hooks=report.hooks, docker_covered=report.docker_covered, sets=report.sets)


def host_status(host: str, collector: messages.CollectorStatus | None, collector_seen: float | None,
                enforcer: messages.EnforcerStatus | None, enforcer_seen: float | None,
                lines: Counter, failures: Counter, active: Counter, recent: Counter) -> HostStatus:
    """One host's section: its reports, its last hour's counts and its bans by rule."""
    rules = [RuleView(rule=r.rule, sources=r.sources, journal=r.journal, left_out=r.left_out,
                      lines_last_hour=sum(lines[s] for s in r.sources), failures_last_hour=failures[r.rule],
                      bans_active=active[r.rule], bans_last_hour=recent[r.rule], problem=r.problem)
             for r in (collector.rules if collector else [])]
    view = HostStatus(host=host, collector=collector_view(collector, collector_seen, lines),
                      enforcer=enforcer_view(enforcer, enforcer_seen), rules=rules, problems=[])
    view.problems = problems(view, enforcer.problems if enforcer else [])
    return view


def problems(view: HostStatus, enforcer_problems: list[str]) -> list[str]:
    """What is wrong on a host, in words, each with what to do."""
    out = []
    for name, part, what in (("collector", view.collector, "its logs are not read"),
                             ("enforcer", view.enforcer, "bans are not applied in its firewall")):
        if part.reporting:
            continue
        if part.last_report is None:
            out.append(f"no {name} reports from this host: {what} (is it running? "
                       f"docker compose ps; docker compose logs {name})")
        else:
            out.append(f"the {name} has not reported since {_when(part.last_report)}: it stopped or "
                       f"cannot reach Redis, so {what} (docker compose logs {name})")
    out += [r.problem for r in view.rules if r.problem]
    out += [f"source {s.name}: {s.note}" for s in view.collector.sources
            if s.followed and s.state == "unreadable" and s.note]
    out += enforcer_problems
    return out


async def assemble(api: state.Api, now: float | None = None) -> StatusReport:
    now = time.time() if now is None else now
    live, seen = await reports(api.client, api.keys, now)
    active, recent = await _bans(api, now)
    hosts = []
    for host in sorted({h for _, h in seen}):
        lines, failures = await last_hour(api.client, api.keys, host, now)
        hosts.append(host_status(
            host, live.get(("collector", host)), seen.get(("collector", host)),
            live.get(("enforcer", host)), seen.get(("enforcer", host)), lines, failures,
            Counter({r: n for (h, r), n in active.items() if h == host}),
            Counter({r: n for (h, r), n in recent.items() if h == host})))
    overall = [f"{h.host}: {p}" for h in hosts for p in h.problems]
    if not hosts:
        overall.append("no collector or enforcer has reported: is the stack running? (docker compose ps)")
    return StatusReport(at=now, hosts=hosts, problems=overall)


async def _bans(api: state.Api, now: float) -> tuple[Counter, Counter]:
    """Bans in force by (host, rule), all of them and those written in the last hour,
    from the ledger's counts and index: a ban whose time ran out counts until the
    notifier prunes it (within a minute), one lifted does not."""
    active: Counter = Counter()
    for field, count in (await api.client.hgetall(api.keys.ban_counts)).items():
        kind, _, host_rule = field.decode().partition(SEP)
        if kind == "host-rule":
            host, _, rule = host_rule.partition(SEP)
            active[host, rule] = int(count)
    recent = Counter(await api.reader.index.recent(list(active), now - 3600))
    return active, recent


async def get_status(request: web.Request) -> web.Response:
    return json(await assemble(state.of(request)))


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/status", get_status)]
