"""Every rule's cases file (config/rules/NAME.cases): each line gives what the file says.

The cases are lines we wrote from each daemon's own format strings and real
logs (docs/rules.md): failures with their address, user and time, and the
lines around them that must not count. One test per rule.
"""

from __future__ import annotations

import pytest

from tests.unit import rulecases

CASES = rulecases.catalog_cases()


@pytest.mark.parametrize("name, path", CASES, ids=[name for name, _ in CASES])
def test_rule_gives_what_its_cases_say(catalog, name, path):
    cases = rulecases.read(path)
    assert cases.cases, f"{path.name} holds no case"
    assert any(c.expected.address for c in cases.cases), f"{path.name}: no positive case"
    wrong = [f"{case.where(path)}: {problem}\n    {case.text[:300]}"
             for case, found in rulecases.run(name, catalog[name], cases)
             if (problem := rulecases.judge(case, found))]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name, path", CASES, ids=[name for name, _ in CASES])
def test_every_mode_of_the_rule_has_cases(catalog, name, path):
    rule = catalog[name]
    modes = set(rulecases.read(path).modes)
    for mode in rule.modes[1:]:  # the first is the default (cases without @mode)
        assert mode in modes, f"{path.name}: no case runs in mode {mode!r} (@mode {mode})"


def test_the_catalog_has_cases():
    assert len(CASES) >= 1


def test_every_rule_finds_its_cases_in_the_whole_catalog(catalog):
    """Routing among all rules (programs, catch-alls like pam-generic, plain lines) leaves each
    rule the lines its own matcher finds: the cases of the default mode, through one matcher
    of the whole catalog."""
    from pyfilter.detector.matching import Matcher

    matcher = Matcher(catalog)
    lost = []
    for name, path in CASES:
        matcher.reset()
        for case in rulecases.read(path).cases:
            if case.mode not in (None, catalog[name].mode):
                continue
            if case.reset:
                matcher.reset()
            found = [f.address for f in matcher.match(case.text, None, case.now, "test-host", case.tz, case.program)
                     if f.rule == name]
            if case.expected.address is not None and not case.expected.success and found != [case.expected.address]:
                lost.append(f"{case.where(path)}: {found}, expected {case.expected.address}\n    {case.text[:200]}")
    assert not lost, "\n".join(lost)
