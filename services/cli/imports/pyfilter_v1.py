"""`pyfilter import pyfilter-v1`: the original PyFilter's config.json and ban list into ours.

    pyfilter import pyfilter-v1 CONFIG.json [--out OUTDIR [--force]] [--bans]
            [--bantime 1d] [--log-dir /var/log] [--catalog DIR]
            [--database FILE | --from-redis URL] [--timezone ZONE] [--url URL] [--token TOKEN]

--out writes OUTDIR/pyfilter.yaml, OUTDIR/rules/ (the catalog rules it enables,
copied, and the rules it translated) and OUTDIR/import-report.txt: a complete
/etc/pyfilter. It is checked as the services would check it before anything is
written. --bans posts the original's ban list to our API with the time each ban
has left. The mapping: docs/import.md; the pieces: pyfilter_v1_format (reading
config.json), pyfilter_v1_mapping (rules), pyfilter_v1_bans (the ban list).
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from pyfilter.api.schemas import MAX_DURATION
from pyfilter.cli import api, matching
from pyfilter.cli.imports import pyfilter_v1_bans as bans
from pyfilter.cli.imports import pyfilter_v1_format as v1
from pyfilter.cli.imports import pyfilter_v1_mapping as mapping
from pyfilter.common import config as configuration
from pyfilter.common.config import ConfigError, load_catalog, parse_duration
from pyfilter.common.zones import InvalidZone, get_zone

# Sections of the default configuration the import does not map: kept as they are.
MAPPED = ("host", "redis", "catalog_dir", "whitelist", "rules")
NOT_MAPPED = [
    "logging: not mapped: our services log one JSON object per line (make logs), and every ban "
    "keeps its reason and log lines (pyfilter show ADDR, the admin page)",
    "reload_iptables: not needed: the enforcer puts the bans held in Redis back into the kernel at "
    "start, and one set holds them all (the original added one iptables rule per address)",
    "GeoIP: the country of every ban is looked up by our api (a country database ships in the image)",
]


def cmd_import(args: argparse.Namespace) -> int:
    if not args.out and not args.bans:
        raise api.CommandError(api.USAGE, "nothing to do: give --out OUTDIR (the configuration), "
                                          "--bans (the ban list), or both")
    try:
        bantime = parse_duration(args.bantime)
    except ValueError as exc:
        raise api.CommandError(api.USAGE, f"--bantime: {exc}") from None
    if bantime == 0 or bantime > MAX_DURATION:
        raise api.CommandError(api.USAGE, "--bantime: expected from 1s to 10 years, or -1 for ever")
    path = Path(args.config)
    try:
        config, rules = v1.load(path)
    except v1.V1Error as exc:
        raise api.CommandError(api.USAGE, str(exc)) from None
    whitelist, report = _whitelist(config)
    if args.out:
        report = _configuration(args, config, rules, path, whitelist, report)
        print("\n".join(report))
        print(f"wrote {args.out}/pyfilter.yaml, {args.out}/rules/ and {args.out}/import-report.txt")
    if args.bans:
        print("\n".join(_bans(args, config, path, whitelist, bantime)))
    return api.OK


# The configuration ------------------------------------------------------------

def _whitelist(config: v1.V1Config) -> tuple[list[str], list[str]]:
    networks, report = [], []
    for text in config.settings.ignored_ips:
        try:
            networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            report.append(f"ignored_ips: {text!r} is not an address; left out (the original compared "
                          "it as text, so it matched no address)")
    report.insert(0, f"ignored_ips: {len(networks)} address(es) -> whitelist")
    return list(dict.fromkeys(networks)), report


def _redis(config: v1.V1Config) -> tuple[dict[str, Any], str | None, list[str]]:
    """Our redis section and host name, from the original's Redis sync settings."""
    s, r = config.settings, config.redis
    if s.database == "sqlite":
        return {}, None, [f"database: sqlite ({config.sqlite.database}): our bans live in our Redis; "
                          "bring the ban list over with --bans"]
    if not r.sync_bans.active:
        return {}, None, ["database: redis without sync_bans: the hosts did not share bans; our stack "
                          "runs its own Redis on each host, so redis.url keeps its default; the ban list: --bans"]
    host = f"[{r.host}]" if ":" in r.host else r.host
    return {"url": f"redis://{host}:6379/{r.database}"}, str(r.sync_bans.name), [
        f"redis: the Redis the hosts shared ({r.host}, database {r.database}) -> redis.url; "
        f"sync_bans.name {r.sync_bans.name!r} -> host (this host's name in ban records). Run the "
        "agent profile on each host against it (make agent PYFILTER_REDIS_URL=..., README: Many hosts)",
        f"redis: sync_bans.check_time ({r.sync_bans.check_time:g} s) has no counterpart: a ban reaches "
        "every host within a second, and a host that was away catches up on return",
        "redis: its password is not written to the file: set PYFILTER_REDIS_PASSWORD; across an "
        "untrusted network use rediss:// (the original had no TLS)",
    ]


def _configuration(args: argparse.Namespace, config: v1.V1Config, rules: list[v1.V1Rule], path: Path,
                   whitelist: list[str], report: list[str]) -> list[str]:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise api.CommandError(api.USAGE, f"{out} is not empty; --force writes over what is there")
    base, defaults, catalog_dir = _defaults(args.catalog)
    try:
        catalog = load_catalog(catalog_dir)
    except ConfigError as exc:
        raise api.CommandError(api.USAGE, str(exc)) from None
    ctx = mapping.Context(config, rules, path.resolve(), catalog_dir, catalog, defaults,
                          args.log_dir, args.bantime)
    plan = mapping.plan_rules(ctx)
    redis, host, said = _redis(config)
    deny = config.settings.deny_type.strip().upper()
    report = [*report, *said, *plan.report,
              f"settings: failed_attempts {config.settings.failed_attempts}, request_time "
              f"{config.settings.request_time:g} s -> window: consecutive on every rule (a burst bans one "
              f"failure sooner than the original, a gap starts the count again); bans last {args.bantime} "
              "(the original's lasted for ever)",
              f"deny_type {config.settings.deny_type} -> verdict "
              + ("reject" if deny == "REJECT" else "drop" + ("" if deny == "DROP" else
                 f" ({config.settings.deny_type} is neither DROP nor REJECT: the original's rules did not block)")),
              *NOT_MAPPED]
    whitelist = list(dict.fromkeys([*base.get("whitelist", []), *whitelist]))
    text = _render(base, plan, redis, host, whitelist, path)
    with tempfile.TemporaryDirectory(prefix="pyfilter-import-") as tmp:
        staged = Path(tmp)
        (staged / "rules").mkdir()
        (staged / "pyfilter.yaml").write_text(text, encoding="utf-8")
        for name in plan.copies:
            shutil.copyfile(catalog_dir / f"{name}.yaml", staged / "rules" / f"{name}.yaml")
        for name, body in plan.files.items():
            (staged / "rules" / f"{name}.yaml").write_text(body, encoding="utf-8")
        (staged / "import-report.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
        _check(staged / "pyfilter.yaml")
        shutil.copytree(staged, out, dirs_exist_ok=True)
    return report


def _defaults(catalog: str | None) -> tuple[dict[str, Any], list[configuration.Source], Path]:
    """The default configuration as written (no environment applied: no token is copied), its
    sources, and the catalog folder."""
    try:
        settings = matching.settings(None)
    except matching.UsageError as exc:
        raise api.CommandError(api.USAGE, f"the default configuration: {exc}") from None
    raw = yaml.safe_load(Path(settings.path).read_text(encoding="utf-8")) or {}
    folder = Path(catalog) if catalog else (Path(settings.path).parent / settings.config.catalog_dir).resolve()
    if not folder.is_dir():
        raise api.CommandError(api.USAGE, f"rule catalog {folder} is not a folder (use --catalog DIR)")
    return raw, settings.config.collector.sources, folder


def _check(file: Path) -> None:
    """The written configuration, checked as `pyfilter config check` (and the services) would."""
    try:
        matching.make_matcher(configuration.load(file).rules, "UTC")
    except (ConfigError, matching.UsageError) as exc:
        raise api.CommandError(api.USAGE, f"the imported configuration does not validate, nothing "
                                          f"was written: {exc}") from None


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()


def _block(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=False, width=1 << 20, sort_keys=False).rstrip()


def _render(base: dict[str, Any], plan: mapping.Plan, redis: dict[str, Any], host: str | None,
            whitelist: list[str], path: Path) -> str:
    lines = [f"# Imported from the original PyFilter's {path.resolve()} by `pyfilter import pyfilter-v1`.",
             "# What mapped and what did not: import-report.txt beside this file, and the comments",
             "# below; docs/import.md explains each mapping. rules/ holds the catalog rules enabled",
             "# here (copies) and the rules translated from the original's. Mount this folder as",
             "# /etc/pyfilter; check it with `pyfilter config check pyfilter.yaml`.", ""]
    if host:
        lines += ["# The original's sync_bans.name: this host's name in ban records.", _block("host", host)]
    lines += [_block("redis", {**base.get("redis", {}), **redis}), _block("catalog_dir", "rules"),
              "# The original's ignored_ips.", _block("whitelist", whitelist)]
    collector = {**base.get("collector", {}), "sources": plan.sources}
    lines += ["# The original's log files, as the collector sees them (PYFILTER_LOG_DIR is /host/log).",
              _block("collector", collector)]
    lines += [_block(k, v) for k, v in base.items() if k not in MAPPED and k != "collector"]
    lines += ["", "# Every rule counts as the original did, corrected (docs/import.md): each failure",
              "# within request_time of the one before adds one, a longer gap starts again.", "rules:"]
    for name, overrides in plan.rules.items():
        lines += [f"  # {c}" for c in plan.comments.get(name, [])]
        lines.append(f"  {name}: {_flow(overrides)}")
    return "\n".join(lines) + "\n"


# The ban list ---------------------------------------------------------------------

def _bans(args: argparse.Namespace, config: v1.V1Config, path: Path, whitelist: list[str],
          bantime: int) -> list[str]:
    if args.database and args.from_redis:
        raise api.CommandError(api.USAGE, "--database and --from-redis name two ban lists: give one")
    if args.database or (config.settings.database == "sqlite" and not args.from_redis):
        where: Path | str = _sqlite_file(args.database, config.sqlite.database, path)
        old = bans.read_sqlite(Path(where))
    else:
        where = args.from_redis or _redis_url(config.redis)
        try:
            zone = get_zone(args.timezone) if args.timezone else None
        except InvalidZone as exc:
            raise api.CommandError(api.USAGE, f"--timezone: {exc}") from None
        old = bans.read_redis(where, zone)
    outcome = bans.Outcome([], [], [], [], 0)
    wanted = bans.prepare(old, bantime, time.time(), [ipaddress.ip_network(n) for n in whitelist], outcome)
    client = api.client_for(args, write=True)
    bans.post(client, wanted, outcome)
    shown = bans.redact(str(where))
    lines = [f"bans: {len(old)} read from {shown}; {len(outcome.posted)} banned through {client.base} "
             f"for what is left of {args.bantime} after each original ban; {len(outcome.expired)} "
             f"expired (not imported); {len(outcome.skipped)} left out; {len(outcome.refused)} refused"]
    if outcome.untimed:
        lines.append(f"bans: {outcome.untimed} had no recorded time (the original's first versions): "
                     f"banned for the whole {args.bantime}")
    lines += [f"  left out {address}: {why}" for address, why in outcome.skipped]
    lines += [f"  refused {address}: {why}" for address, why in outcome.refused]
    return lines


def _sqlite_file(given: str | None, named: str, config: Path) -> Path:
    """The original's SQLite file: relative names were relative to the folder it ran in,
    which holds Config/config.json."""
    if given:
        return Path(given)
    named_path = Path(named)
    if named_path.is_absolute():
        return named_path
    folder = config.resolve().parent
    tried = [folder.parent / named_path, folder / named_path]
    return next((p for p in tried if p.is_file()), tried[0])


def _redis_url(r: v1.V1Redis) -> str:
    auth = f":{urllib.parse.quote(r.password, safe='')}@" if r.password else ""
    host = f"[{r.host}]" if ":" in r.host else r.host
    return f"redis://{auth}{host}:6379/{r.database}"  # the original always used port 6379
