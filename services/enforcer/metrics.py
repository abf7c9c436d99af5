"""The enforcer's Prometheus metrics (served on the host's loopback only)."""

from prometheus_client import Counter, Gauge

DECISIONS = Counter("pyfilter_enforcer_decisions_total", "Decisions read, by action", ["action"])
APPLIED = Counter("pyfilter_enforcer_applied_total", "Bans and unbans applied to the kernel",
                  ["action"])
REFUSED = Counter("pyfilter_enforcer_refused_total",
                  "Bans refused (loopback, whitelist, this host's addresses)")
RECONCILES = Counter("pyfilter_enforcer_reconciles_total", "Reconciles of the kernel with the bans")
RECONCILE_CHANGES = Counter("pyfilter_enforcer_reconcile_changes_total",
                            "Elements a reconcile had to add or remove", ["change"])
KERNEL_BANS = Gauge("pyfilter_enforcer_kernel_bans", "Bans in the kernel after the last reconcile")
ERRORS = Counter("pyfilter_enforcer_errors_total", "Errors, by kind", ["kind"])
