# One image for every PyFilter service; the compose file picks the command.
#
# Real users build it as is (python:3.12-slim from a registry, packages from
# PyPI). Air-gapped builds (no registry; how `make up` builds here) pass
#   BASE_IMAGE=pyfilter-base:bookworm-3  PIP_NO_INDEX=1  PIP_FIND_LINKS=/wheels
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

FROM ${BASE_IMAGE}
# The enforcer's iptables backend installs its rules with iptables-restore
# (nft is handy for operators); the air-gapped base already has both.
RUN if ! command -v nft >/dev/null || ! command -v iptables >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends nftables iptables \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && (getent passwd pyfilter >/dev/null || useradd --system --uid 10001 --no-create-home pyfilter)
COPY --from=build /opt/pyfilter /opt/pyfilter
COPY config /etc/pyfilter
ENV PATH=/opt/pyfilter/bin:$PATH \
    PYFILTER_CONFIG=/etc/pyfilter/pyfilter.yaml \
    PYTHONUNBUFFERED=1
USER pyfilter
CMD ["python", "-m", "pyfilter.detector"]
