"""The matcher as it was before envelopes, for side-by-side runs in `make bench`.

`pyfilter match` of commit BASELINE (the 23-rule catalog whose rules matched
whole lines) is unpacked from this checkout's history into a temporary
folder and run with its own code and catalog, on the same files in the same
run as today's: `command()` gives its command line and environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASELINE = "3537ff772c6062318e82d17f085ab4c1df071393"
SHORT = BASELINE[:7]
REPO = Path(__file__).resolve().parents[1]


def missing() -> str | None:
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BASELINE}^{{commit}}"],
                           capture_output=True)
    if found.returncode != 0:
        return f"commit {SHORT} is not in this checkout's history (a shallow clone?): no baseline rows"
    return None


def unpack(work: Path) -> Path:
    """The baseline's services/ and config/ under `work`, importable as `pyfilter`."""
    root = work / f"baseline-{SHORT}"
    if not root.exists():
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "services", "config"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        (root / "pkg").mkdir()
        (root / "pkg" / "pyfilter").symlink_to(root / "services")
    return root


def command(root: Path, log: Path, rule: str | None) -> tuple[list[str], dict[str, str]]:
    """`pyfilter match` of the baseline over `log`: argv and environment."""
    argv = [sys.executable, "-m", "pyfilter.cli", "match", "--catalog", str(root / "config" / "rules"), str(log)]
    if rule:
        argv += ["--rule", rule]
    # PYTHONPATH comes before the editable install of today's package.
    return argv, {**os.environ, "PYTHONPATH": str(root / "pkg")}
