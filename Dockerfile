# One image for every PyFilter service; the compose file picks the command.
#
# Real users build it as is (python:3.12-slim from a registry, packages from
# PyPI). Air-gapped builds (no registry; how `make up` builds here) pass
#   BASE_IMAGE=pyfilter-base:bookworm-4  PIP_NO_INDEX=1  PIP_FIND_LINKS=/wheels
# with the wheelhouse in docker/wheels (see docker/build-base.sh and
# docker/build-wheels.sh). No BuildKit features: the legacy builder must do.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/wheels /wheels
RUN python3 -m venv /opt/pyfilter
COPY pyproject.toml /src/
COPY services /src/services
RUN /opt/pyfilter/bin/pip install /src

# A default country database: Debian's tor-geoipdb carries IPFire Location
# data (CC BY-SA 4.0) as text ranges; turn it into the MaxMind format.
# A stage of its own, so code changes do not redo it.
FROM ${BASE_IMAGE} AS geoip
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/wheels /wheels
COPY docker/tor-geoip-to-mmdb.py /build/
RUN cd /build && apt-get update -q && apt-get download -q tor-geoipdb \
    && dpkg-deb -x tor-geoipdb_*.deb tor && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv venv && venv/bin/pip install -q mmdb-writer \
    && mkdir -p /geoip && venv/bin/python tor-geoip-to-mmdb.py \
       tor/usr/share/tor/geoip tor/usr/share/tor/geoip6 /geoip/country.mmdb \
    && (cp tor/usr/share/doc/tor-geoipdb/copyright /geoip/ 2>/dev/null || true)

FROM ${BASE_IMAGE}
# The enforcer's iptables backend installs its rules with iptables-restore
# (nft is handy for operators); the collector reads the journal with
# journalctl (package systemd); `pyfilter replay` runs a redis-server of its
# own. The air-gapped base already has all four.
RUN if ! command -v nft >/dev/null || ! command -v iptables >/dev/null || ! command -v journalctl >/dev/null \
        || ! command -v redis-server >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends nftables iptables systemd redis-server \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && (getent passwd pyfilter >/dev/null || useradd --system --uid 10001 --no-create-home pyfilter)
COPY --from=build /opt/pyfilter /opt/pyfilter
# The collector, detector and enforcer run `python -OO` (no docstrings: ~2 MB
# less each, docs/benchmarks.md "Idle cost"); without these compiled files
# each start would compile every module again, and hold more. The files
# excluded are the ones CPython's own install leaves out (test data that is
# not valid Python on purpose).
RUN /opt/pyfilter/bin/python -OO -m compileall -q -j0 -x 'bad_coding|badsyntax|lib2to3/tests/data' \
        "$(/opt/pyfilter/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
        /opt/pyfilter/lib >/dev/null
COPY --from=geoip /geoip /usr/share/pyfilter/geoip
COPY config /etc/pyfilter
ENV PATH=/opt/pyfilter/bin:$PATH \
    PYFILTER_CONFIG=/etc/pyfilter/pyfilter.yaml \
    PYTHONUNBUFFERED=1
USER pyfilter
CMD ["python", "-m", "pyfilter.detector"]
