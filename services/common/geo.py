"""Country and network owner (ASN) of an address, from MaxMind-format databases.

The databases are optional: with none configured or readable, every lookup
answers None and the api shows "unknown". Any MaxMind DB works: GeoLite2 /
GeoIP2 Country, City or Enterprise, DB-IP's free "lite" databases, or one of
your own; for the ASN, GeoLite2-ASN (or a database compatible with it, like
DB-IP's ASN lite) or GeoIP2-ISP. See docs/geoip.md.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable
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

# geoip2 picks its model by the database type (a substring of the metadata's
# `database_type`); asking a City database for `country()` raises TypeError.
# So the method is chosen once, when the file is opened, and a database of the
# wrong kind is reported then rather than answering "unknown" forever in silence.
_COUNTRY_METHODS = (("Enterprise", "enterprise"), ("City", "city"), ("Country", "country"))
_ASN_METHODS = (("GeoLite2-ASN", "asn"), ("ISP", "isp"))

# A lookup in a damaged file raises InvalidDatabaseError (the metadata at the
# end of the file can be intact while the search tree is not).
_MISSES = (geoip2.errors.AddressNotFoundError, ValueError, TypeError)


def _open(path: str | None, what: str, methods: tuple[tuple[str, str], ...]) -> Callable | None:
    """The reader's lookup method suited to the database at `path`, or None."""
    if not path:
        return None
    try:
        reader = geoip2.database.Reader(path)
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
        log.warning("cannot open the %s database, lookups answer unknown", what,
                    extra={"path": path, "error": str(exc)})
        return None
    kind = reader.metadata().database_type
    for marker, method in methods:
        if marker in kind:
            return getattr(reader, method)
    reader.close()
    log.warning("the %s database is of the wrong kind, lookups answer unknown", what,
                extra={"path": path, "database_type": kind})
    return None


def _host(address: str) -> str:
    """The address to look up: a banned network (2001:db8::/64) by its first address."""
    return str(ipaddress.ip_network(address, strict=False).network_address) if "/" in address \
        else address


class Geo:
    def __init__(self, country_db: str | None = None, asn_db: str | None = None):
        self._country = _open(country_db, "country", _COUNTRY_METHODS)
        self._asn = _open(asn_db, "ASN", _ASN_METHODS)
        self._damaged: set[str] = set()
        self.lookup = functools.lru_cache(maxsize=65536)(self._lookup)

    @property
    def available(self) -> bool:
        return self._country is not None

    def _lookup(self, address: str) -> Place:
        try:
            host = _host(address)
        except ValueError:
            return UNKNOWN
        country = self._query(self._country, host, "country")
        asn = self._query(self._asn, host, "ASN")
        return Place(
            country and (country.country.iso_code or country.registered_country.iso_code),
            asn and asn.autonomous_system_number,
            asn and asn.autonomous_system_organization,
        )

    def owner_network(self, address: str) -> tuple[int, str] | None:
        """The owner (ASN) of an address and the database's network it is in
        ("198.51.100.0/24"), or None when the ASN database does not know it."""
        found = self._query(self._asn, address, "ASN")
        if found is None or found.autonomous_system_number is None:
            return None
        return found.autonomous_system_number, str(found.network)

    def _query(self, method: Callable | None, host: str, what: str):
        if method is None:
            return None
        try:
            return method(host)
        except _MISSES:
            return None
        except maxminddb.InvalidDatabaseError as exc:
            if what not in self._damaged:  # once, not once per banned address
                self._damaged.add(what)
                log.warning("the %s database is damaged, lookups answer unknown", what,
                            extra={"error": str(exc)})
            return None

    def close(self) -> None:
        for method in (self._country, self._asn):
            if method is not None:
                method.__self__.close()
