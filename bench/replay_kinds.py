"""What each of sshd's window kinds costs `pyfilter replay` on the mixed benchmark log.

    .venv/bin/python -m bench.replay_kinds [--lines N]

`make bench` replays the log with sshd counting per address, as fail2ban's jail
does, and with sshd as shipped. The catalog's sshd has a slow window and a
per-account window (docs/rules.md, "Window kinds"); this replays the same file
with each of them alone on, then both (the shipped rule), beside `pyfilter match
--rule sshd`, and prints the wall time of each and its ratio to the match.
Numbers go to docs/benchmarks.md ("What if: each window kind").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from bench import logs, run

KINDS = {
    "per address (as the jail)": {"slow": None, "per_account": False},
    "+ slow window": {"per_account": False},
    "+ per-account window": {"slow": None},
    "shipped (both)": {},
}


def write_config(path: Path, kind: str) -> Path:
    """A replay configuration at `path`: sshd with the benchmark's settings and the windows of `kind`."""
    sshd = {"maxretry": run.MAXRETRY, "findtime": run.FINDTIME, "bantime": run.BANTIME, **KINDS[kind]}
    path.write_text(yaml.safe_dump({"host": logs.HOST, "catalog_dir": str(run.REPO / "config" / "rules"),
                                    "rules": {"sshd": sshd}}))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    if problems := run.prerequisites():
        print("\n".join(f"bench: {p}" for p in problems), file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyfilter-kinds-"))
    try:
        log = logs.write_mixed(work / "mixed.log", lines=args.lines)
        print(f"mixed: {log.lines:,} lines, {log.failures:,} failures, {len(log.banned):,} addresses to ban")
        match = run.ours_match(log.path, "sshd", None)["usage"].wall
        print(f"  pyfilter match --rule sshd: {match:.2f} s", flush=True)
        cli = Path(sys.executable).with_name("pyfilter")
        cores = os.cpu_count() or 1
        for name in KINDS:
            config = write_config(work / "replay.yaml", name)
            usage, out = run._process([str(cli), "replay", "--config", str(config), str(log.path)])
            bans = re.search(r"([\d,]+) ban\(s\)", out.splitlines()[0]).group(1)  # type: ignore[union-attr]
            # Its CPU (Python and its Redis) spread over every core: no overlap of the two does better.
            print(f"  replay, {name}: {usage.wall:.2f} s, CPU {usage.cpu:.1f} s, {bans} bans, "
                  f"{usage.wall / match:.2f}x the match (its CPU over {cores} cores: "
                  f"{usage.cpu / cores / match:.2f}x at best)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
