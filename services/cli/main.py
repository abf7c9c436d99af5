"""The `pyfilter` command: one subcommand per function, wired here.

Exit codes: 0 ok, 2 usage or configuration error (with a message on stderr);
the API commands add 1 (not found, nothing to do), 3 (the API refused) and
4 (the API unreachable).
"""

from __future__ import annotations

import argparse
import sys

from pyfilter.cli import api, imports as importers, matching, replay, server, status
from pyfilter.common import shown
from pyfilter.common.timeparse import InvalidZone


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfilter", description="Log-driven intrusion prevention.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    matching.add_commands(sub)
    replay.add_commands(sub)
    api.add_commands(sub)
    status.add_command(sub)
    server.add_commands(sub)
    imports = sub.add_parser("import", help="import another tool's configuration (and ban list)")
    kinds = imports.add_subparsers(dest="kind", required=True, metavar="KIND")
    importers.add_commands(kinds)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # For a person, client text is made visible (common/shown.py); JSON escapes its own.
    out, err = sys.stdout, sys.stderr
    if not getattr(args, "json", False):
        sys.stdout = shown.Shown(out)  # type: ignore[assignment]
    sys.stderr = shown.Shown(err)  # type: ignore[assignment]
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = out, err


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except (matching.UsageError, InvalidZone) as exc:
        print(f"pyfilter {args.command}: {exc}", file=sys.stderr)
        return 2
    except api.CommandError as exc:
        print(f"pyfilter {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
