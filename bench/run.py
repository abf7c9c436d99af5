"""`make bench`: PyFilter side by side with fail2ban, on the same files in the same run.

    python -m bench.run [--logs stress,mixed] [--parts matching,pipeline]
                        [--feed collector|direct] [--keep] [--no-docs]

1. Writes the two logs (see bench/logs.py), dated so that they end now.
2. Matching: `fail2ban-regex LOG sshd.conf` against `pyfilter match --rule
   sshd` (the detector's batch matcher), and for reference the whole catalog;
   beside them, the same two runs of the matcher before envelopes (bench/baseline.py).
   Then `pyfilter replay` (the detector's whole decision, offline in log time)
   with the sshd settings below, against `pyfilter match --rule sshd`.
3. End to end: `fail2ban-server` (one jail, an action that only records the
   address) against Redis + collector + 1 and 3 detectors, each timed from
   its start until every address that must be banned is banned.
4. Prints the ratios and writes the tables to docs/benchmarks.md.

Both tools use maxretry 5, findtime 1h and bantime 1h: the logs span 10 and
30 minutes, so every failure of a log counts, and no ban runs out during a run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import baseline, fail2ban, logs, pipeline, report
from bench.procs import Usage, finish

MAXRETRY, FINDTIME, BANTIME = logs.MAXRETRY, 3600, 3600
LOGS = {"stress": logs.write_stress, "mixed": logs.write_mixed}
REPO = Path(__file__).resolve().parents[1]
SERVER_TIMEOUT = 600.0
PIPELINE_TIMEOUT = 300.0


def prerequisites() -> list[str]:
    problems = [p for p in (fail2ban.missing(), pipeline.missing()) if p]
    try:
        import pyfilter.detector.matching  # noqa: F401
    except ImportError as exc:
        problems.append(f"pyfilter is not importable ({exc}): run `make dev` first")
    return problems


def _process(argv: list[str], env: dict[str, str] | None = None) -> tuple[Usage, str]:
    """Run to its end; its usage comes from `finish` (wait4), so no `communicate`."""
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, env=env)
        out = proc.stdout.read()  # type: ignore[union-attr]
        usage = finish(proc, started)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
    return usage, out


def ours_match(path: Path, rule: str | None, before: Path | None = None) -> dict:
    """`pyfilter match` over the file (or the baseline's, unpacked at `before`): failures from
    its summary, usage of the whole process."""
    if before is None:
        cli = Path(sys.executable).with_name("pyfilter")
        argv, env = [str(cli), "match", str(path)] + (["--rule", rule] if rule else []), None
    else:
        argv, env = baseline.command(before, path, rule)
    usage, out = _process(argv, env)
    failures = int(next(line for line in out.splitlines() if line.startswith("Failures:")).split()[1])
    return {"usage": usage, "failures": failures}


def ours_replay(path: Path, shipped: bool = False) -> dict:
    """`pyfilter replay` over the file with the benchmark's sshd settings (`shipped`: with the
    catalog's slow and per-account windows on, as sshd ships): failures and bans from its
    summary line, usage of the whole process (its redis-server included: waited for)."""
    config = path.with_name("replay.yaml")
    sshd = {"maxretry": MAXRETRY, "findtime": FINDTIME, "bantime": BANTIME} if shipped else \
        logs.sshd_as_fail2ban(MAXRETRY, FINDTIME, BANTIME)
    config.write_text(yaml.safe_dump({
        "host": logs.HOST, "catalog_dir": str(REPO / "config" / "rules"), "rules": {"sshd": sshd}}))
    cli = Path(sys.executable).with_name("pyfilter")
    usage, out = _process([str(cli), "replay", "--config", str(config), str(path)])
    summary = re.search(r"([\d,]+) failures.*; ([\d,]+) ban\(s\)", out.splitlines()[0])
    failures, bans = (int(n.replace(",", "")) for n in summary.groups())  # type: ignore[union-attr]
    return {"usage": usage, "failures": failures, "bans": bans}


def rule_count() -> int:
    from pyfilter.cli.matching import load_rules  # after `prerequisites` checked that it imports
    return sum(rule.enabled for rule in load_rules(None, None).values())


def run_matching(log: logs.LogFile, before: Path | None) -> dict:
    print("  fail2ban-regex ...", flush=True)
    f2b = fail2ban.run_regex(log.path)
    print(f"    {f2b.usage.wall:.2f} s, {f2b.matched:,} matched, {f2b.usage.peak_mb:.0f} MB", flush=True)
    rows = {"fail2ban-regex (sshd.conf)": {"usage": f2b.usage, "failures": f2b.matched}}
    runs = [(report.OURS, "sshd", None), (f"PyFilter, `pyfilter match` (all {rule_count()} rules)", None, None)]
    if before is not None:  # today's matcher against the one before envelopes, on the same file
        runs += [(f"before envelopes ({baseline.SHORT}), `--rule sshd`", "sshd", before),
                 (f"before envelopes ({baseline.SHORT}), all 23 rules", None, before)]
    for name, rule, code in runs:
        print(f"  {name} ...", flush=True)
        rows[name] = r = ours_match(log.path, rule, code)
        print(f"    {r['usage'].wall:.2f} s, {r['failures']:,} failures, {r['usage'].peak_mb:.0f} MB, "
              f"{f2b.usage.wall / r['usage'].wall:.1f}x fail2ban-regex", flush=True)
    for name, shipped in ((report.REPLAY, False), (report.REPLAY_SHIPPED, True)):
        print(f"  {name} ...", flush=True)
        rows[name] = r = ours_replay(log.path, shipped)
        print(f"    {r['usage'].wall:.2f} s, {r['failures']:,} failures, {r['bans']:,} bans "
              f"({len(log.banned):,} addresses reach sshd's per-address threshold), "
              f"{r['usage'].wall / rows[report.OURS]['usage'].wall:.2f}x the time of `pyfilter match --rule sshd`",
              flush=True)
    return rows


def run_end_to_end(log: logs.LogFile, work: Path, feed: str) -> dict:
    expected = log.banned
    print(f"  fail2ban-server (up to {SERVER_TIMEOUT:.0f} s) ...", flush=True)
    server = fail2ban.run_server(log.path, expected, work / "fail2ban", maxretry=MAXRETRY,
                                 findtime=FINDTIME, bantime=BANTIME, timeout=SERVER_TIMEOUT)
    shown = f"{server.seconds:.1f} s" if server.seconds else f"timed out ({server.banned:,} banned)"
    print(f"    {shown}, {server.usage.peak_mb:.0f} MB", flush=True)
    rows = {"fail2ban-server": server}
    for n in (1, 3):
        print(f"  PyFilter, {n} detector(s) ...", flush=True)
        r = pipeline.run(log.path, expected, work / f"pyfilter-{n}", detectors=n, feed=feed,
                         maxretry=MAXRETRY, findtime=FINDTIME, bantime=BANTIME, timeout=PIPELINE_TIMEOUT)
        rows[f"PyFilter, {n} detector{'s' if n > 1 else ''}"] = r
        ratio = f", {server.seconds / r.seconds:.1f}x fail2ban-server" if server.seconds and r.seconds else ""
        shown = f"{r.seconds:.2f} s" if r.seconds else f"timed out ({r.banned:,} banned)"
        print(f"    {shown}{ratio}, {r.peak_mb:.0f} MB in all", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="stress,mixed", help="which logs (default: stress,mixed)")
    parser.add_argument("--parts", default="matching,pipeline", help="matching, pipeline or both")
    parser.add_argument("--feed", choices=["collector", "direct"], default="collector",
                        help="how lines reach Redis end to end (default: the real collector)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = [n for n in args.logs.split(",") if n]
    parts = set(args.parts.split(","))
    if unknown := [n for n in names if n not in LOGS] + sorted(parts - {"matching", "pipeline"}):
        parser.error(f"unknown log or part: {', '.join(unknown)}")

    if problems := prerequisites():
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="pyfilter-bench-"))
    run = report.Run.begin(fail2ban.version(), args)
    try:
        # Written first, together: "now" for both, and the same files for every tool.
        files = {}
        for name in names:
            files[name] = LOGS[name](work / f"{name}.log")
            print(f"{name}: {files[name].lines:,} lines, {files[name].failures:,} failures, "
                  f"{len(files[name].banned):,} addresses to ban", flush=True)
        before = None
        if "matching" in parts:
            if why := baseline.missing():
                print(f"bench: {why}", file=sys.stderr)
            else:
                before = baseline.unpack(work)
        for name, log in files.items():
            if "matching" in parts:
                print(f"[{name}] matching", flush=True)
                run.matching[name] = run_matching(log, before)
        for name, log in files.items():
            if "pipeline" in parts:
                print(f"[{name}] end to end", flush=True)
                run.pipeline[name] = run_end_to_end(log, work / name, args.feed)
        run.finish(files)
        print()
        print(report.summary(run))
        if not args.no_docs:
            path = report.write(run)
            print(f"tables written to {path}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
