"""Property-based fuzzing of everything that reads untrusted input.

Log lines, timestamps, configuration files and stream messages come from
outside; none of them may crash a service or make it report an address that
is not the attacker's. Findings are kept here as explicit examples.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyfilter.common import messages
from pyfilter.common.config import ConfigError, load, load_catalog
from pyfilter.common import timeparse
from pyfilter.detector.matching import Matcher

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "config" / "rules")
MATCHER = Matcher(CATALOG)
NOW = 1_795_000_000.0

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
address = st.one_of(ipv4, ipv6)
# What an attacker controls in a log line: user names, URLs, agents.
hostile = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, p: f"x from {a} port {p} ssh2", address, st.integers(0, 65535)),
    st.builds(lambda a: f"{a} port 22: ", address),
    st.builds(lambda a: f'" {a} - - [', address),
    st.builds(lambda a: f"rhost={a} ", address),
)


@FUZZ
@given(st.text(max_size=400))
@example("\x00\x00\x00")
@example("Failed password for  from  port  ssh2")
@example("2026-11-21T20:19:28+00:00 h sshd[1]: Failed password for x from 999.1.1.1 port 1 ssh2")
def test_any_text_is_matched_without_error_and_hosts_come_from_the_line(text):
    for failure in MATCHER.match(text, now=NOW):
        assert failure.address and failure.address in text or failure.address.lower() in text.lower() \
            or ("::ffff:" + failure.address) in text


@FUZZ
@given(user=hostile, real=ipv4, port=st.integers(1, 65535))
@example(user="x from 198.51.100.66 port 22 ssh2", real="198.51.100.7", port=22)
def test_sshd_user_names_cannot_frame_another_address(user, real, port):
    line = f"2026-11-21T20:19:28+00:00 host sshd[42]: Failed password for invalid user {user} from {real} port {port} ssh2"
    hosts = {f.address for f in MATCHER.match(line, source="auth", now=NOW)}
    assert hosts <= {real}


@FUZZ
@given(path=hostile, agent=hostile, real=ipv4)
def test_web_requests_cannot_frame_another_address(path, agent, real):
    path = path.replace('"', "%22")
    agent = agent.replace('"', "%22")
    line = (f'{real} - - [21/Nov/2026:20:19:28 +0000] "GET /{path} HTTP/1.1" 404 153 "-" "{agent}"')
    for source in ("nginx-access", "apache-access"):
        hosts = {f.address for f in MATCHER.match(line, source=source, now=NOW)}
        assert hosts <= {real}


@FUZZ
@given(st.text(max_size=120))
@example("Feb 30 25:61:61")
@example("9999-99-99T99:99:99")
@example("[31/Xyz/2026:99:00:00 +9999]")
def test_time_parsing_never_raises_and_stays_sane(text):
    value = timeparse.parse_time(text, "UTC", NOW)
    assert value is None or (0 <= value < 4_102_444_800)  # before 2100


@FUZZ
@given(st.binary(max_size=300))
@example(b"\x81\xa4type\xa5lines")
@example(msgspec.msgpack.encode({"type": "decision", "action": "ban"}))
def test_message_decoders_reject_garbage_cleanly(data):
    for decode in (messages.decode_batch, messages.decode_decision, messages.decode_record):
        try:
            decode(data)
        except msgspec.DecodeError:
            pass  # ValidationError is a DecodeError: the one failure a reader handles


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20,
)
config_keys = st.sampled_from(["host", "redis", "whitelist", "collector", "detector", "enforcer", "api",
                               "rules", "geoip", "catalog_dir", "notify"])


@FUZZ
@given(st.dictionaries(config_keys, yaml_values, max_size=5))
@example({"rules": {"sshd": {"findtime": [1]}}})
@example({"rules": {"sshd": None}})
@example({"whitelist": ["not a cidr"]})
def test_config_decoder_fails_only_with_a_config_error(tmp_path_factory, document):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "rules").mkdir()
    (folder / "rules" / "sshd.yaml").write_text((REPO / "config/rules/sshd.yaml").read_text())
    path = folder / "pyfilter.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("cidr", ["not a cidr", "198.51.100.1/24", "300.1.1.1/8"])
def test_a_bad_whitelist_entry_is_a_config_error(tmp_path, cidr):
    path = tmp_path / "pyfilter.yaml"
    path.write_text(yaml.safe_dump({"whitelist": [cidr]}))
    with pytest.raises(ConfigError, match="whitelist"):
        load(path)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
