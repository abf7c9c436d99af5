"""`pyfilter match` counted in instructions: the figure this machine's load does not move.

    python -m bench.instructions [--lines 100000] [--rule sshd] [--all]

Wall time on a shared 2-core machine moves by 10-30 % from run to run;
valgrind's instruction count (callgrind, `PYTHONHASHSEED=0`) is the same each
time. For each log of `make bench` (bench/logs.py), its first LINES lines are
matched by today's `pyfilter match --rule RULE` and by the matcher before
envelopes (bench/baseline.py), each in a process of its own, and an empty file
gives each one's start-up. `--all`: the whole catalog too. Needs valgrind
(Debian: `apt-get install valgrind`); about 2 minutes for 100,000 lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import baseline, logs

REPO = Path(__file__).resolve().parents[1]
_COLLECTED = re.compile(r"Collected : (\d+)")


def count(argv: list[str], env: dict[str, str] | None) -> int:
    """Instructions of the whole process (interpreter start included)."""
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                         capture_output=True, text=True, cwd=REPO,
                         env={**(env or os.environ), "PYTHONHASHSEED": "0"})
    if run.returncode != 0 or not (m := _COLLECTED.search(run.stderr)):
        raise RuntimeError(f"{' '.join(argv)} failed:\n{run.stderr[-2000:]}")
    return int(m.group(1))


def commands(path: Path, rule: str | None, before: Path) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    cli = str(Path(sys.executable).with_name("pyfilter"))
    now = ([cli, "match", str(path)] + (["--rule", rule] if rule else []), None)
    return {"now": now, "before envelopes": baseline.command(before, path, rule)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="lines of each log (default 100,000)")
    parser.add_argument("--rule", default="sshd")
    parser.add_argument("--all", action="store_true", help="the whole catalog too")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    if why := baseline.missing():
        parser.error(why)
    work = Path(tempfile.mkdtemp(prefix="pyfilter-instructions-"))
    try:
        before = baseline.unpack(work)
        files = {"empty (start-up)": work / "empty.log"}
        files["empty (start-up)"].write_text("")
        for name, write in (("stress", logs.write_stress), ("mixed", logs.write_mixed)):
            whole = write(work / f"{name}-whole.log").path
            with open(whole) as src, open(work / f"{name}.log", "w") as dst:
                for n, line in enumerate(src):
                    if n == args.lines:
                        break
                    dst.write(line)
            files[f"{name}, first {args.lines:,} lines"] = work / f"{name}.log"
        rules = [args.rule] + ([None] if args.all else [])
        print("instructions of `pyfilter match` (callgrind, PYTHONHASHSEED=0), G = 10^9")
        print(f"{'file':32} {'rules':14} {'now':>8} {'before':>8} {'change':>7}")
        for label, path in files.items():
            for rule in rules:
                counts = {name: count(argv, env) for name, (argv, env) in commands(path, rule, before).items()}
                now, old = counts["now"], counts["before envelopes"]
                print(f"{label:32} {rule or 'whole catalog':14} {now / 1e9:7.3f}G {old / 1e9:7.3f}G "
                      f"{(now - old) / old:+7.1%}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
