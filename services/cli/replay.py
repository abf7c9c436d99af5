"""`pyfilter replay`: the bans the detector would have made on these logs, offline.

    pyfilter replay [--config FILE] [--compare FILE2] [--program NAME] [--tz ZONE]
                    [--host NAME] [--now ISO8601] [--json] LOG...

Nothing here decides a ban: the lines go through the detector's own step
(`Detector.observe_texts`, then `Detector.decide`: matching, connection
state, never-ban addresses and whitelist, then the ledger's windows,
escalation and recidive) against a Redis of replay's own (ownredis.py), whose
ledger runs on a clock of log time (common/logtime.py). So every window kind
the detector knows is replayed, with no change here.

Log time: each window call's `now` is the time of the latest line it holds,
and the files' lines are merged in log time. A call holds at most STEP
seconds of log: the ledger drops a line older than its window when it
arrives, as the live detector, which sees lines within seconds of their
writing, never does for fresh ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import gc
import heapq
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pyfilter.cli import matching, ownredis, replay_report
from pyfilter.common import config as configuration
from pyfilter.common import messages
from pyfilter.common.timeparse import get_zone

STEP = 1.0  # seconds of log time per window call at most
MAX_FAILURES = 5000  # failures per window call at most (the ledger cuts them further)
HISTORY_READ = 10_000  # bans decided before their records are read from the history stream
GC_YOUNG = 10_000  # objects made (net) between the garbage collector's runs while replaying (`_few_collections`)


@dataclass
class Outcome:
    """What one configuration would have done with the logs."""

    config: str
    bans: list[messages.BanRecord] = field(default_factory=list)
    # address (as its rule counts it) -> log time of its last successful login
    logins: dict[str, float] = field(default_factory=dict)
    lines: int = 0
    failures: int = 0
    first: float | None = None  # log time of the first and last failure
    last: float | None = None
    seconds: float = 0.0

    def __repr__(self) -> str:
        # Short: asyncio.run formats the task that returns an outcome as it ends (Python 3.11),
        # which took ~0.2 s with thousands of bans in it.
        return f"Outcome({self.config!r}, {len(self.bans)} bans, {self.failures} failures)"


@dataclass(frozen=True)
class Log:
    path: str
    source: str  # the collector source whose paths name this file, else ""
    program: str | None
    tz: str | None


def logs_of(settings: configuration.Settings, paths: list[str], program: str | None,
            tz: str | None) -> list[Log]:
    """Each file with the collector source of the configuration whose paths end in its
    name (its program and zone, as the collector would send them), unless given."""
    matching.check_files(paths)
    found = []
    for path in paths:
        name = Path(path).name
        source = next((s for s in settings.config.collector.sources
                       if s.type == "file" and any(fnmatch.fnmatch(name, Path(p).name) for p in s.paths)), None)
        found.append(Log(path, source.name if source else "",
                         program or (source.program if source else None),
                         tz or (source.timezone if source else None)))
    return found


async def replay(settings: configuration.Settings, logs: list[Log], host: str, now: float | None) -> Outcome:
    """Run the detector's step over the logs against a Redis of our own."""
    from pyfilter.common import logtime
    from pyfilter.detector.main import Detector

    outcome = Outcome(settings.path)
    started = time.perf_counter()
    with ownredis.running() as url:
        redis_config = configuration.RedisConfig(url=url, prefix=settings.config.redis.prefix)
        own = msgspec.structs.replace(settings, config=msgspec.structs.replace(settings.config, redis=redis_config))
        detector = Detector(own, offline=True)
        try:
            await logtime.load(detector.client)
            # Never-ban addresses: the configuration's whitelist (this Redis holds no other, and
            # no host's own addresses: list them in the whitelist to keep them out).
            whitelist = await detector.whitelist.networks()
            detector.judge_with(set(), whitelist)
            seen = _in_log_time(detector, logs, host, now, whitelist, outcome)
            with _few_collections():
                await _decide_all(detector, _steps(seen), outcome)
        finally:
            await detector.client.aclose()
    outcome.seconds = time.perf_counter() - started
    return outcome


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """The garbage collector run less often while the logs are replayed: a replay
    makes millions of short-lived objects, each 700 of which (the default) started
    a collection that walked the long-lived ones too: 1-3 s of a shipped sshd's
    replay of a million lines (docs/benchmarks.md, "What if").
    What exists before (modules, the compiled rules) is left out of collections."""
    young, *older = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(young, GC_YOUNG), *older)
    try:
        yield
    finally:
        gc.set_threshold(young, *older)
        gc.unfreeze()


def _in_log_time(detector, logs: list[Log], host: str, now: float | None, whitelist: list,
                 outcome: Outcome) -> Iterator:
    """Every file's failures and successful logins (the detector's Observed and Login),
    merged in log time."""
    per_file = [_seen(detector, i, log, host, now, whitelist, outcome) for i, log in enumerate(logs)]
    return per_file[0] if len(per_file) == 1 else heapq.merge(*per_file, key=lambda o: o.time)


def _seen(detector, index: int, log: Log, host: str, now: float | None, whitelist: list,
          outcome: Outcome) -> Iterator:
    """One file's failures and logins in its order. A line whose time cannot be read
    takes its predecessor's (the live detector would date it by its arrival). Each
    login also goes to the outcome (its false-positive hint)."""
    from pyfilter.detector.windows import Login

    reference = now if now is not None else os.stat(log.path).st_mtime  # for year-less dates
    last = 0.0
    n = 0
    # The lines are given apart, by their texts: a Line (its id) is made only for a line that fails.
    batch = messages.LineBatch(host=host, source=log.source, lines=[], read_at=0.0, tz=log.tz, program=log.program)
    for texts in matching.read_batches(log.path):
        def line_of(i: int, texts: list[str] = texts, first: int = n) -> messages.Line:
            return messages.Line(f"{index}:{first + i}", texts[i])
        n += len(texts)
        outcome.lines += len(texts)
        logins: list = []
        observed = detector.observe_texts(batch, texts, line_of, reference, set(), whitelist, logins)
        # The matcher yields a batch's failures, then its logins: in log time again.
        for o in sorted([*observed, *logins], key=lambda o: o.time or last) if logins else observed:
            if o.time:
                last = o.time
            else:
                o = o._replace(time=last)
            if isinstance(o, Login) and o.time > outcome.logins.get(o.address, float("-inf")):
                outcome.logins[o.address] = o.time
            yield o


def _steps(seen: Iterator) -> Iterator[tuple[float, list, list]]:
    """(now, failures, logins) for each window call: at most STEP seconds of log and
    MAX_FAILURES failures."""
    from pyfilter.detector.windows import Login

    chunk: list = []
    logins: list = []
    start: float | None = None  # the time of the step's first failure or login
    now = float("-inf")
    for o in seen:
        at = o.time
        if start is None:
            start = at
        elif at - start > STEP or len(chunk) >= MAX_FAILURES:
            yield now, chunk, logins
            chunk, logins = [], []
            start = at
        if type(o) is Login:
            logins.append(o)
        else:
            chunk.append(o)
        if at > now:  # log time never runs backwards
            now = at
    if start is not None:
        yield now, chunk, logins


async def _decide_all(detector, steps: Iterator[tuple[float, list, list]], outcome: Outcome) -> None:
    """Each step's failures into the windows, one step after the other. Redis runs a
    step's call while the next step's lines are matched and grouped here (its
    request is written before matching starts), so the two take turns on no lock."""
    keys, client = detector.keys, detector.client
    seen = "0-0"  # the last history entry read: each ban's record comes from there
    unread = 0  # bans decided since

    async def read_records() -> None:
        nonlocal seen, unread
        for entry_id, fields in await client.xrange(keys.ban_history, f"({seen}"):
            outcome.bans.append(messages.decode_record(fields[b"m"]))
            seen = entry_id.decode()
        unread = 0

    running: asyncio.Task | None = None
    try:
        for now, observed, logins in steps:  # matching happens here, as the generator runs
            plan = detector.windows.plan(observed, now, logins)  # and the grouping, before Redis is done
            if running is not None:
                unread += len(await running)
                # The history stream keeps its last HISTORY_MAXLEN entries: read well before.
                if unread >= HISTORY_READ:
                    await read_records()
            outcome.failures += len(observed)
            if observed:
                if outcome.first is None:
                    outcome.first = observed[0].time
                outcome.last = now
            running = asyncio.create_task(detector.decide(observed, now, logins, plan))
            await asyncio.sleep(0)  # the task runs until it waits for Redis's answer
        if running is not None:
            await running
            running = None
        await read_records()
    finally:
        if running is not None:
            running.cancel()


def cmd_replay(args: argparse.Namespace) -> int:
    if args.tz is not None:
        get_zone(args.tz)  # fail early on a bad zone
    now = matching.parse_now(args.now, args.tz or "UTC")
    configs = [args.config, *([args.compare] if args.compare else [])]
    outcomes = []
    for path in configs:
        settings = matching.settings(path)
        matching.make_matcher(settings.rules, "UTC")  # the rules compile: a usage error if not
        host = args.host or settings.host or socket.gethostname()
        logs = logs_of(settings, args.files, args.program, args.tz)
        try:
            outcomes.append(asyncio.run(replay(settings, logs, host, now)))
        except ownredis.NoRedisServer as exc:
            raise matching.UsageError(str(exc)) from None
    replay_report.write(outcomes, args.json, args.tz or "UTC")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "replay", help="the bans the detector would make on these logs, in log time (what if)",
        description="Run the detector's whole decision (matching, connection state, never-ban addresses, "
                    "every window kind, escalation, recidive) over log files, offline and in log time, "
                    "against a redis-server of its own (started and removed here; needs redis-server on "
                    "PATH). Prints each ban: when, rule, window kind, duration, evidence; per rule, how "
                    "many banned addresses logged in successfully later (a hint of false positives).")
    p.add_argument("--config", metavar="FILE",
                   help="the configuration to replay (default: $PYFILTER_CONFIG, a checkout's, the installed one)")
    p.add_argument("--compare", metavar="FILE2",
                   help="replay with this configuration too, and show the bans only one of them makes")
    p.add_argument("--program", metavar="NAME",
                   help="the program whose own log this is (default: the configured source named like the file)")
    p.add_argument("--tz", metavar="ZONE",
                   help="zone of timestamps that carry none (default: the source's, else UTC)")
    p.add_argument("--host", metavar="NAME", help="the host whose logs these are (default: the configuration's)")
    p.add_argument("--now", metavar="ISO8601", help='"now" for year-less dates (default: each file\'s mtime)')
    p.add_argument("--json", action="store_true", help="one JSON document instead of the report")
    p.add_argument("files", nargs="+", metavar="LOG", help="log files (several: merged in log time)")
    p.set_defaults(func=cmd_replay)
