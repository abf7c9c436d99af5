"""The configuration file: good files load, bad ones say exactly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyfilter.common.config import ConfigError, load, parse_duration

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "sshd.yaml").write_text(
        "service: sshd\nsources: [auth]\npatterns: ['Failed password for .* from <HOST> port \\d+']\n")
    path = tmp_path / "pyfilter.yaml"
    path.write_text(text)
    return path


def test_shipped_configuration_loads_with_its_catalog():
    settings = load(REPO / "config" / "pyfilter.yaml")
    assert "sshd" in settings.rules
    assert settings.rules["sshd"].findtime == 600
    names = [s.name for s in settings.config.collector.sources]
    assert {"auth", "nginx-access", "mail"} <= set(names)


@pytest.mark.parametrize("text, message", [
    ("rules:\n  sshd: {findtime: ten}\n", 'rules.sshd.findtime: expected a duration like "10m", got "ten"'),
    ("rules:\n  sshd: {maxretry: '5'}\n", "rules.sshd.maxretry: expected int, got str"),
    ("rules:\n  sshd: {maxretry: 0}\n", "rules.sshd.maxretry: expected int >= 1"),
    ("redis: {url: 5}\n", "redis.url: expected str, got int"),
    ("collector:\n  sources: [{name: a, paths: []}]\n", "collector.sources[0]: source 'a' of type file needs"),
    ("api: {port: 99999}\n", "api.port: expected int <= 65535"),
    ("colector: {}\n", "object contains unknown field colector"),
    ("rules:\n  nosuch: {}\n", "rules.nosuch: no rule 'nosuch' in the catalog"),
    ("rules: [unclosed\n", "not valid YAML"),
])
def test_bad_file_names_the_field_and_what_was_expected(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "pyfilter.yaml") in str(err.value)


def test_the_enforcer_loads_the_configuration_without_the_catalog(tmp_path):
    """Decisions carry their scope: the enforcer (rules=False) reads no rule file,
    so neither a rule's settings nor the catalog's state can stop it."""
    path = write(tmp_path, "rules:\n  sshd: {maxretry: 3}\n  nosuch: {}\nenforcer: {backend: iptables}\n")
    with pytest.raises(ConfigError, match="no rule 'nosuch'"):
        load(path)
    settings = load(path, rules=False)
    assert settings.rules == {}
    assert settings.config.enforcer.backend == "iptables"


@pytest.mark.parametrize("notify, channel", [
    ("", False),
    ("notify: {manual: true}\n", False),
    ("notify: {webhook: {url: 'https://hooks.example.org/bans'}}\n", True),
    ("notify: {email: {host: 127.0.0.1, from: a@example.org, to: [b@example.org]}}\n", True),
])
def test_a_notification_channel_is_configured_by_mail_or_webhook_only(tmp_path, notify, channel):
    """What starts the notifier (compose/profiles.sh) and gives it work (notifier/main.py)."""
    assert load(write(tmp_path, notify), rules=False).config.notify.any_channel is channel


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")


def test_a_binary_file_is_a_clear_error(tmp_path):
    """A log or an archive given as the configuration: named as such, no traceback."""
    path = tmp_path / "pyfilter.yaml"
    path.write_bytes(b"rules:\n\x1f\x8b\x08\x00\xff\xfe garbage\n")
    with pytest.raises(ConfigError, match=r"pyfilter.yaml: not UTF-8 text \(byte 8 of the file\)"):
        load(path)


@pytest.mark.parametrize("text, seconds", [(600, 600), ("600", 600), ("10m", 600), ("1h", 3600),
                                           ("2d", 172800), ("1w", 604800), (-1, -1), ("-1", -1)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten", "10x", "", "-5", True, "1.5h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_cluster_with_replica_confirmation_is_taken_from_file_and_environment(tmp_path, monkeypatch):
    file = tmp_path / "pyfilter.yaml"
    file.write_text("redis: {url: 'redis://127.0.0.1:7000', cluster: true, wait_replicas: 1}\n")
    redis = load(file, rules=False).config.redis
    assert (redis.cluster, redis.wait_replicas) == (True, 1)
    file.write_text("redis: {url: 'redis://127.0.0.1:7000'}\n")
    monkeypatch.setenv("PYFILTER_REDIS_CLUSTER", "yes")
    monkeypatch.setenv("PYFILTER_REDIS_WAIT_REPLICAS", "1")
    redis = load(file, rules=False).config.redis
    assert (redis.cluster, redis.wait_replicas) == (True, 1)
