"""The `pyfilter` subcommands that talk to the API: ban, unban, list, show, stats, whitelist.

    pyfilter ban ADDR... [--duration 1h] [--reason TEXT] [--file FILE]
    pyfilter unban ADDR...
    pyfilter list [--all] [--address A] [--prefix CIDR] [--rule R] [--host H] [--country CC]
                  [--since T] [--until T] [--limit N] [--cursor C]
    pyfilter show ADDR
    pyfilter stats [--days N]
    pyfilter whitelist [list | add NET [--reason TEXT] | remove NET]

Every one takes --url (env PYFILTER_API_URL, default http://127.0.0.1:8470),
--token (env PYFILTER_API_TOKEN, else compose/.env of a checkout) and --json.

Exit codes: 0 done; 1 not found or nothing to do (show of an address never
banned, unban of one not banned, removing a whitelist entry that is not
there); 2 usage or configuration (bad arguments, no token for a write);
3 the API refused the request (4xx), with its message; 4 the API could not
be reached or failed (connection refused, timeout, 5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pyfilter.api.client import DEFAULT_URL, Client, Unreachable, quote

OK, NOT_FOUND, USAGE, REFUSED, UNREACHABLE = 0, 1, 2, 3, 4
CHECKOUT_ENV = Path(__file__).resolve().parents[2] / "compose" / ".env"


class CommandError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def token_from_env_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "PYFILTER_API_TOKEN":
            return value.strip().strip("'\"") or None
    return None


def find_token(given: str | None) -> str | None:
    if given:
        return given
    if env := os.environ.get("PYFILTER_API_TOKEN"):
        return env
    for path in (CHECKOUT_ENV, Path.cwd() / "compose" / ".env"):
        if token := token_from_env_file(path):
            return token
    return None


def client_for(args: argparse.Namespace, write: bool = False) -> Client:
    token = find_token(args.token)
    if write and not token:
        raise CommandError(USAGE, "no API token: pass --token, set PYFILTER_API_TOKEN, "
                                  "or run from a checkout whose compose/.env holds it")
    return Client(args.url or os.environ.get("PYFILTER_API_URL") or DEFAULT_URL, token, args.timeout)


def call(client: Client, method: str, path: str, body: Any = None, query: dict | None = None,
         missing_ok: bool = False) -> tuple[int, Any]:
    """The API's answer; a refusal (4xx) becomes exit code 3 unless it is a 404 we expect."""
    try:
        status, data = client.request(method, path, body, query)
    except Unreachable as exc:
        raise CommandError(UNREACHABLE, str(exc)) from None
    if status == 404 and missing_ok:
        return status, data
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else data
        raise CommandError(REFUSED, f"the API refused ({status}): {message}")
    return status, data


# Output -------------------------------------------------------------------

def when(epoch: float | None, never: str = "-") -> str:
    if epoch is None:
        return never
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(headers: list[str], rows: list[list[Any]], out=None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def ban_rows(bans: list[dict]) -> list[list[Any]]:
    return [[b["address"], b["country"] or "unknown", b["rule"], b["host"], when(b["banned_at"]),
             when(b["expires_at"], "permanent"), "yes" if b["active"] else "no", b["reason"]]
            for b in bans]


BAN_HEADERS = ["ADDRESS", "COUNTRY", "RULE", "HOST", "BANNED AT", "EXPIRES", "ACTIVE", "REASON"]


# Commands -----------------------------------------------------------------

def cmd_ban(args: argparse.Namespace) -> int:
    addresses = list(args.addresses)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        with stream:
            addresses += [w for line in stream for w in line.split("#")[0].split()]
    if not addresses:
        raise CommandError(USAGE, "give at least one address (or --file FILE)")
    body = [{"address": a, "duration": args.duration, "reason": args.reason} for a in addresses]
    _, data = call(client_for(args, write=True), "POST", "/bans", body)
    if args.json:
        emit_json(data)
    else:
        print(f"banned {data['count']} address(es) for {args.duration}")
    return OK


def cmd_unban(args: argparse.Namespace) -> int:
    client = client_for(args, write=True)
    results = [call(client, "DELETE", f"/bans/{quote(a)}")[1] for a in args.addresses]
    if args.json:
        emit_json(results)
    else:
        for r in results:
            print(f"{r['unbanned']}: {'unbanned' if r['was_active'] else 'was not banned'}")
            if r.get("covered_by"):
                print(f"  still blocked by the ban(s) of {', '.join(r['covered_by'])}")
    return OK if all(r["was_active"] for r in results) else NOT_FOUND


def cmd_list(args: argparse.Namespace) -> int:
    query = {name: getattr(args, name) for name in
             ("all", "address", "prefix", "rule", "host", "country", "since", "until", "limit", "cursor")}
    _, data = call(client_for(args), "GET", "/bans", query=query)
    if args.json:
        emit_json(data)
        return OK
    table(BAN_HEADERS, ban_rows(data["bans"]))
    total = "" if data["total"] is None else f" of {data['total']}"
    print(f"{len(data['bans'])}{total} ban(s)" + (f"; more: --cursor {data['next']}" if data["next"] else ""))
    return OK


EVIDENCE_PER_LINE = 4  # addresses per line of `show`'s evidence


def cmd_show(args: argparse.Namespace) -> int:
    status, data = call(client_for(args), "GET", f"/bans/{quote(args.address)}", missing_ok=True)
    if status == 404:
        if args.json:
            emit_json(data)
        print(f"{args.address}: {data.get('error', 'never banned')}", file=sys.stderr)
        return NOT_FOUND
    if args.json:
        emit_json(data)
        return OK
    asn = f"AS{data['asn']} {data['as_org'] or ''}".strip() if data.get("asn") else "unknown"
    fields = [
        ("address", data["address"]), ("active", "yes" if data["active"] else "no"),
        ("rule", data["rule"]), ("seen by host", data["host"]), ("origin", data["origin"]),
        ("window", data.get("window") or "-"),
        *([("account", data["account"])] if data.get("account") is not None else []),
        ("reason", data["reason"]), ("country", data["country"] or "unknown"), ("network (ASN)", asn),
        ("banned at", when(data["banned_at"])), ("expires", when(data["expires_at"], "permanent")),
        ("failures", data["failures"]), ("first failure", when(data["first_failure"])),
        ("last failure", when(data["last_failure"])), ("ban count", data["ban_count"]),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}")
    if evidence := data.get("evidence"):
        # As the admin page shows them: who failed on the account together, or the member bans.
        print("member bans:" if data.get("window") == "network" else
              f"addresses that failed on the account together ({len(evidence)}):")
        for i in range(0, len(evidence), EVIDENCE_PER_LINE):
            print("  " + "  ".join(evidence[i:i + EVIDENCE_PER_LINE]))
    if data["lines"]:
        print("log lines:")
        for line in data["lines"]:
            print(f"  {line}")
    if data["history"]:
        print("history:")
        table(["BANNED AT", "RULE", "HOST", "DURATION", "ACTIVE", "REASON"],
              [[when(h["banned_at"]), h["rule"], h["host"],
                "permanent" if h["duration"] < 0 else f"{h['duration']}s",
                "yes" if h["active"] else "no", h["reason"]] for h in data["history"]])
    return OK


def cmd_stats(args: argparse.Namespace) -> int:
    _, s = call(client_for(args), "GET", "/stats", query={"days": args.days})
    if args.json:
        emit_json(s)
        return OK
    print(f"total bans: {s['total_bans']}   active: {s['active_bans']}   "
          f"last {s['days']} days: {s['bans_in_range']}")
    if latest := s["latest_ban"]:
        print(f"latest ban: {latest['address']} ({latest['rule']} on {latest['host']}, "
              f"{when(latest['banned_at'])})")
    print("bans per day:")
    peak = max([d["count"] for d in s["bans_per_day"]] + [1])
    for d in s["bans_per_day"]:
        print(f"  {d['day']}  {str(d['count']).rjust(6)}  {'#' * round(40 * d['count'] / peak)}")
    for title, key in (("countries", "top_countries"), ("rules", "top_rules"), ("hosts", "top_hosts")):
        print(f"top {title}: " + (", ".join(f"{t['name']} {t['count']}" for t in s[key]) or "-"))
    p = s["pipeline"]
    lag = "unknown" if p["detect_lag"] is None else p["detect_lag"]
    print(f"pipeline: lines stream {p['lines_length']}, detectors pending {p['detect_pending']}, "
          f"not yet read {lag}")
    for e in p["enforcers"]:
        print(f"  enforcer {e['host']}: pending {e['pending']}, behind {e['lag']}")
    return OK


def cmd_whitelist(args: argparse.Namespace) -> int:
    if args.action == "list":
        _, data = call(client_for(args), "GET", "/whitelist")
        if args.json:
            emit_json(data)
        else:
            table(["NETWORK", "SOURCE", "REASON", "ADDED"],
                  [[e["network"], e["source"] + (" (read-only)" if e["read_only"] else ""),
                    e["reason"], when(e["added_at"])] for e in data["entries"]])
        return OK
    if not args.network:
        raise CommandError(USAGE, f"whitelist {args.action} needs a network, e.g. 198.51.100.0/24")
    client = client_for(args, write=True)
    if args.action == "add":
        _, data = call(client, "POST", "/whitelist", {"network": args.network, "reason": args.reason})
        emit_json(data) if args.json else print(data["message"])
        return OK
    status, data = call(client, "DELETE", "/whitelist", query={"network": args.network}, missing_ok=True)
    if args.json:
        emit_json(data)
    elif status == 404:
        print(data["error"], file=sys.stderr)
    else:
        print(f"removed {data['removed']} from the whitelist")
    return NOT_FOUND if status == 404 else OK


# Wiring -------------------------------------------------------------------

def connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"API address (default: $PYFILTER_API_URL or {DEFAULT_URL})")
    p.add_argument("--token", help="write token (default: $PYFILTER_API_TOKEN, or compose/.env of a checkout)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the API (default 30)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer, for scripts")


def add_commands(sub) -> None:
    p = sub.add_parser("ban", help="ban addresses or networks by hand, on every host")
    p.add_argument("addresses", nargs="*", metavar="ADDR")
    p.add_argument("--duration", default="1d", help='how long: "10m", "1h", "2d", seconds, or -1 for ever (default 1d)')
    p.add_argument("--reason", default="", help="why (shown in the ban record)")
    p.add_argument("--file", metavar="FILE", help="also ban the addresses in FILE, one per line (- for stdin)")
    connection_options(p)
    p.set_defaults(func=cmd_ban)

    p = sub.add_parser("unban", help="lift bans, on every host")
    p.add_argument("addresses", nargs="+", metavar="ADDR")
    connection_options(p)
    p.set_defaults(func=cmd_unban)

    p = sub.add_parser("list", help="list and search bans (in force; --all for history)")
    p.add_argument("--all", action="store_true", help="every ban in the history, not only those in force")
    for name, text in (("address", "exact address or CIDR"), ("prefix", "bans inside this CIDR"),
                       ("rule", "rule name"), ("host", "host that saw the failures"),
                       ("country", 'country code, or "unknown"'),
                       ("since", "banned at or after (ISO 8601 or epoch)"),
                       ("until", "banned at or before (ISO 8601 or epoch)")):
        p.add_argument(f"--{name}", help=text)
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50, max 1000)")
    p.add_argument("--cursor", help="the page after the one that printed it (same filters)")
    connection_options(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one address: why, when, where, and its past bans")
    p.add_argument("address", metavar="ADDR")
    connection_options(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("stats", help="ban statistics and pipeline lag")
    p.add_argument("--days", type=int, default=10, help="days covered (default 10)")
    connection_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("whitelist", help="list, add or remove whitelisted networks")
    p.add_argument("action", nargs="?", choices=["list", "add", "remove"], default="list")
    p.add_argument("network", nargs="?", metavar="NET")
    p.add_argument("--reason", default="", help="why (for add)")
    connection_options(p)
    p.set_defaults(func=cmd_whitelist)
