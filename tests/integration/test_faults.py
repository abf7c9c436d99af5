"""Nothing lost when things die: SIGKILL each service (and Redis) during an attack.

The same 100,000-line attack log is written twice, each time into a fresh
single-host stack: once with no faults, once while the collector, detector,
enforcer, api and Redis are SIGKILLed in turn and restarted. Operators unban
some addresses during both runs. Both runs must end with the same bans decided,
the same kernel set (unbans included), and no ban applied twice to the kernel.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from tests.integration.stack import Stack, make_log_dir, running, wait_for

pytestmark = pytest.mark.integration

TOTAL_LINES = 100_000
WRITE_SECONDS = 25.0
BANNED = [f"198.51.100.{i}" for i in range(100, 160)] + [f"2001:db8:f::{i:x}" for i in range(1, 41)]
SPARED = [f"198.51.100.{i}" for i in range(160, 200)]  # 3 failures each: never banned
UNBANNED = BANNED[:10]  # their failures all come early; operators unban them mid-run
FAULTS = ["collector", "detector", "enforcer", "api", "redis"]

# Reads the decisions stream from inside the api container (Redis publishes no port).
DUMP_DECISIONS = """
import json, os, redis
from pyfilter.common import messages
r = redis.Redis.from_url(os.environ["PYFILTER_REDIS_URL"], password=os.environ["PYFILTER_REDIS_PASSWORD"] or None)
out = [messages.decode_decision(f[b"m"]) for _, f in r.xrange("pyfilter:{bans}:decisions")]
print(json.dumps([[d.action, d.address, d.origin] for d in out]))
"""


def attack_lines() -> list[str]:
    """The attack, spread through noise: failure k of every address lands at k/6 of the log."""
    events: list[tuple[float, str]] = []
    for n, address in enumerate(BANNED + SPARED):
        count = 3 if address in SPARED else 6
        early = address in UNBANNED
        for k in range(count):
            position = (k + 1) / 7 * (0.25 if early else 1.0)
            # one account per address: sshd's per-account window stays out of this test
            events.append((position + n * 1e-6, f"sshd[{5000 + n}]: Failed password for invalid user "
                                                 f"admin{n} from {address} port {40000 + k} ssh2"))
    noise = TOTAL_LINES - len(events)
    events += [((i + 0.5) / noise, f"sshd[{20000 + i % 9000}]: pam_unix(sshd:session): session closed "
                                   f"for user deploy") for i in range(noise)]
    events.sort()
    return [text for _, text in events]


def write_attack(path, lines: list[str], progress: list[float]) -> None:
    chunk = 500
    pause = WRITE_SECONDS / (len(lines) / chunk)
    with open(path, "a") as log:
        for start in range(0, len(lines), chunk):
            stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            log.write("".join(f"{stamp} target {text}\n" for text in lines[start:start + chunk]))
            log.flush()
            progress[0] = (start + chunk) / len(lines)
            time.sleep(pause)


def redis_cli(stack: Stack, *args: str) -> str:
    code, out = stack.exec("redis", "redis-cli", *args)
    assert code == 0, out
    return out.strip()


def drained(stack: Stack) -> bool:
    try:
        if redis_cli(stack, "XLEN", "pyfilter:lines:target-host") != "0":
            return False
        groups = redis_cli(stack, "XINFO", "GROUPS", "pyfilter:lines:target-host").split("\n")
        return groups[groups.index("pending") + 1] == "0"
    except (AssertionError, ValueError, RuntimeError):
        return False


def api_status(stack: Stack, method: str, path: str) -> int | None:
    """The status of an api call, or None while the api (or Redis) is down: an operator retries."""
    try:
        return stack.api(method, path, token=stack.token)[0]
    except OSError:
        return None


def unban_until_done(stack: Stack, address: str) -> None:
    wait_for(lambda: api_status(stack, "DELETE", f"/api/v1/bans/{address}") == 200, 60,
             f"the unban of {address} to be accepted")


def run_attack(faults: bool) -> dict:
    log_dir = make_log_dir(auth_log=True)
    with running(Stack(project=f"pyfilter-fault-{os.getpid()}-{int(faults)}", log_dir=log_dir)) as stack:
        progress = [0.0]
        writer = threading.Thread(target=write_attack, args=(log_dir / "auth.log", attack_lines(), progress))
        started = time.monotonic()
        writer.start()
        pending_faults = list(FAULTS) if faults else []
        unbanned = False
        while writer.is_alive() or pending_faults:
            done = progress[0]
            if pending_faults and done >= 0.12 * (len(FAULTS) - len(pending_faults) + 1):
                service = pending_faults.pop(0)
                container = stack.container(service)
                container.kill(signal="SIGKILL")
                print(f"  t={time.monotonic() - started:5.1f}s ({done:4.0%} written): "
                      f"SIGKILL {service}", flush=True)
                time.sleep(1.5)
                container.start()
                print(f"  t={time.monotonic() - started:5.1f}s: restarted {service}", flush=True)
            if not unbanned and done >= 0.5:
                # By now the early addresses have all their failures in the log.
                for address in UNBANNED:
                    wait_for(lambda a=address: api_status(stack, "GET", f"/api/v1/bans/{a}") == 200,
                             120, f"{address} to be banned before its unban")
                    unban_until_done(stack, address)
                unbanned = True
            time.sleep(0.1)
        writer.join()
        wait_for(lambda: drained(stack), 180, "every line to be processed")
        expected_kernel = ({a for a in BANNED if ":" not in a} - set(UNBANNED))
        wait_for(lambda: set(stack.kernel_set("ban4")) == expected_kernel, 60,
                 "the kernel to hold exactly the bans left after the unbans")
        code, out = stack.exec("api", "python", "-c", DUMP_DECISIONS)
        assert code == 0, out
        decisions = json.loads(out)
        applied = Counter()
        for line in stack.container("enforcer").logs().decode().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "banned":
                applied[entry["address"]] += 1
        return {
            "banned": {a for action, a, origin in decisions if action == "ban" and origin == "detector"},
            "unbanned": {a for action, a, _ in decisions if action == "unban"},
            "kernel4": set(stack.kernel_set("ban4")),
            "kernel6": set(stack.kernel_set("ban6")),
            "applied": applied,
        }


def test_sigkill_of_every_service_loses_no_ban_and_no_unban():
    print("\nfault-free run:")
    clean = run_attack(faults=False)
    print("run with faults:")
    faulty = run_attack(faults=True)

    assert clean["banned"] == set(BANNED), "the fault-free run itself is wrong"
    assert faulty["banned"] == clean["banned"]
    assert faulty["unbanned"] == clean["unbanned"] == set(UNBANNED)
    assert faulty["kernel4"] == clean["kernel4"] == {a for a in BANNED if ":" not in a} - set(UNBANNED)
    assert faulty["kernel6"] == clean["kernel6"]
    twice = {a: n for a, n in faulty["applied"].items() if n > 1}
    assert not twice, f"bans applied to the kernel more than once: {twice}"
    assert set(faulty["applied"]) == set(BANNED)
