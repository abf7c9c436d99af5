"""Turn Debian's tor-geoipdb files into a MaxMind-format country database.

Debian's `tor-geoipdb` package carries IPFire Location country data (CC BY-SA
4.0, see the header of the files) as text ranges: `/usr/share/tor/geoip`
holds `first,last,CC` with IPv4 addresses as integers, `/usr/share/tor/geoip6`
the same with IPv6 addresses written out. PyFilter reads .mmdb files, so the
image builds one from them (about a minute):

    python3 tor-geoip-to-mmdb.py /usr/share/tor/geoip /usr/share/tor/geoip6 out.mmdb

Needs `mmdb-writer` (and its `netaddr`), at build time only.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import defaultdict

from mmdb_writer import MMDBWriter
from netaddr import IPRange, IPSet

# "Country" in the type is what geoip2's country() looks for.
DATABASE_TYPE = "IPFire-Location-Country"
DESCRIPTION = ("IPFire Location country data (https://location.ipfire.org/, CC BY-SA 4.0), "
               "converted from Debian's tor-geoipdb")


def read_ranges(path: str, integers: bool) -> dict[str, list[IPRange]]:
    ranges: dict[str, list[IPRange]] = defaultdict(list)
    with open(path, encoding="ascii") as lines:
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            first, last, country = line.split(",")
            if country == "??":  # tor's "not known"
                continue
            if integers:
                first, last = (str(ipaddress.IPv4Address(int(a))) for a in (first, last))
            ranges[country].append(IPRange(first, last))
    return ranges


def convert(ipv4_path: str, ipv6_path: str, out_path: str) -> int:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=DATABASE_TYPE,
                        languages=["en"], description=DESCRIPTION)
    by_country: dict[str, list[IPRange]] = defaultdict(list)
    for path, integers in ((ipv4_path, True), (ipv6_path, False)):
        for country, ranges in read_ranges(path, integers).items():
            by_country[country].extend(ranges)
    # One insert per country: an IPSet merges its ranges into few networks,
    # which keeps the build to about a minute.
    for country, ranges in sorted(by_country.items()):
        writer.insert_network(IPSet(ranges), {"country": {"iso_code": country}})
    writer.to_db_file(out_path)
    return len(by_country)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} GEOIP GEOIP6 OUT.mmdb")
    print(f"{sys.argv[3]}: {convert(*sys.argv[1:])} countries")
