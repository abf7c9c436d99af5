"""Which source carries each rule, on the host layouts met in practice (real files).

A journal-only host (Debian 12 without rsyslog, Fedora, Arch), a host where
rsyslog copies the journal into auth.log (Ubuntu), a host without a journal,
and a host where nothing carries a rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pyfilter.collector import plan
from pyfilter.collector.sources.journal import machine_id
from pyfilter.common.config import load
from tests.journal_files import MISSING, write_journal

from .test_collector_support import CATALOG

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# A rule only auth.log can feed (its `sources` say so), so that file stays read.
AUTH_ONLY = {"service": "app", "programs": ["app"], "sources": ["auth"],
             "patterns": ["login failed from <HOST>$"]}


def host_sources(log: Path) -> list[dict]:
    return [{"name": "journal", "type": "journal", "paths": [str(log / "journal"), str(log / "run-journal")]},
            {"name": "auth", "paths": [str(log / "auth.log"), str(log / "secure")]},
            {"name": "mail", "paths": [str(log / "mail.log")]},
            {"name": "nginx-error", "paths": [str(log / "nginx-error.log")], "program": "nginx"}]


def make_plan(tmp: Path, rules: dict, sources: list[dict] | None = None) -> plan.Plan:
    config = tmp / "pyfilter.yaml"
    config.write_text(yaml.safe_dump({"catalog_dir": str(CATALOG), "rules": rules,
                                      "collector": {"sources": sources or host_sources(tmp)}}))
    settings = load(config)
    found = {s.name: plan.probe(s) for s in settings.config.collector.sources}
    return plan.make(settings.rules, settings.config.collector.sources, found)


def journal_in(folder: Path) -> None:
    """A persistent journal as journald lays it out: a folder named by the machine id."""
    write_journal(folder / (machine_id() or "0123456789abcdef0123456789abcdef") / "system.journal",
                  [("systemd", "Started ssh.service - OpenBSD Secure Shell server.")])


def chosen(p: plan.Plan) -> dict[str, tuple[list[str], list[str]]]:
    return {c.rule: (c.carriers, c.left_out) for c in p.rules}


def test_on_a_journal_only_host_the_journal_carries_the_syslog_rules(tmp_path):
    journal_in(tmp_path / "journal")
    (tmp_path / "nginx-error.log").touch()
    p = make_plan(tmp_path, {"sshd": {}, "postfix": {}, "nginx-http-auth": {}})
    assert chosen(p)["sshd"] == (["journal"], ["auth", "mail"])
    assert chosen(p)["postfix"] == (["journal"], ["auth", "mail"])
    # nginx's own file is never a copy: read beside the journal.
    assert chosen(p)["nginx-http-auth"] == (["journal", "nginx-error"], ["auth", "mail"])
    assert set(p.sources) == {"journal", "nginx-error"}  # auth and mail feed nothing: not read
    assert {"sshd", "sshd-session", "sshd-auth", "postfix*/smtpd", "nginx"} <= set(p.sources["journal"].programs)
    assert not any(c.problem for c in p.rules)


def test_beside_rsyslog_the_copies_in_auth_log_are_left_out(tmp_path):
    journal_in(tmp_path / "journal")
    (tmp_path / "auth.log").touch()
    p = make_plan(tmp_path, {"sshd": {}, "app": AUTH_ONLY})
    assert chosen(p)["sshd"] == (["journal"], ["auth", "mail"])
    assert chosen(p)["app"] == (["auth"], [])
    assert p.sources["auth"].skip == ("sshd",)  # read for `app`, its sshd lines go to no rule
    assert p.sources["journal"].programs == ["sshd", "sshd-auth", "sshd-session"]
    assert p.sources["journal"].skip == ()


def test_the_volatile_journal_alone_is_enough(tmp_path):
    journal_in(tmp_path / "run-journal")
    assert chosen(make_plan(tmp_path, {"sshd": {}}))["sshd"] == (["journal"], ["auth", "mail"])


def test_without_a_journal_the_syslog_files_carry_the_rules(tmp_path):
    (tmp_path / "journal").mkdir()  # there, but journald never wrote to it
    (tmp_path / "secure").touch()
    p = make_plan(tmp_path, {"sshd": {}})
    assert chosen(p)["sshd"] == (["auth"], [])
    assert "journal" not in p.sources
    assert p.sources["auth"].skip == () and p.sources["auth"].lookback == 600


def test_a_rule_restricted_to_files_is_never_given_to_the_journal(tmp_path):
    journal_in(tmp_path / "journal")
    (tmp_path / "auth.log").touch()
    p = make_plan(tmp_path, {"sshd": {"sources": ["auth"]}})
    assert chosen(p)["sshd"] == (["auth"], [])
    assert "journal" not in p.sources


def test_whole_line_rules_are_kept_from_the_journal_entries(tmp_path):
    journal_in(tmp_path / "journal")
    (tmp_path / "auth.log").touch()
    whole_line = {"service": "old", "patterns": ["^.* old failure from <HOST>$"]}
    p = make_plan(tmp_path, {"sshd": {}, "old": whole_line})
    assert chosen(p)["old"] == (["auth"], [])
    assert p.sources["journal"].skip == ("old",)
    assert p.sources["auth"].skip == ("sshd",)


def test_each_source_looks_back_over_the_longest_window_it_feeds(tmp_path):
    journal_in(tmp_path / "journal")
    (tmp_path / "auth.log").touch()
    slow = {**AUTH_ONLY, "window": "consecutive", "request_time": "30s", "failed_attempts": 4}
    p = make_plan(tmp_path, {"sshd": {"findtime": "1h"}, "dovecot": {"findtime": "20m"}, "app": slow})
    assert p.sources["journal"].lookback == 3600
    assert p.sources["auth"].lookback == 120  # app's 4 failures 30 s apart; sshd is the journal's


def test_a_rule_no_source_carries_is_said_in_plain_words(tmp_path):
    own_file = {"service": "mysql", "sources": ["mysql-error"], "patterns": ["Access denied .*@'<HOST>'"]}
    p = make_plan(tmp_path, {"sshd": {}, "mysql": own_file, "recidive": {}},
                  host_sources(tmp_path) + [{"name": "mysql-error", "paths": [str(tmp_path / "mysql.err")],
                                             "program": "mysqld"}])
    problems = {c.rule: c.problem for c in p.rules}
    assert problems["sshd"] == (
        f"sshd is enabled but no source carries sshd lines: {tmp_path}/auth.log, {tmp_path}/secure and "
        f"{tmp_path}/mail.log do not exist; the journal ({tmp_path}/journal, {tmp_path}/run-journal) "
        "is not mounted or holds no files (if this host's sshd logs to the journal, mount the host's "
        "/var/log/journal and /run/log/journal: compose mounts $PYFILTER_LOG_DIR/journal and /run/log/journal)")
    assert problems["mysql"] == f"mysql is enabled but no source carries mysql lines: {tmp_path}/mysql.err does not exist"
    assert problems["recidive"] is None  # fed by the detector's own bans


def test_without_a_journal_source_the_warning_says_to_add_one(tmp_path):
    sources = [s for s in host_sources(tmp_path) if s.get("type") != "journal"]
    problem = make_plan(tmp_path, {"sshd": {}}, sources).rules[0].problem
    assert problem.endswith("no journal source is configured (if this host's sshd logs to the journal, add one)")


def test_with_no_rule_enabled_every_source_is_read_as_configured(tmp_path):
    p = make_plan(tmp_path, {})
    assert set(p.sources) == {"journal", "auth", "mail", "nginx-error"}
    assert p.sources["journal"].programs is None and p.sources["auth"].lookback == 0
