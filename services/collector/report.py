"""The collector's status report of its host: what each source holds, which carries each rule.

Made from the plan chosen at start (what is really read) and a fresh look at
the sources (a file may have appeared or gone since), every CHECK_EVERY
seconds; `common.status.Publisher` writes it to Redis when it changed or a
minute has passed. Looking costs a few stat() calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from fnmatch import fnmatchcase

from pyfilter.common.config import Rule, Settings, Source as SourceConfig
from pyfilter.common.messages import CollectorStatus, RuleSources, SourceStatus
from pyfilter.common.redisio import TRANSIENT
from pyfilter.common.status import Publisher

from . import plan

log = logging.getLogger("pyfilter.collector")

CHECK_EVERY = 15.0  # (s) between looks at the sources


def make(settings: Settings, chosen: plan.Plan, live: dict, started_at: float) -> CollectorStatus:
    """The report now. `chosen`: the plan made at start; `live`: source name -> the running source."""
    sources = settings.config.collector.sources
    found = {s.name: plan.probe(s) for s in sources}
    fresh = {c.rule: c for c in plan.make(settings.rules, sources, found).rules}
    rules = [_rule(c, fresh.get(c.rule), chosen, _in_containers(c, settings.rules[c.rule], live))
             for c in chosen.rules]
    carried = {n for c in chosen.rules for n in c.left_out}
    return CollectorStatus(
        host=settings.host, at=time.time(), started_at=started_at,
        sources=[_source(s, found[s.name], s.name in chosen.sources, s.name in carried, live.get(s.name))
                 for s in sources],
        rules=rules)


def _in_containers(choice: plan.Choice, rule: Rule, live: dict) -> bool:
    """Whether a container source among the rule's carriers follows a container whose lines
    it reads (by the container's `pyfilter.rules` label, else its program), as the detector routes them."""
    for name in choice.carriers:
        for f in getattr(live.get(name), "followed", {}).values():
            if f.gone:
                continue
            if f.rules is not None:
                if choice.rule in f.rules:
                    return True
            elif f.program and any(fnmatchcase(f.program.lower(), p.lower()) for p in rule.programs):
                return True
    return False


def _rule(start: plan.Choice, now: plan.Choice | None, chosen: plan.Plan, in_containers: bool) -> RuleSources:
    problem = now.problem if now is not None else start.problem
    if in_containers:  # the plan cannot see into containers; the running source can
        problem = None
    if start.problem and now is not None and not now.problem:
        # Something appeared since the start. Files are followed from the
        # start even while missing; a journal that had no files is not.
        unread = [n for n in now.carriers if n not in chosen.sources]
        if unread:
            problem = (f"{start.rule}: {', '.join(unread)} appeared after the collector started; "
                       "restart the collector to read it (docker compose restart collector)")
    return RuleSources(rule=start.rule, sources=start.carriers, journal=start.journal,
                       left_out=start.left_out, problem=problem)


def _source(cfg: SourceConfig, found: plan.Found, followed: bool, copies: bool, running) -> SourceStatus:
    if cfg.type == "docker":
        return _containers(cfg, followed, running)
    readable, unreadable = found.readable, found.unreadable
    if cfg.type == "journal":  # a journal is many files: name their folders
        readable = sorted({os.path.dirname(p) or p for p in readable})
        unreadable = sorted({os.path.dirname(p) or p for p in unreadable})
    state = "found" if readable else "unreadable" if unreadable else "missing"
    note = ""
    if unreadable:
        note = (f"{', '.join(unreadable)}: not readable by the collector (user {os.getuid()}, "
                f"groups {', '.join(map(str, os.getgroups()))})")
    if not followed:
        why = ("the journal carries its rules' lines; this file's copies are not read" if copies
               else "no enabled rule reads it here")
        note = f"{note}; {why}" if note else why
    return SourceStatus(name=cfg.name, type=cfg.type, state=state, followed=followed, readable=readable,
                        unreadable=unreadable, missing=found.missing, note=note)


def _containers(cfg: SourceConfig, followed: bool, running) -> SourceStatus:
    """Docker's containers folder as the running source last listed it."""
    if running is None:  # not followed, or not started yet: the folder itself is all there is to see
        from .sources.docker import FOLDER

        folder = cfg.paths[0] if cfg.paths else FOLDER
        there = os.path.isdir(folder)
        return SourceStatus(name=cfg.name, type=cfg.type, state="found" if there else "missing",
                            followed=followed, readable=[folder] if there else [],
                            missing=[] if there else [folder],
                            note="" if followed else "no enabled rule reads it here")
    problem = running.problems.get(running.folder)
    containers = sorted(f"{f.name} ({f.program or ', '.join(f.rules or [])})"
                        for f in running.followed.values() if not f.gone)
    state = "unreadable" if problem else "found"
    return SourceStatus(name=cfg.name, type=cfg.type, state=state, followed=followed,
                        readable=[] if problem else [running.folder],
                        unreadable=[running.folder] if problem else [],
                        containers=containers, note=problem or "")


async def publish_until(settings: Settings, chosen: plan.Plan, live: dict, publisher: Publisher,
                        stop: asyncio.Event) -> None:
    """Keep the report in Redis fresh until `stop` is set."""
    started_at = time.time()
    while not stop.is_set():
        try:
            # In the loop, not a thread: it reads the running sources' state.
            await publisher.publish(make(settings, chosen, live, started_at))
        except TRANSIENT as exc:  # the heartbeat says when Redis is away
            log.debug("status report not written", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECK_EVERY)
