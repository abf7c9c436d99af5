"""What `pyfilter replay`'s Python costs without Redis, and a floor for replay's windows kept
in Python (issue 17's option c), against `pyfilter match --rule sshd` on the mixed log.

    .venv/bin/python -m bench.replay_python [--lines N] [--busy]

Three timings in this process, on the same log and the shipped sshd:
- "observe": the detector's step over every line (matching, connection state, never-ban
  checks, a Line per failure) cut into replay's steps, nothing sent;
- "+ plan": the same, with each step's window calls grouped and packed as replay sends them;
- "dict windows": the observe loop feeding per-address, slow and per-account windows kept
  in Python dicts and deques. A sketch, not a replay: no evidence, records, escalation,
  recidive or sparing logins; what it costs is the least a Python window engine would.
`--busy` keeps the other core busy during the three (a Python loop), as Redis does in a
replay (the match runs alone): this machine's two vCPUs slow each other. Numbers go to docs/benchmarks.md ("What if").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from bench import logs, run
from bench.replay_kinds import write_config
from pyfilter.cli import matching, ownredis, replay
from pyfilter.common import config as configuration

KIND = "shipped (both)"
SLOW_BUCKET = 3600  # the catalog sshd's slow window: 30 failures in 24 h, counted per hour
SLOW_MAXRETRY, SLOW_SPAN, SLOW_BANTIME = 30, 86400, 86400
ACCOUNT_FAILURES, ACCOUNT_ADDRESSES, ACCOUNT_SPAN = 20, 10, 600  # its per-account window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--busy", action="store_true", help="keep the other core busy meanwhile")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyfilter-replay-python-"))
    try:
        log = logs.write_mixed(work / "mixed.log", lines=args.lines)
        settings = matching.settings(str(write_config(work / "replay.yaml", KIND)))
        print(f"mixed: {log.lines:,} lines, {log.failures:,} failures; sshd {KIND}", flush=True)
        match = run.ours_match(log.path, "sshd", None)["usage"].wall  # alone, as `make bench` runs it
        print(f"  pyfilter match --rule sshd: {match:.2f} s", flush=True)
        with _busy() if args.busy else contextlib.nullcontext():
            for name, work_on in (("observe", None), ("+ plan", "plan"), ("dict windows", "dicts")):
                seconds, found = asyncio.run(_timed(settings, log.path, work_on))
                print(f"  {name}: {seconds:.2f} s, {seconds / match:.2f}x the match"
                      + (f" ({found:,} bans)" if work_on == "dicts" else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


@contextlib.contextmanager
def _busy() -> Iterator[None]:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spin.kill()
        spin.wait()


async def _timed(settings: configuration.Settings, path: Path, work_on: str | None) -> tuple[float, int]:
    """Seconds of replay's loop over the log with `work_on` done per step, and the bans
    the dict windows made. The detector needs a Redis to be made; nothing is sent to it."""
    from pyfilter.detector.main import Detector

    with ownredis.running() as url:
        redis_config = configuration.RedisConfig(url=url, prefix=settings.config.redis.prefix)
        own = msgspec.structs.replace(settings, config=msgspec.structs.replace(settings.config, redis=redis_config))
        detector = Detector(own, offline=True)
        detector.judge_with(set(), [])
        found = 0
        per_step: Callable = _nothing
        if work_on == "plan":
            per_step = detector.windows.plan
        elif work_on == "dicts":
            windows = DictWindows()
            per_step = windows.step
        logs_ = replay.logs_of(settings, [str(path)], None, None)
        seen = replay._in_log_time(detector, logs_, logs.HOST, None, [], replay.Outcome(settings.path))
        with replay._few_collections():
            started = time.perf_counter()
            for now, observed, logins in replay._steps(seen):
                per_step(observed, now, logins)
            seconds = time.perf_counter() - started
        if work_on == "dicts":
            found = windows.bans
        await detector.client.aclose()
    return seconds, found


def _nothing(*_) -> None:
    pass


class DictWindows:
    """The shipped sshd's three windows as dicts: a floor for their cost in Python."""

    def __init__(self) -> None:
        self.recent: dict[str, deque] = defaultdict(deque)  # address -> failure times
        self.slow: dict[str, Counter] = defaultdict(Counter)  # address -> hour -> failures
        self.accounts: dict[str, deque] = defaultdict(deque)  # account -> (time, address)
        self.held: dict[str, tuple[float, float]] = {}  # address -> (end, duration) of its ban
        self.bans = 0

    def step(self, observed: list, now: float, logins: list) -> None:
        for o in observed:
            address, at = o.address, o.time
            recent = self.recent[address]
            recent.append(at)
            while at - recent[0] > run.FINDTIME:
                recent.popleft()
            if len(recent) >= run.MAXRETRY:
                self._ban(address, at, run.BANTIME)
                recent.clear()
            hours = self.slow[address]
            hours[int(at // SLOW_BUCKET)] += 1
            if sum(hours.values()) >= SLOW_MAXRETRY:
                self._ban(address, at, SLOW_BANTIME)
                hours.clear()
            if o.user:
                tried = self.accounts[o.user]
                tried.append((at, address))
                while at - tried[0][0] > ACCOUNT_SPAN:
                    tried.popleft()
                if len(tried) >= ACCOUNT_FAILURES and len(addresses := {a for _, a in tried}) >= ACCOUNT_ADDRESSES:
                    for a in addresses:
                        self._ban(a, at, run.BANTIME)
                    tried.clear()

    def _ban(self, address: str, at: float, duration: float) -> None:
        """Unless a ban at least as long is in force (as the ledger judges a crossing)."""
        end, held = self.held.get(address, (0.0, 0.0))
        if end <= at or held < duration:
            self.held[address] = (at + duration, duration)
            self.bans += 1


if __name__ == "__main__":
    sys.exit(main())
