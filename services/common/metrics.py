"""Prometheus metrics: every service exposes its own, named pyfilter_<service>_*.

Services without an HTTP server (collector, detector, enforcer, notifier) serve
them on `PYFILTER_METRICS_PORT` (each has a default; 0 turns it off); the api
serves them at /metrics beside its routes. Both serve the process's one
registry, so every service also reports the process_* and python_* metrics.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger("pyfilter.metrics")

DEFAULT_PORTS = {"collector": 9101, "detector": 9102, "enforcer": 9103, "notifier": 9104}


def serve(service: str, *collectors: Collector, host: str = "0.0.0.0") -> int:
    """Start the metrics endpoint of `service`; returns its port (0: off).

    `collectors` are read at scrape time (the collector's sources count in
    plain attributes, not in prometheus_client's own counters)."""
    port = int(os.environ.get("PYFILTER_METRICS_PORT", DEFAULT_PORTS[service]))
    if not port:
        return 0
    for collector in collectors:
        REGISTRY.register(collector)
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        # Metrics are for watching; a port clash must not stop the service's work.
        log.error("cannot serve metrics; set PYFILTER_METRICS_PORT (0 turns them off)",
                  extra={"port": port, "error": str(exc)})
        return 0
    log.info("metrics served", extra={"port": port, "bind": host})
    return port


def exposition() -> tuple[bytes, str]:
    """The current metrics of this process in the text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
