"""Which zone the collector says a source writes zone-less timestamps in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyfilter.collector import main as collector
from pyfilter.common.config import ConfigError, Source, load


def test_the_source_setting_wins(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Zurich")
    zone = collector.source_zone(Source(name="auth", paths=["/x"], timezone="America/New_York"))
    assert zone() == "America/New_York"


def test_tz_then_the_hosts_zone_file_gives_its_offset_now(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert collector.source_zone(Source(name="auth", paths=["/x"]))() == "Asia/Tokyo"
    monkeypatch.delenv("TZ")
    host_zone = tmp_path / "localtime"
    shutil.copy("/usr/share/zoneinfo/Asia/Kolkata", host_zone)
    monkeypatch.setattr(collector, "HOST_LOCALTIME", host_zone)
    assert collector.source_zone(Source(name="auth", paths=["/x"]))() == "+0530"


def test_a_bad_zone_is_a_configuration_error(tmp_path: Path):
    file = tmp_path / "pyfilter.yaml"
    file.write_text("collector:\n  sources:\n    - {name: auth, paths: [/x], timezone: Mars/Olympus}\n")
    with pytest.raises(ConfigError, match="source 'auth': timezone: unknown time zone \"Mars/Olympus\""):
        load(file)


def test_an_unreadable_host_zone_file_falls_back_to_this_machine(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("TZ", raising=False)
    broken = tmp_path / "localtime"
    broken.write_bytes(b"not a zone file")
    monkeypatch.setattr(collector, "HOST_LOCALTIME", broken)
    assert collector.source_zone(Source(name="auth", paths=["/x"]))() == collector._machine_zone()
