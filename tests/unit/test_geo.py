"""GeoIP lookups against small MaxMind-format databases the tests build themselves."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from pyfilter.common.geo import UNKNOWN, Geo, Place

REPO = Path(__file__).resolve().parents[2]


def write_db(path: Path, database_type: str, networks: dict[str, dict]) -> str:
    # An IPv6 tree with IPv4 mapped in, as MaxMind's own databases are laid out.
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type,
                        languages=["en"], description="pyfilter test database")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture
def country_db(tmp_path: Path) -> str:
    return write_db(tmp_path / "country.mmdb", "GeoLite2-Country", {
        "198.51.100.0/25": {"country": {"iso_code": "NL", "names": {"en": "Netherlands"}}},
        "2001:db8::/48": {"country": {"iso_code": "DE", "names": {"en": "Germany"}}},
        # An address whose country is unknown but whose registry entry is known.
        "198.51.100.128/27": {"registered_country": {"iso_code": "AU"}},
    })


@pytest.fixture
def asn_db(tmp_path: Path) -> str:
    return write_db(tmp_path / "asn.mmdb", "GeoLite2-ASN", {
        "198.51.100.0/25": {"autonomous_system_number": 64500,
                            "autonomous_system_organization": "Example Hosting"},
        "198.51.100.192/26": {"autonomous_system_number": 64500,
                              "autonomous_system_organization": "Example Hosting"},
    })


def test_found_address_has_its_country_and_asn(country_db, asn_db):
    geo = Geo(country_db, asn_db)
    assert geo.available
    assert geo.lookup("198.51.100.7") == Place("NL", 64500, "Example Hosting")


def test_address_outside_every_network_is_unknown(country_db, asn_db):
    assert Geo(country_db, asn_db).lookup("198.51.100.170") == UNKNOWN


def test_address_in_the_asn_database_only_has_no_country(country_db, asn_db):
    assert Geo(country_db, asn_db).lookup("198.51.100.200") == Place(None, 64500, "Example Hosting")


def test_ipv6_address_and_banned_ipv6_prefix(country_db):
    geo = Geo(country_db)
    assert geo.lookup("2001:db8::66").country == "DE"
    assert geo.lookup("2001:db8:0:1::/64").country == "DE"  # a prefix ban: its first address
    assert geo.lookup("2001:db8:1::1") == UNKNOWN


def test_registered_country_stands_in_when_the_country_is_missing(country_db):
    assert Geo(country_db).lookup("198.51.100.137").country == "AU"


def test_city_database_answers_too(tmp_path):
    db = write_db(tmp_path / "city.mmdb", "DBIP-City-Lite", {
        "198.51.100.0/25": {"country": {"iso_code": "NL"}, "city": {"names": {"en": "Amsterdam"}}},
    })
    assert Geo(db).lookup("198.51.100.1").country == "NL"


def test_not_an_address_is_unknown(country_db):
    assert Geo(country_db).lookup("not-an-address") == UNKNOWN


def test_missing_file_is_unknown_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pyfilter.geo"):
        geo = Geo(str(tmp_path / "absent.mmdb"), str(tmp_path / "absent-asn.mmdb"))
    assert not geo.available
    assert geo.lookup("198.51.100.7") == UNKNOWN
    assert any("cannot open the country database" in r.getMessage() for r in caplog.records)
    assert any(getattr(r, "path", "").endswith("absent.mmdb") for r in caplog.records)


def test_no_database_configured_is_unknown_without_noise(caplog):
    with caplog.at_level(logging.WARNING, logger="pyfilter.geo"):
        geo = Geo()
        assert geo.lookup("198.51.100.7") == UNKNOWN
    assert not caplog.records


def test_file_that_is_not_a_database_is_unknown(tmp_path, caplog):
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"this is not a MaxMind database\n" * 100)
    with caplog.at_level(logging.WARNING, logger="pyfilter.geo"):
        geo = Geo(str(junk))
    assert not geo.available
    assert geo.lookup("198.51.100.7") == UNKNOWN
    assert caplog.records


def test_damaged_search_tree_is_unknown_not_an_exception(country_db, caplog):
    # The metadata (at the end) survives, so the file opens; the tree does not.
    data = Path(country_db).read_bytes()
    Path(country_db).write_bytes(b"\xff" * (len(data) // 2) + data[len(data) // 2:])
    geo = Geo(country_db)
    with caplog.at_level(logging.WARNING, logger="pyfilter.geo"):
        assert geo.lookup("198.51.100.7") == UNKNOWN
        assert geo.lookup("198.51.100.8") == UNKNOWN
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 1


def test_database_of_the_wrong_kind_is_reported_at_start(asn_db, caplog):
    with caplog.at_level(logging.WARNING, logger="pyfilter.geo"):
        geo = Geo(country_db=asn_db)  # an ASN database where the country one belongs
    assert not geo.available
    assert any("wrong kind" in r.getMessage() for r in caplog.records)


def test_lookups_are_cached(country_db, asn_db):
    geo = Geo(country_db, asn_db)
    first = geo.lookup("198.51.100.7")
    Path(country_db).unlink()  # the reader keeps its map; the cache answers anyway
    for _ in range(5):
        assert geo.lookup("198.51.100.7") == first
    info = geo.lookup.cache_info()
    assert (info.hits, info.misses) == (5, 1)


def test_tor_geoipdb_ranges_convert_to_a_country_database(tmp_path):
    # The converter the image runs over Debian's tor-geoipdb (see docs/geoip.md).
    spec = importlib.util.spec_from_file_location("tor2mmdb", REPO / "docker" / "tor-geoip-to-mmdb.py")
    tor2mmdb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tor2mmdb)
    v4, v6 = tmp_path / "geoip", tmp_path / "geoip6"
    first, last = int(ipaddress.IPv4Address("198.51.100.0")), int(ipaddress.IPv4Address("198.51.100.127"))
    v4.write_text(f"# IPFire Location, CC BY-SA 4.0\n{first},{last},NL\n{last + 1},{last + 128},??\n")
    v6.write_text("2001:db8::,2001:db8:0:ffff:ffff:ffff:ffff:ffff,DE\n")
    out = tmp_path / "country.mmdb"
    assert tor2mmdb.convert(str(v4), str(v6), str(out)) == 2
    geo = Geo(str(out))
    assert geo.lookup("198.51.100.7").country == "NL"
    assert geo.lookup("198.51.100.200") == UNKNOWN  # "??" stays unknown
    assert geo.lookup("2001:db8::66").country == "DE"
