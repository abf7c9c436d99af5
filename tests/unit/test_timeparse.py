"""Timestamps of log lines -> epoch seconds: formats, zones, year-less dates."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pyfilter.common.timeparse import Clock, InvalidZone, get_zone, parse_time

ZURICH = "Europe/Zurich"
NOW = datetime(2005, 8, 14, 10, 0, tzinfo=timezone.utc).timestamp()  # fail2ban's test "now"


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("line, expected", [
    ("2026-11-21T20:19:28.551146+00:00 host sshd[1]: x", utc(2026, 11, 21, 20, 19, 28)),
    ("2026-11-21T20:19:28Z x", utc(2026, 11, 21, 20, 19, 28)),
    ("2019-07-08T17:40:16.954167-04:00 host", utc(2019, 7, 8, 21, 40, 16)),
    ("<38>1 2019-07-08T17:40:16.954167-04:00 hostname sshd 57915 - - msg", utc(2019, 7, 8, 21, 40, 16)),
    ("[21/Nov/2026:20:19:28 +0100] x", utc(2026, 11, 21, 19, 19, 28)),
    ('21/Nov/2026:20:19:28 +0100', utc(2026, 11, 21, 19, 19, 28)),  # an access log's `time` capture
    ("[22-Jan-2013 22:28:21 +0200]: FAILED login", utc(2013, 1, 22, 20, 28, 21)),
    ("@400000004c91b044077a9e94 imap-login: x", utc(2010, 9, 16, 5, 51, 0)),
    ("audit(1373330716.415:4063): user", 1373330716.0),
])
def test_timestamps_with_a_zone_ignore_the_default_zone(line, expected):
    assert parse_time(line, ZURICH, NOW) == expected
    assert parse_time(line, "UTC", NOW) == expected


@pytest.mark.parametrize("line, local", [
    ("2012/04/09 11:53:29 [error] 2865#0: x", (2012, 4, 9, 11, 53, 29)),
    ("130324  0:04:00 [Warning] Access denied", (2013, 3, 24, 0, 4, 0)),
    ("2015-10-07  8:25:38 139845235329792 [Warning]", (2015, 10, 7, 8, 25, 38)),
    ("2013-11-16 21:59:30,121 novo proftpd[25891]", (2013, 11, 16, 21, 59, 30)),
    ("11-Aug-2013 03:36:11.372 error: client", (2013, 8, 11, 3, 36, 11)),
    ("Fri Jan 19 12:20:33 2007 [pid 27202]", (2007, 1, 19, 12, 20, 33)),
    ("[Sat Jul 20 21:34:49.453232 2013] [auth_basic:error]", (2013, 7, 20, 21, 34, 49)),
    ("[2012-02-13 17:21:54] NOTICE[1638] chan_sip.c", (2012, 2, 13, 17, 21, 54)),
])
def test_zoneless_timestamps_are_read_in_the_given_zone(line, local):
    assert parse_time(line, ZURICH, NOW) == datetime(*local, tzinfo=get_zone(ZURICH)).timestamp()
    assert parse_time(line, "UTC", NOW) == utc(*local)


def test_fractions_of_a_second_are_truncated():
    assert parse_time("2026-11-21T20:19:28.999+00:00", "UTC") == utc(2026, 11, 21, 20, 19, 28)


def test_yearless_dates_take_the_year_of_now():
    assert parse_time("Aug 14 10:00:01 host", ZURICH, NOW) == datetime(
        2005, 8, 14, 10, 0, 1, tzinfo=get_zone(ZURICH)).timestamp()


def test_yearless_dates_more_than_a_day_ahead_belong_to_the_previous_year():
    assert parse_time("Nov 28 09:16:03 srv sshd", ZURICH, NOW) == datetime(
        2004, 11, 28, 9, 16, 3, tzinfo=get_zone(ZURICH)).timestamp()
    assert parse_time("Aug 15 09:00:00 x", "UTC", NOW) == utc(2005, 8, 15, 9, 0, 0)
    assert parse_time("Aug 22 11:00:00 x", "UTC", NOW) == utc(2004, 8, 22, 11, 0, 0)


def test_new_year_lines_read_just_before_midnight_keep_the_new_year():
    dec31 = utc(2025, 12, 31, 23, 59, 0)
    assert parse_time("Jan  1 00:00:05 host x", "UTC", dec31) == utc(2026, 1, 1, 0, 0, 5)


def test_single_digit_and_zero_padded_days():
    assert parse_time("Feb 7 16:01:07 h", "UTC", NOW) == utc(2005, 2, 7, 16, 1, 7)
    assert parse_time("Jan  5 01:31:41 h", "UTC", NOW) == utc(2005, 1, 5, 1, 31, 41)
    assert parse_time("Jul 05 18:22:44 h", "UTC", NOW) == utc(2005, 7, 5, 18, 22, 44)


def test_the_timestamp_starting_a_line_wins():
    line = "2019-09-06T01:45:18 srv mysqld: 2019-09-06  1:45:18 140581192722176 [Warning]"
    assert parse_time(line, "UTC", NOW) == utc(2019, 9, 6, 1, 45, 18)
    line = "Nov 14 22:45:11 test haproxy[760]: x [14/Nov/2015:22:45:11.608]"
    assert parse_time(line, "UTC", NOW) == utc(2004, 11, 14, 22, 45, 11)


@pytest.mark.parametrize("line", [
    'srv nginx[983478]: 2023/12/09 21:35:20 [error] 1#1: *1 limiting requests',
    # Text an attacker chose: a user name, an access log's user field.
    "sshd[1]: Invalid user [1000000000] from 198.51.100.5 port 22",
    '198.51.100.5 - 2000-01-01T00:00:00 [22/Nov/2026:01:59:00 +0000] "GET /phpmyadmin/ HTTP/1.1" 404 153',
])
def test_a_timestamp_inside_the_line_is_never_taken(line):
    assert parse_time(line, "UTC", NOW) is None


def test_lines_without_a_timestamp_give_none():
    assert parse_time("srv sshd[123]: Failed password for root from 198.51.100.1", "UTC", NOW) is None
    assert parse_time("", "UTC", NOW) is None


def test_impossible_dates_give_none():
    assert parse_time("2026-02-30T10:00:00Z x", "UTC") is None
    assert parse_time("2026-13-01 10:00:00 x", "UTC") is None


def test_fixed_offsets_and_utc_names_are_zones():
    assert parse_time("2026-01-01 12:00:00 x", "+01:00") == utc(2026, 1, 1, 11, 0, 0)
    assert parse_time("2026-01-01 12:00:00 x", "UTC-0230") == utc(2026, 1, 1, 14, 30, 0)
    assert parse_time("2026-01-01 12:00:00 x", None) == utc(2026, 1, 1, 12, 0, 0)


def test_an_unknown_zone_is_a_clear_error():
    with pytest.raises(InvalidZone, match="unknown time zone"):
        get_zone("Mars/Olympus")


def test_daylight_saving_time_is_applied():
    summer = parse_time("2026-07-01 12:00:00 x", ZURICH)
    winter = parse_time("2026-01-01 12:00:00 x", ZURICH)
    assert summer == utc(2026, 7, 1, 10, 0, 0)
    assert winter == utc(2026, 1, 1, 11, 0, 0)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Zurich"])
def test_clock_reads_lines_like_parse_time(zone):
    """The clock's shortcut for syslog stamps never answers differently from parse_time."""
    lines = [
        "Aug 14 09:59:58 srv sshd[1]: a",
        "Aug 14 09:59:58 srv sshd[2]: b",  # the shortcut
        "Aug 14 09:59:58 2004 srv sshd[1]: a year after the stamp",
        "Aug 14 09:59:58  2004 srv x",
        "Aug 14 09:59:58.123 srv x",
        "Aug 14 09:59:58",
        "Aug 14 09:59:58 ",
        "Aug 14 09:59:58 12:00 x",
        "Aug  4 09:59:58 srv x",
        "Aug  4 09:59:58 srv y",
        "Dec 31 23:59:59 srv x",  # the year before "now"
        "Aug 14 09:59:58\tsrv x",
        "Feb 29 12:00:00 srv x",
        "Foo 14 09:59:58 srv x 2005-08-14T09:00:00Z",
        "2005-08-14T09:59:58+02:00 srv x",
    ]
    clock = Clock(get_zone(zone))
    for now in (NOW, NOW + 86400 * 200, None):
        for line in lines + lines[::-1]:
            assert clock(line, now) == parse_time(line, zone, now), (line, now)


@pytest.mark.parametrize("line, expected", [
    # Monit: a zone abbreviation before a year-less date
    ("[PDT Apr 16 21:05:29] error : x", "2005-04-17T04:05:29+00:00"),
    ("[CEST Aug  6 10:14:52] error : x", "2005-08-06T08:14:52+00:00"),
    # java.util.logging's SimpleFormatter (Guacamole 0.8)
    ("apr 15, 2013 8:34:08 PM org.slf4j.impl.JCLLoggerAdapter warn", "2013-04-15T20:34:08+00:00"),
    ("Apr 16, 2013 12:02:13 AM x", "2013-04-16T00:02:13+00:00"),
    # DirectAdmin's login.log
    ("2014:07:02-00:17:45: '198.51.100.7' 2 failed login attempts", "2014-07-02T00:17:45+00:00"),
    ("2011.11.21 14:29:16 LOG3[28228:1]: SSL_accept", "2011-11-21T14:29:16+00:00"),  # stunnel
    ("[17/Jun/2011 17:00:45] Attempt to deliver", "2011-06-17T17:00:45+00:00"),  # Kerio
    ("[02/sept./2015:00:11:31 +0200] x", "2015-09-01T22:11:31+00:00"),  # Jetty, in French
    ("Apr-07-13 07:08:36 [SSL-out]", "2013-04-07T07:08:36+00:00"),  # ASSP
    ("10/06/2013 15:50:41 [LOGIN_ERROR]", "2013-10-06T15:50:41+00:00"),  # Squirrel Logger
    ("03/07/2005 11:07:20 PM   SMTP Server", "2005-03-07T23:07:20+00:00"),  # Domino, US
    ("22.06.2014 09:56:12   smtp: x", "2014-06-22T09:56:12+00:00"),  # Domino, Europe
    ("2023-08-19 10:44:02: (mod_auth.c.853)", "2023-08-19T10:44:02+00:00"),  # lighttpd
    ("2020-04-09T14:04:00.667Z: Failed Login", "2020-04-09T14:04:00+00:00"),  # GitLab: the Z counts
    ("11-06-2013 02:09:40 +0300 PROXY.3128 00004", "2013-06-10T23:09:40+00:00"),  # 3proxy
    ("L 01/01/2014 - 01:25:17: Bad Rcon", "2014-01-01T01:25:17+00:00"),  # Half-Life servers
    ("13/7/14@00:58:09: FAIL: ssh", "2013-07-14T00:58:09+00:00"),  # xinetd's own log
    ("08-14 09:58:00.767815 [WARNING] sofia_reg.c", "2005-08-14T09:58:00+00:00"),  # FreeSWITCH
    # a time of day alone (logback): today, or yesterday when that is later than now
    ("09:58:00.123 [main] WARN x", "2005-08-14T09:58:00+00:00"),
    ("23:58:00 x", "2005-08-13T23:58:00+00:00"),
])
def test_more_daemons_own_stamps(line, expected):
    assert parse_time(line, "UTC", NOW) == datetime.fromisoformat(expected).timestamp()
