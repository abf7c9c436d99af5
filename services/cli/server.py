"""`pyfilter server ...`: the shared Redis's users (server_users.py does the work).

The arguments are declared here and server_users.py, with redis-py, the
ledger and the ACL rules, is loaded only when a `server` command runs:
`pyfilter match` and the others start without them.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        users = importlib.import_module("pyfilter.cli.server_users")
        return users.guarded(getattr(users, name))(args)
    return run


def add_commands(sub) -> None:
    server = sub.add_parser("server", help="the shared Redis's users (run on the server, as its admin)")
    verbs = server.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("init", help="make the detectors', api's and notifier's users; load the ledger")
    p.set_defaults(func=_lazy("cmd_init"))
    p = verbs.add_parser("add-host", help="make a protected host's user and print what its agent needs")
    p.add_argument("host")
    p.add_argument("--url", help="the Redis URL agents use, without user: rediss://SERVER:6379/0 "
                                 "(env PYFILTER_PUBLIC_REDIS_URL)")
    p.add_argument("--ca", help="the CA certificate agents verify the server with (copied beside the env file)")
    p.add_argument("--out", help="write HOST.env (and HOST-ca.crt) into this folder instead of printing")
    p.set_defaults(func=_lazy("cmd_add_host"))
    p = verbs.add_parser("remove-host", help="revoke a host's user; the other hosts keep running")
    p.add_argument("host")
    p.set_defaults(func=_lazy("cmd_remove_host"))
