"""The notifier's Prometheus metrics (served by `pyfilter.common.metrics.serve`)."""

from prometheus_client import Counter

NOTICES = Counter("pyfilter_notifier_notices_total",
                  "Deliveries of ban notices, by channel and outcome (sent, failed, dropped)",
                  ["channel", "outcome"])
ERRORS = Counter("pyfilter_notifier_errors_total", "Errors, by kind", ["kind"])
