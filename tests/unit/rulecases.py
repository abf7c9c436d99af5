"""Rule cases files (`config/rules/NAME.cases`, docs/rules.md): reading them and running them.

A case is a log line and what the rule must make of it: one failure (an
address, maybe a user, time and count), a successful login (`=> success
ADDRESS user=NAME`, for rules with a per-account window), or none. Lines run in file order
through one matcher per mode, as in the daemon's log, so connection state
carries from case to case. `{{...}}` marks client text (the hostile test
replaces it); for the plain run it is the text inside the braces.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pyfilter.common.config import Rule
from pyfilter.detector.matching import Failure, Matcher
from pyfilter.detector.matching.connections import Success
from pyfilter.detector.matching.regex import literals

CATALOG = Path(__file__).resolve().parents[2] / "config" / "rules"
DEFAULT_NOW = "2026-11-21T20:30:00Z"
# {{text}}, {{word:text}}, {{quoted:text}}, and with a link {{#u:text}}, {{word#u:text}}: fields
# with the same link are one value the daemon writes twice (the hostile test fills them together).
_FIELD = re.compile(r"\{\{(?:(word|quoted)?(?:#(\w+))?:(?=.))?(.*?)\}\}")
_KEYS = ("user", "time", "count", "value", "weight")
_DIRECTIVES = ("mode", "program", "now", "tz", "reset")


class CasesError(ValueError):
    """A cases file that cannot be read; the message names the file and line."""


@dataclass
class Expected:
    address: str | None  # None: no failure
    user: str | None = None
    time: str | None = None
    count: int | None = None
    value: str | None = None  # a distinct window's capture (a request path)
    weight: int | None = None
    may_miss: str | None = None  # why hostile text may make it match nothing
    success: bool = False  # a successful login, not a failure


@dataclass
class Case:
    line_no: int
    template: str  # the log line with its {{fields}}
    expected: Expected
    mode: str | None
    program: str | None
    now: float
    tz: str
    reset: bool  # forget connection state before this line

    @property
    def text(self) -> str:
        return render(self.template)

    def fields(self) -> list[re.Match[str]]:
        return list(_FIELD.finditer(self.template))

    def field_groups(self) -> list[list[int]]:
        """The fields to fill together: each alone, but linked ones ({{#u:...}}) as one."""
        groups: dict[str, list[int]] = {}
        for n, m in enumerate(self.fields()):
            groups.setdefault(m.group(2) or f"#{n}", []).append(n)
        return list(groups.values())

    def where(self, path: Path) -> str:
        return f"{path.name}:{self.line_no}"


@dataclass
class CasesFile:
    path: Path
    cases: list[Case] = field(default_factory=list)

    @property
    def modes(self) -> list[str | None]:
        return list(dict.fromkeys(c.mode for c in self.cases))


def render(template: str, replace: dict[int, str] | None = None) -> str:
    """The line with each {{field}} replaced by its text, or field n by `replace[n]`."""
    count = -1

    def one(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        if replace is not None and count in replace:
            return replace[count]
        return m.group(3)
    return _FIELD.sub(one, template)


def parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def read(path: Path) -> CasesFile:
    out = CasesFile(path)
    mode = program = None
    now, tz, reset = parse_time(DEFAULT_NOW), "UTC", False
    pending: tuple[int, str] | None = None  # a log line waiting for its expectation

    def close(expected: Expected) -> None:
        nonlocal pending, reset
        assert pending is not None
        out.cases.append(Case(pending[0], pending[1], expected, mode, program, now, tz, reset))
        pending, reset = None, False

    for n, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if stripped.startswith("=>"):
            if pending is None:
                raise CasesError(f"{path.name}:{n}: an expectation with no log line before it")
            close(_expectation(path, n, stripped[2:].strip()))
            continue
        if pending is not None:
            close(Expected(None))  # a line without expectation: no failure
        if not stripped or stripped.startswith("#"):
            continue
        word, _, arg = stripped[1:].partition(" ")
        if stripped.startswith("@") and word in _DIRECTIVES:  # (a log line may start with @: TAI64N)
            arg = arg.strip()
            if word == "mode":
                mode = arg or None
            elif word == "program":
                program = arg or None
            elif word == "now":
                now = parse_time(arg)
            elif word == "tz":
                tz = arg
            else:
                reset = True
            continue
        pending = (n, line)
    if pending is not None:
        close(Expected(None))
    return out


def _expectation(path: Path, n: int, text: str) -> Expected:
    text, _, reason = text.partition("may-miss:")
    try:
        words = shlex.split(text)  # user="two words"
    except ValueError as exc:
        raise CasesError(f"{path.name}:{n}: {exc}") from None
    if not words:
        raise CasesError(f"{path.name}:{n}: `=>` needs an address or `none`")
    if words[0] == "none":
        if len(words) > 1 or reason:
            raise CasesError(f"{path.name}:{n}: `=> none` takes nothing after it")
        return Expected(None)
    success = words[0] == "success"
    if success:
        words = words[1:]
        if not words or reason:
            raise CasesError(f"{path.name}:{n}: `=> success` needs an address (and no may-miss:)")
    expected = Expected(words[0], may_miss=reason.strip() or None, success=success)
    if reason and not expected.may_miss:
        raise CasesError(f"{path.name}:{n}: `may-miss:` needs its reason")
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in _KEYS:
            raise CasesError(f"{path.name}:{n}: expected user=, time=, count=, value= or weight=, got {word!r}")
        setattr(expected, key, int(value) if key in ("count", "weight") else value)
    return expected


def rule_with_mode(rule: Rule, mode: str | None) -> Rule:
    if mode is None or mode == rule.mode:
        return rule
    import msgspec
    return msgspec.structs.replace(rule, mode=mode)


def run(name: str, rule: Rule, cases: CasesFile, texts: dict[int, str] | None = None
        ) -> list[tuple[Case, list[Failure | Success]]]:
    """Each case with the failures (and successful logins) its line gave, in file order, one
    matcher per mode.

    `texts` replaces the line of some cases (by line number): the hostile test's variants.
    """
    out = []
    matchers: dict[str | None, Matcher] = {}
    for case in cases.cases:
        if case.reset or case.mode not in matchers:
            matchers[case.mode] = Matcher({name: rule_with_mode(rule, case.mode)}, successes=True)
        text = texts.get(case.line_no, case.text) if texts else case.text
        matcher = matchers[case.mode]
        found: list[Failure | Success] = [*matcher.match(text, None, case.now, "test-host", case.tz, case.program)]
        out.append((case, found + matcher.take_successes()))
    return out


def judge(case: Case, found: list[Failure | Success]) -> str | None:
    """What is wrong with what a case's line gave, or None."""
    want = case.expected
    logins = [f for f in found if isinstance(f, Success)]
    found = [f for f in found if not isinstance(f, Success)]
    if want.success:
        if found:
            return f"expected a successful login, got failures {[(f.address, f.user) for f in found]}"
        found = logins  # judged as a failure is: one, with its address, user and time
    elif logins:
        return f"expected no successful login, got {[(f.address, f.user) for f in logins]}"
    if want.address is None:
        return None if not found else f"expected no failure, got {[(f.address, f.user) for f in found]}"
    if len(found) != 1:
        return f"expected one failure for {want.address}, got {[(f.address, f.user) for f in found]}"
    got = found[0]
    if got.address != want.address:
        return f"expected address {want.address}, got {got.address}"
    if want.user is not None and got.user != want.user:
        return f"expected user {want.user!r}, got {got.user!r}"
    if want.count is not None and got.count != want.count:
        return f"expected count {want.count}, got {got.count}"
    if want.value is not None and got.value != want.value:
        return f"expected value {want.value!r}, got {got.value!r}"
    if want.weight is not None and got.weight != want.weight:
        return f"expected weight {want.weight}, got {got.weight}"
    if want.time is not None and (got.time is None or int(got.time) != int(parse_time(want.time))):
        shown = datetime.fromtimestamp(got.time, timezone.utc).isoformat() if got.time is not None else None
        return f"expected time {want.time}, got {shown}"
    return None


def catalog_cases() -> list[tuple[str, Path]]:
    """(rule name, cases file) for every rule of the catalog that has one."""
    return [(p.stem, p.with_suffix(".cases")) for p in sorted(CATALOG.glob("*.yaml"))
            if p.with_suffix(".cases").exists()]


# --- hostile text ---------------------------------------------------------------------------

FAKE4 = "198.51.100.66"
FAKE6 = "2001:db8::66"
# Every form a pattern could capture an address in.
FAKE_FORMS = [FAKE4, FAKE6, f"::ffff:{FAKE4}", f"[{FAKE4}]", f"{FAKE4}:4242", f"[{FAKE6}]:4242",
              f"{FAKE6}%eth0", "fake.example.com"]
LONG = 16 * 1024


def hostile_values(case: Case, index: int, fragments: list[str]) -> list[str]:
    """What a client could write in field `index` of `case`: other addresses, copies of the
    line's own text around its address with another address in it, and 16 KB runs."""
    m = case.fields()[index]
    kind, default = m.group(1) or "raw", m.group(3)
    real = case.expected.address or ""
    line = render(case.template, {index: "\0"})
    before, _, after = line.partition("\0")
    values = [*FAKE_FORMS, *(f"{default} {form}" for form in FAKE_FORMS)]
    for form in (FAKE4, FAKE6):
        tail = after.replace(real, form) if real else after
        head = before.replace(real, form) if real else before
        values += [default + tail, f"{default}{tail} {head}", f"{head}{default}"]
    tail = after.replace(real, FAKE4) if real else after
    values += [" " * LONG, "\t" * LONG, ((tail + " ") * (LONG // (len(tail) + 1)))[:LONG]]
    values += [(fragment * (LONG // len(fragment) + 1))[:LONG] for fragment in fragments if fragment.strip()]
    if kind == "word":
        values = [v for v in values if not any(c.isspace() for c in v)] + ["a" * LONG]
    elif kind == "quoted":
        values = [escape(v) for v in values]
    return list(dict.fromkeys(values))


def hostile_lines(name: str, rule: Rule, cases: CasesFile) -> Iterator[tuple[Case, int, str, Matcher, str]]:
    """Every case line with client text, one field (and its copies) at a time filled with each
    of `hostile_values`: (case, field index, value, a matcher of the case's mode, the line)."""
    fragments = sorted({lit for _, raw in rule.active_patterns() for lit in literals(raw)})
    matchers: dict[str | None, Matcher] = {}
    for case in cases.cases:
        if not case.fields():
            continue
        matcher = matchers.get(case.mode)
        if matcher is None:
            matcher = matchers[case.mode] = Matcher({name: rule_with_mode(rule, case.mode)}, successes=True)
        for group in case.field_groups():
            index = group[0]
            for value in hostile_values(case, index, fragments):
                yield case, index, value, matcher, render(case.template, {n: value for n in group})


def escape(text: str) -> str:
    """As nginx writes client text in its access log: `"`, `\\` and control characters as \\xHH."""
    return "".join(f"\\x{ord(c):02X}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def replay_until(matcher: Matcher, cases: CasesFile, target: Case, text: str) -> list[Failure] | list[Success]:
    """The failures of `target`'s line, given as `text`, after the lines before it (same mode,
    since the last @reset) on a matcher with no connection state; its successful logins
    instead where the case expects one (on a matcher that keeps them)."""
    matcher.reset()
    start = 0
    for i, case in enumerate(cases.cases):
        if case is target:
            break
        if case.reset and case.mode == target.mode:
            start = i
    found: list[Failure] = []
    for case in cases.cases[start:]:
        if case.mode != target.mode:
            continue
        if case is target:
            matcher.take_successes()  # the earlier lines'
            failures = matcher.match(text, None, case.now, "test-host", case.tz, case.program)
            return matcher.take_successes() if case.expected.success else failures
        matcher.match(case.text, None, case.now, "test-host", case.tz, case.program)
    return found
