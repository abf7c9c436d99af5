"""Debian's fail2ban, run side by side with PyFilter on the same files.

Nothing here touches the machine's fail2ban or its firewall: the server runs
in the foreground from a private configuration folder, with its own socket,
pid file, database and log, one jail (`sshd`, reading the test log from its
first line) and one action that only appends the banned address to a file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Usage, alive, finish, stop, wait_until

FILTERS = Path("/etc/fail2ban/filter.d")
INSTALL_HINT = "apt-get install -y fail2ban"


def missing() -> str | None:
    """Why fail2ban cannot be run here, or None."""
    for tool in ("fail2ban-regex", "fail2ban-server"):
        if shutil.which(tool) is None:
            return f"{tool} not found: install Debian's fail2ban ({INSTALL_HINT})"
    if not (FILTERS / "sshd.conf").exists():
        return f"{FILTERS}/sshd.conf not found: reinstall Debian's fail2ban ({INSTALL_HINT})"
    return None


def version() -> str:
    out = subprocess.run(["fail2ban-server", "-V"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def _env() -> dict[str, str]:
    # The logs are written in UTC with year-less syslog dates; fail2ban reads
    # those in the local zone, so make that UTC whatever the machine says.
    return {**os.environ, "TZ": "UTC"}


@dataclass
class RegexResult:
    usage: Usage
    matched: int
    lines: int


_LINES = re.compile(r"^Lines: (\d+) lines, \d+ ignored, (\d+) matched", re.M)


def run_regex(log: Path) -> RegexResult:
    """`fail2ban-regex LOG sshd.conf`: its own process, timed from start to exit."""
    started = time.perf_counter()
    proc = subprocess.Popen(["fail2ban-regex", str(log), str(FILTERS / "sshd.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    out = proc.stdout.read()  # type: ignore[union-attr]
    usage = finish(proc, started)
    m = _LINES.search(out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"fail2ban-regex failed (exit {proc.returncode}):\n{out[-2000:]}")
    return RegexResult(usage, matched=int(m.group(2)), lines=int(m.group(1)))


JAIL = """\
[DEFAULT]
ignoreself = false
ignoreip =
usedns = no
backend = polling
logencoding = utf-8

[sshd]
enabled = true
filter = sshd
logpath = {log}
maxretry = {maxretry}
findtime = {findtime}
bantime = {bantime}
action = record
"""

# Appends the address and nothing else: no firewall, no mail. Unban and
# stop do nothing (empty commands are not run), so stopping is quick.
RECORD_ACTION = """\
[Definition]
actionstart =
actionstop =
actioncheck =
actionban = echo <ip> >> {bans}
actionunban =
"""

SERVER_CONF = """\
[Definition]
loglevel = NOTICE
logtarget = {work}/fail2ban.log
socket = {work}/fail2ban.sock
pidfile = {work}/fail2ban.pid
dbfile = {work}/fail2ban.sqlite3
dbpurgeage = 1d
"""


@dataclass
class ServerResult:
    usage: Usage  # of the server process, up to its stop
    seconds: float | None  # from start to the last expected ban; None: timed out
    banned: int


def run_server(log: Path, expected: set[str], work: Path, *, maxretry: int, findtime: int,
               bantime: int, timeout: float) -> ServerResult:
    """Start fail2ban-server on `log` and time it until every expected address is banned."""
    conf = work / "conf"
    (conf / "filter.d").mkdir(parents=True)
    (conf / "action.d").mkdir()
    for name in ("sshd.conf", "common.conf"):
        shutil.copy(FILTERS / name, conf / "filter.d" / name)
    bans = work / "bans.txt"
    bans.touch()
    (conf / "action.d" / "record.conf").write_text(RECORD_ACTION.format(bans=bans))
    (conf / "fail2ban.conf").write_text(SERVER_CONF.format(work=work))
    (conf / "jail.conf").write_text(JAIL.format(log=log, maxretry=maxretry, findtime=findtime,
                                                bantime=bantime))
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["fail2ban-server", "-f", "-x", "-c", str(conf), "-s", str(work / "fail2ban.sock"),
         "-p", str(work / "fail2ban.pid"), "start"],
        stdout=subprocess.DEVNULL, stderr=open(work / "fail2ban.stderr", "w"), env=_env(),
        start_new_session=True)
    seen: set[str] = set()
    done_at = None
    try:
        def all_banned() -> bool:
            with open(bans) as f:
                seen.update(line.strip() for line in f)
            if not alive(proc):
                raise RuntimeError(f"fail2ban-server exited early ({proc.returncode}); "
                                   f"see {work}/fail2ban.log and fail2ban.stderr")
            return expected <= seen
        if wait_until(all_banned, timeout, interval=0.05):
            done_at = time.perf_counter() - started
    finally:
        usage = stop(proc, started, grace=30)
    return ServerResult(usage, done_at, len(seen & expected))
