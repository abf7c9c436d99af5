"""`pyfilter server ...`: the shared Redis's users, run on the server with its admin password.

    pyfilter server init                         users of the detectors, api and notifier; the ledger
    pyfilter server add-host NAME [--url URL] [--out DIR]   a protected host's user, and what its agent needs
    pyfilter server remove-host NAME             revoke one host; the others keep running

They connect as Redis's admin (`default` user: PYFILTER_REDIS_URL and
PYFILTER_REDIS_PASSWORD, as the server profile's `admin` service has them;
`make host-credentials HOST=NAME` runs add-host there). Every change is
saved to Redis's ACL file (ACL SAVE), so a restart keeps it. What each user
may do: services/common/acl.py and docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis

from pyfilter.common import acl, config
from pyfilter.common.hosts import BadHostName, check_name
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.redisio import connect

# The environment variables holding each service user's password (compose/server.yml).
ROLE_PASSWORDS = {"detector": "PYFILTER_DETECTOR_REDIS_PASSWORD", "api": "PYFILTER_API_REDIS_PASSWORD",
                  "notifier": "PYFILTER_NOTIFIER_REDIS_PASSWORD"}


class ServerError(Exception):
    pass


async def set_user(admin: redis.Redis, user: str, password: str, rules: list[str]) -> None:
    # `reset` first: a user made again (a new password, rules of a newer version) keeps nothing old.
    await admin.execute_command("ACL", "SETUSER", user, "reset", "on", "#" + acl.password_hash(password), *rules)


async def init(admin: redis.Redis, keys: Keys, passwords: dict[str, str]) -> None:
    """Make (or make again) the service users, load the ledger's functions, save."""
    for role, password in passwords.items():
        await set_user(admin, acl.role_user(role), password, acl.rules_of(keys, role))
    # Loaded here, as admin: the services' users may call the functions, not replace them.
    await Ledger(admin, keys).load()
    await admin.execute_command("ACL", "SAVE")


async def add_host(admin: redis.Redis, keys: Keys, host: str) -> str:
    """Make the host's user (a new password each time: running it again revokes the old
    one) and list the host for the detectors; return the password."""
    password = secrets.token_urlsafe(32)
    await set_user(admin, acl.host_user(host), password, acl.agent(keys, host))
    await admin.sadd(keys.hosts, host)
    await admin.execute_command("ACL", "SAVE")
    return password


async def remove_host(admin: redis.Redis, keys: Keys, host: str) -> bool:
    """Delete the host's user (Redis closes its connections), unlist it, and forget what
    it published; its checkpoints and unread lines stay, for a host added again."""
    removed = bool(await admin.execute_command("ACL", "DELUSER", acl.host_user(host)))
    await admin.srem(keys.hosts, host)
    await admin.delete(keys.own_addresses(host), keys.status("collector", host), keys.status("enforcer", host),
                       keys.status_seen(host), keys.decisions_read(host))
    await admin.execute_command("ACL", "SAVE")
    return removed


def agent_url(public_url: str, host: str, password: str) -> str:
    """The shared Redis's URL as the agent of `host` uses it: its user and password in it."""
    parts = urlsplit(public_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ServerError(f"--url {public_url!r}: expected rediss://SERVER:PORT/0 (redis:// only with TLS off)")
    netloc = f"{acl.host_user(host)}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", "", ""))


def write_credentials(out: Path, host: str, url: str, ca: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = out / f"{host}.env"
    lines = [f"PYFILTER_HOST={host}", f"PYFILTER_REDIS_URL={url}"]
    written = [env]
    if ca is not None:
        shutil.copyfile(ca, out / f"{host}-ca.crt")
        written.append(out / f"{host}-ca.crt")
        lines.append(f"PYFILTER_REDIS_CA={host}-ca.crt")
    fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return written


def _admin() -> tuple[redis.Redis, Keys]:
    settings = config.load(rules=False)
    return connect(settings.config.redis), Keys(settings.config.redis.prefix)


def cmd_init(args: argparse.Namespace) -> int:
    missing = [env for env in ROLE_PASSWORDS.values() if not os.environ.get(env)]
    if missing:
        raise ServerError(f"set {', '.join(missing)} (`make server` generates them into compose/server.env)")

    async def go():
        admin, keys = _admin()
        await init(admin, keys, {role: os.environ[env] for role, env in ROLE_PASSWORDS.items()})
        await admin.aclose()
    asyncio.run(go())
    print(f"Redis users {', '.join(acl.role_user(r) for r in ROLE_PASSWORDS)} made; ledger loaded")
    return 0


def cmd_add_host(args: argparse.Namespace) -> int:
    host = check_name(args.host)
    public = args.url or os.environ.get("PYFILTER_PUBLIC_REDIS_URL")
    if not public:
        raise ServerError("say where agents reach this Redis: --url rediss://SERVER:6379/0 "
                          "(or PYFILTER_PUBLIC_REDIS_URL)")
    agent_url(public, host, "x")  # a bad URL is refused before anything changes
    ca = Path(args.ca) if args.ca else None
    if ca is not None and not ca.is_file():
        raise ServerError(f"--ca {ca}: no such file")

    async def go() -> str:
        admin, keys = _admin()
        try:
            return await add_host(admin, keys, host)
        finally:
            await admin.aclose()
    url = agent_url(public, host, asyncio.run(go()))
    if args.out:
        for path in write_credentials(Path(args.out), host, url, ca):
            print(f"wrote {path}")
        print(f"copy them to {host} and run there: make agent AGENT_ENV=/path/to/{host}.env")
    else:
        print(f"PYFILTER_HOST={host}\nPYFILTER_REDIS_URL={url}")
        if ca is not None:
            print(f"PYFILTER_REDIS_CA=<a copy of {ca} on {host}>")
    return 0


def cmd_remove_host(args: argparse.Namespace) -> int:
    host = check_name(args.host)

    async def go() -> bool:
        admin, keys = _admin()
        try:
            return await remove_host(admin, keys, host)
        finally:
            await admin.aclose()
    if asyncio.run(go()):
        print(f"{host}: its Redis user is gone and its connections closed")
        return 0
    print(f"{host}: it had no Redis user (unlisted anyway)", file=sys.stderr)
    return 1


def guarded(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ServerError, BadHostName, config.ConfigError) as exc:
            print(f"pyfilter server {args.verb}: {exc}", file=sys.stderr)
            return 2
    return run
