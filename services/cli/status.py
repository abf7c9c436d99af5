"""`pyfilter status`: what is protected, host by host (the API's GET /api/v1/status, as text).

    pyfilter status [--json] [--url URL]

Exit codes as the other API commands (api.py); problems are printed, not an error.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from pyfilter.cli.api import OK, call, client_for, connection_options, emit_json, table, when


def cmd_status(args: argparse.Namespace) -> int:
    _, report = call(client_for(args), "GET", "/status")
    if args.json:
        emit_json(report)
    else:
        print(render(report), end="")
    return OK


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    for h in report["hosts"]:
        out.append(f"host {h['host']}: collector {_reporting(h['collector'])}, "
                   f"enforcer {_reporting(h['enforcer'])}\n")
        if h["rules"]:
            out.append("  rules (last hour):\n")
            out += _table(["RULE", "SOURCES", "LINES", "FAILURES", "BANS", "ACTIVE BANS"],
                          [[r["rule"], ", ".join(r["sources"]) or "none", r["lines_last_hour"],
                            r["failures_last_hour"], r["bans_last_hour"], r["bans_active"]] for r in h["rules"]])
        if sources := h["collector"]["sources"]:
            out.append("  sources:\n")
            out += _table(["SOURCE", "TYPE", "STATE", "READ", "LINES", "WHERE"],
                          [[s["name"], s["type"], s["state"], "yes" if s["followed"] else "no",
                            s["lines_last_hour"], _where(s)] for s in sources])
        e = h["enforcer"]
        if e["backend"]:
            table_text = (f"table {e['table']} {'in place' if e['table_present'] else 'MISSING'}"
                          if e["table"] else "no firewall")
            docker = "covered" if e["docker_covered"] else "NOT covered"
            out.append(f"  firewall: {e['backend']}, {table_text}, hooks: {', '.join(e['hooks']) or 'none'}; "
                       f"Docker-published ports {docker}\n")
            out.append("    elements: " + (", ".join(f"{s['name']} {s['elements']}" for s in e["sets"]) or "-")
                       + "\n")
        out.append("  problems:" + ("\n" + "".join(f"    - {p}\n" for p in h["problems"])
                                    if h["problems"] else " none\n"))
    if not report["hosts"]:
        out += [f"{p}\n" for p in report["problems"]]
    return "".join(out)


def _reporting(part: dict[str, Any]) -> str:
    if part["reporting"]:
        return f"reporting (up since {when(part['started_at'])})"
    return "never reported" if part["last_report"] is None else f"NOT reporting since {when(part['last_report'])}"


def _where(s: dict[str, Any]) -> str:
    parts = [", ".join(s["readable"] + s["unreadable"] + s["missing"])]
    if s["containers"]:
        parts.append("containers: " + ", ".join(s["containers"]))
    if s["note"]:
        parts.append(s["note"])
    return "; ".join(p for p in parts if p)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    buf = io.StringIO()
    table(headers, rows, buf)
    return ["    " + line + "\n" for line in buf.getvalue().splitlines()]


def add_command(sub) -> None:
    p = sub.add_parser("status", help="what is protected: each host's rules, sources, firewall and problems")
    connection_options(p)
    p.set_defaults(func=cmd_status)
