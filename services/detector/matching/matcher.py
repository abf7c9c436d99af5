"""The compiled catalog: which rules read a line, and the failures they find.

Each line's envelope is read once (`envelopes`), then it goes to the rules
whose `programs` name its program, which match its message. A plain line
(a daemon's own file) goes to the rules of the program its source declares,
or, where none is declared, to every rule (their literals screen it first).
A line whose header names a program no rule reads by name (a catch-all
like pam-generic's `'*'` aside), from a source that declares its program,
is read as a plain line of that program: daemons' own files sometimes look
like syslog (`[2012-02-13 17:21:54] NOTICE[1638] ...`).
Rules without `programs` (older files) match whole lines, as before.

A catalog of a few rules (FEW), each naming its programs, skips the separate
reading: each rule's search reads the common syslog header itself and passes
over other programs' lines inside the regex (`scan_common`), up to the first
line with another header; the rest of the batch is read as above. Both ways
find the same failures (tests/unit/test_matching_common.py).
"""

from __future__ import annotations

from typing import Collection, Sequence

from pyfilter.common.config import Rule
from pyfilter.common import timeparse
from pyfilter.detector.matching import envelopes
from pyfilter.detector.matching.compiled import CompiledRule
from pyfilter.detector.matching.connections import Failure, Success
from pyfilter.detector.matching.scan import Lines, scan, scan_common

__all__ = ["Matcher"]

CARRY = 3  # lines back a failure without a time looks for one (see `_dated`)
# A catalog of at most this many rules, each naming its programs, has their searches
# read the common header themselves (`scan_common`): the usual one of a host that runs
# sshd's rule alone. Each rule's search then passes over every line of a batch, where
# reading the envelopes once serves any number of rules.
FEW = 3


class Matcher:
    """The compiled catalog. `match_batch` is the hot path; `explain` (explain.py) is for people."""

    def __init__(self, rules: dict[str, Rule], default_tz: str = "UTC",
                 successes: bool | Collection[str] = False, single_reader: bool = False) -> None:
        self.default_tz = default_tz
        # `single_reader`: these lines are all read here, each once and in order
        # (`pyfilter replay`), so the connection state here is complete.
        self.rules = [CompiledRule(name, rule, default_tz, single_reader)
                      for name, rule in rules.items() if rule.enabled]
        # `successes`: keep the successful logins (`take_successes`) of every rule (True)
        # or of the rules named: they spare their addresses in per-account windows (the
        # live detector keeps those of rules with one only), and `pyfilter replay`
        # reports every rule's. A rule not kept records none (its `logins` is None).
        self._reporting = self.rules if successes is True else \
            [r for r in self.rules if successes and r.name in successes]
        for rule in self._reporting:
            rule.logins = []
        self._message_rules = [r for r in self.rules if r.reads_messages]
        self._line_rules = [r for r in self.rules if not r.reads_messages]
        self._by_program: dict[str | None, list[CompiledRule]] = {None: self._message_rules}
        self._by_name: dict[str, bool] = {}
        # The rules whose own searches read the common header (see FEW); none: every
        # line's envelope is read once, for all rules.
        common = [r for r in self._message_rules if r.common_regex() is not None] \
            if len(self._message_rules) <= FEW else []
        self.common_rules = common if len(common) == len(self._message_rules) else []
        # The last lines of the previous batches of each (source, host), for `_dated`.
        self._last_lines: dict[tuple[str | None, str | None], tuple[str, ...]] = {}

    def knows(self, program: str) -> bool:
        """Whether some rule reads `program` by name (not only a catch-all like pam-generic)."""
        known = self._by_name.get(program)
        if known is None:
            name = program.lower()
            known = self._by_name[program] = any(r.names(name) for r in self._message_rules)
        return known

    def reset(self) -> None:
        """Forget every connection's state (what the lines so far said of each pid)."""
        for rule in self.rules:
            rule.connections.clear()

    def take_successes(self) -> list[Success]:
        """The successful logins matched since the last call, in line order per rule."""
        found: list[Success] = []
        for rule in self._reporting:
            found += rule.logins  # type: ignore[operator]
            rule.logins = []
        return found

    def rules_for(self, program: str | None) -> list[CompiledRule]:
        """The rules that read messages of `program` (None: a plain line of no known program: all)."""
        found = self._by_program.get(program)
        if found is None:
            name = program.lower()  # type: ignore[union-attr]
            found = self._by_program[program] = [r for r in self._message_rules if r.reads(name)]
        return found

    def match(self, text: str, source: str | None = None, now: float | None = None,
              host: str | None = None, tz: str | None = None, program: str | None = None,
              rules: Sequence[str] | None = None) -> list[Failure]:
        """Failures in one log line: at most one per rule. See `match_batch`."""
        return [f for _, f in self.match_batch([text], source, now, host, tz, program, rules)]

    def match_batch(self, texts: Sequence[str], source: str | None = None, now: float | None = None,
                    host: str | None = None, tz: str | None = None, program: str | None = None,
                    rules: Sequence[str] | None = None, skip: Collection[str] = ()) -> list[tuple[int, Failure]]:
        """(index in `texts`, failure) for a batch of lines, in line order then rule order.

        `source` is the collector source the lines come from (None: any;
        rules restricted to sources then all apply), `host` the host whose log
        holds them (connections of different hosts are kept apart), `tz` the
        zone its zone-less times are written in (None: the matcher's
        default), `program` the program its plain lines come from, if known.
        `rules` names the only rules that read the lines, whatever their
        programs and sources (a container's `pyfilter.rules` label); names of
        rules not in the catalog are ignored. `skip` names rules these lines
        must not feed (copies of lines another source delivers, as the
        collector decided).
        """
        per_rule: list[list[tuple[int, Failure]]] = []
        named = None if rules is None else set(rules)
        if self._message_rules:
            first = 0
            if self.common_rules and named is None and (program is None or not self.rules_for(program)):
                first = self._match_common(texts, per_rule, source, host, now, tz, skip)
            if first < len(texts):
                self._match_envelopes(texts, first, per_rule, source, host, now, tz, program, named, skip)
        if self._line_rules:
            for rule in self._line_rules:
                if rule.name in skip:
                    continue
                if named is not None:
                    if rule.name not in named:
                        continue
                elif rule.sources and source is not None and source not in rule.sources:
                    continue
                rule.use_zone(tz)
                none = [None] * len(texts)
                found = scan(rule, Lines(texts, none, none, source, host, now), tuple(rule.prefilter))
                if found:
                    per_rule.append(self._dated(rule, texts, found, source, host, now))
        if texts:
            key = (source, host)
            self._last_lines[key] = (self._last_lines.get(key, ()) + tuple(texts[-CARRY:]))[-CARRY:]
        if len(per_rule) == 1:
            return per_rule[0]
        # Stable sort: within a line, failures keep the order of the rules.
        return sorted((pair for found in per_rule for pair in found), key=lambda pair: pair[0])

    def _match_common(self, texts: Sequence[str], per_rule: list[list[tuple[int, Failure]]], source: str | None,
                      host: str | None, now: float | None, tz: str | None, skip: Collection[str]) -> int:
        """The failures of the lines up to the first without the common header, each rule's
        search reading the headers (`scan_common`), added to `per_rule`; returns that line's index."""
        block = "\n" + "\n".join(texts)
        if block.count("\n") != len(texts):  # a line holds a newline
            return 0
        first = len(texts)
        for rule in self.common_rules:
            if rule.name in skip or (rule.sources and source is not None and source not in rule.sources):
                continue
            rule.use_zone(tz)
            found, end = scan_common(rule, block, texts, source, host, now)
            first = min(first, end)  # the same line for every rule: it depends on the header only
            if found:
                per_rule.append(self._dated(rule, texts, found, source, host, now))
        return first

    def _match_envelopes(self, texts: Sequence[str], first: int, per_rule: list[list[tuple[int, Failure]]],
                         source: str | None, host: str | None, now: float | None, tz: str | None,
                         program: str | None, named: set[str] | None, skip: Collection[str]) -> None:
        """The failures of lines `first`... (each line's envelope read, then routed by program), added to
        `per_rule` with their indices in `texts`."""
        rest = texts[first:] if first else texts
        env = envelopes.read_batch(rest, program)
        if named is None:
            routes = self._route(rest, env, program)
        else:
            routes = [(rule, None, False) for rule in self._message_rules if rule.name in named]
        for rule, lines, unrouted in routes:
            if rule.name in skip:
                continue
            if named is None and rule.sources and source is not None and source not in rule.sources:
                continue
            rule.use_zone(tz)
            lits = tuple(rule.prefilter) if unrouted else rule.gate
            if lines is None:  # every line of the batch
                found = scan(rule, Lines(env.messages, env.stamps, env.pids, source, host, now), lits)
            else:
                messages, stamps, pids = env.messages, env.stamps, env.pids
                found = scan(rule, Lines([messages[i] for i in lines], [stamps[i] for i in lines],
                                         [pids[i] for i in lines], source, host, now), lits)
                found = [(lines[k], f) for k, f in found]
            if env.repeats:
                found = [(i, f._replace(count=f.count * env.repeats[i]) if i in env.repeats else f)
                         for i, f in found]
            if first:
                found = [(i + first, f) for i, f in found]
            if found:
                per_rule.append(self._dated(rule, texts, found, source, host, now))

    def _dated(self, rule: CompiledRule, texts: Sequence[str], found: list[tuple[int, Failure]],
               source: str | None, host: str | None, now: float | None) -> list[tuple[int, Failure]]:
        """`found`, a failure whose line has no time taking the time of a line just before it.

        Some daemons write one record over several lines, the time on the
        first (Java's and Erlang's loggers: `apr 15, 2013 8:34:08 PM org.x` then
        `WARNING: Authentication attempt from ...`). Up to CARRY lines back are
        read, over the end of the previous batch too; none: no time (the
        detector then uses the arrival time).
        """
        if all(f.time is not None for _, f in found):
            return found
        out = []
        for i, f in found:
            if f.time is None:
                before = [texts[j] for j in range(i - 1, max(i - CARRY, 0) - 1, -1)]
                if i < CARRY:
                    before += reversed(self._last_lines.get((source, host), ())[i - CARRY:])
                for text in before:
                    when = timeparse.parse_time(text, rule.zone, now)
                    if when is not None:
                        f = f._replace(time=when)
                        break
            out.append((i, f))
        return out

    def _route(self, texts: Sequence[str], env: envelopes.BatchEnvelopes,
               program: str | None) -> list[tuple[CompiledRule, list[int] | None, bool]]:
        """Each rule that reads some of the lines, in catalog order: with their indices (None: all
        of them), and whether some are plain lines of no known program (every rule's to screen)."""
        programs = env.programs
        present = set(programs)
        if program is not None and self.rules_for(program):
            # Lines whose header names a program no rule reads (a catch-all aside) are plain
            # lines of `program`.
            for p in [p for p in present if p is not None and not self.knows(p)]:
                for i in [i for i, q in enumerate(programs) if q == p]:
                    env.make_plain(i, texts[i])
                present.discard(p)
                present.add(None)
        # A plain line (None) belongs to the source's program, or to no known program (every rule's).
        chosen = {p: self.rules_for(program if p is None else p) for p in present}
        if len(present) == 1:
            (p,) = present
            return [(rule, None, p is None and program is None) for rule in chosen[p]]
        lines: dict[CompiledRule, list[int]] = {}
        for p in present:
            if not chosen[p]:
                continue
            group = [i for i, q in enumerate(programs) if q == p]
            for rule in chosen[p]:
                lines[rule] = sorted(lines[rule] + group) if rule in lines else group
        unrouted = set(chosen[None]) if None in present and program is None else set()
        order = {rule: n for n, rule in enumerate(self._message_rules)}
        return [(rule, found, rule in unrouted) for rule, found in sorted(lines.items(), key=lambda p: order[p[0]])]
