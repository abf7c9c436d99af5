"""The collector's pure text rules: raw bytes to line text, journal and Docker formats."""

from __future__ import annotations

from pyfilter.collector.sources.base import Stats, to_text
from pyfilter.collector.sources.containers import decode_entry, parse_time
from pyfilter.collector.sources.journal import Entry, format_entry


def test_invalid_utf8_is_replaced_not_fatal():
    assert to_text(b"user \xff\xfe from 1.2.3.4", 100, Stats()) == "user \ufffd\ufffd from 1.2.3.4"


def test_nul_bytes_and_carriage_return_are_dropped():
    assert to_text(b"\x00\x00a\x00b\r", 100, Stats()) == "ab"


def test_long_line_is_cut_and_counted():
    stats = Stats()
    assert to_text(b"x" * 300, 256, stats) == "x" * 256
    assert stats.cut == 1


def test_journal_entry_reads_like_an_rfc3339_syslog_line():
    entry = Entry(cursor="s=1", realtime="1700000000123456", message="Failed password for root",
                  hostname="web1", identifier="sshd", pid="42")
    assert format_entry(entry, 1000, Stats()) == (
        "2023-11-14T22:13:20.123456+00:00 web1 sshd[42]: Failed password for root")


def test_journal_binary_message_is_decoded_with_replacement():
    entry = Entry(cursor="s=1", realtime="0", message=[104, 105, 255], identifier="x")
    assert format_entry(entry, 1000, Stats()).endswith(" x: hi\ufffd")


def test_docker_times_are_utc_with_up_to_nine_fraction_digits():
    assert parse_time("2024-05-01T10:00:00Z") == 1714557600.0
    assert parse_time("2024-05-01T10:00:00.5Z") == 1714557600.5
    assert abs(parse_time("2024-05-01T10:00:00.123456789Z") - 1714557600.123456789) < 1e-6
    assert parse_time("2024-05-01 10:00:00") is None


def test_a_json_file_line_that_is_not_json_is_refused_not_fatal():
    assert decode_entry('{"log":"hi\\n","stream":"stdout","time":"2024-05-01T10:00:00Z"}').log == "hi\n"
    assert decode_entry('{"log":"cut by a cra') is None
