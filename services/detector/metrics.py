"""The detector's Prometheus metrics (served by `pyfilter.common.metrics.serve`)."""

from prometheus_client import Counter, Gauge

LINES = Counter("pyfilter_detector_lines_total", "Log lines matched against the rules", ["source"])
FAILURES = Counter("pyfilter_detector_failures_total", "Failures counted into windows", ["rule"])
BANS = Counter("pyfilter_detector_bans_total", "Ban decisions written", ["rule"])
BATCHES = Counter("pyfilter_detector_batches_total", "Entries of the lines stream finished")
PRUNED = Counter("pyfilter_detector_pruned_total", "Expired bans removed from the active set")
ERRORS = Counter("pyfilter_detector_errors_total", "Errors, by kind", ["kind"])
LAG = Gauge("pyfilter_detector_lag_entries",
            "Entries of the lines stream that no detector has read yet")
PENDING = Gauge("pyfilter_detector_pending_entries",
                "Entries read by a detector and not yet finished")
