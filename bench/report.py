"""The benchmark's results: the ratios printed at the end, and docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
F2B_REGEX = "fail2ban-regex (sshd.conf)"
OURS = "PyFilter, `pyfilter match --rule sshd`"
REPLAY = "PyFilter, `pyfilter replay` (sshd per address, as the jail: bans decided too)"
REPLAY_SHIPPED = "PyFilter, `pyfilter replay` (sshd as shipped: + slow and per-account windows)"
REPLAYS = (REPLAY, REPLAY_SHIPPED)


@dataclass
class Run:
    fail2ban: str
    command: str
    started: str
    load_before: str
    matching: dict = field(default_factory=dict)  # log -> row name -> {"usage", "failures"}
    pipeline: dict = field(default_factory=dict)  # log -> row name -> ServerResult | PipelineResult
    files: dict = field(default_factory=dict)
    load_after: str = ""

    @classmethod
    def begin(cls, fail2ban_version: str, args) -> "Run":
        argv = " ".join(sys.argv[1:])
        command = "make bench" if not argv else f"python -m bench.run {argv}"
        return cls(fail2ban_version, command,
                   datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), _load())

    def finish(self, files: dict) -> None:
        self.files = files
        self.load_after = _load()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_v = next((w[2:] for w in redis if w.startswith("v=")), "?")
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, Redis {redis_v}")


def _ratio(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return "n/a"
    return f"**{theirs / ours:.1f}x**"


def _s(x: float | None) -> str:
    return "timed out" if x is None else f"{x:.2f}"


def summary(run: Run) -> str:
    out = []
    for name, rows in run.matching.items():
        f2b = rows[F2B_REGEX]["usage"]
        ours = rows[OURS]["usage"]
        out.append(f"{name}: matching {f2b.wall / ours.wall:.1f}x faster than fail2ban-regex "
                   f"({ours.wall:.2f} s vs {f2b.wall:.2f} s; CPU {f2b.cpu / ours.cpu:.1f}x)")
    for name, rows in run.matching.items():
        for kind in REPLAYS:
            if kind in rows:
                replay, ours = rows[kind], rows[OURS]["usage"]
                out.append(f"{name}: {kind}: {replay['usage'].wall / ours.wall:.2f}x the time of matching "
                           f"({replay['usage'].wall:.2f} s vs {ours.wall:.2f} s), {replay['bans']:,} bans")
    for name, rows in run.pipeline.items():
        server = rows["fail2ban-server"].seconds
        for row, r in rows.items():
            if row != "fail2ban-server":
                ratio = f"{server / r.seconds:.1f}x" if server and r.seconds else "n/a"
                out.append(f"{name}: {row}: every ban in {_s(r.seconds)} s, {ratio} faster than "
                           f"fail2ban-server ({_s(server)} s)")
    return "\n".join(out)


def _matching_table(run: Run) -> list[str]:
    out = ["| log | tool | failures found | wall s | CPU s | lines/s (wall) | peak MB | vs fail2ban-regex (wall) | (CPU) |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, rows in run.matching.items():
        lines = run.files[name].lines
        f2b = rows[F2B_REGEX]["usage"]
        for row, r in rows.items():
            if row in REPLAYS:  # decisions too, not matching: their own table, against the match
                continue
            u = r["usage"]
            same = row == F2B_REGEX
            out.append(f"| {name} | {row} | {r['failures']:,} | {u.wall:.2f} | {u.cpu:.2f} | "
                       f"{lines / u.wall:,.0f} | {u.peak_mb:.0f} | "
                       f"{'1x' if same else _ratio(f2b.wall, u.wall)} | "
                       f"{'1x' if same else f'{f2b.cpu / u.cpu:.1f}x'} |")
    return out


def _replay_table(run: Run) -> list[str]:
    out = ["| log | replay | bans decided | addresses past sshd's per-address threshold | replay wall s | "
           "CPU s (with its Redis) | `pyfilter match --rule sshd` wall s | replay / match (wall) |",
           "|---|---|--:|--:|--:|--:|--:|--:|"]
    for name, rows in run.matching.items():
        for kind in REPLAYS:
            if kind not in rows:
                continue
            replay, ours = rows[kind], rows[OURS]["usage"]
            u = replay["usage"]
            out.append(f"| {name} | {kind} | {replay['bans']:,} | {len(run.files[name].banned):,} | {u.wall:.2f} | "
                       f"{u.cpu:.2f} | {ours.wall:.2f} | **{u.wall / ours.wall:.2f}x** |")
    return out


def _pipeline_table(run: Run) -> list[str]:
    out = ["| log | system | addresses banned | time to the last ban, s | all lines processed, s | "
           "vs fail2ban-server | CPU s (all processes) | peak MB (sum of processes) | ban decisions |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, rows in run.pipeline.items():
        server = rows["fail2ban-server"]
        expected = len(run.files[name].banned)
        for row, r in rows.items():
            if row == "fail2ban-server":
                out.append(f"| {name} | fail2ban-server (1 jail) | {r.banned:,} / {expected:,} | {_s(r.seconds)} "
                           f"| - | 1x | {r.usage.cpu:.1f} | {r.usage.peak_mb:.0f} | {r.banned:,} (distinct) |")
                continue
            cpu = sum(u.cpu for u in r.usage.values())
            parts = ", ".join(f"{k} {u.peak_mb:.0f}" for k, u in r.usage.items())
            out.append(f"| {name} | {row} | {r.banned:,} / {expected:,} | {_s(r.seconds)} | {_s(r.drained)} | "
                       f"{_ratio(server.seconds, r.seconds)} | {cpu:.1f} | {r.peak_mb:.0f} ({parts}) | "
                       f"{r.decisions:,} |")
    return out


def write(run: Run, path: Path = DOC) -> Path:
    logs = [f"- **{name}**: {f.lines:,} lines, {f.failures:,} failure lines, {len(f.banned):,} addresses "
            f"to ban, spanning {f.span / 60:.0f} minutes up to the moment of the run"
            for name, f in run.files.items()]
    text = "\n".join([
        "# Benchmarks: PyFilter and fail2ban, side by side",
        "",
        "Written by `make bench` (`bench/run.py`); do not edit by hand, rerun it.",
        "",
        f"- Command: `{run.command}` (= `.venv/bin/python -m bench.run`)",
        f"- Date: {run.started}",
        f"- Machine: {machine()}",
        f"- fail2ban: Debian's package, {run.fail2ban}",
        f"- Load average (1, 5, 15 min) before / after: {run.load_before} / {run.load_after}"
        " (other work on the machine slows both sides; compare within one run)",
        "",
        "The logs are generated for each run (bench/logs.py), ending at the moment of the run,",
        "and every tool reads the same files:",
        "",
        *logs,
        "",
        "Both tools: maxretry 5, findtime 1 h, bantime 1 h (the logs span at most 30 minutes, so",
        "every failure counts and no ban runs out while the benchmark runs).",
        "",
        "## Matching: log file to failures, one process",
        "",
        "`fail2ban-regex LOG /etc/fail2ban/filter.d/sshd.conf` against `pyfilter match --rule sshd LOG`",
        "(the detector's matcher: the lines in batches of 1,000, as the detector gets them, through",
        "`Matcher.match_batch`, connection state and log times included), and for reference",
        "`pyfilter match LOG` with the whole catalog. Wall time is the whole process, start-up and",
        "rule compilation included.",
        "",
        *_matching_table(run),
        "",
        "## What if: `pyfilter replay`",
        "",
        "`pyfilter replay --config replay.yaml LOG` runs the detector's whole decision over the file",
        "in log time, against a redis-server of its own (started and removed by the command):",
        "matching, never-ban addresses, the ledger's windows and bans. Redis runs one step's window",
        "call while the next step's lines are matched and grouped, so on 2 cores the wall time is",
        "about the larger of the two CPU shares. The aim: at most twice the time of",
        "`pyfilter match --rule sshd` on the same file. Two replays: sshd counting per address, as",
        "the rows beside fail2ban (`bench/logs.py`, `sshd_as_fail2ban`), and sshd as the catalog",
        "ships it (also its slow and per-account windows, which make more bans). The aim is set on",
        "the mixed log; the stress log, half of whose lines are failures, shows what each failure costs.",
        "",
        *_replay_table(run),
        "",
        "## End to end: log file to every ban decided",
        "",
        "fail2ban: `fail2ban-server -f` with one jail (`sshd` filter, polling backend, the log read",
        "from its first line) whose action only appends the address to a file; timed from its start",
        "until every address that must be banned is in that file.",
        "PyFilter: a private `redis-server` (unix socket), the detectors (`python -m pyfilter.detector`)",
        "and the collector (`python -m pyfilter.collector`, the file read from its start), timed from",
        "the collector's start until every address that must be banned is in `bans:active` (the",
        "window script writes the decision, the ban record and `bans:active` in one step).",
        "Peak memory is each process's peak resident set (`wait4`), summed over the processes.",
        "",
        *_pipeline_table(run),
        "",
        LIMITS,
    ])
    path.write_text(text + "\n" + kept_sections(path))
    return path


# Sections other commands write (bench/idle.py, bench/api_reads.py: each replaces its
# own generated part, the prose around it stays) or that hold measurements made apart
# (bench.replay_kinds): kept as they stand when `make bench` rewrites the rest.
KEPT_SECTIONS = ("## What if: each window kind", "## Idle cost", "## Reads at a million bans")


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    kept = []
    for heading in KEPT_SECTIONS:
        start = text.find(f"\n{heading}")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            kept.append(text[start:end if end >= 0 else len(text)].rstrip("\n") + "\n")
    return "".join(kept)


LIMITS = """\
## What limits each number

- **fail2ban-regex** spends its time in Python per line: date detection, the prefix regex,
  then every failregex of the filter, and bookkeeping per match (it also keeps every matched
  and missed line, hence its memory).
- **PyFilter matching** (`pyfilter match`, the detector's batch matcher) is short of the
  issue's 20x aim, and this design cannot reach it on the stress log.
  `python -m bench.match_parts LOG` splits the time (sshd rule, batches of 1,000, best of 3;
  stress log, three moments of this VM on 2026-11-22, 00:30, 01:50 and 02:58 UTC): start-up
  (interpreter, imports, catalog) 0.16-0.25 s, reading the file 0.1-0.23 s, the rule's
  multi-line search with nothing done per match 0.41-0.60 s, a bare regex for just the log's
  two failure lines (one `finditer` over the whole file) 0.32-0.51 s: the search is close to
  what Python's `re` can do at all. The Python work per match comes on top: `match_batch`
  takes 1.4-2.0 s in all, a third of it the sshd connection state by pid (375,000 matches:
  three of the four lines of a login match, the `pam_unix` one because it names the address
  of the connection). 20x means fail2ban-regex's time / 20 (13.4-19.7 s / 20 = 0.67-0.99 s),
  and start-up, reading and the search alone take about that before a single match is
  handled in Python. Reaching it needs the per-match work out of Python: a compiled matcher
  (regex engine plus connection state in C), which this project (pure Python) has not
  taken on. Two cores would at best halve the time, and the connection state makes a split
  file's halves depend on each other. Tried and dropped: a per-pattern literal dispatch (one
  `str.count` per key string cost more than the regex work it saved), inlining the
  connection state code (no measurable gain), dropping the pattern markers (6 % of the
  search), a dict from newline offsets to line numbers instead of counting newlines (within
  this VM's noise).
- **Envelopes and the whole catalog** (the rows "before envelopes": the matcher of commit
  3537ff7, whose 23 rules each carried the syslog header in their patterns, unpacked by
  bench/baseline.py and run on the same files in the same run). Each line's header is now
  read once for all rules (envelopes.read_batch: one `split` of the batch) and the line goes
  only to the rules of its program, so 104 rules cost about what 23 did: on the mixed log
  the two whole-catalog rows are within a few percent of each other, of which about 0.4 s is
  compiling 81 more rules at start-up (0.5 s for 104; since block searches are compiled
  when a rule first gets lines, a host's catalog compiles less: 100,000 mixed lines, 8.35 G
  instructions before that, 7.48 G after). The sshd rule alone paid for reading the headers,
  which its own pattern used to do in passing (+7 % of instructions, 0.67 G per 100,000
  lines, 0.52 G of it the `split`). So a catalog of at most 3 rules that name their programs
  (`FEW` in matching/matcher.py) has each rule's search read the common syslog header itself
  (`envelopes.common_search`, `scan.scan_common`): other programs' lines fail inside the
  regex, no batch is split, and the first line with another header sends the rest of its
  batch to the envelope path (tests/unit/test_matching_common.py: both paths find the same).
  `python -m bench.instructions` counts instructions (callgrind, `PYTHONHASHSEED=0`, whole
  process, first 100,000 lines of each log, the machine's load does not change them):
  on the tree before main's CLI gained `pyfilter server` (2026-12-06), `--rule sshd` stress
  4.19 G against 4.34 G before envelopes (-3.3 %), mixed 3.90 G against 3.94 G (-1.0 %),
  start-up 0.95 G against 0.97 G; the split path had been 4.25 G and 4.10 G. (`pyfilter
  server`, added later, loads redis-py, the ledger and the ACL rules only when it runs, as
  the importers do: at start they cost 120 ms and 14 MB; tests/unit/test_cli.py keeps them
  out.) Wall time on this shared machine moves more than these differences: read the
  instruction counts.
  Tried and dropped: the line of a match found by bisecting a list of newline offsets
  instead of counting newlines (1 % more instructions). Not tried: the journal's RFC 3339
  header on the common path (lines of the journal source go through `read_batch`). Kept:
  `\\d` read as `[0-9]` in every pattern and header
  (Python checks `\\d` by a Unicode lookup per character), 1.5 % of the instructions.
- **Start-up of `pyfilter`** (`python -X importtime -m pyfilter.cli match --rule sshd EMPTY_FILE`,
  the cumulative time of `pyfilter.cli.main`, three runs, 2026-12-06): 102-108 ms of imports
  now, 170-247 ms before the importers were loaded only when `pyfilter import` runs (commit
  2b6f5a4; the old tree run with `PYTHONPATH` at a `pyfilter` link to its services/).
- **The ledger's per-address keys** (issue 14: one address's keys passed in KEYS with a hash
  tag). `python -m bench.scaling --failures 80000 --addresses 20000 --detectors 1 --clients 1`,
  the worst case for it (every batch holds one failure per address), six alternating runs of
  main before the ledger and of the ledger branch after its performance pass, 2026-12-06,
  CPU seconds (the machine was shared, so not wall time): detector 3.38 s before, 3.63 s
  after (+7 %); Redis CPU per failure in the pipeline 45.3 µs, 48.8 µs (+8 %); the window
  script alone, client CPU 0.40 s, 0.49 s, Redis 37.3 µs, 40.6 µs per failure (+9 %).
  Counted in instructions (callgrind on redis-server, best of 3): 206.2k per failure before,
  218.7k after (+6 %), about 2 points of it the Lua check that refuses a field the msgspec
  structs lack. Before the pass (9 keys a group packed by redis-py) the detector took 4.2-4.5 s.
  The end-to-end rows above stay within this machine's noise of the previous runs (mixed log,
  1 detector: 11.26 s now, 10.56 s on 2026-11-22).
- **`pyfilter replay`** runs two processes side by side on each step of log time: Python
  matches a step's lines (the detector's `observe`: `pyfilter match`'s work plus the
  never-ban checks and a Line for each failing line), groups them and packs the step's
  window calls, while Redis runs the ledger's Lua on the step before. With a core each the
  wall time is about the larger share, Redis's: with the shipped sshd about 15-20 s of Redis
  CPU against 10-12 s of Python on the mixed log ("What if: each window kind" below); when
  other work takes the cores the two shares add up. Tried: a worker thread for the matching
  (as the detector does) left Redis's answers waiting for the GIL behind it; one window
  call per 10 s of log instead of 1 s saves 15-20 % but dates bans up to 10 s late.
- **Hostile lines** (`python -m bench.hostile_lines`, per rule in docs/hostile-lines.md; whole catalog, one `Matcher.match` per
  line, best of 3, 2026-11-22 03:50 UTC): an 8,000-slash request path takes 2.8 ms in the
  access log and 2.7 ms in the error log; with the nginx-botsearch patterns before commit
  b692394 (`--catalog` pointed at a copy of them) the same lines took 6.2 s and 5.8 s of
  backtracking each. Lines reach the detector cut at 16 KB (`collector.max_line_bytes`).
- **fail2ban-server** is bound by its per-line Python filter (as fail2ban-regex), by its
  database writes per ban, and by running the action as a shell command per ban. Its time
  varies more than ours from run to run on this 2-core machine (2026-11-21/22: stress log
  84, 109, 167 and 173 s; mixed log 80-84, 117, 143 and 222 s), so read one run's ratio
  with the others in mind: against its fastest mixed-log time (84 s) the 1-detector
  ratio of a run is about 7.5x (a slow run) to 10.6x (a quiet one).
- **PyFilter end to end**: on the stress log every address reaches 5 failures in its third
  login, so the last ban comes after about 12 % of the log; "all lines processed" is the whole
  log. The detector matches in a worker thread while its event loop sends the previous read's
  window update (one round trip: every script call of a read in one pipeline, the failures as
  one MessagePack argument) and asks for the next read, so matching and the window script in
  Redis overlap. On 2 cores the collector, the detector(s) and Redis share the CPU: the
  "CPU s" column divided by 2 is the floor for the wall time. More detectors help where there
  are more cores (docs/scaling.md).
- **Noise**: the numbers come from one run on a shared 2-core machine; the load average above
  says how busy it was. Ratios within one run are comparable; absolute times move by 10-30 %.
"""
