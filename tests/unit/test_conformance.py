"""The catalog against fail2ban's own annotated sample logs (the conformance corpus).

Every sample file (`../shared/corpus/fail2ban-logs`, or `$PYFILTER_CORPUS`)
is run through the catalog rule of the same name (fail2ban's filter name;
sshd-journal is sshd's), in file order, with fail2ban's test clock (now =
2005-08-14 10:00 UTC, for year-less dates) and zone (CET/CEST, here
Europe/Zurich), as a collector source of the rule's program would feed it.
Each option set of the file (fail2ban's modes, journal input) gets its own
matcher, as fail2ban's runner does. A check passes when a line that must
fail gives exactly one failure with the expected address and time (epoch,
whole seconds), and a line that must not fail gives none. A sample file
without a rule counts every check as failed.

    python -m tests.unit.test_conformance              # the table (docs/conformance.md)
    python -m tests.unit.test_conformance --rule sshd  # one rule, with every problem
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from pyfilter.common.config import Rule, load_catalog
from pyfilter.detector.matching import Matcher

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("PYFILTER_CORPUS") or REPO / ".." / "shared" / "corpus").resolve()
CATALOG = REPO / "config" / "rules"
TEST_ZONE = "Europe/Zurich"  # = the corpus' CET-01CEST-02 except the autumn switch hour

# Sample files without a rule, and why (docs/conformance.md says more).
NOT_APPLICABLE = {
    "zzz-generic-example": "fail2ban's example of its own filter syntax, not a service",
    "zzz-sshd-obsolete-multiline": "an empty example of fail2ban's obsolete multi-line sshd filter",
    "bsd": "not a log: a listing of a folder of fail2ban's date-detection tests",
    "apache-fakegooglebot": "tells a fake Googlebot from Google's only by a reverse DNS lookup, and a "
                            "detector never resolves names an attacker controls: the line alone is the same",
    "apache-pass": "marks an address to allow (port knocking), not one to ban",
}
# Sample lines a rule fails on purpose, or for a reason outside the rule: a fragment of the
# line (unique in the corpus) -> why. docs/conformance.md lists them.
EXPLAINED = {
    "Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from 10.10.1.2 port 55555 ssh2":
        "fail2ban expects the address a hostile user name plants (`test from 127.0.0.1 port 58946 ssh2:`); "
        "the rule reports the last address, the one sshd wrote",
    "PROXY.3128 00508 - 1.2.3.4:28938":
        "3proxy's code 00508 (closed before any request) counts in the aggressive mode only: browsers' "
        "pre-opened connections close so too",
    "11-06-2013 02:09:40 +0300 PROXY.3128 00004": "fail2ban's sample ignores the +0300 offset the line "
                                                  "states; the rule reads it",
    "11-06-2013 02:09:43 +0300 PROXY.3128 00005": "fail2ban's sample ignores the +0300 offset the line "
                                                  "states; the rule reads it",
    '"timestamp":"2026-08-13T00:00:34.803989Z"': "fail2ban's sample reads cowrie's UTC time (…Z) as local time; "
                                                 "the rule reads the zone the line states",
    '"timestamp":"2026-08-13T00:05:00.000000Z"': "fail2ban's sample reads cowrie's UTC time (…Z) as local time; "
                                                 "the rule reads the zone the line states",
    "SIP auth challenge (INVITE) on sofia profile 'internal' for [011448708752617@192.168.2.51]":
        "a SIP auth challenge comes before every registration of a legitimate phone: it counts in the ddos "
        "and aggressive modes only",
    "pop(pam_unix)[4920]: authentication failure":
        "fail2ban's filter does not read the old `svc(pam_unix)[pid]:` tag; the rule does: a real PAM failure",
    'host: "localhost:8443"": was not found in "/etc/nginx/.htpasswd", client: 192.0.2.2':
        "fail2ban's injection sample: a quote in the user name writes a second \", client: ADDR\" tail, and nginx "
        "writes the user name, request, Host and referrer raw on both sides of the address: the line gives none",
    "SOGoRootPage Login from '192.0.2.16, 10.0.0.1'":
        "SOGo logs the client's X-Forwarded-For list as the address: its first entry is client text",
}
DEFAULT = "default"


@dataclass
class Result:
    """The checks of one rule in one mode (DEFAULT: the filter's stock configuration)."""

    rule: str
    mode: str
    checks: int = 0
    passed: int = 0
    missed: list[str] = field(default_factory=list)
    wrong_host: list[str] = field(default_factory=list)
    wrong_time: list[str] = field(default_factory=list)
    false_matches: list[str] = field(default_factory=list)
    no_mode: list[str] = field(default_factory=list)  # the rule lacks fail2ban's mode
    no_rule: list[str] = field(default_factory=list)  # no catalog rule for the sample file

    def problems(self) -> list[str]:
        out = []
        for label, items in (("no rule", self.no_rule), ("mode not provided", self.no_mode),
                             ("missed", self.missed), ("wrong address", self.wrong_host),
                             ("wrong time", self.wrong_time), ("false match", self.false_matches)):
            out += [f"- {self.rule} [{self.mode}] {label}: {item[:300]}" for item in items]
        return out


def load_expected():
    spec = importlib.util.spec_from_file_location("pyfilter_corpus_expected", CORPUS / "expected.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample_files() -> list[Path]:
    """Every sample file but fail2ban's own examples (zzz-*): the ones without a rule count as failed."""
    expected = load_expected()
    return [Path(p) for p in expected.expand_paths([str(CORPUS / "fail2ban-logs")])
            if not Path(p).name.startswith("zzz-")]


def run_sample(path: Path, name: str, rule: Rule | None, default_only: bool) -> dict[str, Result]:
    """Results per mode of one sample file (`name`: the rule it belongs to)."""
    expected = load_expected()
    records = expected.parse_file(str(path), expand=True, default_only=default_only)
    results: dict[str, Result] = {}
    matchers: dict[str, Matcher | None] = {}
    program = None  # as `pyfilter match FILE` reads it: no source declares a program
    for rec in records:
        variant = rec["variant"]
        options = variant["options"]
        default = expected.is_default_variant(name, options)
        mode = DEFAULT if default else options.get("mode", DEFAULT)
        label = DEFAULT if default else ", ".join(
            [mode] + [f"{k}={v}" for k, v in sorted(options.items()) if k != "mode"])
        res = results.setdefault(label, Result(name, label))
        res.checks += 1
        where = f"{path.name}:{rec['line_no']}: {rec['line']}"
        if rule is None:
            res.no_rule.append(where)
            continue
        if variant["key"] not in matchers:
            matchers[variant["key"]] = _matcher(name, rule, None if mode == DEFAULT else mode)
        matcher = matchers[variant["key"]]
        if matcher is None:
            res.no_mode.append(where)
            continue
        line = (variant["prefix_line"] or "") + rec["line"]
        failures = matcher.match(line, None, expected.TEST_NOW_EPOCH, None, None, program)
        if not rec["match"]:
            if failures:
                res.false_matches.append(f"{where} -> {failures[0].address}")
            else:
                res.passed += 1
            continue
        if len(failures) != 1:
            res.missed.append(where)
            continue
        got = failures[0]
        if rec["host"] is not None and got.address != rec["host"]:
            res.wrong_host.append(f"{where} -> {got.address}, expected {rec['host']}")
        elif rec["epoch"] is not None and (got.time is None or int(got.time) != int(rec["epoch"])):
            res.wrong_time.append(f"{where} -> {got.time}, expected {rec['time']}")
        else:
            res.passed += 1
    return results


def _matcher(name: str, rule: Rule, mode: str | None) -> Matcher | None:
    if mode is not None and mode != rule.mode:
        if mode not in rule.modes:
            return None
        rule = msgspec.structs.replace(rule, mode=mode)
    return Matcher({name: rule}, default_tz=TEST_ZONE)


def run_conformance(default_only: bool = True, only: str | None = None) -> dict[str, dict[str, Result]]:
    """Per rule (fail2ban's filter name), its results per mode."""
    expected = load_expected()
    catalog = load_catalog(CATALOG)
    out: dict[str, dict[str, Result]] = {}
    for path in sample_files():
        name = expected.default_name(str(path))
        if only is not None and name != only:
            continue
        per_mode = run_sample(path, name, catalog.get(name), default_only)
        merged = out.setdefault(name, {})
        for mode, res in per_mode.items():
            if mode in merged:
                _add(merged[mode], res)
            else:
                merged[mode] = res
    return out


def _add(into: Result, more: Result) -> None:
    into.checks += more.checks
    into.passed += more.passed
    for attr in ("missed", "wrong_host", "wrong_time", "false_matches", "no_mode", "no_rule"):
        getattr(into, attr).extend(getattr(more, attr))


def totals(results: dict[str, dict[str, Result]], mode: str | None = DEFAULT) -> tuple[int, int]:
    """(passed, checks) over every rule, in one mode (None: every mode)."""
    picked = [r for modes in results.values() for m, r in modes.items() if mode is None or m == mode]
    return sum(r.passed for r in picked), sum(r.checks for r in picked)


def table(results: dict[str, dict[str, Result]]) -> str:
    rows = ["| rule | mode | checks | passed | % | missed | wrong address | wrong time | false matches |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, modes in sorted(results.items()):
        for mode, r in sorted(modes.items(), key=lambda kv: (kv[0] != DEFAULT, kv[0])):
            pct = 100.0 * r.passed / r.checks if r.checks else 0.0
            missed = len(r.missed) + len(r.no_mode) + len(r.no_rule)
            note = (f" (not applicable: {NOT_APPLICABLE[name]})" if name in NOT_APPLICABLE else " (no rule)"
                    if r.no_rule else " (mode not provided)" if r.no_mode else "")
            rows.append(f"| {name}{note} | {mode} | {r.checks} | {r.passed} | {pct:.0f} | {missed} "
                        f"| {len(r.wrong_host)} | {len(r.wrong_time)} | {len(r.false_matches)} |")
    passed, checks = totals(results)
    pct = 100.0 * passed / checks if checks else 0.0
    rows.append(f"\nDefault mode: passed {passed} of {checks} checks ({pct:.1f} %).")
    passed, checks = totals(results, None)
    pct = 100.0 * passed / checks if checks else 0.0
    rows.append(f"All modes and journal input: passed {passed} of {checks} checks ({pct:.1f} %).")
    return "\n".join(rows)


def problems(results: dict[str, dict[str, Result]]) -> str:
    return "\n".join(p for modes in results.values() for r in modes.values() for p in r.problems())


def reason(item: str) -> str | None:
    """Why a failed check fails, if EXPLAINED says."""
    return next((why for fragment, why in EXPLAINED.items() if fragment in item), None)


def unexplained(res: Result) -> list[str]:
    items = res.missed + res.wrong_host + res.wrong_time + res.false_matches + res.no_mode
    return [item for item in items if reason(item) is None] + ([] if res.rule in NOT_APPLICABLE else res.no_rule)


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Result]]:
    if not (CORPUS / "expected.py").exists() or not (CORPUS / "fail2ban-logs").is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS} (set PYFILTER_CORPUS)")
    return run_conformance(default_only=False)


def test_every_default_sshd_check_passes_but_the_explained_ones(results):
    sshd = results["sshd"][DEFAULT]
    assert sshd.checks > 100
    assert not unexplained(sshd), "\n".join(sshd.problems())


def test_at_least_95_percent_of_default_checks_pass(results):
    passed, checks = totals(results)
    assert checks > 850, f"only {checks} checks: are all the sample files there?"
    assert passed >= 0.95 * checks, table(results) + "\n" + problems(results)


def test_no_rule_reports_a_wrong_address(results):
    wrong = {f"{name} [{mode}]": [w for w in r.wrong_host if reason(w) is None]
             for name, modes in results.items() for mode, r in modes.items()}
    assert not any(wrong.values()), {k: v for k, v in wrong.items() if v}


def test_every_rule_passes_90_percent_in_each_mode_or_explains_each_miss(results):
    short = {f"{name} [{mode}] {r.passed}/{r.checks}": unexplained(r)
             for name, modes in results.items() for mode, r in modes.items()
             if r.passed < 0.9 * r.checks and unexplained(r)}
    assert not short, short


START, END = "<!-- generated: start -->", "<!-- generated: end -->"


def document(results: dict[str, dict[str, Result]]) -> str:
    """The generated part of docs/conformance.md: the table, the explained failures, the may-miss cases."""
    from tests.unit import rulecases

    out = [table(results), "", "### Checks a rule fails, and why", ""]
    by_reason: dict[str, list[str]] = {}
    for modes in results.values():
        for r in modes.values():
            for item in r.missed + r.wrong_host + r.wrong_time + r.false_matches + r.no_mode:
                by_reason.setdefault(reason(item) or "not explained yet", []).append(
                    f"{r.rule} [{r.mode}]: `{item.split(': ', 1)[-1][:110]}`")
    for why, items in sorted(by_reason.items()):
        out.append(f"- {why}:")
        out += [f"  - {item}" for item in sorted(set(items))]
    out += ["", "### Lines that may match nothing when a client fills its fields", "",
            "Cases marked `may-miss:` in the rules' cases files: the daemon writes client text on both sides",
            "of the address, so a line whose client text repeats the daemon's own words around it matches",
            "nothing (never another address). The hostile test holds every other case to the real address.", ""]
    for name, path in rulecases.catalog_cases():
        for case in rulecases.read(path).cases:
            if case.expected.may_miss:
                out.append(f"- {name} ({path.name}:{case.line_no}): {case.expected.may_miss}")
    return "\n".join(out)


def write_document(path: Path, results: dict[str, dict[str, Result]]) -> None:
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{document(results)}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule", metavar="NAME", help="one rule, with every problem listed")
    parser.add_argument("--default-only", action="store_true", help="the stock configuration's checks only")
    parser.add_argument("--doc", metavar="FILE", help="rewrite the generated part of this file (docs/conformance.md)")
    args = parser.parse_args(argv)
    res = run_conformance(default_only=args.default_only, only=args.rule)
    if args.doc:
        write_document(Path(args.doc), res)
        print(f"written to {args.doc}")
        return 0
    print(table(res))
    print()
    print(problems(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
