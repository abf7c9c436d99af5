"""End to end on a host whose sshd logs only to the journal, with the default configuration.

The host is what Debian 12 without rsyslog, Fedora or Arch leave: no
auth.log, a persistent journal as journald lays it out in the log folder
(`journal/<machine id>/system.journal`, a real journal file written by
systemd-journal-remote, mode 0640, group 190: systemd-journal on Fedora and
Arch, neither adm nor the collector's own). The stack is the one `make up`
runs, the journal's group found as `make up` finds it; nothing in the
configuration is changed. Half of the attack is in the journal a minute
before the stack starts: the ban needs it to count.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pyfilter.collector.sources.journal import machine_id
from tests.integration.stack import Stack, make_log_dir, running, wait_for
from tests.journal_files import MISSING, write_journal

pytestmark = [pytest.mark.integration, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

TARGET = "198.51.100.2"
ATTACKER = "198.51.100.10"
PORT = 8080
JOURNAL_GROUP = 190


def failures(first: int, count: int) -> list[tuple[str, str]]:
    return [("sshd", f"Failed password for invalid user oracle from {ATTACKER} port {50000 + i} ssh2")
            for i in range(first, first + count)]


def host_journal(log_dir: Path) -> Path:
    """journal/<machine id>/system.journal, owned and guarded as journald leaves it."""
    folder = log_dir / "journal"
    path = folder / (machine_id() or "0123456789abcdef0123456789abcdef") / "system.journal"
    write_journal(path, [("systemd", "Started ssh.service - OpenBSD Secure Shell server.")],
                  time.time() - 3600, host="target")
    write_journal(path, failures(0, 3), time.time() - 60, host="target", pid=4000)
    for d in (folder, path.parent):
        os.chown(d, 0, JOURNAL_GROUP)
        d.chmod(0o2755)
    os.chown(path, 0, JOURNAL_GROUP)
    path.chmod(0o640)
    return path


@pytest.fixture(scope="module")
def stack():
    log_dir = make_log_dir()  # no auth.log: sshd logs to the journal only
    journal = host_journal(log_dir)
    s = Stack(project=f"pyfilter-journal-{os.getpid()}", log_dir=log_dir)
    assert s.env["PYFILTER_JOURNAL_GID"] == str(JOURNAL_GROUP)
    with running(s) as up:
        up.journal = journal
        yield up


def collector_log(stack: Stack) -> list[dict]:
    raw = stack.container("collector").logs(stdout=True, stderr=True).decode(errors="replace")
    return [json.loads(line) for line in raw.splitlines() if line.startswith("{")]


def collector_processes(stack: Stack) -> list[dict]:
    """Effective uid, supplementary groups and capabilities of the collector's processes."""
    script = (
        "import glob, json, os\n"
        "out = []\n"
        "for path in glob.glob('/proc/[0-9]*/status'):\n"
        "    f = dict(l.split(':', 1) for l in open(path).read().splitlines() if ':' in l)\n"
        "    cmd = open(path[:-6] + 'cmdline').read().split('\\0')\n"
        "    if cmd[0].startswith('python') and 'pyfilter.collector' in cmd:  # not docker's init\n"
        "        out.append({'Uid': int(f['Uid'].split()[1]), 'Groups': f['Groups'].split(),\n"
        "                    'CapEff': int(f['CapEff'], 16)})\n"
        "print(json.dumps(out))\n")
    code, out = stack.exec("collector", "python", "-c", script)
    assert code == 0, out
    return json.loads(out)


def test_the_collector_reads_sshd_from_the_journal_without_root(stack):
    # `docker exec` runs as the container's user (root, to start): look at the processes.
    procs = collector_processes(stack)
    assert procs and all(p["CapEff"] == 0 for p in procs), procs  # the helper too keeps none
    reader = [p for p in procs if p["Uid"] != 0]
    assert len(reader) == 1 and str(JOURNAL_GROUP) in reader[0]["Groups"], procs
    entries = collector_log(stack)
    choice = next(e for e in entries if e.get("rule") == "sshd")
    # sshd in a container logs to the container's own log: no copy of the journal's.
    assert choice["level"] == "info" and choice["sources"] == ["journal", "containers"]
    assert choice["msg"] == ("sshd: lines from the journal (journal), containers; "
                             "their copies in auth, mail are left out")
    # Every default rule names its programs: the journal carries them all.
    assert not [e["msg"] for e in entries if "no source carries" in e["msg"]]


def test_sshd_attack_in_the_journal_gets_the_attacker_dropped(stack):
    assert stack.tcp_connects("attacker", TARGET, PORT), "attacker cannot connect even before any ban"
    write_journal(stack.journal, failures(3, 3), host="target", pid=4100)

    def banned():
        status, body = stack.api("GET", "/api/v1/bans")
        assert status == 200
        return next((b for b in body["bans"] if b["address"] == ATTACKER), None)

    ban = wait_for(banned, 60, f"a ban of {ATTACKER} in the API")
    assert ban["rule"] == "sshd" and ban["host"] == "target-host"
    assert ban["failures"] >= 5  # 3 live ones: the ban needed those from before the start
    wait_for(lambda: ATTACKER in stack.kernel_set("ban4"), 30, "the address in the kernel set")
    assert not stack.tcp_connects("attacker", TARGET, PORT), "banned attacker still connects"
    assert stack.tcp_connects("bystander", TARGET, PORT), "an innocent bystander was cut off"


def test_pyfilter_status_says_what_is_read_what_is_missing_and_what_the_firewall_holds(stack):
    def report():
        code, out = stack.exec("api", "pyfilter", "status", "--json")
        assert code == 0, out
        body = json.loads(out)
        host = next((h for h in body["hosts"] if h["host"] == "target-host"), None)
        return host if host and host["collector"]["reporting"] and host["enforcer"]["reporting"] else None

    host = wait_for(report, 30, "the collector's and the enforcer's status reports")
    assert host["problems"] == []
    sources = {s["name"]: s for s in host["collector"]["sources"]}
    machine = stack.journal.parent.name
    assert (sources["journal"]["state"], sources["journal"]["followed"]) == ("found", True)
    assert f"/host/log/journal/{machine}" in sources["journal"]["readable"]  # (and this machine's /run/log/journal)
    assert (sources["containers"]["state"], sources["containers"]["followed"]) == ("found", True)
    assert sources["containers"]["readable"] == ["/host/docker/containers"]
    # nginx's own log is read wherever it is: configured, not there.
    assert (sources["nginx-access"]["state"], sources["nginx-access"]["followed"]) == ("missing", True)
    assert sources["nginx-access"]["missing"] == ["/host/log/nginx/access.log"]
    # auth.log would hold copies of the journal's lines: not there, and not read either way.
    assert (sources["auth"]["state"], sources["auth"]["followed"]) == ("missing", False)
    sshd = next(r for r in host["rules"] if r["rule"] == "sshd")
    assert sshd["sources"] == ["journal", "containers"] and sshd["journal"] and sshd["problem"] is None
    # The attack of the test before: its lines, failures and ban, counted for this host.
    assert sshd["failures_last_hour"] >= 6 and sshd["lines_last_hour"] >= 6
    assert sshd["bans_active"] == 1 and sshd["bans_last_hour"] == 1
    firewall = host["enforcer"]
    assert (firewall["backend"], firewall["table"], firewall["table_present"]) == ("nftables", "inet pyfilter", True)
    assert firewall["hooks"] == ["input", "forward"] and firewall["docker_covered"]
    assert {"ban4", "ban6", "ban4net", "ban6net"} <= {s["name"] for s in firewall["sets"]}

    code, text = stack.exec("api", "pyfilter", "status")
    assert code == 0, text
    assert "host target-host: collector reporting" in text and "problems: none" in text
    assert ("firewall: nftables, table inet pyfilter in place, hooks: input, forward; "
            "Docker-published ports covered") in text
