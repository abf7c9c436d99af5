"""End to end with a real OpenSSH server: password guessing gets the guesser dropped.

Nothing is written into the log by the test: sshd logs through syslog,
rsyslog writes auth.log (Debian 12's ISO timestamps) into the folder the
collector reads, and a detector and an enforcer in sshd's network namespace
do the rest. The attacker and the clean client are containers running the
real `ssh` with `sshpass`.

The tests run in file order and share one stack: before any ban, the ban,
an enforcer restart, the unban.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration import sshd_images
from tests.integration.stack import TEST_OVERRIDE, Stack, compose_files, make_log_dir, running, wait_for

SSHD = "198.51.100.130"
ATTACKER = "198.51.100.140"
CLIENT = "198.51.100.141"
USER = "alice"
PASSWORD = "correct-horse-battery"  # set in images/sshd/Dockerfile
MAXRETRY = 5  # the sshd rule's shipped threshold
DEFAULT_SETS = ("ban4", "ban6", "ban4net", "ban6net")
SSHD_OVERRIDE = Path(__file__).with_name("compose.sshd.yml")

pytestmark = pytest.mark.integration


def sshd_stack(project: str, log_dir: Path, images: dict[str, str]) -> Stack:
    """The real stack with compose.sshd.yml (an OpenSSH host) in place of compose.test.yml."""
    files = [f for f in compose_files() if f != TEST_OVERRIDE] + [SSHD_OVERRIDE]
    s = Stack(project=project, log_dir=log_dir, files=files)
    s.env["PYFILTER_TEST_SSHD_IMAGE"] = images["sshd"]
    s.env["PYFILTER_TEST_CLIENT_IMAGE"] = images["client"]
    return s


@pytest.fixture(scope="module")
def stack():
    images = sshd_images.build_all()
    log_dir = make_log_dir()  # rsyslog creates auth.log in it, mode 0644
    with running(sshd_stack(f"pyfilter-sshd-{os.getpid()}", log_dir, images)) as s:
        yield s


# --- what the clients do ---------------------------------------------------

def ssh(stack: Stack, who: str, password: str, connect_timeout: int = 4) -> tuple[int, str]:
    """A real login attempt from `who`: 0 logged in, 255 otherwise ("Permission denied" or
    no connection).

    One password per connection (NumberOfPasswordPrompts=1): ssh gives up on
    the first rejection, so an attempt is exactly one "Failed password" line.
    With ssh's default of three prompts, sshpass kills ssh at the second one,
    and an ssh that is slow to die may send another password first: two
    failures from one attempt.
    """
    return stack.exec(who, "sshpass", "-p", password, "ssh",
                      "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
                      "-o", "NumberOfPasswordPrompts=1",
                      "-o", "PubkeyAuthentication=no", f"{USER}@{SSHD}", "true")


def rejected(code: int, out: str) -> bool:
    """Whether an attempt reached sshd and had its password refused."""
    return code == 255 and "Permission denied" in out


def banner(stack: Stack, who: str, timeout: int = 4) -> str | None:
    """sshd's greeting to a plain TCP connect from `who`, or None when the connect fails.

    No authentication is tried, so this never counts as a failure.
    """
    script = (f"exec 3<>/dev/tcp/{SSHD}/22 && IFS= read -r -t {timeout} line <&3 "
              "&& printf %s \"$line\"")
    code, out = stack.exec(who, "timeout", str(timeout + 1), "bash", "-c", script)
    return out.strip() if code == 0 and out.startswith("SSH-") else None


# --- what the kernel and the enforcer show ----------------------------------

def table(stack: Stack) -> list[dict]:
    code, out = stack.exec("enforcer", "nft", "-j", "list", "table", "inet", "pyfilter")
    assert code == 0, f"nft list table inet pyfilter failed: {out}"
    return json.loads(out)["nftables"]


def set_rules(objects: list[dict]) -> list[tuple[str, str]]:
    """(chain, set) for every rule of the table that looks an address up in a set."""
    pairs = []
    for obj in objects:
        rule = obj.get("rule")
        if not rule:
            continue
        for expr in rule["expr"]:
            right = expr.get("match", {}).get("right")
            if isinstance(right, str) and right.startswith("@"):
                pairs.append((rule["chain"], right[1:]))
    return pairs


def pyfilter_tables(stack: Stack) -> list[tuple[str, str]]:
    code, out = stack.exec("enforcer", "nft", "-j", "list", "tables")
    assert code == 0, out
    tables = [o["table"] for o in json.loads(out)["nftables"] if "table" in o]
    return [(t["family"], t["name"]) for t in tables if "pyfilter" in t["name"]]


def enforcer_log(stack: Stack, since: float) -> list[dict]:
    raw = stack.container("enforcer").logs(since=int(since), stdout=True, stderr=True)
    entries = []
    for line in raw.decode(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def active_ban(stack: Stack, address: str) -> dict | None:
    status, body = stack.api("GET", "/api/v1/bans")
    assert status == 200, body
    return next((b for b in body["bans"] if b["address"] == address), None)


def logged_by(log_dir: Path, address: str) -> list[str]:
    """What sshd wrote to auth.log of the connections from `address` (its pids' lines)."""
    def program(line: str) -> str:  # "sshd[54]"
        return line.split(": ", 1)[0].rsplit(" ", 1)[-1]

    lines = (log_dir / "auth.log").read_text().splitlines()
    pids = {program(line) for line in lines if address in line}
    return [line for line in lines if program(line) in pids]


def last_failure_time(log_dir: Path, address: str) -> float:
    """rsyslog's timestamp of the last "Failed password" line from `address`."""
    lines = [line for line in (log_dir / "auth.log").read_text().splitlines()
             if "Failed password" in line and f"from {address} " in line]
    assert lines, f"sshd logged no failed password from {address} in auth.log"
    return datetime.fromisoformat(lines[-1].split(" ", 1)[0]).timestamp()


def report_ban_latency(stack: Stack, failed_at: float, seen_in_kernel: float,
                       attempts_done: float) -> None:
    """Print, never assert: how long from sshd's last failure line to the drop in the kernel.

    The enforcer logs "banned" just before it hands the batch to the kernel,
    with a millisecond timestamp from the same clock rsyslog uses; polling
    `nft` only gives an upper bound.
    """
    logged = [e for e in enforcer_log(stack, failed_at - 5)
              if e.get("msg") == "banned" and e.get("address") == ATTACKER]
    print()
    if logged:
        banned_at = datetime.fromisoformat(logged[0]["ts"].replace("Z", "+00:00")).timestamp()
        print(f"ban latency: {banned_at - failed_at:.3f} s from sshd's last 'Failed password' "
              "line to the enforcer's 'banned' (its kernel write)")
    print(f"ban latency (polling nft, upper bound): {seen_in_kernel - failed_at:.2f} s after the "
          f"line, {seen_in_kernel - attempts_done:.2f} s after the last sshpass returned")


# --- the story ---------------------------------------------------------------

def test_before_any_ban_the_client_logs_in_and_the_attacker_connects(stack):
    code, out = ssh(stack, "client", PASSWORD)
    assert code == 0, f"the clean client cannot log in before any ban: {out}"
    assert banner(stack, "attacker"), "the attacker cannot even connect before any ban"
    assert ATTACKER not in stack.kernel_set("ban4")
    assert active_ban(stack, ATTACKER) is None


def test_password_guesser_is_banned_and_times_out_while_the_client_logs_in(stack):
    for attempt in range(1, MAXRETRY + 1):
        code, out = ssh(stack, "attacker", "wrong-password")
        assert rejected(code, out), (
            f"attempt {attempt}: expected a rejected password, got {code}: {out}\n"
            "sshd logged so far:\n" + "\n".join(logged_by(stack.log_dir, ATTACKER)))
    attempts_done = time.time()

    seen_in_kernel = wait_for(lambda: ATTACKER in stack.kernel_set("ban4") and time.time(), 30,
                              f"{ATTACKER} in the kernel set ban4", interval=0.05)
    report_ban_latency(stack, failed_at=last_failure_time(stack.log_dir, ATTACKER),
                       seen_in_kernel=seen_in_kernel, attempts_done=attempts_done)

    ban = wait_for(lambda: active_ban(stack, ATTACKER), 10, f"a ban of {ATTACKER} in the API")
    assert ban["rule"] == "sshd"
    assert ban["host"] == "target-host"
    assert ban["failures"] >= MAXRETRY
    assert any(f"Failed password for {USER} from {ATTACKER}" in line for line in ban["lines"])

    code, out = ssh(stack, "attacker", "wrong-password", connect_timeout=3)
    assert code == 255 and "timed out" in out, f"the banned attacker still reaches sshd: {code} {out}"
    assert banner(stack, "attacker", timeout=3) is None

    code, out = ssh(stack, "client", PASSWORD)
    assert code == 0, f"the clean client was cut off by the attacker's ban: {out}"
    assert active_ban(stack, CLIENT) is None


def test_restarting_the_enforcer_keeps_the_ban_once(stack):
    before_set = stack.kernel_set("ban4")
    before_rules = set_rules(table(stack))
    assert before_set.count(ATTACKER) == 1

    enforcer = stack.container("enforcer")
    started_before = enforcer.attrs["State"]["StartedAt"]
    restarted_at = time.time()
    enforcer.restart(timeout=10)

    def healthy_and_reconciled():
        enforcer.reload()
        if enforcer.attrs["State"].get("Health", {}).get("Status") != "healthy":
            return None
        log = enforcer_log(stack, restarted_at - 1)
        starts = [i for i, e in enumerate(log) if e.get("msg") == "enforcer started"]
        return starts and [e for e in log[starts[-1]:] if e.get("msg") == "reconciled"]

    reconciles = wait_for(healthy_and_reconciled, 60, "the restarted enforcer to reconcile and be healthy")
    assert enforcer.attrs["State"]["StartedAt"] != started_before, "the enforcer was not restarted"
    first = reconciles[0]
    assert (first["added"], first["removed"]) == (0, 0), f"the restart changed the kernel: {first}"

    after_set = stack.kernel_set("ban4")
    assert after_set.count(ATTACKER) == 1
    assert sorted(after_set) == sorted(before_set)

    assert pyfilter_tables(stack) == [("inet", "pyfilter")]
    after_rules = set_rules(table(stack))
    assert sorted(after_rules) == sorted(before_rules)
    assert len(after_rules) == len(set(after_rules)), f"a rule was duplicated: {after_rules}"
    for chain in {c for c, _ in after_rules}:
        assert sorted(s for c, s in after_rules if c == chain) == sorted(DEFAULT_SETS), chain

    code, out = ssh(stack, "attacker", "wrong-password", connect_timeout=3)
    assert code == 255 and "timed out" in out, f"the ban stopped working after the restart: {out}"


def test_unban_through_the_api_lets_the_attacker_connect_again(stack):
    status, _ = stack.api("DELETE", f"/api/v1/bans/{ATTACKER}")
    assert status == 401, "an unban without the token must be refused"

    status, body = stack.api("DELETE", f"/api/v1/bans/{ATTACKER}", token=stack.token)
    assert status == 200 and body["was_active"] is True, body

    wait_for(lambda: ATTACKER not in stack.kernel_set("ban4"), 30, "the element to leave ban4")
    greeting = banner(stack, "attacker")
    assert greeting and greeting.startswith("SSH-2.0-OpenSSH"), "the unbanned attacker cannot connect"
    assert active_ban(stack, ATTACKER) is None
    code, out = ssh(stack, "client", PASSWORD)
    assert code == 0, out
