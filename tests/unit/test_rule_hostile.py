"""Hostile text in every field a client controls, for every rule: the real client, or nothing.

Each case of a rule's cases file whose line has client text marked `{{...}}`
is replayed with one field at a time replaced by text a client could send:
another address in every form a pattern could capture, copies of the line's
own words around its address with another address in them, and 16 KB runs
of spaces, tabs and repeated fragments of the rule's patterns
(`rulecases.hostile_values`). The rule must still report the expected
address and nothing else; a case marked `may-miss:` (the daemon's format
cannot tell the client's address from the client's text there,
docs/conformance.md lists them) may report nothing, never another address.
How long a 16 KB line takes is measured by `python -m bench.hostile_lines`,
not asserted here.
"""

from __future__ import annotations

import pytest

from tests.unit import rulecases

CASES = rulecases.catalog_cases()


@pytest.mark.parametrize("name, path", CASES, ids=[name for name, _ in CASES])
def test_client_text_never_changes_the_address(catalog, name, path):
    cases = rulecases.read(path)
    tried, wrong = 0, []
    for case, index, value, matcher, text in rulecases.hostile_lines(name, catalog[name], cases):
        if case.expected.address is None:
            continue
        found = rulecases.replay_until(matcher, cases, case, text)
        tried += 1
        addresses = [f.address for f in found]
        if addresses == [case.expected.address]:
            continue
        if not addresses and case.expected.may_miss:
            continue
        shown = value if len(value) < 120 else f"{value[:60]}...({len(value)} chars)"
        wrong.append(f"{case.where(path)} field {index} = {shown!r}: got {addresses}")
    assert not wrong, f"{len(wrong)} of {tried} hostile lines:\n" + "\n".join(wrong[:40])


def test_the_hostile_values_hold_every_address_form():
    case = rulecases.Case(1, "x {{bob}} from 198.51.100.7 port 22", rulecases.Expected("198.51.100.7"),
                          None, None, 0.0, "UTC", False)
    values = rulecases.hostile_values(case, 0, ["from "])
    assert "bob from 198.51.100.66 port 22" in values  # the line's own tail, another address
    assert all(form in values for form in rulecases.FAKE_FORMS)
    assert any(len(v) >= rulecases.LONG for v in values)
