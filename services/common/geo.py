"""Country and network owner (ASN) of an address, from MaxMind-format databases.

The databases are optional: with none configured or readable, every lookup
answers None and the api shows "unknown". Any MaxMind DB works: GeoLite2 /
GeoIP2 Country or City, DB-IP's free "lite" databases, or one of your own.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import geoip2.database
import geoip2.errors
import maxminddb

log = logging.getLogger("pyfilter.geo")


class Place(NamedTuple):
    country: str | None  # ISO 3166-1 alpha-2, e.g. "NL"
    asn: int | None
    org: str | None


UNKNOWN = Place(None, None, None)


def _open(path: str | None, what: str) -> geoip2.database.Reader | None:
    if not path:
        return None
    try:
        return geoip2.database.Reader(path)
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
        log.warning("cannot open the %s database, lookups answer unknown", what,
                    extra={"path": path, "error": str(exc)})
        return None


class Geo:
    def __init__(self, country_db: str | None = None, asn_db: str | None = None):
        self._country = _open(country_db, "country")
        self._asn = _open(asn_db, "ASN")
        self.lookup = functools.lru_cache(maxsize=65536)(self._lookup)

    @property
    def available(self) -> bool:
        return self._country is not None

    def _lookup(self, address: str) -> Place:
        return Place(self._country_of(address), *self._asn_of(address))

    def _country_of(self, address: str) -> str | None:
        if self._country is None:
            return None
        try:
            kind = self._country.metadata().database_type
            record = self._country.city(address) if "City" in kind else self._country.country(address)
        except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
            return None
        return record.country.iso_code or record.registered_country.iso_code

    def _asn_of(self, address: str) -> tuple[int | None, str | None]:
        if self._asn is None:
            return None, None
        try:
            record = self._asn.asn(address)
        except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
            return None, None
        return record.autonomous_system_number, record.autonomous_system_organization

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()
