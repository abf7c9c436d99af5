"""`pyfilter import fail2ban [DIR] --out OUTDIR`: a fail2ban configuration as ours (docs/import.md).

Each enabled jail is, and the report and the written file say which:
- mapped onto a catalog rule (its filter is fail2ban's own, named like a
  catalog rule or a known alias, in a mode the rule has): thresholds and mode
  carried over, the rule file copied;
- translated from the user's filter (custom or changed) into rules/NAME.yaml;
- not imported, with the reason (no ban action, a filter feature we lack...).
OUTDIR gets pyfilter.yaml, rules/ (the translated rules and copies of the
catalog rules it enables) and import-report.txt (what it prints), a complete /etc/pyfilter: check it with
`pyfilter config check OUTDIR/pyfilter.yaml`, then copy it into config/ or mount it.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pyfilter.cli import matching
from pyfilter.cli.imports.fail2ban_filter import Filter, load_filter
from pyfilter.cli.imports.fail2ban_ini import Fail2banError
from pyfilter.cli.imports.fail2ban_jails import Jail, load_jail, networks, ports, read_jails, seconds
from pyfilter.cli.imports.fail2ban_output import Sources, write_config
from pyfilter.cli.imports.fail2ban_forms import Untranslatable
from pyfilter.cli.imports.fail2ban_translate import translate
from pyfilter.common.config import Rule, load_catalog

# Jail and filter names (older fail2ban releases' too) that are another catalog rule's.
ALIASES = {
    "ssh": "sshd", "sshd-ddos": "sshd", "sshd-aggressive": "sshd", "postfix-sasl": "postfix", "sasl": "postfix",
    "postfix-rbl": "postfix", "postfix-many-errors": "postfix", "openhab-auth": "openhab", "qmail-rbl": "qmail",
    "mysqld-syslog": "mysqld-auth", "courierauth": "courier-auth", "couriersmtp": "courier-smtp",
    "apache": "apache-auth", "pam": "pam-generic", "roundcube": "roundcube-auth", "named-refused-tcp":
    "named-refused", "named-refused-udp": "named-refused", "asterisk-tcp": "asterisk", "asterisk-udp": "asterisk",
}
# fail2ban actions by what they do (action.d/ names; `%(mta)s-whois` is sendmail-whois).
BANS = re.compile(r"^(?:iptables|ip6tables|nftables|nft|firewallcmd|shorewall|ufw|route|hostsdeny|ipfw|"
                  r"bsd-ipfw|osx-ipfw|osx-afctl|pf|npf|apf|ipset|csf|symbiosis-blacklist|netscaler)")
MAILS = re.compile(r"^(?:sendmail|mail|smtp\.py|complain)")
OTHERS = re.compile(r"^(?:abuseipdb|blocklist_de|badips|dshield|xarf-login-attack|cloudflare|mynetwatchman|"
                    r"nginx-block-map|apprise|dummy|helpers-common|nsupdate|smtp)")

SYSLOG_FILES = {"auth.log", "secure", "syslog", "messages", "mail.log", "maillog", "daemon.log", "user.log"}


@dataclass
class Outcome:
    """What became of one enabled jail."""

    jail: str
    kind: str  # "mapped", "translated" or "skipped"
    summary: str
    rule: str | None = None
    settings: dict = field(default_factory=dict)  # the rule's entry in pyfilter.yaml
    text: dict | None = None  # a translated rule's file
    catalog: str | None = None  # a mapped rule: the catalog rule it copies
    notes: list[str] = field(default_factory=list)
    ignoreip: list[str] = field(default_factory=list)


def duration(value: int) -> int | str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if value > 0 and value % size == 0:
            return f"{value // size}{unit}"
    return value


def thresholds(jail: Jail, notes: list[str]) -> dict:
    out: dict = {"maxretry": jail.maxretry, "findtime": duration(jail.findtime), "bantime": duration(jail.bantime)}
    if jail.findtime < 1:
        raise Fail2banError(f"{jail.where('findtime')}: findtime: expected 1 second or more, got {jail.findtime}")
    inc = jail.increment
    if inc.get("bantime.increment", "false").strip().lower() in ("true", "yes", "on", "1"):
        escalation: dict = {"factor": 2.0}  # fail2ban's default formula doubles each ban
        multipliers = [float(x) for x in inc.get("bantime.multipliers", "").split()]
        if multipliers:
            ratios = {b / a for a, b in zip(multipliers, multipliers[1:]) if a}
            if multipliers[0] == 1 and len(ratios) == 1:
                escalation = {"factor": ratios.pop(), "maxtime": duration(int(jail.bantime * multipliers[-1]))}
            else:
                notes.append(f"bantime.multipliers {inc['bantime.multipliers']!r} not carried: bans grow "
                             f"geometrically here (x2 each time)")
        if inc.get("bantime.maxtime"):
            escalation["maxtime"] = duration(seconds(inc["bantime.maxtime"], jail.where("bantime.maxtime"),
                                                     "bantime.maxtime"))
        elif "maxtime" not in escalation:
            notes.append("bantime.maxtime unset: PyFilter caps growing bans at 1 week (escalation.maxtime)")
        for option in ("bantime.factor", "bantime.formula", "bantime.rndtime"):
            if inc.get(option, "").strip() not in ("", "1"):
                notes.append(f"{option} = {inc[option]} not carried (bans grow x{escalation['factor']:g} each time)")
        out["escalation"] = escalation
    if jail.bantime == -1:
        notes.append("bantime -1: banned for ever")
    return out


def action_scope(jail: Jail, settings: dict, notes: list[str]) -> str | None:
    """Carry what the actions mean into `settings` (ports, notify); the reason to skip the jail, if any."""
    names = [name for name, _ in jail.actions]
    bans = [n for n in names if BANS.match(n) or not (MAILS.match(n) or OTHERS.match(n))]
    for name in names:
        if MAILS.match(name):
            settings["notify"] = True
            notes.append(f"action {name} mails about bans: set up `notify:` in pyfilter.yaml (docs/notifications.md)")
        elif OTHERS.match(name):
            notes.append(f"action {name} not carried: PyFilter has no such action")
        elif not BANS.match(name):
            notes.append(f"action {name} is not one of fail2ban's: taken as a ban in the firewall")
    if not bans:
        return (f"action-only jail: its actions ({', '.join(names)}) do not ban in the firewall, and every "
                f"PyFilter rule does" if names else "no action: fail2ban bans nothing for it")
    if any("allports" in n for n in bans):
        return None
    found = ports(jail.port)
    if found is None:
        notes.append(f"port {jail.port!r}: a service name we do not know; every port is banned")
    elif found:
        settings["ports"] = found
    return None


def catalog_name(jail: Jail, catalog: dict[str, Rule]) -> str | None:
    for name in (jail.filter, jail.name):
        name = name if name in catalog else ALIASES.get(name)
        if name in catalog:
            return name
    return None


def decide(jail: Jail, flt: Filter, catalog: dict[str, Rule], used: set[str]) -> Outcome:
    notes: list[str] = []
    scope: dict = {}
    skip = action_scope(jail, scope, notes)
    if skip:
        return Outcome(jail.name, "skipped", f"not imported: {skip}", notes=notes)
    settings = {**thresholds(jail, notes), **scope}
    target = catalog_name(jail, catalog)
    why_not: list[str] = []
    if target is not None:
        rule = catalog[target]
        if flt.changes:
            why_not = flt.changes
        elif (flt.mode or "normal") not in (rule.modes or ["normal"]):
            why_not = [f"the catalog rule {target} has no mode {flt.mode!r}"]
        else:
            name = target if target not in used else jail.name
            if rule.modes and flt.mode and flt.mode != rule.modes[0]:
                settings = {"mode": flt.mode, **settings}
            mode = f", mode {flt.mode}" if rule.modes else ""
            return Outcome(jail.name, "mapped", f"mapped onto the catalog rule {target}{mode}"
                           + (f" (as {name}: {target} is taken by another jail)" if name != target else ""),
                           name, settings, catalog=target, notes=notes)
    try:
        done = translate(flt, jail.name, jail.name)
    except Untranslatable as exc:
        return Outcome(jail.name, "skipped", f"not imported: filter {flt.name}: {exc}", notes=notes + why_not)
    name = jail.name if jail.name not in catalog and jail.name not in used else f"{jail.name}-fail2ban"
    reason = f" ({'; '.join(why_not)})" if why_not else ""
    return Outcome(jail.name, "translated", f"translated from filter {flt.name}{reason} into rules/{name}.yaml",
                   name, settings, text=done.rule, notes=notes + done.notes)


def sources_for(jail: Jail, flt: Filter, outcome: Outcome, rule: Rule | dict, sources: Sources) -> None:
    """Add the collector sources that carry the jail's lines (fail2ban's logpath or journal)."""
    if outcome.rule == "recidive" or jail.filter == "recidive":
        outcome.notes.append("PyFilter counts its own bans for recidive: fail2ban's log is not read")
        return
    if jail.backend == "systemd":
        paths = jail.backend_args.get("journalfiles", jail.backend_args.get("journalpath", ""))
        src = sources.journal(jail.name, flt.journalmatch, [p.strip() for p in paths.split(",") if p.strip()])
        outcome.notes.append(f"reads the journal{' where ' + ' '.join(flt.journalmatch) if flt.journalmatch else ''}"
                             f" (source {src.name})")
        return
    programs = rule.programs if isinstance(rule, Rule) else rule["programs"]
    # A daemon's own file names no program in its lines: its source does. (A
    # filter with the syslog prefix may read one too: the prefix is optional.)
    own = programs and not re.search(r"[*?\[]", programs[0])
    if not jail.logpaths:
        outcome.notes.append("no logpath: no source added")
    for path in jail.logpaths:
        syslog_file = Path(path).name in SYSLOG_FILES
        program = programs[0] if own and not (flt.syslog and syslog_file) else None
        src, note = sources.file(path, program, jail.name)
        if flt.syslog and syslog_file:
            note = (f"{note}; " if note else "") + ("a syslog daemon's file: hosts without one (Debian 12 and later, "
                                                    "Fedora, Arch) have these lines in the journal only")
        outcome.notes.append(f"reads {path} (source {src.name})" + (f"; {note}" if note else ""))


def run(confdir: Path, catalog_dir: Path, log_dir: str = "/var/log") -> tuple[list[Outcome], list[str], Sources, list[str], list[str]]:
    """(outcomes of the enabled jails, disabled jails, sources, whitelist, notes on it)."""
    if not confdir.is_dir():
        raise Fail2banError(f"{confdir}: no such folder (the fail2ban configuration, /etc/fail2ban by default)")
    catalog = load_catalog(catalog_dir)
    ini, names = read_jails(confdir)
    outcomes, disabled, used = [], [], set()
    sources = Sources(log_dir)
    for name in names:
        jail = load_jail(ini, name)
        if not jail.enabled:
            disabled.append(name)
            continue
        if not jail.filter:
            outcomes.append(Outcome(name, "skipped", "not imported: no filter"))
            continue
        try:
            flt = load_filter(confdir, jail.filter, jail.filter_args, jail.scope, jail.filter_spec)
        except FileNotFoundError as exc:
            outcomes.append(Outcome(name, "skipped", f"not imported: {exc}"))
            continue
        outcome = decide(jail, flt, catalog, used)
        outcome.ignoreip = jail.ignoreip
        if outcome.rule:
            used.add(outcome.rule)
            rule = catalog[outcome.catalog] if outcome.catalog else outcome.text
            sources_for(jail, flt, outcome, rule, sources)
            if not jail.ignoreself:
                outcome.notes.append("ignoreself = false: PyFilter never bans the host's own addresses")
        outcomes.append(outcome)
    whitelist, notes = common_whitelist([o for o in outcomes if o.rule], ini.scope("DEFAULT").get("ignoreip") or "")
    if any("escalation" in o.settings for o in outcomes):
        notes.append("bans grow with bantime.increment: PyFilter counts an address's bans over every rule, "
                     "as fail2ban's bantime.overalljails = true")
    return outcomes, disabled, sources, whitelist, notes


def common_whitelist(outcomes: list[Outcome], default: str) -> tuple[list[str], list[str]]:
    """The ignoreip networks every imported jail shares (our whitelist is global), and notes."""
    lists = [o.ignoreip for o in outcomes] or [default.replace(",", " ").split()]
    shared = [e for e in lists[0] if all(e in other for other in lists[1:])]
    whitelist, names = networks(shared)
    notes = [f"ignoreip {n}: a host name; PyFilter never resolves names, add its addresses to whitelist"
             for n in names]
    for o in outcomes:
        extra = [e for e in o.ignoreip if e not in shared]
        if extra:
            o.notes.append(f"ignoreip {' '.join(extra)} not carried: PyFilter's whitelist is for every rule")
    return list(dict.fromkeys(whitelist)), notes


def cmd_import_fail2ban(args: argparse.Namespace) -> int:
    confdir, out = Path(args.dir), Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise matching.UsageError(f"{out} is not empty (use --force to replace its pyfilter.yaml and rules/)")
    base = matching.settings(args.config)
    catalog_dir = Path(args.catalog) if args.catalog else (Path(base.path).parent / base.config.catalog_dir).resolve()
    try:
        outcomes, disabled, sources, whitelist, notes = run(confdir, catalog_dir, args.log_dir)
    except Fail2banError as exc:
        raise matching.UsageError(str(exc)) from None
    staging = Path(tempfile.mkdtemp(prefix=".pyfilter-import-", dir=out.parent if out.parent.is_dir() else None))
    try:
        write_config(staging, confdir, base.path, catalog_dir, outcomes, disabled, sources, whitelist, notes)
        matching.make_matcher(matching.settings(staging / "pyfilter.yaml").rules, "UTC")  # valid, or our bug
        text = io.StringIO()
        report(text, confdir, out, outcomes, disabled, notes)
        (staging / "import-report.txt").write_text(text.getvalue(), encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / "rules", ignore_errors=True)
        for name in ("rules", "pyfilter.yaml", "import-report.txt"):
            shutil.move(str(staging / name), out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sys.stdout.write(text.getvalue())
    return 0


def report(stream, confdir: Path, out: Path, outcomes: list[Outcome], disabled: list[str], notes: list[str]) -> None:
    counts = {k: sum(o.kind == k for o in outcomes) for k in ("mapped", "translated", "skipped")}
    stream.write(f"{confdir}: {len(outcomes)} jail(s) enabled: {counts['mapped']} mapped onto catalog rules, "
                 f"{counts['translated']} translated, {counts['skipped']} not imported\n")
    for o in outcomes:
        stream.write(f"  {o.jail}: {o.summary}\n")
        for note in o.notes:
            stream.write(f"      {note}\n")
    for note in notes:
        stream.write(f"  {note}\n")
    if disabled:
        stream.write(f"  not enabled in fail2ban, not imported ({len(disabled)}): {', '.join(disabled)}\n")
    stream.write(f"wrote {out / 'pyfilter.yaml'}, {out / 'rules'}/ and {out / 'import-report.txt'} "
                 f"(check: pyfilter config check {out / 'pyfilter.yaml'})\n")
