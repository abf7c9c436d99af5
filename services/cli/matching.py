"""`pyfilter match`, `explain` and `config check`: the catalog offline, no Redis needed.

    pyfilter match [--config FILE | --catalog DIR] [--rule NAME] [--program NAME] [--tz ZONE]
                   [--now ISO8601] [--json] FILE...
    pyfilter explain [same options] LINE
    pyfilter config check [FILE]

Without --config they run every rule of the catalog the configuration names
(`catalog_dir` of $PYFILTER_CONFIG, else of a checkout's config/pyfilter.yaml,
else of /etc/pyfilter/pyfilter.yaml); with --config FILE, the rules that
configuration enables, with its overrides, as the detector would run them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Iterator

from pyfilter.common import config as configuration
from pyfilter.common.config import ConfigError, Rule, load_catalog
from pyfilter.detector.matching import Matcher, RuleError, closest, explain
from pyfilter.common.timeparse import InvalidZone, get_zone

CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "pyfilter.yaml"


class UsageError(Exception):
    """Bad arguments or configuration; printed without a traceback, exit code 2."""


def default_config() -> Path:
    """The configuration the services would read here: $PYFILTER_CONFIG, a checkout's, the installed one."""
    if env := os.environ.get("PYFILTER_CONFIG"):
        return Path(env)
    return CHECKOUT_CONFIG if CHECKOUT_CONFIG.is_file() else Path(configuration.DEFAULT_PATH)


def settings(path: str | Path | None) -> configuration.Settings:
    try:
        return configuration.load(path or default_config())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def load_rules(catalog: str | None, only: str | None, config: str | None = None) -> dict[str, Rule]:
    """The rules to run: a configuration's enabled ones (`config`), or every rule of a catalog
    folder (`catalog`, $PYFILTER_CATALOG, or the default configuration's `catalog_dir`)."""
    if config is not None:
        loaded = settings(config)
        rules, where = loaded.rules, f"the rules {config} enables"
    else:
        if catalog or os.environ.get("PYFILTER_CATALOG"):
            folder = Path(catalog or os.environ["PYFILTER_CATALOG"])
        else:
            loaded = settings(None)
            folder = (Path(loaded.path).parent / loaded.config.catalog_dir).resolve()
        if not folder.is_dir():
            raise UsageError(f"rule catalog {folder} is not a folder (use --catalog DIR or --config FILE)")
        try:
            if only is not None and (folder / f"{only}.yaml").is_file():
                rules = {only: configuration.load_rule(folder / f"{only}.yaml", only)}  # just the one
            else:
                rules = load_catalog(folder)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        where = str(folder)
        if not rules:
            raise UsageError(f"rule catalog {folder} holds no *.yaml rules")
    if not rules:
        raise UsageError(f"{where}: none")
    if only is not None:
        if only not in rules:
            raise UsageError(f"no rule {only!r} in {where}; rules: {', '.join(sorted(rules))}")
        rules = {only: rules[only]}
    return rules


def make_matcher(rules: dict[str, Rule], tz: str) -> Matcher:
    try:
        return Matcher(rules, default_tz=tz)
    except (RuleError, InvalidZone) as exc:
        raise UsageError(str(exc)) from None


def parse_now(text: str | None, tz: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise UsageError(f'--now: expected an ISO 8601 time like "2026-11-21T20:19:28+00:00", got "{text}"') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=get_zone(tz))
    return moment.timestamp()


def iso(epoch: float | None, tz: str) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), get_zone(tz)).isoformat()


BATCH = 1000


def read_batches(path: str, chunk: int = 4 << 20) -> Iterator[list[str]]:
    """A log file's lines, BATCH at a time, as the collector decodes them.

    Split on \\n only, UTF-8 with replacement, a trailing CR dropped. The file
    is read in chunks of a few MB, each decoded at once and split: the same
    lines as decoding line by line (a newline byte is never part of a
    multi-byte character), without a Python step per line.
    """
    pending: list[str] = []
    rest = b""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            data = rest + data
            cut = data.rfind(b"\n") + 1  # a line cut by the chunk waits for the next one
            rest = data[cut:]
            pending += _lines(data[:cut])
            if len(pending) >= BATCH:
                whole = len(pending) - len(pending) % BATCH
                yield from (pending[i:i + BATCH] for i in range(0, whole, BATCH))
                del pending[:whole]
    if rest:
        pending += _lines(rest + b"\n")
    yield from (pending[i:i + BATCH] for i in range(0, len(pending), BATCH))


def _lines(data: bytes) -> list[str]:
    """The complete lines of `data`, which ends with a newline (NULs dropped, as the collector does)."""
    if b"\0" in data:
        data = data.replace(b"\0", b"")
    lines = data.decode("utf-8", "replace").split("\n")
    lines.pop()  # after the last newline
    if b"\r" in data:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def check_files(paths: list[str]) -> None:
    """A usage error, naming the path, unless every one is a log file this user can read."""
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file")
        if not os.path.isfile(path):
            raise UsageError(f"{path}: not a log file (a directory, or not a regular file)")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{path}: not readable by this user")


def cmd_match(args: argparse.Namespace) -> int:
    get_zone(args.tz)  # fail early on a bad zone
    matcher = make_matcher(load_rules(args.catalog, args.rule, args.config), args.tz)
    now = parse_now(args.now, args.tz)
    if now is None:
        now = time.time()
    check_files(args.files)
    out = sys.stdout
    per_rule: Counter[str] = Counter()
    per_pattern: Counter[tuple[str, int]] = Counter()
    lines = 0
    started = time.perf_counter()
    match_batch = matcher.match_batch
    for path in args.files:
        first = 1  # line number of the batch's first line in this file
        for batch in read_batches(path):
            found = match_batch(batch, None, now, None, None, args.program)
            lines += len(batch)
            for _, f in found:
                per_pattern[(f.rule, f.pattern)] += f.count
            if args.json:
                for i, f in found:
                    record = {"rule": f.rule, "host": f.address, "time": iso(f.time, args.tz),
                              "line_no": first + i, "file": path}
                    if f.user is not None:
                        record["user"] = f.user
                    if f.count != 1:
                        record["count"] = f.count
                    out.write(json.dumps(record) + "\n")
            first += len(batch)
    for (rule, _), count in per_pattern.items():
        per_rule[rule] += count
    elapsed = time.perf_counter() - started
    if not args.json:
        rate = lines / elapsed if elapsed > 0 else float("inf")
        out.write(f"Lines read: {lines} from {len(args.files)} file(s)\n")
        out.write(f"Failures: {sum(per_rule.values())}\n")
        for rule in sorted(per_rule):
            out.write(f"  {rule}: {per_rule[rule]}\n")
            for (r, p), count in sorted(per_pattern.items()):
                if r == rule:
                    out.write(f"    pattern {p}: {count}\n")
        out.write(f"Elapsed: {elapsed:.3f} s ({rate:,.0f} lines/s)\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    get_zone(args.tz)
    matcher = make_matcher(load_rules(args.catalog, args.rule, args.config), args.tz)
    now = parse_now(args.now, args.tz)
    env, results = explain(matcher, args.line, now=now, program=args.program, rule=args.rule)
    out = sys.stdout
    stamp = f", time {env.stamp!r}" if env.stamp else ""
    pid = f", pid {env.pid}" if env.pid else ""
    repeat = f", stands for {env.repeat} lines (message repeated)" if env.repeat != 1 else ""
    out.write(f"envelope: {env.format}, program {env.program or '(none)'}{pid}{stamp}{repeat}\n")
    out.write(f"message: {env.message(args.line)}\n")
    matched = [e for e in results if e.pattern is not None]
    for e in matched:
        out.write(f"{e.rule}: {e.outcome} (pattern {e.pattern}): {e.reason}\n")
        for key, value in sorted(e.captures.items()):
            out.write(f"  {key}: {value}\n")
        out.write(f"  time: {iso(e.time, args.tz) or 'none found (arrival time is used)'}\n")
    if not matched:
        out.write("no rule matched\n" if results else "no rule reads this program's lines\n")
        near = closest(matcher, args.line, program=args.program, rule=args.rule)
        if near is not None:
            out.write(f"closest: {near.rule} pattern {near.pattern} matched {near.matched!r}, "
                      f"then expected {near.expected!r}\n")
    if args.rule is not None or not matched:
        for e in results:
            if e.pattern is None and (args.rule is not None or args.verbose):
                out.write(f"{e.rule}: {e.outcome}: {e.reason}\n")
        if not matched and results and not args.verbose and args.rule is None:
            misses = Counter(e.outcome for e in results)
            out.write(", ".join(f"{n} rule(s): {what}" for what, n in sorted(misses.items()))
                      + " (-v lists them)\n")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration and its rules as the services would at start."""
    loaded = settings(args.file)
    make_matcher(loaded.rules, "UTC")  # every enabled rule's patterns compile
    sources = loaded.config.collector.sources
    print(f"{loaded.path}: valid; {len(loaded.rules)} rule(s) enabled ({', '.join(sorted(loaded.rules))}), "
          f"{len(sources)} source(s)")
    return 0


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", metavar="NAME", help="only this rule")
    p.add_argument("--program", metavar="NAME",
                   help="the program whose own log this is, for lines without a syslog header (e.g. nginx)")
    p.add_argument("--tz", default="UTC", metavar="ZONE",
                   help="zone of timestamps that carry none (zoneinfo name or +hh:mm; default UTC)")
    p.add_argument("--now", metavar="ISO8601", help='"now" for year-less dates (default: the current time)')
    which = p.add_mutually_exclusive_group()
    which.add_argument("--config", metavar="FILE", help="run the rules this configuration enables, as configured")
    which.add_argument("--catalog", metavar="DIR",
                       help="run every rule of this folder (default: the configuration's catalog_dir)")


def add_commands(sub) -> None:
    p = sub.add_parser("match", help="run the rule catalog over log files, offline (like fail2ban-regex)")
    add_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per failure instead of a summary")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("explain", help="show which rule and pattern match a log line, or why none does")
    add_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="also list the rules that did not match")
    p.add_argument("line", metavar="LINE")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("config", help="check a configuration")
    checks = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = checks.add_parser("check", help="validate a configuration and its rules as the services would at start")
    c.add_argument("file", nargs="?", metavar="FILE",
                   help="the configuration (default: $PYFILTER_CONFIG, a checkout's, /etc/pyfilter/pyfilter.yaml)")
    c.set_defaults(func=cmd_config_check)
