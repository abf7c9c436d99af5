"""`pyfilter import`: another tool's configuration (and ban list) as ours.

    fail2ban.py      pyfilter import fail2ban [DIR] --out OUTDIR   (fail2ban_*.py: its parts)
    pyfilter_v1.py   pyfilter import pyfilter-v1 FILE --out OUTDIR [--bans]   (pyfilter_v1_*.py)

docs/import.md says what maps, what is translated, and what is not.

The arguments are declared here and each importer is loaded only when its
command runs: `pyfilter match` and the others start without them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pyfilter.api.client import DEFAULT_URL


def add_commands(kinds) -> None:
    """`pyfilter import fail2ban` and `pyfilter import pyfilter-v1`, under `import`'s KIND choices."""
    _fail2ban(kinds)
    _pyfilter_v1(kinds)


def _lazy(module: str, function: str) -> Callable[[Any], int]:
    def run(args) -> int:
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(args)
    return run


def _fail2ban(kinds) -> None:
    p = kinds.add_parser("fail2ban", help="a fail2ban configuration (jails, filters) as PyFilter's")
    p.add_argument("dir", nargs="?", default="/etc/fail2ban", metavar="DIR",
                   help="fail2ban's configuration folder (default /etc/fail2ban)")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="where pyfilter.yaml, rules/ and import-report.txt are written")
    p.add_argument("--force", action="store_true", help="replace OUTDIR's pyfilter.yaml, rules/ and import-report.txt")
    p.add_argument("--config", metavar="FILE", help="the configuration whose other settings and catalog to start "
                                                    "from (default: as `pyfilter match`)")
    p.add_argument("--catalog", metavar="DIR", help="the rule catalog to map jails onto (default: the configuration's)")
    p.add_argument("--log-dir", default="/var/log", metavar="DIR",
                   help="the host folder mounted into the collector as /host/log (PYFILTER_LOG_DIR; default /var/log)")
    p.set_defaults(func=_lazy("fail2ban", "cmd_import_fail2ban"))


def _pyfilter_v1(kinds) -> None:
    p = kinds.add_parser("pyfilter-v1", help="the original PyFilter's config.json, and with --bans its ban list")
    p.add_argument("config", metavar="CONFIG.json", help="the original's Config/config.json")
    p.add_argument("--out", metavar="OUTDIR", help="write pyfilter.yaml, rules/ and import-report.txt here")
    p.add_argument("--force", action="store_true", help="write into an OUTDIR that holds files already")
    p.add_argument("--bantime", default="1d",
                   help='how long bans last, counted from each original ban: "1d", "1w", seconds, or -1 '
                        "for ever as in the original (default 1d)")
    p.add_argument("--log-dir", default="/var/log", metavar="DIR",
                   help="the host folder mounted into the collector as /host/log (PYFILTER_LOG_DIR; default /var/log)")
    p.add_argument("--catalog", metavar="DIR",
                   help="the rule catalog to map onto (default: the configuration's catalog_dir)")
    p.add_argument("--bans", action="store_true", help="post the original's ban list to our API")
    p.add_argument("--database", metavar="FILE",
                   help="read the bans from this SQLite file of the original's (default: the storage "
                        "settings.database names; sqlite.database, from the folder the original ran in)")
    p.add_argument("--from-redis", metavar="URL",
                   help="read the bans from this Redis of the original's (default for database redis: "
                        "redis://HOST:6379/DATABASE of config.json)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="zone of the ban times in the original's Redis (default: this host's)")
    p.add_argument("--url", help=f"our API (default: $PYFILTER_API_URL or {DEFAULT_URL})")
    p.add_argument("--token", help="write token (default: $PYFILTER_API_TOKEN, or compose/.env of a checkout)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the API (default 30)")
    p.set_defaults(func=_lazy("pyfilter_v1", "cmd_import"))
