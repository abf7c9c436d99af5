"""`pyfilter match` and `pyfilter explain`, run as the operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PYFILTER = Path(sys.executable).with_name("pyfilter")
REPO = Path(__file__).resolve().parents[2]
LOG = """\
Nov 21 20:19:28 srv sshd[100]: Failed password for invalid user admin from 198.51.100.7 port 50000 ssh2
Nov 21 20:19:29 srv sshd[100]: pam_unix(sshd:session): session opened for user alice by (uid=0)
Nov 21 20:19:30 srv sshd[101]: Invalid user oracle from 2001:db8::7 port 50001
2026-11-21T20:19:31+00:00 srv postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.8]: 554 5.7.1 <x@example.org>: Relay access denied; from=<a@b> to=<x@example.org> proto=ESMTP helo=<h>
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(PYFILTER)] if PYFILTER.exists() else [sys.executable, "-m", "pyfilter.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "auth.log"
    path.write_text(LOG)
    return path


def test_match_json_reports_each_failure_with_line_time_and_user(log):
    result = run("match", "--json", "--now", "2026-11-22T00:00:00Z", "--tz", "Europe/Zurich", str(log))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["rule"], r["host"], r["line_no"]) for r in records] == [
        ("sshd", "198.51.100.7", 1), ("sshd", "2001:db8::7", 3), ("postfix", "198.51.100.8", 4)]
    assert records[0]["time"] == "2026-11-21T20:19:28+01:00"
    assert records[0]["user"] == "admin"
    assert records[2]["time"] == "2026-11-21T21:19:31+01:00"  # +00:00 in the line, shown in --tz
    assert "user" not in records[2]


def test_year_less_dates_follow_now(log):
    result = run("match", "--json", "--rule", "sshd", "--now", "2026-01-05T00:00:00Z", str(log))
    assert json.loads(result.stdout.splitlines()[0])["time"] == "2025-11-21T20:19:28+00:00"


def test_match_summary_counts_rules_and_patterns(log):
    result = run("match", "--now", "2026-11-22T00:00:00Z", str(log))
    assert result.returncode == 0, result.stderr
    assert "Lines read: 4" in result.stdout
    assert "Failures: 3" in result.stdout
    assert "sshd: 2" in result.stdout and "postfix: 1" in result.stdout
    assert "lines/s" in result.stdout


def test_match_numbers_lines_across_batches_and_files(tmp_path):
    """Lines go to the matcher 1,000 at a time; numbers stay per file, CRLF and NULs as the collector reads them."""
    fail = "Nov 21 20:19:28 srv sshd[{pid}]: Failed password for root from 198.51.100.{n} port 50000 ssh2"
    quiet = "Nov 21 20:19:28 srv sshd[1]: pam_unix(sshd:session): session closed for user alice"
    numbers = [1, 1000, 1001, 2001, 2500]
    lines = [fail.format(pid=i, n=i % 250) if i in numbers else quiet for i in range(1, 2501)]
    big = tmp_path / "big.log"
    big.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    small = tmp_path / "small.log"
    small.write_bytes(b"\0\0" + fail.format(pid=7, n=7).encode())  # a hole of NULs, no final newline
    result = run("match", "--json", "--rule", "sshd", str(big), str(small))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["file"], r["line_no"], r["host"]) for r in records] == [
        *((str(big), i, f"198.51.100.{i % 250}") for i in numbers), (str(small), 1, "198.51.100.7")]
    summary = run("match", "--rule", "sshd", str(big), str(small))
    assert "Lines read: 2501 from 2 file(s)" in summary.stdout and "Failures: 6" in summary.stdout


def test_match_one_rule_only(log):
    result = run("match", "--json", "--rule", "postfix", str(log))
    assert [json.loads(x)["rule"] for x in result.stdout.splitlines()] == ["postfix"]


def test_explain_shows_rule_pattern_captures_and_time():
    line = "Nov 21 20:19:28 srv sshd[100]: Failed password for root from 198.51.100.7 port 50000 ssh2"
    result = run("explain", "--now", "2026-11-22T00:00:00Z", line)
    assert result.returncode == 0, result.stderr
    assert "sshd: failure (pattern 1)" in result.stdout
    assert "host: 198.51.100.7" in result.stdout
    assert "user: root" in result.stdout
    assert "time: 2026-11-21T20:19:28+00:00" in result.stdout


def test_explain_says_why_nothing_matched():
    result = run("explain", "--rule", "sshd", "Nov 21 20:19:28 srv sshd[100]: Server listening on 0.0.0.0")
    assert result.returncode == 0
    assert "no rule matched" in result.stdout
    assert "sshd: no match: no pattern matched" in result.stdout
    result = run("explain", "--rule", "sshd", "Nov 21 20:19:28 srv cron[1]: hello")
    assert "envelope: rfc3164, program cron, pid 1" in result.stdout
    assert "sshd: no match: the rule reads programs ['sshd', 'sshd-session', 'sshd-auth'], not 'cron'" in result.stdout


def test_unknown_rule_is_a_usage_error(log):
    result = run("match", "--rule", "nonesuch", str(log))
    assert result.returncode == 2
    assert "no rule 'nonesuch'" in result.stderr


def test_missing_file_bad_zone_and_bad_now_are_usage_errors(log, tmp_path):
    assert run("match", str(tmp_path / "missing.log")).returncode == 2
    result = run("match", "--tz", "Mars/Olympus", str(log))
    assert result.returncode == 2 and "unknown time zone" in result.stderr
    result = run("match", "--now", "yesterday", str(log))
    assert result.returncode == 2 and "--now" in result.stderr


def test_catalog_from_environment_and_bad_catalog(log, tmp_path):
    empty = tmp_path / "rules"
    empty.mkdir()
    result = run("match", str(log), env={"PYFILTER_CATALOG": str(empty)})
    assert result.returncode == 2 and "holds no" in result.stderr
    (empty / "broken.yaml").write_text("service: x\nsources: [auth]\npatterns: []\n")
    result = run("match", "--catalog", str(empty), str(log))
    assert result.returncode == 2 and "broken" in result.stderr
    (empty / "broken.yaml").write_text("service: x\nsources: [auth]\npatterns: ['^(<HOST>']\n")
    result = run("match", "--catalog", str(empty), str(log))
    assert result.returncode == 2 and "rule broken" in result.stderr


def test_no_subcommand_is_a_usage_error():
    assert run().returncode == 2


def test_config_check_validates_as_the_services_would(tmp_path):
    result = run("config", "check", str(REPO / "config" / "pyfilter.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "sshd" in result.stdout
    bad = tmp_path / "pyfilter.yaml"
    bad.write_text(f"catalog_dir: {REPO / 'config' / 'rules'}\nrules:\n  sshd: {{findtime: ten}}\n")
    result = run("config", "check", str(bad))
    assert result.returncode == 2
    assert 'rules.sshd.findtime: expected a duration like "10m", got "ten"' in result.stderr
    bad.write_text(f"catalog_dir: {REPO / 'config' / 'rules'}\nrules:\n  mine: {{service: x, programs: [x], "
                   f"patterns: ['fail (<HOST>']}}\n")
    result = run("config", "check", str(bad))
    assert result.returncode == 2 and "rule mine" in result.stderr


def test_match_with_a_configuration_runs_its_rules_as_configured(log, tmp_path):
    conf = tmp_path / "pyfilter.yaml"
    conf.write_text(f"catalog_dir: {REPO / 'config' / 'rules'}\nrules:\n  postfix: {{}}\n")
    result = run("match", "--json", "--config", str(conf), str(log))
    assert result.returncode == 0, result.stderr
    assert {json.loads(x)["rule"] for x in result.stdout.splitlines()} == {"postfix"}


def test_the_cli_starts_without_redis_or_the_importers():
    """`pyfilter match` runs where no Redis is: the commands that need redis-py, the
    ledger or an importer load them when they run (start-up cost: docs/benchmarks.md)."""
    code = ("import sys, pyfilter.cli.main; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('redis', 'aiohttp'))} | "
            "{m for m in sys.modules if m.startswith(('pyfilter.common.ledger', 'pyfilter.cli.server_users', "
            "'pyfilter.cli.imports.'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["match", "replay"])
def test_a_path_that_is_no_log_file_is_a_usage_error_naming_it(tmp_path, log, command):
    for path, why in ((tmp_path / "missing.log", "no such file"), (tmp_path, "not a log file")):
        result = run(command, str(log), str(path))
        assert result.returncode == 2, result.stderr
        assert f"{path}: {why}" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_unreadable_log_is_named_before_anything_is_read(log, monkeypatch):
    from pyfilter.cli import matching

    # Root reads any file: the permission is what os.access answers for this user.
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(log))
    with pytest.raises(matching.UsageError, match="auth.log: not readable by this user"):
        matching.check_files([str(log)])


# Each kind of character that acts on a terminal, in client text: a window title (OSC ...
# BEL), clearing the screen (CSI), a carriage return over the line, the 8-bit CSI, a
# right-to-left override, and a byte that is not UTF-8.
HOSTILE_USER = b"\x1b]0;pwned\x07\x1b[2J\rok\xc2\x9b31m\xe2\x80\xaeevil\xff"
ACTING = set(range(0x00, 0x20)) - {0x09, 0x0A} | set(range(0x7F, 0xA0)) | {0x202E} | set(range(0xDC80, 0xDD00))


def assert_shown(out: str) -> None:
    assert not [hex(ord(c)) for c in out if ord(c) in ACTING]
    for escape in (r"\x1b]0;pwned\x07\x1b[2J\x0dok\x9b31m\u202eevil", r"from 198.51.100.9"):
        assert escape in out


def test_client_text_reaches_the_terminal_as_escapes_not_as_controls(tmp_path):
    line = b"Dec  7 01:00:00 h sshd[1]: Failed password for invalid user " + HOSTILE_USER + \
        b" from 198.51.100.9 port 22 ssh2"
    explained = subprocess.run([str(PYFILTER), "explain", line], capture_output=True, timeout=60)
    out = explained.stdout.decode("utf-8", "surrogateescape")
    assert explained.returncode == 0 and "sshd: failure" in out
    assert_shown(out)
    assert r"\xff" in out  # the undecodable byte, as the byte

    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(line.replace(b"01:00:00", b"01:00:0%d" % i) + b"\n" for i in range(6)))
    replayed = subprocess.run([str(PYFILTER), "replay", "--config", str(REPO / "config" / "pyfilter.yaml"),
                               str(log)], capture_output=True, timeout=120)
    out = replayed.stdout.decode("utf-8", "surrogateescape")
    assert replayed.returncode == 0 and "198.51.100.9  sshd" in out and "last line:" in out
    assert_shown(out)
    # The JSON for scripts keeps the text as it was (JSON escapes its own controls).
    as_json = subprocess.run([str(PYFILTER), "replay", "--json", "--config", str(REPO / "config" / "pyfilter.yaml"),
                              str(log)], capture_output=True, timeout=120)
    [ban] = json.loads(as_json.stdout)["replays"][0]["bans"]
    assert "\x1b]0;pwned\x07\x1b[2J\rok" in ban["lines"][-1]
