"""The catalog against fail2ban's own annotated sample logs (the conformance corpus).

Every catalog rule that has a sample file of the same name is run over it, in
file order, with fail2ban's test clock (now = 2005-08-14 10:00 UTC) and zone
(CET/CEST, here Europe/Zurich), using the checks fail2ban makes under the
filter's stock configuration (`expected.py --default-only`).

Run with `-s` to see the per-rule table; `python -m tests.unit.test_conformance`
prints it as Markdown (that is how docs/conformance.md is made).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyfilter.common.config import load_catalog
from pyfilter.detector.rules import Matcher

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("PYFILTER_CORPUS") or REPO / ".." / "shared" / "corpus").resolve()
CATALOG = REPO / "config" / "rules"
TEST_ZONE = "Europe/Zurich"  # = the corpus' CET-01CEST-02 except the autumn switch hour


@dataclass
class RuleResult:
    rule: str
    checks: int = 0
    passed: int = 0
    expected_matches: int = 0
    found: int = 0
    missed: list[str] = field(default_factory=list)
    wrong_host: list[str] = field(default_factory=list)
    wrong_time: list[str] = field(default_factory=list)
    false_matches: list[str] = field(default_factory=list)


def load_expected():
    spec = importlib.util.spec_from_file_location("pyfilter_corpus_expected", CORPUS / "expected.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_conformance() -> dict[str, RuleResult]:
    expected = load_expected()
    catalog = load_catalog(CATALOG)
    results: dict[str, RuleResult] = {}
    for name, rule in sorted(catalog.items()):
        sample = CORPUS / "fail2ban-logs" / name
        if not sample.exists():
            continue
        res = results[name] = RuleResult(name)
        matcher = Matcher({name: rule}, default_tz=TEST_ZONE)
        for rec in expected.parse_file(str(sample), default_only=True):
            where = f"line {rec['line_no']}: {rec['line'][:150]}"
            failures = [f for f in matcher.match(rec["line"], None, expected.TEST_NOW_EPOCH)]
            res.checks += 1
            if not rec["match"]:
                if failures:
                    res.false_matches.append(f"{where} -> {failures[0].host}")
                else:
                    res.passed += 1
                continue
            res.expected_matches += 1
            if len(failures) != 1:
                res.missed.append(where)
                continue
            res.found += 1
            got = failures[0]
            if rec["host"] is not None and got.host != rec["host"]:
                res.wrong_host.append(f"{where} -> {got.host}, expected {rec['host']}")
            elif rec["epoch"] is not None and (got.time is None or int(got.time) != int(rec["epoch"])):
                res.wrong_time.append(f"{where} -> {got.time}, expected {rec['time']}")
            else:
                res.passed += 1
    return results


def table(results: dict[str, RuleResult]) -> str:
    rows = ["| rule | checks | passed | expected matches | found | missed | wrong address | wrong time | false matches |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = RuleResult("**total**")
    for r in results.values():
        rows.append(f"| {r.rule} | {r.checks} | {r.passed} | {r.expected_matches} | {r.found} | {len(r.missed)} "
                    f"| {len(r.wrong_host)} | {len(r.wrong_time)} | {len(r.false_matches)} |")
        total.checks += r.checks
        total.passed += r.passed
        total.expected_matches += r.expected_matches
        total.found += r.found
        for attr in ("missed", "wrong_host", "wrong_time", "false_matches"):
            getattr(total, attr).extend(getattr(r, attr))
    rows.append(f"| **total** | {total.checks} | {total.passed} | {total.expected_matches} | {total.found} "
                f"| {len(total.missed)} | {len(total.wrong_host)} | {len(total.wrong_time)} "
                f"| {len(total.false_matches)} |")
    pct = 100.0 * total.passed / total.checks if total.checks else 0.0
    rows.append(f"\nPassed {total.passed} of {total.checks} default-mode checks ({pct:.1f} %).")
    return "\n".join(rows)


def problems(results: dict[str, RuleResult]) -> str:
    lines = []
    for r in results.values():
        for label, items in (("missed", r.missed), ("wrong address", r.wrong_host),
                             ("wrong time", r.wrong_time), ("false match", r.false_matches)):
            lines.extend(f"- {r.rule} {label}: {item}" for item in items)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results() -> dict[str, RuleResult]:
    if not (CORPUS / "expected.py").exists() or not (CORPUS / "fail2ban-logs").is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS} (set PYFILTER_CORPUS)")
    res = run_conformance()
    print("\n" + table(res) + "\n" + problems(res))
    return res


# Sample lines where fail2ban expects the address a hostile user name plants:
# the rule reports the real one instead (docs/conformance.md explains each).
DELIBERATE = {
    "sshd": ["Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from 10.10.1.2 port 55555 ssh2"],
}


def deliberate(rule: str, items: list[str]) -> list[str]:
    return [item for item in items if any(line in item for line in DELIBERATE.get(rule, ()))]


def test_every_default_sshd_check_passes(results):
    sshd = results["sshd"]
    assert sshd.checks > 0
    assert deliberate("sshd", sshd.wrong_host) == [item for item in sshd.wrong_host], problems({"sshd": sshd})
    assert sshd.passed + len(DELIBERATE["sshd"]) == sshd.checks, problems({"sshd": sshd})


def test_at_least_95_percent_of_default_checks_pass(results):
    checks = sum(r.checks for r in results.values())
    passed = sum(r.passed for r in results.values())
    assert checks > 400, f"only {checks} checks: are the catalog files named like fail2ban's filters?"
    assert passed >= 0.95 * checks, table(results) + "\n" + problems(results)


def test_no_rule_reports_a_wrong_address(results):
    wrong = {name: [w for w in r.wrong_host if w not in deliberate(name, r.wrong_host)]
             for name, r in results.items()}
    assert not any(wrong.values()), wrong


if __name__ == "__main__":
    res = run_conformance()
    print(table(res))
    print()
    print(problems(res))
