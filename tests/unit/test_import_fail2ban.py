"""`pyfilter import fail2ban`: Debian's fail2ban configuration in, a configuration that bans the same out.

The configuration is the one Debian 12's `fail2ban` package installs (sshd
enabled by defaults-debian.conf), extracted by `make fail2ban-config` into
.cache/ (never installed: its service would touch the firewall), or the folder
$PYFILTER_FAIL2BAN_CONFIG names. To it the tests add a jail.local enabling
postfix (from the journal), nginx-http-auth and two filters written here.
Whether a line is a failure is asked of fail2ban itself: the package's own
fail2ban-regex runs on the same sample lines as our matcher.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pyfilter.cli.imports.fail2ban_forms import daemon_globs, dates, with_date
from pyfilter.cli.imports.fail2ban_ini import Fail2banError, Ini
from pyfilter.cli.imports.fail2ban_jails import seconds
from pyfilter.cli.imports.fail2ban_stock import STOCK_FILTERS, STOCK_RELEASE, table
from pyfilter.cli.main import main
from pyfilter.common import config as configuration
from pyfilter.detector.matching import Matcher

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(os.environ.get("PYFILTER_FAIL2BAN_CONFIG") or REPO / ".cache" / "fail2ban" / "etc" / "fail2ban")
NOW = 1795292400.0  # 2026-11-21 20:20 UTC, just after the sample lines

needs_package = pytest.mark.skipif(
    not (CONFIG / "jail.conf").is_file(),
    reason=f"no fail2ban configuration at {CONFIG} (make fail2ban-config, or set PYFILTER_FAIL2BAN_CONFIG)")

JAIL_LOCAL = """\
[DEFAULT]
ignoreip = 127.0.0.1/8 ::1 198.51.100.250
bantime.increment = true
bantime.maxtime = 5w

[postfix]
enabled = true
backend = systemd

[nginx-http-auth]
enabled = true

[myapp]
enabled = true
filter = myapp[mode=aggressive]
logpath = %(syslog_daemon)s
maxretry = 3
findtime = 1h
bantime = 1d

[webapp]
enabled = true
filter = webapp-auth
logpath = /var/log/webapp/auth.log
port = 8443
maxretry = 2

[sshd-mail]
enabled = true
filter = sshd
action = %(mta)s-whois[sender="%(sender)s", dest="%(destemail)s"]
"""
# A daemon that logs through syslog: "myapp[123]: auth: bad password for bob from 198.51.100.40 port 5000".
MYAPP = """\
[INCLUDES]
before = common.conf

[Definition]
_daemon = myapp(?:-worker)?
prefregex = ^%(__prefix_line)s(?:auth|AUTH): <F-CONTENT>.+</F-CONTENT>$
mdre-normal = ^bad password for <F-USER>.+</F-USER> from <HOST> port \\d+$
mdre-aggressive = %(mdre-normal)s
                  ^probe from <HOST>$
failregex = <mdre-<mode>>
            ^locked out <F-USER>\\S+</F-USER> \\(<ADDR>\\)$
ignoreregex = ^bad password for \\S+ from <HOST> port 22222$
mode = normal
"""
# A web application's own file: "2026-11-21 20:19:28 [warn] login failed for user bob from 198.51.100.50".
WEBAPP = """\
[Definition]
failregex = ^ \\[warn\\] login failed for user <F-USER>\\S+</F-USER> from <HOST>$
            ^ \\[warn\\] session flood from <ADDR> \\(\\d+ sessions\\)$
ignoreregex = ^ \\[warn\\] login failed for user monitor from
datepattern = ^%%Y-%%m-%%d %%H:%%M:%%S
"""

# Per jail: its filter as fail2ban-regex takes it, and lines its log would hold
# (the journal's as the collector writes them), failures and not.
SAMPLES = {
    "sshd": ("sshd[mode=normal]", """\
2026-11-21T20:19:28.551146+00:00 web1 sshd[4242]: Failed password for root from 198.51.100.7 port 33914 ssh2
Nov 21 20:19:30 web1 sshd[4243]: Invalid user admin from 198.51.100.7 port 33916
Nov 21 20:19:30 web1 sshd[4243]: Failed password for invalid user admin from 198.51.100.7 port 33916 ssh2
Nov 21 20:19:31 web1 sshd[4244]: Accepted publickey for alice from 198.51.100.9 port 50000 ssh2: ED25519 SHA256:abc
Nov 21 20:19:33 web1 sshd[4246]: Connection closed by 198.51.100.10 port 41234 [preauth]
Nov 21 20:19:34 web1 sshd[4247]: Failed password for root from 198.51.100.7 port 33920 ssh2
Nov 21 20:19:35 web1 sshd[4248]: Failed password for root from 198.51.100.7 port 33922 ssh2
Nov 21 20:19:36 web1 sshd[4249]: User nobody from 2001:db8::7 not allowed because not listed in AllowUsers
Nov 21 20:19:37 web1 CRON[4250]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)
"""),
    "postfix": ("postfix[mode=more]", """\
2026-11-21T20:19:28.000001+00:00 mx1 postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[198.51.100.21]: 554 5.7.1 <x@example.org>: Relay access denied; from=<a@example.net> to=<x@example.org> proto=ESMTP helo=<spam>
2026-11-21T20:19:29.000001+00:00 mx1 postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[198.51.100.21]: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<nobody@example.org> proto=ESMTP helo=<spam>
2026-11-21T20:19:30.000001+00:00 mx1 postfix/smtpd[1234]: connect from unknown[198.51.100.22]
2026-11-21T20:19:31.000001+00:00 mx1 postfix/smtpd[1235]: improper command pipelining after CONNECT from unknown[198.51.100.23]: EHLO x
2026-11-21T20:19:32.000001+00:00 mx1 postfix/smtpd[1236]: disconnect from unknown[198.51.100.22] ehlo=1 quit=1 commands=2
"""),
    "nginx-http-auth": ("nginx-http-auth[mode=normal]", """\
2026/11/21 20:19:28 [error] 2865#0: *1 user "bob": password mismatch, client: 198.51.100.30, server: example.org, request: "GET / HTTP/1.1", host: "example.org"
2026/11/21 20:19:29 [error] 2865#0: *2 user "alice" was not found in "/etc/nginx/.htpasswd", client: 198.51.100.30, server: example.org, request: "GET /admin HTTP/1.1", host: "example.org"
2026/11/21 20:19:30 [error] 2865#0: *3 open() "/usr/share/nginx/html/favicon.ico" failed (2: No such file or directory), client: 198.51.100.31, server: example.org, request: "GET /favicon.ico HTTP/1.1", host: "example.org"
"""),
    "myapp": ("myapp[mode=aggressive]", """\
Nov 21 20:19:28 app1 myapp[100]: auth: bad password for bob from 198.51.100.40 port 5000
Nov 21 20:19:29 app1 myapp-worker[101]: AUTH: bad password for bob smith from 198.51.100.40 port 5001
Nov 21 20:19:30 app1 myapp[100]: auth: bad password for bob from 198.51.100.41 port 22222
Nov 21 20:19:31 app1 myapp[100]: auth: probe from 198.51.100.42
Nov 21 20:19:32 app1 myapp[100]: auth: locked out carol (198.51.100.43)
Nov 21 20:19:33 app1 myapp[100]: info: bad password for bob from 198.51.100.44 port 5000
Nov 21 20:19:34 app1 otherapp[102]: auth: bad password for bob from 198.51.100.45 port 5000
Nov 21 20:19:35 app1 myapp[100]: auth: login ok for bob from 198.51.100.40 port 5002
"""),
    "webapp": ("webapp-auth", """\
2026-11-21 20:19:28 [warn] login failed for user bob from 198.51.100.50
2026-11-21 20:19:29 [warn] login failed for user bob from 198.51.100.50
2026-11-21 20:19:30 [warn] login failed for user monitor from 198.51.100.51
2026-11-21 20:19:31 [warn] session flood from 198.51.100.52 (40 sessions)
2026-11-21 20:19:32 [info] login ok for user bob from 198.51.100.50
login failed for user bob from 198.51.100.53
"""),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(the fail2ban folder, OUTDIR, the printed report) of an import of Debian's configuration + ours."""
    if not (CONFIG / "jail.conf").is_file():
        pytest.skip(f"no fail2ban configuration at {CONFIG} (make fail2ban-config, or set PYFILTER_FAIL2BAN_CONFIG)")
    root = tmp_path_factory.mktemp("f2b")
    conf = root / "fail2ban"
    shutil.copytree(CONFIG, conf)
    (conf / "jail.local").write_text(JAIL_LOCAL)
    (conf / "filter.d" / "myapp.conf").write_text(MYAPP)
    (conf / "filter.d" / "webapp-auth.conf").write_text(WEBAPP)
    out = root / "out"
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["import", "fail2ban", str(conf), "--out", str(out)]) == 0
    return conf, out, printed.getvalue()


def fail2ban_regex(conf: Path, log: Path, spec: str) -> Counter[str]:
    """Failures per address, as the package's own fail2ban-regex finds them."""
    package = CONFIG.parents[1]  # .../etc/fail2ban -> the extracted package
    script = package / "usr" / "bin" / "fail2ban-regex"
    env = {**os.environ, "PYTHONPATH": str(package / "usr" / "lib" / "python3" / "dist-packages"), "TZ": "UTC"}
    if not script.is_file():  # an installed fail2ban's folder
        script, env = Path("/usr/bin/fail2ban-regex"), {**os.environ, "TZ": "UTC"}
    done = subprocess.run([sys.executable, str(script), "-c", str(conf), "-r", "-o", "ip", str(log), spec],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return Counter(line.strip() for line in done.stdout.splitlines() if line.strip())


def our_failures(out: Path, rule: str, source: str | None, lines: list[str]) -> Counter[str]:
    """Failures per address of `rule`, as the detector finds them in `source`'s lines."""
    settings = configuration.load(out / "pyfilter.yaml")
    sources = {s.name: s for s in settings.config.collector.sources}
    program = sources[source].program if source else None
    matcher = Matcher(settings.rules)
    return Counter(f.address for _, f in matcher.match_batch(lines, source, NOW, "web1", "UTC", program)
                   if f.rule == rule)


@needs_package
def test_the_result_passes_config_check(imported):
    _, out, _ = imported
    done = subprocess.run([str(REPO / ".venv" / "bin" / "pyfilter"), "config", "check", str(out / "pyfilter.yaml")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    settings = configuration.load(out / "pyfilter.yaml")
    assert set(settings.rules) == {"sshd", "postfix", "nginx-http-auth", "myapp", "webapp"}
    Matcher(settings.rules)


@needs_package
def test_every_enabled_jail_is_reported_with_what_became_of_it(imported):
    _, out, printed = imported
    written = (out / "pyfilter.yaml").read_text()
    for jail, outcome in [("sshd", "mapped onto the catalog rule sshd"),
                          ("postfix", "mapped onto the catalog rule postfix, mode more"),
                          ("nginx-http-auth", "mapped onto the catalog rule nginx-http-auth"),
                          ("myapp", "translated from filter myapp"),
                          ("webapp", "translated from filter webapp-auth"),
                          ("sshd-mail", "not imported: action-only jail: its actions (sendmail-whois)")]:
        assert f"  {jail}: {outcome}" in printed
        assert f"# {jail}: {outcome}" in written
    assert "not enabled in fail2ban, not imported (" in printed and "apache-auth" in printed
    assert "5 mapped" not in printed and "3 mapped onto catalog rules, 2 translated, 1 not imported" in printed


@needs_package
def test_thresholds_whitelist_escalation_and_sources_are_carried(imported):
    _, out, _ = imported
    settings = configuration.load(out / "pyfilter.yaml")
    rules, config = settings.rules, settings.config
    assert (rules["myapp"].maxretry, rules["myapp"].findtime, rules["myapp"].bantime) == (3, 3600, 86400)
    assert (rules["sshd"].maxretry, rules["sshd"].findtime, rules["sshd"].bantime) == (5, 600, 600)
    assert rules["webapp"].maxretry == 2 and rules["webapp"].ports == [8443] and rules["sshd"].ports == [22]
    assert rules["postfix"].mode == "more"
    for rule in rules.values():
        assert (rule.escalation.factor, rule.escalation.maxtime) == (2.0, 5 * 7 * 86400)
    assert config.whitelist == ["127.0.0.0/8", "::1/128", "198.51.100.250/32"]
    sources = {s.name: s for s in config.collector.sources}
    assert sources["auth"].paths == ["/host/log/auth.log"]
    assert sources["nginx-error"].paths == ["/host/log/nginx/*error.log"]
    assert sources["webapp-auth"].program == "webapp"
    journal = [s for s in sources.values() if s.type == "journal"]
    assert [s.match for s in journal] == [["_SYSTEMD_UNIT=postfix.service"]]
    assert rules["myapp"].programs == ["myapp", "myapp-worker"]
    assert (out / "rules" / "myapp.yaml").is_file() and (out / "rules" / "sshd.yaml").is_file()


@needs_package
@pytest.mark.parametrize("jail", sorted(SAMPLES))
def test_bans_what_fail2ban_would(imported, tmp_path, jail):
    conf, out, _ = imported
    spec, text = SAMPLES[jail]
    log = tmp_path / "sample.log"
    log.write_text(text)
    expected = fail2ban_regex(conf, log, spec)
    assert expected, "the samples must hold failures"
    source = {"sshd": "auth", "nginx-http-auth": "nginx-error", "webapp": "webapp-auth", "myapp": "daemon",
              "postfix": None}[jail]
    found = our_failures(out, jail, source, text.splitlines())
    assert found == expected
    maxretry = configuration.load(out / "pyfilter.yaml").rules[jail].maxretry
    assert {a for a, n in found.items() if n >= maxretry} == {a for a, n in expected.items() if n >= maxretry}


@needs_package
def test_stock_filter_table_is_the_packages(imported):
    conf, _, _ = imported
    version = next((CONFIG.parents[1] / "usr" / "share" / "doc" / "fail2ban").glob("changelog.Debian.gz"), None)
    if version is None or STOCK_RELEASE not in subprocess.run(["zcat", str(version)], capture_output=True,
                                                               text=True).stdout.splitlines()[0]:
        pytest.skip(f"the extracted package is not fail2ban {STOCK_RELEASE}")
    assert table(CONFIG) == STOCK_FILTERS


@needs_package
def test_an_existing_output_folder_is_not_replaced_without_force(imported, capsys):
    conf, out, _ = imported
    before = (out / "pyfilter.yaml").read_text()
    assert main(["import", "fail2ban", str(conf), "--out", str(out)]) == 2
    assert "is not empty (use --force" in capsys.readouterr().err
    assert (out / "pyfilter.yaml").read_text() == before


# The reader and the translation on small configurations of their own.

def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def run_import(folder: Path, capsys) -> tuple[int, str, str]:
    code = main(["import", "fail2ban", str(folder), "--out", str(folder / "out")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_import(tmp_path / "nowhere", capsys)
    assert code == 2 and "nowhere: no such folder" in err
    assert not (tmp_path / "nowhere").exists()


def test_an_unparseable_line_names_its_file_and_line(tmp_path, capsys):
    write(tmp_path, {"jail.conf": "[DEFAULT]\nbantime = 10m\nthis is not an option\n"})
    code, _, err = run_import(tmp_path, capsys)
    assert code == 2 and f"{tmp_path / 'jail.conf'}:3: expected [section], name = value" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_interpolation_names_its_file_and_line(tmp_path, capsys):
    write(tmp_path, {"jail.conf": "[DEFAULT]\nbantime = 10m\n[sshd]\nenabled = true\nlogpath = %(nowhere_log)s\n"})
    code, _, err = run_import(tmp_path, capsys)
    assert code == 2 and f"{tmp_path / 'jail.conf'}:5: logpath: %(nowhere_log)s: no option 'nowhere_log'" in err


def test_a_bad_time_names_its_file_and_line(tmp_path, capsys):
    write(tmp_path, {"jail.conf": "[sshd]\nenabled = true\nbantime = ten minutes\n"})
    code, _, err = run_import(tmp_path, capsys)
    assert code == 2 and f"{tmp_path / 'jail.conf'}:3: bantime: expected a time like 600" in err


@pytest.mark.parametrize("text, expected", [("600", 600), ("10m", 600), ("1h", 3600), ("1d", 86400), ("-1", -1),
                                            ("1d12h30m", 131400), ("1w", 604800), ("2mo", 60 * 86400),
                                            ("1y 6mo", 545 * 86400), ("5min", 300), ("30 seconds", 30)])
def test_fail2ban_time_syntax(text, expected):
    assert seconds(text, "jail.conf:1", "bantime") == expected


def test_files_are_read_in_fail2bans_order_with_known_and_includes(tmp_path):
    write(tmp_path, {
        "paths.conf": "[DEFAULT]\nlog = /var/log/a.log\n",
        "jail.conf": "[INCLUDES]\nbefore = paths.conf\n[DEFAULT]\nmaxretry = 5\n[x]\nfailregex = one\n",
        "jail.d/b.conf": "[x]\nmaxretry = 4\n",
        "jail.local": "[x]\nmaxretry = 3\nfailregex = %(known/failregex)s\n            two\n",
        "jail.d/a.local": "[x]\nmaxretry = 2  ; an inline comment\nlogpath = %(log)s\n",
    })
    ini = Ini()
    ini.read_name(tmp_path / "jail")
    scope = ini.scope("x")
    assert scope.get("maxretry") == "2"
    assert scope.get("failregex") == "one\ntwo"
    assert scope.get("logpath") == "/var/log/a.log"


def test_an_include_loop_is_an_error(tmp_path):
    write(tmp_path, {"jail.conf": "[INCLUDES]\nbefore = other.conf\n[x]\na = 1\n",
                     "other.conf": "[INCLUDES]\nbefore = jail.conf\n"})
    with pytest.raises(Fail2banError, match="includes itself"):
        Ini().read_name(tmp_path / "jail")


def test_filters_we_cannot_match_alike_are_not_imported_and_say_why(tmp_path, capsys):
    write(tmp_path, {
        "jail.conf": "[DEFAULT]\nfilter = %(__name__)s\nbanaction = nftables-multiport\naction = %(banaction)s\n"
                     "[nets]\nenabled = true\nlogpath = /var/log/x.log\n"
                     "[multi]\nenabled = true\nlogpath = /var/log/y.log\n",
        "filter.d/nets.conf": "[Definition]\nfailregex = ^blocked <SUBNET>$\n",
        "filter.d/multi.conf": "[Definition]\nfailregex = ^a<SKIPLINES>b <HOST>$\nmaxlines = 2\n",
    })
    code, printed, _ = run_import(tmp_path, capsys)
    assert code == 0
    assert "nets: not imported: filter nets: failregex 1 left out: <SUBNET> bans networks" in printed
    assert "multi: not imported: filter multi: maxlines = 2" in printed


def test_an_unanchored_failregex_is_searched_and_the_report_warns(tmp_path, capsys):
    write(tmp_path, {
        "jail.conf": "[DEFAULT]\nfilter = %(__name__)s\naction = iptables-allports\n[loose]\nenabled = true\nlogpath = /srv/loose.log\n",
        "filter.d/loose.conf": "[Definition]\nfailregex = denied for <HOST>\n",
    })
    code, printed, _ = run_import(tmp_path, capsys)
    assert code == 0
    assert "failregex 1 is not anchored" in printed and "outside /var/log" in printed
    rule = configuration.load(tmp_path / "out" / "pyfilter.yaml").rules["loose"]
    found = Matcher({"loose": rule}).match("2026-11-21 20:19:28 client x denied for 198.51.100.60", None, NOW,
                                           program="loose")
    assert [f.address for f in found] == ["198.51.100.60"]
    assert rule.ports == []


@pytest.mark.parametrize("daemon, programs", [
    ("sshd", ["sshd"]),
    (r"postfix(-\w+)?/\w+(?:/smtp[ds])?", ["postfix-*/*", "postfix-*/*/smtp[ds]", "postfix/*", "postfix/*/smtp[ds]"]),
    (r"(?:dovecot(?:-auth)?|auth)", ["auth", "dovecot", "dovecot-auth"]),
    (r"\S*", ["*"]),
    (r"sshd{1,2}", None),
])
def test_daemon_regex_as_program_globs(daemon, programs):
    assert daemon_globs(daemon) == programs


@pytest.mark.parametrize("datepattern, line", [
    ("^%Y-%m-%d %H:%M:%S", "2026-11-21 20:19:28"),
    ("{^LN-BEG}", "2026/11/21 20:19:28"),
    ("{^LN-BEG}Epoch", "1795292368.123"),
    ("^%b %d, %ExY %I:%M:%S %p", "Nov 21, 2026 8:19:28 PM"),
])
def test_a_date_at_the_line_start_is_read_back_where_fail2ban_cut_it(datepattern, line):
    date = dates(datepattern)
    assert date.start and not date.inner
    assert re.fullmatch(with_date(r" denied", date), line + " denied")
    assert re.fullmatch(with_date(r" denied", date), " denied")  # fail2ban takes lines without a date too


def test_a_date_inside_the_line_goes_back_into_the_brackets_fail2ban_leaves():
    date = dates(r"^[^\[]*\[({DATE})")
    assert date.inner and not date.start
    rx = with_date(r"<HOST> - - \[\] \"GET", date).replace("<HOST>", r"\S+")
    assert re.match(rx, '198.51.100.7 - - [21/Nov/2026:20:19:28 +0000] "GET / HTTP/1.1" 401')
