"""The common-header path (`scan_common`): a matcher of a few rules whose searches read
the syslog header themselves must find exactly what reading every envelope finds.

Each comparison runs the same lines, in the same batches, through two matchers of
the same rules: one as built (the common-header path), one with `FEW` at 0 (every
line's envelope read by `read_batch`, then routed by program).
"""

from __future__ import annotations

import random

import pytest

from pyfilter.detector.matching import Matcher, matcher
from tests.unit.test_rules import CORPUS, CORPUS_NOW, NOW, REAL, mixed_sshd_log


def both(rules, monkeypatch) -> tuple[Matcher, Matcher]:
    common = Matcher(rules, "Europe/Zurich")
    with monkeypatch.context() as patch:
        patch.setattr(matcher, "FEW", 0)
        envelopes = Matcher(rules, "Europe/Zurich")
    assert common.common_rules and not envelopes.common_rules
    return common, envelopes


def agree(common: Matcher, envelopes: Matcher, lines: list[str], now: float, sizes=(1000,),
          source: str | None = None, host: str | None = None) -> int:
    found, start = 0, 0
    for n, size in enumerate(sizes * (len(lines) // min(sizes) + 1)):
        chunk = lines[start:start + size]
        if not chunk:
            break
        expected = envelopes.match_batch(chunk, source, now, host)
        assert common.match_batch(chunk, source, now, host) == expected, f"batch {n} (lines {start}-...)"
        found += len(expected)
        start += size
    return found


# Headers the common one is not: each sends the rest of its batch to `read_batch`.
OTHER_HEADERS = [
    "2026-11-21T20:{m:02d}:{s:02d}.551146+00:00 srv sshd[{pid}]: {msg}",  # rsyslog precise, our journal lines
    "<38>1 2026-11-21T20:{m:02d}:{s:02d}+00:00 srv sshd {pid} - - {msg}",  # RFC 5424
    "Nov 21 20:{m:02d}:{s:02d} srv sshd[{pid}]: [ID 800047 auth.info] {msg}",  # Solaris
    "Nov 21 20:{m:02d}:{s:02d} srv auth.info sshd[{pid}]: {msg}",  # syslog-ng's priority
    "Nov 21 20:{m:02d}:{s:02d} srv sshd[{pid}]: message repeated 3 times: [ {msg}]",
    "Nov 21 20:{m:02d}:{s:02d} sshd[{pid}]: {msg}",  # no host
    "Nov 21 20:{m:02d}:{s:02d} srv SSHD[{pid}]: {msg}",  # a program in capitals: routed all the same
    "Nov 21 20:{m:02d}:{s:02d} srv sshd-session[{pid}]: {msg}",
    "Nov 21 20:{m:02d}:{s:02d} srv ſshd[{pid}]: {msg}",  # no ASCII program: no header of sshd's
    "Nov 21 20:{m:02d}:{s:02d} s\u00e9rv sshd[{pid}]: {msg}",
    "srv sshd[{pid}]: {msg}",  # journal export, no time
    "{msg}",  # plain
]


def sprinkled(lines: list[str], seed: int = 3) -> list[str]:
    """`lines` with, now and then, one of them rewritten under another header (the same pid and message)."""
    rng = random.Random(seed)
    out = []
    for n, line in enumerate(lines):
        head, sep, msg = line.partition("]: ")
        if sep and " sshd[" in head and rng.random() < 0.03:
            pid = head.rpartition("[")[2]
            line = rng.choice(OTHER_HEADERS).format(m=n // 60 % 60, s=n % 60, pid=pid, msg=msg)
        out.append(line)
    return out


def test_other_headers_among_common_ones_give_what_the_envelopes_give(catalog, monkeypatch):
    lines = sprinkled(mixed_sshd_log(3000))
    rules = {"sshd": catalog["sshd"]}
    common, envelopes = both(rules, monkeypatch)
    assert agree(common, envelopes, lines, NOW, sizes=(1000, 1, 37), source="auth", host="srv") > 1000
    # a few rules at once, each its own search over the batch
    few = {name: catalog[name] for name in ("sshd", "dropbear", "vsftpd")}
    common, envelopes = both(few, monkeypatch)
    assert agree(common, envelopes, lines, NOW, sizes=(250,)) > 1000


@pytest.mark.skipif(not (CORPUS / "fail2ban-logs").is_dir(), reason="conformance corpus not found")
def test_every_rule_on_the_common_path_gives_what_the_envelopes_give_on_its_sample_log(catalog, monkeypatch):
    compared = found = 0
    for name in sorted(catalog):
        sample = CORPUS / "fail2ban-logs" / name
        if not sample.exists() or Matcher({name: catalog[name]}).rules[0].common_regex() is None:
            continue  # not on the common path (its programs are wildcards, or it reads whole lines)
        lines = sample.read_text(encoding="utf-8", errors="replace").splitlines()
        common, envelopes = both({name: catalog[name]}, monkeypatch)
        found += agree(common, envelopes, sprinkled(lines), CORPUS_NOW, sizes=(7, 1000, 1))
        compared += 1
    assert compared > 50 and found > 300


def test_a_line_under_another_header_is_judged_in_its_place_in_the_connection(catalog):
    """rsyslog folds repeated failures into one line; the connection's closing line after it,
    in the same batch, must see that the connection already failed (not count again)."""
    m = Matcher({"sshd": catalog["sshd"]})
    assert m.common_rules
    lines = [f"Nov 21 20:19:28 srv sshd[5]: message repeated 2 times: [ Failed password for root from {REAL} "
             "port 5 ssh2]",
             f"Nov 21 20:19:29 srv sshd[5]: Connection closed by authenticating user root {REAL} port 5 [preauth]"]
    [(i, f)] = m.match_batch(lines, None, NOW)
    assert (i, f.address, f.count) == (0, REAL, 2)


def test_more_rules_read_each_envelope_once(catalog):
    """Past FEW rules, one `read_batch` per batch serves them all: no rule's search reads headers."""
    assert Matcher(catalog).common_rules == []
    assert len(Matcher({n: catalog[n] for n in ("sshd", "dropbear", "vsftpd")}).common_rules) == 3
    assert Matcher({n: catalog[n] for n in ("sshd", "pam-generic")}).common_rules == []  # pam-generic reads '*'
