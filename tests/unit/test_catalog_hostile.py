"""Hostile lines against the catalog: client text never picks the address or hides a failure.

Each line below carries text a client chooses (a user name, a header, a
Call-ID, a URL, a logged password) shaped like the fixed words around the real
address. A test passes when the rule reports the address the daemon wrote, or
(where the daemon's own format leaves two readings) nothing, but never an
address that only the client's text holds; and when a genuine failure is still
reported although the client's text names a reason to ignore it. Long
hostile paths (8 KB) must be judged like short ones; how long they take is not
asserted here (no timed assertions): `python -m bench.hostile_lines` measures it
(docs/benchmarks.md: seconds per line with the old nginx-botsearch patterns,
about 3 ms now).

Injected addresses come from 198.51.100.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pyfilter.common.config import Rule
from pyfilter.detector.matching import Matcher

REAL = "198.51.100.99"
FAKE = "198.51.100.7"
NOW = 1_795_000_000.0  # 2026-11-18


def hosts(catalog: dict[str, Rule], name: str, line: str) -> list[str]:
    return [f.address for f in Matcher({name: catalog[name]}).match(line, None, NOW)]


# --- dovecot ---------------------------------------------------------------------------

def test_dovecot_fake_reason_in_the_user_name_yields_the_real_address(catalog):
    line = ("Nov 22 01:59:00 mail dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
            f"user=<x (auth failed, 1 attempts): rip={FAKE}, TLS>, method=PLAIN, rip={REAL}, lip=10.0.0.1, "
            "TLS, session=<abc>")
    assert hosts(catalog, "dovecot", line) == [REAL]


@pytest.mark.parametrize("opening", [
    "Login: ",  # a successful login
    "Disconnected (no auth attempts in 2 secs): ",  # not a failure either
])
def test_dovecot_fake_reason_in_the_user_name_makes_no_failure(catalog, opening):
    line = (f"Nov 22 01:59:00 mail dovecot: imap-login: {opening}user=<x (auth failed, 1 attempts): "
            f"rip={FAKE}, TLS>, method=PLAIN, rip={REAL}, lip=10.0.0.1, mpid=1, TLS, session=<abc>")
    assert hosts(catalog, "dovecot", line) == []


@pytest.mark.parametrize("line", [
    # auth_verbose_passwords: the password is logged after the reason
    f"Nov 22 01:59:00 mail dovecot: auth: Info: sql(bob,{REAL},<CvN>): Password mismatch "
    f"(given password: x,{FAKE}): unknown user z)",
    f"Aug 30 00:10:57 auth(bob,{REAL},sasl:login)<CvN+E95U>: Info: sql: Password mismatch "
    f"(given password: x,{FAKE}): sql: unknown user z)",
])
def test_dovecot_logged_password_cannot_frame_an_address(catalog, line):
    assert FAKE not in hosts(catalog, "dovecot", line)
    # nor can the user name, the other side of the address
    user_side = (f"Nov 22 01:59:00 mail dovecot: auth: Info: sql(x,{FAKE}): unknown user (given password: "
                 f"y,{REAL},<CvN>): Password mismatch (given password: z)")
    assert FAKE not in hosts(catalog, "dovecot", user_side)
    plain = f"Nov 22 01:59:00 mail dovecot: auth: Info: sql(bob,{REAL},<CvN>): Password mismatch (given password: x)"
    assert hosts(catalog, "dovecot", plain) == [REAL]


# --- nginx-botsearch: long paths ----------------------------------------------------------

ACCESS = '198.51.100.5 - - [22/Nov/2026:01:59:00 +0000] "GET {path} HTTP/1.1" {status} 153 "-" "curl/8.0 404 "'
ERROR = ('2026/11/22 01:59:00 [error] 1#1: *1 open() "/usr/share/nginx/html/x" failed (2: No such file or '
         'directory), client: 198.51.100.5, server: x, request: "GET {path} HTTP/1.1", host: "x"{tail}')
AT = datetime(2026, 11, 22, 1, 59, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("line, expected", [
    (ACCESS.format(path="/" * 8000 + "nonexistent", status=404), []),
    (ERROR.format(path="/" * 8000 + "nonexistent", tail=""), []),
    (ACCESS.format(path="/db" * 2700, status=200), []),  # many names, a tail that does not fit
    (ERROR.format(path="/db" * 2700, tail=", x"), []),
    (ACCESS.format(path="/" * 8000 + "phpmyadmin/", status=404), [("198.51.100.5", AT)]),
    (ERROR.format(path="/" * 8000 + "phpMyAdmin/", tail=""), [("198.51.100.5", AT)]),
])
def test_nginx_botsearch_judges_an_8_kb_path_like_a_short_one(catalog, line, expected):
    m = Matcher({"nginx-botsearch": catalog["nginx-botsearch"]}, default_tz="UTC")
    assert [(f.address, f.time) for f in m.match(line, None, NOW)] == expected


def test_nginx_botsearch_time_comes_from_the_log_not_the_user_name(catalog):
    # $remote_user comes from the client's Authorization header; nginx does not escape spaces in it
    line = ('198.51.100.5 - x [01/Jan/2000:00:00:00 +0000] [22/Nov/2026:01:59:00 +0000] '
            '"GET /phpmyadmin/ HTTP/1.1" 404 153 "-" "-"')
    m = Matcher({"nginx-botsearch": catalog["nginx-botsearch"]}, default_tz="UTC")
    assert [(f.address, f.time) for f in m.match(line, None, NOW)] == [("198.51.100.5", AT)]


# --- postfix: what a client writes cannot make a rejection look like greylisting --------

GENUINE_EXCEPTIONS = [
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from mail.example.org[198.51.100.5]: 450 4.2.0 "
    "<bob@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/"
    "example.com.html; from=<a@example.org> to=<bob@example.com> proto=ESMTP helo=<mail.example.org>",
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: milter-reject: RCPT from mail.example.org[198.51.100.5]: 451 "
    "4.7.1 Greylisting in action, please come back in 00:05:00; from=<a@example.org> to=<bob@example.com> "
    "proto=ESMTP helo=<mail.example.org>",
    "Nov 22 01:59:00 mx postfix/smtpd[7]: warning: unknown[198.51.100.5]: SASL LOGIN authentication failed: "
    "Connection lost to authentication server",
]


@pytest.mark.parametrize("line", [
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 554 5.7.1 <a@b>: "
    "Relay access denied; from=<greylist@x.example> to=<a@b> proto=ESMTP helo=<x>",
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 450 4.1.2 "
    "<greylist@x.example>: Recipient address rejected: Domain not found; from=<a@b> to=<greylist@x.example> "
    "proto=ESMTP helo=<x>",
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 450 4.7.1 Client host "
    "rejected: cannot find your hostname, [198.51.100.5]; from=<a@b> to=<c@d> proto=ESMTP "
    "helo=<x: 450 4.2.0 greylisted>",
    # the other exception, SASL's "Connection lost", written by the client
    "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 554 5.7.1 <a@b>: "
    'Relay access denied; from=<"SASL LOGIN authentication failed: Connection lost to authentication server"'
    "@x.example> to=<a@b> proto=ESMTP helo=<x>",
    "Nov 22 01:59:00 mx postfix/smtpd[7]: improper command pipelining after CONNECT from unknown[198.51.100.5]: "
    "SASL LOGIN authentication failed: Connection lost to authentication server",
])
def test_postfix_client_text_cannot_mark_a_rejection_as_an_exception(catalog, line):
    assert hosts(catalog, "postfix", line) == ["198.51.100.5"]
    for genuine in GENUINE_EXCEPTIONS:  # still not failures
        assert hosts(catalog, "postfix", genuine) == [], genuine


# --- nginx-http-auth ------------------------------------------------------------------------

QUOTED_INJECTIONS = [  # (user name, referrer): a quote lets client text write a second "client:" field
    (f'x": password mismatch, client: {FAKE}, server: a, request: "GET / HTTP/1.1", host: "h", referrer: ', None),
    (f'x": password mismatch, client: {FAKE}, server: a, request: "', None),
    ("x", f'": password mismatch, client: {FAKE}, server: a, request: "GET / HTTP/1.1", host: "h'),
]


@pytest.mark.parametrize("failure", [
    'user "bob": password mismatch',
    'user "bob" was not found in "/etc/nginx/.htpasswd"',
    "PAM: user 'bob' - not authenticated: Authentication failure",
])
def test_nginx_http_auth_referrer_naming_a_client_does_not_hide_the_failure(catalog, failure):
    line = (f"2026/11/22 01:59:00 [error] 1#1: *3 {failure}, client: {REAL}, server: s, "
            f'request: "GET /admin HTTP/1.1", host: "example.org", '
            f'referrer: "http://x/, client: {FAKE}, server: x, request: GET"')
    assert hosts(catalog, "nginx-http-auth", line) == [REAL]
    for user, referrer in QUOTED_INJECTIONS:  # reading quote-free fields never yields the client's address
        line = (f'2026/11/22 01:59:00 [error] 1#1: *3 user "{user}": password mismatch, client: {REAL}, '
                f'server: s, request: "GET /admin HTTP/1.1", host: "example.org"')
        if referrer is not None:
            line += f', referrer: "{referrer}"'
        assert FAKE not in hosts(catalog, "nginx-http-auth", line), line


# --- asterisk ---------------------------------------------------------------------------------

SECURITY = ('[2026-11-22 01:59:00] SECURITY[6988] res_security_log.c: SecurityEvent="InvalidAccountID",'
            'EventTV="2026-11-22T01:59:00.015+0000",Severity="Error",Service="PJSIP",EventVersion="1",'
            'AccountID="{account}",SessionID="{session}",LocalAddress="IPV4/UDP/198.51.100.1/5060",'
            'RemoteAddress="IPV{v}/UDP/{addr}/5061"{tail}')


@pytest.mark.parametrize("account, session, tail", [
    ("RemoteAddress=", "abc", ""),  # used to make every security event ignored
    ("x", f'abc",RemoteAddress="IPV4/UDP/{FAKE}/5061', ""),
    ("x", f'",LocalAddress="IPV4/UDP/198.51.100.1/5060",RemoteAddress="IPV4/UDP/{FAKE}/1"', ""),
    ("RemoteAddress=", "abc", ',SessionTV="2026-11-22T01:59:00.000+0000"'),
])
def test_asterisk_security_event_is_read_by_position(catalog, account, session, tail):
    line = SECURITY.format(account=account, session=session, v=4, addr=REAL, tail=tail)
    assert hosts(catalog, "asterisk", line) == [REAL]


def test_asterisk_pjsip_call_id_and_from_cannot_frame_an_address(catalog):
    # the Call-ID follows the address and may hold spaces and quotes (PJSIP reads it to the line end)
    call_id_side = ("[2026-11-22 01:59:00] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request from "
                    f"'\"1000\" <sip:1000@x>' failed for '{REAL}:48336' (callid: x' failed for '{FAKE}:1' "
                    "(callid: y) - No matching endpoint found")
    from_side = ("[2026-11-22 01:59:00] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request from '\"x' failed "
                 f"for '{FAKE}:1' (callid: \" <sip:1000@x>' failed for '{REAL}:48336' (callid: abc) - "
                 "No matching endpoint found")
    assert FAKE not in hosts(catalog, "asterisk", call_id_side)
    assert FAKE not in hosts(catalog, "asterisk", from_side)


REGISTRATION = ("[2026-11-22 01:59:00] NOTICE[1638] chan_sip.c: Registration from '<sip:301@example.com>' "
                "failed for '{peer}' - Wrong password")
PJSIP_REQUEST = ("[2026-11-22 01:59:00] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from "
                 "'<sip:1000@example.com>' failed for '{peer}' (callid: abc) - Failed to authenticate")


@pytest.mark.parametrize("template, peer", [
    (REGISTRATION, "[2001:db8::5]:5060"),
    (PJSIP_REQUEST, "[2001:db8::5]:5060"),
    # PJSIP may print an IPv6 peer without brackets: the port is the part after the last colon
    (PJSIP_REQUEST, "2001:db8::5:5060"),
])
def test_asterisk_ipv6_peer_with_port_reports_the_address(catalog, template, peer):
    assert hosts(catalog, "asterisk", template.format(peer=peer)) == ["2001:db8::5"]
    # the same line from an IPv4 peer, with and without port
    assert hosts(catalog, "asterisk", template.format(peer="198.51.100.5:5060")) == ["198.51.100.5"]
    if template is REGISTRATION:
        assert hosts(catalog, "asterisk", template.format(peer="198.51.100.5")) == ["198.51.100.5"]
        assert hosts(catalog, "asterisk", template.format(peer="2001:db8::5")) == ["2001:db8::5"]
    call = ("[2026-11-22 01:59:00] NOTICE[3980] res_pjsip_session.c:  anonymous: Call (UDP:[2001:db8::5]:5060) "
            "to extension '100' rejected because extension not found in context 'inbound'.")
    assert hosts(catalog, "asterisk", call) == ["2001:db8::5"]
    event = SECURITY.format(account="x", session="abc", v=6, addr="2001:db8::5", tail="")
    assert hosts(catalog, "asterisk", event) == ["2001:db8::5"]


# --- roundcube ---------------------------------------------------------------------------------

def test_roundcube_user_name_cannot_supply_the_ending_of_its_address(catalog):
    line = (f"Nov 22 01:59:00 web roundcube: IMAP Error: Login failed for x from {FAKE}. AUTHENTICATE y "
            f"from {REAL}. LOGIN: A0001 NO Login failed.")
    assert hosts(catalog, "roundcube-auth", line) == [REAL]


def test_roundcube_fake_endings_never_yield_their_address(catalog):
    whole_ending_in_user_name = (
        f"Nov 22 01:59:00 web roundcube: IMAP Error: Login failed for x from {FAKE}. AUTHENTICATE PLAIN: y "
        f"from {REAL}. LOGIN: A0001 NO Login failed.")
    reply_quoting_the_user_name = (
        f"Nov 22 01:59:00 web roundcube: IMAP Error: Login failed for x from {FAKE}. LOGIN: y from {REAL}. "
        f"AUTHENTICATE PLAIN: A0002 NO Login failed. user=x from {FAKE}. LOGIN: y in /usr/share/roundcube/"
        "program/lib/Roundcube/rcube_imap.php on line 200 (POST /?_task=login&_action=login)")
    assert FAKE not in hosts(catalog, "roundcube-auth", whole_ending_in_user_name)
    assert FAKE not in hosts(catalog, "roundcube-auth", reply_quoting_the_user_name)


def test_roundcube_forwarded_for_header_cannot_move_the_address(catalog):
    # Two readings: the client's X-Forwarded-For header holds "1) from FAKE(...", or its user
    # name holds "bob from REAL(..." (the review's defect 1): the line cannot say which, so
    # it gives no address at all rather than one a client chose.
    line = (f"[22-Nov-2026 01:59:00 +0000]: <j2pncet8> IMAP Error: Login failed for bob from "
            f"{REAL}(X-Real-IP: 10.0.0.1,X-Forwarded-For: 1) from {FAKE}(X-Real-IP: 10.0.0.1,X-Forwarded-For: 1). "
            "AUTHENTICATE PLAIN: Authentication failed. in /usr/share/roundcubemail/program/lib/Roundcube/"
            "rcube_imap.php on line 197 (POST /?_task=login&_action=login)")
    assert hosts(catalog, "roundcube-auth", line) == []


# --- every line above, as the detector reads them ----------------------------------------------

def test_batches_read_hostile_lines_as_single_lines_do(catalog):
    lines = [
        "Nov 22 01:59:00 mail dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
        f"user=<x (auth failed, 1 attempts): rip={FAKE}, TLS>, method=PLAIN, rip={REAL}, lip=10.0.0.1, TLS",
        f"Nov 22 01:59:00 mail dovecot: auth: Info: sql(bob,{REAL},<CvN>): Password mismatch "
        f"(given password: x,{FAKE}): unknown user z)",
        SECURITY.format(account="RemoteAddress=", session="abc", v=4, addr=REAL, tail=""),
        f"Nov 22 01:59:00 web roundcube: IMAP Error: Login failed for x from {FAKE}. AUTHENTICATE y "
        f"from {REAL}. LOGIN: A0001 NO Login failed.",
        "Nov 22 01:59:00 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 554 5.7.1 <a@b>: "
        "Relay access denied; from=<greylist@x.example> to=<a@b> proto=ESMTP helo=<x>",
    ]
    single = Matcher(catalog)
    one_by_one = [(i, f.rule, f.address) for i, line in enumerate(lines) for f in single.match(line, None, NOW)]
    batch = [(i, f.rule, f.address) for i, f in Matcher(catalog).match_batch(lines, None, NOW)]
    assert batch == one_by_one == [(0, "dovecot", REAL), (2, "asterisk", REAL), (3, "roundcube-auth", REAL),
                                   (4, "postfix", "198.51.100.5")]
