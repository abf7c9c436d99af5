"""The matcher and the catalog: placeholders, connection state, and log injection.

Injected addresses come from 198.51.100.0/24 and 2001:db8::/32; an injection
test passes when the real address or nothing is reported, never the injected one.
"""

from __future__ import annotations

import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest

from pyfilter.common.config import Rule
from pyfilter.detector.matching import Matcher, RuleError, expand, explain, normalize_host
from pyfilter.detector.matching.regex import ascii_digits, literals, optional_branches as _optional_branches

INJECTED = "198.51.100.66"
REAL = "198.51.100.7"
NOW = 1_795_000_000.0  # 2026-11-18


def matcher_for(catalog: dict[str, Rule], name: str) -> Matcher:
    return Matcher({name: catalog[name]})


def hosts(m: Matcher, line: str) -> list[str]:
    return [f.address for f in m.match(line, None, NOW)]


def rule(*patterns: str, **kw) -> Rule:
    return msgspec.convert({"service": "t", "sources": ["test"], "patterns": list(patterns), **kw}, Rule)


# --- the catalog ---------------------------------------------------------------

def test_every_catalog_rule_compiles_and_names_its_programs(catalog):
    assert {"sshd", "apache-auth", "nginx-http-auth", "postfix", "recidive", "wordpress-spam"} <= set(catalog)
    Matcher(catalog)
    for name, r in catalog.items():
        assert r.programs or r.sources, name
        assert r.description, name


@pytest.mark.parametrize("line, host, user", [
    ("Nov 21 20:19:28 srv sshd[4242]: Failed password for root from 198.51.100.7 port 50273 ssh2", REAL, "root"),
    ("Nov 21 20:19:28 srv sshd[4242]: Failed password for invalid user admin from 198.51.100.7 port 5 ssh2",
     REAL, "admin"),
    ("Nov 21 20:19:28 srv sshd[4242]: Invalid user oracle from 198.51.100.7 port 5", REAL, "oracle"),
    ("Nov 21 20:19:28 srv sshd[4242]: Connection closed by authenticating user root 198.51.100.7 port 5 [preauth]",
     REAL, "root"),
    ("Nov 21 20:19:28 srv sshd[4242]: error: maximum authentication attempts exceeded for root from "
     "198.51.100.7 port 5 ssh2 [preauth]", REAL, "root"),
    ("Nov 21 20:19:28 srv sshd[4242]: Unable to negotiate with 198.51.100.7 port 5: no matching key exchange "
     "method found. Their offer: diffie-hellman-group1-sha1 [preauth]", REAL, None),
    ("Nov 21 20:19:28 srv sshd[4242]: Failed password for root from 2001:db8::7 port 5 ssh2", "2001:db8::7", "root"),
    ("Nov 21 20:19:28 srv sshd[4242]: Failed password for root from ::ffff:198.51.100.7 port 5 ssh2", REAL, "root"),
    ("2026-11-21T20:19:28.551146+00:00 srv sshd-session[4242]: Failed publickey for invalid user git from "
     "198.51.100.7 port 5 ssh2: RSA SHA256:abc", REAL, "git"),
])
def test_sshd_failures(catalog, line, host, user):
    failures = matcher_for(catalog, "sshd").match(line, "auth", NOW)
    assert [(f.address, f.user) for f in failures] == [(host, user)]


def test_successful_logins_and_session_lines_are_not_failures(catalog):
    m = matcher_for(catalog, "sshd")
    for line in [
        "Nov 21 20:19:28 srv sshd[77]: Accepted publickey for alice from 198.51.100.7 port 5 ssh2: ED25519 SHA256:x",
        "Nov 21 20:19:28 srv sshd[77]: pam_unix(sshd:session): session opened for user alice by (uid=0)",
        "Nov 21 20:19:29 srv sshd[77]: Received disconnect from 198.51.100.7 port 5:11: disconnected by user",
        "Nov 21 20:19:29 srv sshd[77]: Disconnected from user alice 198.51.100.7 port 5",
    ]:
        assert m.match(line, "auth", NOW) == [], line


def test_a_failure_without_address_takes_the_one_the_connection_announced(catalog):
    m = matcher_for(catalog, "sshd")
    assert hosts(m, "Nov 21 20:19:28 srv sshd[900]: Connection from 198.51.100.7 port 5 on 198.51.100.1 port 22") == []
    assert hosts(m, "Nov 21 20:19:29 srv sshd[900]: Disconnecting: Too many authentication failures [preauth]") == [REAL]


def test_a_failure_without_address_waits_for_the_connection_to_name_one(catalog):
    m = matcher_for(catalog, "sshd")
    assert hosts(m, "Nov 21 20:19:28 srv sshd[901]: Disconnecting: Too many authentication failures for root "
                    "[preauth]") == []
    assert hosts(m, "Nov 21 20:19:29 srv sshd[999]: Connection closed by 198.51.100.9 [preauth]") == []
    assert hosts(m, "Nov 21 20:19:29 srv sshd[901]: Connection closed by 198.51.100.7 [preauth]") == [REAL]


def test_pam_failures_count_only_when_the_connection_switches_user(catalog):
    m = matcher_for(catalog, "sshd")
    pam = ("Nov 21 20:19:28 srv sshd[902]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
           "tty=ssh ruser={u} rhost=198.51.100.7")
    assert hosts(m, pam.format(u="root")) == []
    assert hosts(m, pam.format(u="root")) == []
    assert hosts(m, pam.format(u="oracle")) == [REAL]
    # the same user then logging in is a typo, not an attack
    assert hosts(m, pam.format(u="bob").replace("[902]", "[903]")) == []
    assert hosts(m, "Nov 21 20:19:29 srv sshd[903]: Accepted password for bob from 198.51.100.7 port 5 ssh2") == []


def test_closing_lines_count_once_per_connection(catalog):
    m = matcher_for(catalog, "sshd")
    assert hosts(m, "Nov 21 20:19:28 srv sshd[904]: Invalid user admin from 198.51.100.7 port 5") == [REAL]
    assert hosts(m, "Nov 21 20:19:29 srv sshd[904]: Connection closed by invalid user admin 198.51.100.7 port 5 "
                    "[preauth]") == []


# --- log injection: sshd ----------------------------------------------------------

@pytest.mark.parametrize("user", [
    f"x from {INJECTED} port 22 ssh2",
    f"x from {INJECTED} port 22",
    f"x from {INJECTED}",
    f"x from {INJECTED} via y",
    "x from 2001:db8::66 port 22 ssh2",
])
@pytest.mark.parametrize("template", [
    "Failed password for invalid user {user} from {real} port 50000 ssh2",
    "Failed keyboard-interactive/pam for invalid user {user} from {real} port 50000 ssh2",
    "Invalid user {user} from {real} port 50000",
    "error: PAM: Authentication failure for {user} from {real}",
    "error: maximum authentication attempts exceeded for invalid user {user} from {real} port 5 ssh2 [preauth]",
    "Connection closed by invalid user {user} {real} port 50000 [preauth]",
    "Disconnected from authenticating user {user} {real} port 50000 [preauth]",
])
def test_sshd_user_names_cannot_inject_an_address(catalog, template, user):
    line = "Nov 21 20:19:28 srv sshd[{}]: ".format(abs(hash((template, user))) % 99999) + template.format(
        user=user, real=REAL)
    got = hosts(matcher_for(catalog, "sshd"), line)
    assert got in ([REAL], []), line
    assert INJECTED not in got and "2001:db8::66" not in got


def test_sshd_injection_in_the_user_name_yields_the_real_address(catalog):
    line = (f"Nov 21 20:19:28 srv sshd[5]: Failed password for invalid user x from {INJECTED} port 22 ssh2 "
            f"from {REAL} port 50000 ssh2")
    assert hosts(matcher_for(catalog, "sshd"), line) == [REAL]


@pytest.mark.parametrize("line", [
    # A user name that ends like a whole line, then what looks like auth info.
    f"Failed password for invalid user x from {INJECTED} port 22 ssh2: y from {REAL} port 5555 ssh2",
    f"Failed password for invalid user x from {INJECTED} port 22 ssh2: from {REAL} port 5555 ssh2",
    f"Failed publickey for invalid user x from {INJECTED} port 22 ssh2: RSA SHA256:abc from {REAL} port 5555 ssh2: "
    "RSA SHA256:def",
    # The user name comes twice, before the address and in the message after it.
    f"Disconnecting invalid user x {INJECTED} port 22: Change of username or service not allowed: z {REAL} port 5555: "
    f"Change of username or service not allowed: (x {INJECTED} port 22,ssh-connection) -> (y,ssh-connection) [preauth]",
])
def test_sshd_user_names_that_mimic_the_end_of_a_line_cannot_frame_an_address(catalog, line):
    m = matcher_for(catalog, "sshd")
    hosts(m, f"Nov 21 20:19:27 srv sshd[77]: Connection from {REAL} port 5555 on 192.0.2.1 port 22")
    assert hosts(m, f"Nov 21 20:19:28 srv sshd[77]: {line}") == [REAL]


def test_an_existing_account_keeps_whatever_follows_its_address(catalog):
    """An account's name is one word the attacker cannot choose: the first address is the real one."""
    line = (f"Nov 21 20:19:28 srv sshd[78]: Failed hostbased for root from {REAL} port 5555 ssh2: RSA-CERT "
            f"SHA256:abc ID x from {INJECTED} port 22 ssh2 (serial 1) CA RSA SHA256:def")
    assert hosts(matcher_for(catalog, "sshd"), line) == [REAL]


# --- log injection: web servers -----------------------------------------------------

@pytest.mark.parametrize("line", [
    f'{REAL} - - [21/Nov/2026:20:19:28 +0100] "GET /phpmyadmin/?x={INJECTED} HTTP/1.1" 404 162 "-" "-"',
    f'{REAL} - - [21/Nov/2026:20:19:28 +0100] "GET /pma/{INJECTED}%20-%20-%20[x] HTTP/1.1" 404 162 "-" "-"',
    f'{REAL} - - [21/Nov/2026:20:19:28 +0100] "GET /.env HTTP/1.1" 404 162 "http://{INJECTED}/" "{INJECTED} - -"',
])
def test_nginx_access_log_address_is_the_first_field(catalog, line):
    assert hosts(matcher_for(catalog, "nginx-botsearch"), line) == [REAL]


@pytest.mark.parametrize("user, referrer", [
    (f'x": password mismatch, client: {INJECTED}, server: a, request: "GET / HTTP/1.1", host: "h', None),
    (f'x": password mismatch, client: {INJECTED}, server: a, request: "GET / HTTP/1.1", host: "h", referrer: "z',
     None),
    ("x", f'z": password mismatch, client: {INJECTED}, server: a, request: "GET / HTTP/1.1", host: "h'),
    ("x", f'z, client: {INJECTED}, server: a'),
])
def test_nginx_error_log_user_or_referrer_cannot_inject_an_address(catalog, user, referrer):
    line = (f'2026/11/21 20:19:28 [error] 1#1: *3 user "{user}": password mismatch, client: {REAL}, server: s, '
            f'request: "GET /admin HTTP/1.1", host: "example.org"')
    if referrer is not None:
        line += f', referrer: "{referrer}"'
    got = hosts(matcher_for(catalog, "nginx-http-auth"), line)
    assert got in ([REAL], []), line


def test_nginx_http_auth_plain_failure(catalog):
    line = (f'2026/11/21 20:19:28 [error] 1#1: *3 user "bob": password mismatch, client: {REAL}, server: s, '
            f'request: "GET /admin HTTP/1.1", host: "example.org", referrer: "https://example.org/"')
    assert hosts(matcher_for(catalog, "nginx-http-auth"), line) == [REAL]


@pytest.mark.parametrize("line", [
    f"[Sat Nov 21 20:19:28.123456 2026] [auth_basic:error] [pid 1:tid 2] [client {REAL}:5] AH01618: user "
    f"x [client {INJECTED}:5] not found: /admin",
    f"[Sat Nov 21 20:19:28 2026] [error] [client {REAL}] user {INJECTED} not found: /[client {INJECTED}]",
    f"[Sat Nov 21 20:19:28 2026] [error] [client {REAL}] client denied by server configuration: "
    f"/x/[client {INJECTED}], referer: http://{INJECTED}/",
])
def test_apache_error_log_address_is_the_client_field(catalog, line):
    assert hosts(matcher_for(catalog, "apache-auth"), line) == [REAL]


def test_apache_error_log_url_cannot_fake_a_failure(catalog):
    line = (f"[Sat Nov 21 20:19:28 2026] [error] [client {REAL}] File does not exist: /srv/[client {INJECTED}] "
            "user root not found")
    assert hosts(matcher_for(catalog, "apache-auth"), line) == []


def test_apache_badbots_user_agent_cannot_move_the_address(catalog):
    line = f'{REAL} - - [21/Nov/2026:20:19:28 +0100] "GET / HTTP/1.1" 200 5 "-" "{INJECTED} - - [x] sqlmap/1.7"'
    assert hosts(matcher_for(catalog, "apache-badbots"), line) == [REAL]


def test_mysql_user_name_cannot_inject_an_address(catalog):
    line = (f"2026-11-21T20:19:28.1Z 5 [Note] Access denied for user 'x'@'{INJECTED}' (using password: YES)'"
            f"@'{REAL}' (using password: YES)")
    assert hosts(matcher_for(catalog, "mysqld-auth"), line) == [REAL]


# --- the matcher itself --------------------------------------------------------------

def test_placeholders_capture_host_user_and_pid():
    m = Matcher({"t": rule(r"<SYSLOG>app\[<PID>\]: login failed for <USER> from <HOST>$")})
    [f] = m.match("Nov 21 20:19:28 srv app[12]: login failed for bob from 198.51.100.7", None, NOW)
    assert (f.rule, f.address, f.user, f.pattern) == ("t", REAL, "bob", 0)


def test_addr_refuses_host_names_and_host_accepts_them():
    m = Matcher({"a": rule("^bad <ADDR>$"), "h": rule("^bad <HOST>$")})
    assert [f.rule for f in m.match("bad example.org")] == ["h"]
    assert sorted(f.rule for f in m.match("bad 2001:db8::1")) == ["a", "h"]


def test_ignore_patterns_veto_a_match():
    m = Matcher({"t": rule("^fail <HOST>$", ignore=[r"^fail 198\.51\.100\.7$"])})
    assert m.match("fail 198.51.100.7") == []
    assert [f.address for f in m.match("fail 198.51.100.8")] == ["198.51.100.8"]


def test_the_first_pattern_that_matches_decides():
    m = Matcher({"t": rule("^x (?P<user>a) <HOST>$", "^x <USER> <HOST>$")})
    assert [f.pattern for f in m.match("x a 198.51.100.7")] == [0]
    assert [f.pattern for f in m.match("x b 198.51.100.7")] == [1]


def test_source_selects_rules():
    m = Matcher({"t": rule("^fail <HOST>$")})
    assert m.match("fail 198.51.100.7", "test")
    assert m.match("fail 198.51.100.7", "other") == []
    assert m.match("fail 198.51.100.7", None)


def test_prefilter_literals_gate_the_rule():
    m = Matcher({"t": rule("^fail <HOST>$", prefilter=["nope"])})
    assert m.match("fail 198.51.100.7") == []
    _, [e] = explain(m, "fail 198.51.100.7")
    assert e.outcome == "prefilter miss"


def test_explain_says_which_pattern_matched_and_why_not():
    m = Matcher({"t": rule("^fail <HOST>$", "^oops <HOST>$", ignore=["198.51.100.9"])})
    _, [e] = explain(m, "oops 198.51.100.7 ")
    assert e.outcome == "no match"
    _, [e] = explain(m, "oops 198.51.100.7")
    assert (e.outcome, e.pattern, e.captures["host"]) == ("failure", 1, REAL)
    _, [e] = explain(m, "fail 198.51.100.9")
    assert e.outcome == "ignored" and "ignore pattern 0" in e.reason


def test_time_comes_from_the_line_in_the_rule_zone():
    m = Matcher({"t": rule(r"^\S+ fail <HOST>$", timezone="+02:00")}, default_tz="UTC")
    [f] = m.match("2026-11-21T20:19:28 fail 198.51.100.7")
    assert f.time == datetime(2026, 11, 21, 18, 19, 28, tzinfo=timezone.utc).timestamp()
    m2 = Matcher({"t": rule(r"^fail <HOST>$")})
    assert m2.match("fail 198.51.100.7")[0].time is None


def test_a_time_capture_overrides_the_line_start():
    m = Matcher({"t": rule(r'^\{"ts": "(?P<time>[^"]+)", "ip": "<ADDR>"\}$')})
    [f] = m.match('{"ts": "2026-11-21T20:19:28Z", "ip": "198.51.100.7"}')
    assert f.time == datetime(2026, 11, 21, 20, 19, 28, tzinfo=timezone.utc).timestamp()


def test_bad_patterns_are_reported_with_the_rule_name():
    with pytest.raises(RuleError, match=r"rule t: patterns\[0\]"):
        Matcher({"t": rule("^fail (<HOST>$")})
    with pytest.raises(RuleError, match=r"rule t: patterns\[1\]: missing \), unterminated subpattern"):
        Matcher({"t": rule("^ok <HOST>$", "<NOTE>^fail (<HOST>$")})
    with pytest.raises(RuleError, match=r"patterns\[1\] captures neither <HOST> nor <PID>"):
        Matcher({"t": rule("^ok <HOST>$", "^fail$")})
    with pytest.raises(RuleError, match="neither <HOST> nor <PID>"):
        Matcher({"t": rule("^fail$")})


def test_normalize_host():
    assert normalize_host("::ffff:198.51.100.7") == REAL
    assert normalize_host("[2001:db8::1]") == "2001:db8::1"
    assert normalize_host("198.051.100.7") == "198.051.100.7"


def test_literals_are_only_the_required_parts():
    assert "Failed " in literals(r"Failed \S+ for <USER> from <HOST>$")
    assert literals("(?:a|b)ccc|dddd") == []
    assert "xyz" not in literals("abcdexyz?")
    assert expand("<PID>") == r"(?P<pid>\d+)"


# --- batches, connections per host ------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("PYFILTER_CORPUS") or REPO / ".." / "shared" / "corpus").resolve()
CORPUS_NOW = 1124013600.0  # fail2ban's test clock, as in test_conformance


def batch_and_lines_agree(rules: dict[str, Rule], lines: list[str], now: float, sizes=(1000,),
                          source: str | None = None, host: str | None = None) -> int:
    """Asserts that match_batch over `lines` (in batches) gives what match gives line by line."""
    batched, single = Matcher(rules, "Europe/Zurich"), Matcher(rules, "Europe/Zurich")
    found = 0
    start = 0
    for n, size in enumerate(sizes * (len(lines) // min(sizes) + 1)):
        chunk = lines[start:start + size]
        if not chunk:
            break
        expected = [(i, f) for i, text in enumerate(chunk) for f in single.match(text, source, now, host)]
        got = batched.match_batch(chunk, source, now, host)
        assert got == expected, f"batch {n} (lines {start}-{start + len(chunk) - 1})"
        found += len(got)
        start += size
    return found


@pytest.mark.skipif(not (CORPUS / "fail2ban-logs").is_dir(), reason="conformance corpus not found")
def test_batches_match_like_single_lines_on_the_conformance_corpus(catalog):
    found = 0
    for name in sorted(catalog):
        sample = CORPUS / "fail2ban-logs" / name
        if not sample.exists():
            continue
        lines = sample.read_text(encoding="utf-8", errors="replace").splitlines()
        found += batch_and_lines_agree({name: catalog[name]}, lines, CORPUS_NOW, sizes=(7, 1000, 1))
        found += batch_and_lines_agree(catalog, lines, CORPUS_NOW, sizes=(50,))
    assert found > 300


def mixed_sshd_log(n_events: int, seed: int = 5) -> list[str]:
    """A busy sshd log: bots, scanners, users, pids reused across addresses, other daemons between.

    Up to three connections are open at a time, their lines interleaved.
    """
    rng = random.Random(seed)
    addresses = [f"198.51.100.{i}" for i in range(1, 60)] + [f"2001:db8::{i:x}" for i in range(1, 20)]
    users = ["root", "admin", "alice", "bob", "x from 198.51.100.66 port 22 ssh2", "oracle"]
    lines: list[str] = []
    open_events: list[list[str]] = []
    second = 0

    def emit() -> None:
        event = rng.choice(open_events)
        stamp = f"Nov 21 20:{second // 60 % 60:02d}:{second % 60:02d}"
        lines.append(f"{stamp} {event.pop(0)}")
        if not event:
            open_events.remove(event)

    for _ in range(n_events):
        second += rng.randrange(2)
        pid = rng.randrange(100, 130)  # few pids: reused often, by other addresses too
        addr, user = rng.choice(addresses), rng.choice(users)
        port = rng.randrange(1024, 65535)
        kind = rng.randrange(9)
        if kind == 0:
            event = [f"Invalid user {user} from {addr} port {port}",
                     f"pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={addr}",
                     f"Failed password for invalid user {user} from {addr} port {port} ssh2",
                     f"Received disconnect from {addr} port {port}:11: Bye Bye [preauth]",
                     f"Disconnected from invalid user {user} {addr} port {port} [preauth]"]
        elif kind == 1:
            event = [f"pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
                     f"rhost={addr}  user={user}",
                     f"Failed password for {user} from {addr} port {port} ssh2",
                     f"Connection closed by authenticating user {user} {addr} port {port} [preauth]"]
        elif kind == 2:
            event = [f"Connection from {addr} port {port} on 198.51.100.1 port 22",
                     "Disconnecting: Too many authentication failures [preauth]",
                     f"Connection closed by {addr} port {port} [preauth]"]
        elif kind == 3:
            event = [f"Accepted publickey for {user} from {addr} port {port} ssh2: ED25519 SHA256:abc",
                     f"pam_unix(sshd:session): session opened for user {user} by (uid=0)",
                     f"Received disconnect from {addr} port {port}:11: disconnected by user",
                     f"Disconnected from user {user} {addr} port {port}"]
        elif kind == 4:
            event = [f"Failed publickey for {user} from {addr} port {port} ssh2: RSA SHA256:abc",
                     f"Failed password for {user} from {addr} port {port} ssh2",
                     f"Accepted password for {user} from {addr} port {port} ssh2"]
        elif kind == 5:
            event = [f"error: PAM: Authentication failure for {user} from {addr}",
                     f"error: maximum authentication attempts exceeded for {user} from {addr} port {port} ssh2 "
                     "[preauth]"]
        elif kind == 6:
            event = [f"Unable to negotiate with {addr} port {port}: no matching key exchange method found. "
                     "Their offer: diffie-hellman-group1-sha1 [preauth]",
                     "kex_exchange_identification: Connection closed by remote host"]
        elif kind == 7:
            event = [f"Disconnecting: Too many authentication failures for {user} [preauth]",
                     f"Connection reset by {addr} port {port} [preauth]"]
        else:
            open_events.append([f"srv CRON[{pid}]: pam_unix(cron:session): session opened for user root",
                                f"srv systemd-logind[412]: New session 7 of user {user}."])
            event = []
        if event:
            open_events.append([f"srv sshd[{pid}]: {text}" for text in event])
        while len(open_events) > 2 or (open_events and rng.random() < 0.5):
            emit()
    while open_events:
        emit()
    return lines


def test_batches_match_like_single_lines_on_a_mixed_sshd_log(catalog):
    lines = mixed_sshd_log(3000)
    found = batch_and_lines_agree({"sshd": catalog["sshd"]}, lines, NOW, sizes=(1000, 1, 37), source="auth",
                                  host="srv")
    assert found > 1000
    # No other rule counts sshd's lines, but pam-generic: a catch-all for every program's PAM
    # failures (sshd's pam_unix lines too), off by default, an alternative to the service rules.
    others = {name: rule for name, rule in catalog.items() if name != "pam-generic"}
    assert batch_and_lines_agree(others, lines, NOW, sizes=(250,)) == found


def test_a_failed_connection_that_closes_counts_once(catalog):
    m = matcher_for(catalog, "sshd")
    head = "Nov 21 20:19:28 srv sshd[700]: "
    assert hosts(m, head + f"Failed password for invalid user bob from {REAL} port 5 ssh2") == [REAL]
    assert hosts(m, head + f"Received disconnect from {REAL} port 5:11: Bye Bye [preauth]") == []
    # sshd's last words about the same connection, after it closed: not another failure
    assert hosts(m, head + f"Disconnected from invalid user bob {REAL} port 5 [preauth]") == []


def test_failures_name_their_connection_where_a_once_pattern_needs_it(catalog):
    """sshd's failures carry their pid and whether they are <ONCE> lines (the
    windows script checks those across replicas); a stateful rule without
    <ONCE> patterns leaves the connection out, and costs Redis nothing more."""
    m = matcher_for(catalog, "sshd")
    head = "Nov 21 20:19:28 srv sshd[701]: "
    (failed,) = m.match(head + f"Failed password for root from {REAL} port 5 ssh2", None, NOW)
    assert (failed.connection, failed.once) == ("701", False)
    (closed,) = m.match(head.replace("701", "702") +
                        f"Connection closed by authenticating user root {REAL} port 6 [preauth]", None, NOW)
    assert (closed.connection, closed.once) == ("702", True)
    noted = Matcher({"t": rule(r"<NOTE>x\[<PID>\]: hello from <HOST>$", r"x\[<PID>\]: denied$")})
    assert noted.match(f"x[9]: hello from {REAL}", None, NOW) == []
    (denied,) = noted.match("x[9]: denied", None, NOW)
    assert (denied.address, denied.connection, denied.once) == (REAL, "", False)


def test_a_reused_pid_does_not_blame_a_later_login_from_another_address(catalog):
    m = matcher_for(catalog, "sshd")
    pam = ("Nov 21 20:19:28 srv sshd[801]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
           "tty=ssh ruser= rhost={addr}  user={user}")
    attacker = "198.51.100.9"
    assert hosts(m, pam.format(addr=attacker, user="root")) == []
    assert hosts(m, f"Nov 21 20:19:29 srv sshd[801]: Failed password for root from {attacker} port 5 ssh2") \
        == [attacker]
    # No close was logged; the pid now serves a user from another address who
    # types the password right: the attacker's user names are not hers.
    assert hosts(m, pam.format(addr=REAL, user="alice")) == []
    assert hosts(m, f"Nov 21 20:19:31 srv sshd[801]: Accepted password for alice from {REAL} port 6 ssh2") == []


def test_a_failure_waiting_for_its_address_is_not_charged_to_a_later_connection(catalog):
    """sshd drops an unauthenticated connection within minutes: hours later the pid is another one's."""
    m = matcher_for(catalog, "sshd")
    assert hosts(m, "Nov 17 01:00:00 h sshd[100]: Disconnecting: Too many authentication failures [preauth]") == []
    assert hosts(m, f"Nov 17 09:00:00 h sshd[100]: Connection closed by {REAL} port 5000 [preauth]") == []
    # Nor does a successful login complete it, however soon.
    assert hosts(m, "Nov 17 09:00:01 h sshd[101]: Disconnecting: Too many authentication failures [preauth]") == []
    assert hosts(m, f"Nov 17 09:00:02 h sshd[101]: Accepted publickey for bob from {REAL} port 5001 ssh2") == []
    # Soon after, the connection's closing line completes it, dated by that line.
    assert hosts(m, "Nov 17 09:00:03 h sshd[102]: Disconnecting: Too many authentication failures [preauth]") == []
    [f] = m.match(f"Nov 17 09:00:04 h sshd[102]: Connection closed by {REAL} port 5002 [preauth]", None, NOW)
    assert f.address == REAL and f.time == m.match(f"Nov 17 09:00:04 h sshd[9]: Invalid user a from {REAL}", None, NOW)[0].time


def test_a_closing_line_on_a_pid_reused_much_later_counts(catalog):
    m = matcher_for(catalog, "sshd")
    assert hosts(m, f"Nov 17 01:00:00 h sshd[100]: Failed password for root from {REAL} port 5 ssh2") == [REAL]
    closing = "Connection closed by authenticating user root {a} port 6 [preauth]"
    assert hosts(m, "Nov 17 01:00:01 h sshd[100]: " + closing.format(a=REAL)) == []
    assert hosts(m, "Nov 17 09:00:00 h sshd[100]: " + closing.format(a="198.51.100.40")) == ["198.51.100.40"]


@pytest.mark.parametrize("batched", [False, True])
def test_two_hosts_with_the_same_pid_keep_their_connections_apart(catalog, batched):
    m = matcher_for(catalog, "sshd")

    def seen(line: str, host: str) -> list[str]:
        if batched:
            return [f.address for _, f in m.match_batch([line], "auth", NOW, host)]
        return [f.address for f in m.match(line, "auth", NOW, host)]

    other = "198.51.100.9"
    assert seen(f"Nov 21 20:19:28 web1 sshd[900]: Connection from {REAL} port 5 on 198.51.100.1 port 22", "web1") == []
    # web2's sshd 900 is another connection: it knows no address yet
    assert seen("Nov 21 20:19:29 web2 sshd[900]: Disconnecting: Too many authentication failures [preauth]",
                "web2") == []
    assert seen("Nov 21 20:19:30 web1 sshd[900]: Disconnecting: Too many authentication failures [preauth]",
                "web1") == [REAL]
    assert seen(f"Nov 21 20:19:31 web2 sshd[900]: Connection closed by {other} port 7 [preauth]", "web2") == [other]


def test_optional_groups_become_branches_with_the_same_matches():
    for pattern, texts in [
        (r"^a(?:b(?P<x>c)?)?(?:d)??d$", ["ad", "abd", "abcd", "abcdd", "add", "ab"]),
        (r"(?:[(?:]x)?y(?:\)z)?", ["(xy)z", "xy", "y)z", ":xy"]),
        (r"^(?:x)?+x", ["x", "xx"]),
    ]:
        before, after = re.compile(pattern), re.compile(_optional_branches(pattern))
        assert after.pattern != pattern or "?+" in pattern
        for text in texts:
            m1, m2 = before.search(text), after.search(text)
            assert (m1 and (m1.span(), m1.groupdict())) == (m2 and (m2.span(), m2.groupdict())), (pattern, text)


def test_digits_in_patterns_are_ascii_digits():
    """`\\d` is read as [0-9] (a range test, not a Unicode lookup per character)."""
    for pattern, texts in [
        (r"port \d+ x", ["port 22 x", "port \u0662\u0662 x", "port  x"]),
        (r"[\d.:]+$", ["198.51.100.7", "1\u0663.2", "a"]),
        (r"[^\d\s]+", ["ab12", "\u0663 x"]),
        (r"\D+\d", ["ab1", "a\u06631"]),
        (r"\\d[\\d]", ["\\d\\", "1\\"]),
    ]:
        ascii_only = re.compile(pattern, re.ASCII)
        after = re.compile(ascii_digits(pattern))
        assert "\\d" not in after.pattern.replace("\\\\", "") or "[\\D" in pattern, pattern
        for text in texts:
            m1, m2 = ascii_only.search(text), after.search(text)
            # ASCII digits and the rest classify alike (\s and \w keep their Unicode sense)
            if not any(ch.isspace() and not ch.isascii() for ch in text):
                assert (m1 and m1.span()) == (m2 and m2.span()), (pattern, text)
    assert ascii_digits(r"[\D\d]") == r"[\D\d]"  # a class with \D is left alone
    assert ascii_digits(r"a\d{1,3}\D") == r"a[0-9]{1,3}[^0-9]"


def test_a_failure_on_a_line_without_time_takes_the_time_of_the_record_before_it():
    """Java's and Erlang's loggers write the time on a record's first line only."""
    m = Matcher({"t": rule(r"WARNING: attempt from <HOST> failed$", programs=["app"])}, default_tz="UTC")
    lines = ["apr 15, 2013 8:34:08 PM org.example.Auth warn", "WARNING: attempt from 198.51.100.7 failed"]
    [(i, f)] = m.match_batch(lines, now=NOW)
    assert (i, f.time) == (1, datetime(2013, 4, 15, 20, 34, 8, tzinfo=timezone.utc).timestamp())
    # the same across batches of one source (the detector's batches, `pyfilter match` line by line)
    m = Matcher({"t": rule(r"WARNING: attempt from <HOST> failed$", programs=["app"])}, default_tz="UTC")
    assert m.match(lines[0], "test", NOW) == []
    [f] = m.match(lines[1], "test", NOW)
    assert f.time == datetime(2013, 4, 15, 20, 34, 8, tzinfo=timezone.utc).timestamp()


def test_a_back_reference_names_a_group_of_its_own_pattern():
    m = Matcher({"t": rule(r"nothing (?P<user>\w+) here <HOST>$",
                           r"user (?P<user>\w+) from <HOST> again (?P=user)$", programs=["app"])})
    assert [f.address for f in m.match("user bob from 198.51.100.7 again bob")] == [REAL]
    assert m.match("user bob from 198.51.100.7 again eve") == []


def test_a_count_capture_says_how_many_failures_the_line_stands_for():
    m = Matcher({"t": rule(r"PAM (?P<count>\d+) more authentication failures; rhost=<HOST>$", programs=["app"])})
    [f] = m.match("PAM 2 more authentication failures; rhost=198.51.100.7")
    assert (f.address, f.count) == (REAL, 2)
    [f] = m.match("Nov 21 20:19:28 h app[1]: message repeated 3 times: [ PAM 2 more authentication failures; "
                  "rhost=198.51.100.7]", program=None)
    assert f.count == 6
