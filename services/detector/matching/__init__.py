"""Matching log lines against the rule catalog, by concern:

    envelopes.py     the header around each message (syslog, journal, RFC 5424, plain)
    placeholders.py  <HOST>, <USER>... and the address forms they capture
    regex.py         reading patterns as text (literals, rewrites, block safety)
    compiled.py      one rule compiled, and what a match of it means
    connections.py   state across the lines of one connection (sshd's pids)
    scan.py          one rule over a batch of messages
    matcher.py       the catalog: routing lines to rules by program
    explain.py       why a line is (not) a failure, for people

docs/rules.md says how rules and their cases are written.
"""

from pyfilter.detector.matching.compiled import CompiledRule, RuleError
from pyfilter.detector.matching.connections import Failure
from pyfilter.detector.matching.envelopes import Envelope
from pyfilter.detector.matching.explain import Closest, Explanation, closest, explain
from pyfilter.detector.matching.matcher import Matcher
from pyfilter.detector.matching.placeholders import expand, normalize_host

__all__ = ["Matcher", "Failure", "Explanation", "Closest", "Envelope", "CompiledRule", "RuleError",
           "explain", "closest", "expand", "normalize_host"]
