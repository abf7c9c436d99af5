"""`pyfilter server ...`: the shared Redis's users, run on the server with its admin password.

    pyfilter server init                         users of the detectors, api and notifier; the ledger
    pyfilter server add-host NAME [--url URL] [--out DIR]   a protected host's user, and what its agent needs
    pyfilter server remove-host NAME             revoke one host; the others keep running

They connect as Redis's admin (`default` user: PYFILTER_REDIS_URL and
PYFILTER_REDIS_PASSWORD, as the server profile's `admin` service has them;
`make host-credentials HOST=NAME` runs add-host there). Every change is
saved to Redis's ACL file (ACL SAVE), so a restart keeps it. Redis does not
copy users between nodes, so with Sentinel or Redis Cluster each change goes
to every node (`nodes_of`). What each user may do: services/common/acl.py and
docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from pyfilter.common import acl, config
from pyfilter.common.config import SENTINEL_SCHEMES, RedisConfig, parse_sentinel_url
from pyfilter.common.hosts import BadHostName, check_name
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.redisio import connect, is_cluster, tls_options

# The environment variables holding each service user's password (compose/server.yml).
ROLE_PASSWORDS = {"detector": "PYFILTER_DETECTOR_REDIS_PASSWORD", "api": "PYFILTER_API_REDIS_PASSWORD",
                  "notifier": "PYFILTER_NOTIFIER_REDIS_PASSWORD"}


class ServerError(Exception):
    pass


class NotEverywhere(ServerError):
    """A change the primary took and some replica or sentinel did not (`password`: a new
    host's, which the host needs all the same)."""

    password: str | None = None


@dataclass
class Node:
    """One Redis process that holds the users: a data node, or a sentinel (which holds each
    user with the sentinel's rules only: acl.sentinel_client)."""

    client: redis.Redis
    where: str
    sentinel: bool = False

    async def set_user(self, user: str, secret: list[str], rules: list[str]) -> None:
        # `reset` first: a user made again (a new password, rules of a newer version) keeps nothing old.
        rules = acl.sentinel_client() if self.sentinel else rules
        await self.client.execute_command("ACL", "SETUSER", user, "reset", *secret, *rules)

    async def delete_user(self, user: str) -> bool:
        return bool(await self.client.execute_command("ACL", "DELUSER", user))

    async def save(self) -> None:
        # A sentinel keeps its users in its own configuration file, which FLUSHCONFIG writes.
        await self.client.execute_command(*(("SENTINEL", "FLUSHCONFIG") if self.sentinel else ("ACL", "SAVE")))


@dataclass
class Nodes:
    """Every Redis that holds the users: the one Redis; with Sentinel the primary, its
    replicas and the sentinels, since Redis does not replicate users (a replica promoted
    must already know them); with Redis Cluster every node, since each checks the
    commands sent to it (`primary` is then the node of the URL, the others `replicas`).
    A change goes to the primary first, then to each other; one that a replica or
    sentinel did not take is named, and the command fails once the others have it. A
    node that was down takes the users when it starts again, before it serves
    (compose/redis-start.sh: from the Sentinel primary, or from the Cluster's URL node;
    compose/sentinel.sh from another sentinel); one that was only cut off when
    `pyfilter server init` (`make server`) brings every node in step with the primary."""

    primary: Node
    replicas: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)
    cluster: bool = False
    failed: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[Node]:
        return [self.primary, *self.replicas, *self.sentinels]

    async def reach(self) -> None:
        """Note the replicas and sentinels (the other Cluster nodes) that do not answer,
        before anything changes: an error that stops the change then names them."""
        await self.each(lambda node: node.client.ping(), [*self.replicas, *self.sentinels])

    def down(self) -> str:
        """The nodes noted as not answering, for an error's message."""
        return "".join(f"; {where} does not answer ({why})" for where, why in self.failed.items())

    async def each(self, change, nodes: list[Node] | None = None) -> list:
        """`change(node)` on every node (or on `nodes`) but those that failed before; a
        replica or sentinel that fails is noted, not fatal; the primary's error is raised
        before any other node changes."""
        done = []
        for node in self.all() if nodes is None else nodes:
            if node.where in self.failed:
                continue
            if node is self.primary:
                done.append(await change(node))
                continue
            try:
                done.append(await change(node))
            except (RedisError, OSError) as exc:
                self.failed[node.where] = str(exc) or type(exc).__name__
        return done

    async def set_user(self, user: str, password: str, rules: list[str]) -> None:
        secret = ["on", "#" + acl.password_hash(password)]
        await self.each(lambda node: node.set_user(user, secret, rules))

    async def delete_user(self, user: str) -> bool:
        return any(await self.each(lambda node: node.delete_user(user)))

    async def save(self) -> None:
        """Save every node's users, then fail if some node did not take the change."""
        await self.each(lambda node: node.save())
        if self.failed:
            down = "; ".join(f"{where}: {why}" for where, why in self.failed.items())
            if self.cluster:  # no replica here that a failover could promote
                raise NotEverywhere(f"not changed on {down}. Every other node has the change; a node that was "
                                    f"down takes it when it starts again; one still running needs "
                                    f"`pyfilter server init` (make server CLUSTER=1) once it answers again")
            raise NotEverywhere(f"not changed on {down}. Every other node has the change; a node that was "
                                f"down takes it when it starts again; one still running must not become the "
                                f"primary until `pyfilter server init` (make server) brings it in step")

    async def sync(self) -> None:
        """Make the replicas' and sentinels' users those of the primary (a node that
        was down during a change catches up here)."""
        wanted = dict(acl.parse_acl_list_line(line.decode() if isinstance(line, bytes) else line)
                      for line in await self.primary.client.execute_command("ACL", "LIST"))

        async def copy(node: Node) -> None:
            have = {u.decode() if isinstance(u, bytes) else u for u in await node.client.execute_command("ACL", "USERS")}
            for user in sorted(have - set(wanted) - set(acl.NODE_USERS)):
                await node.delete_user(user)
            for user, rules in wanted.items():
                if user not in acl.NODE_USERS:
                    secret = [r for r in rules if r in ("on", "off") or r.startswith(("#", "nopass"))]
                    await node.set_user(user, secret, [r for r in rules if r not in secret])
        await self.each(copy, [*self.replicas, *self.sentinels])

    async def aclose(self) -> None:
        for node in self.all():
            await node.client.aclose()


async def init(admin: redis.Redis, keys: Keys, passwords: dict[str, str], nodes: Nodes | None = None) -> None:
    """Make (or make again) the service users, load the ledger's functions, save."""
    nodes = nodes or Nodes(Node(admin, "redis"))
    for role, password in passwords.items():
        await nodes.set_user(acl.role_user(role), password, acl.rules_of(keys, role))
    # Loaded here, as admin: the services' users may call the functions, not replace them.
    await Ledger(admin, keys).load()
    await nodes.sync()
    await nodes.save()


async def add_host(admin: redis.Redis, keys: Keys, host: str, nodes: Nodes | None = None) -> str:
    """List the host for the detectors and make its user (a new password each time:
    running it again revokes the old one); return the password. Listed first: when the
    list cannot be written (on a Cluster, the node of its slot down, or every node once
    the cluster has marked one failed) nothing has changed; a host listed whose user
    then failed on the primary is harmless (an empty stream) and running it again repairs it."""
    nodes = nodes or Nodes(Node(admin, "redis"))
    password = secrets.token_urlsafe(32)
    await nodes.reach()
    await written(nodes, f"{host} not added, nothing changed: the hosts list could not be written",
                  lambda: admin.sadd(keys.hosts, host))
    await nodes.set_user(acl.host_user(host), password, acl.agent(keys, host))
    try:
        await nodes.save()
    except NotEverywhere as exc:
        exc.password = password
        raise
    return password


async def remove_host(admin: redis.Redis, keys: Keys, host: str, nodes: Nodes | None = None) -> bool:
    """Delete the host's user (Redis closes its connections), unlist it, and forget what
    it published; its checkpoints and unread lines stay, for a host added again."""
    nodes = nodes or Nodes(Node(admin, "redis"))
    removed = await nodes.delete_user(acl.host_user(host))

    async def unlist() -> None:
        await admin.srem(keys.hosts, host)
        await admin.delete(keys.own_addresses(host), keys.status("collector", host), keys.status("enforcer", host),
                           keys.status_seen(host), keys.decisions_read(host))
    try:
        await written(nodes, f"{host}: its user is revoked on every node that answered, but it is still listed: "
                             f"the hosts list could not be written", unlist)
    except ServerError:
        await nodes.each(lambda node: node.save())  # the revocation stands, whatever else failed
        raise
    await nodes.save()
    return removed


async def written(nodes: Nodes, what: str, write) -> None:
    """`write()`, the admin's own writes (the hosts list, a host's keys); on a Cluster
    the node of each key's slot must answer, and every node once the cluster has marked
    one failed (CLUSTERDOWN). Their error is a ServerError naming the nodes down."""
    try:
        await write()
    except (RedisError, RedisClusterException, OSError) as exc:
        raise ServerError(f"{what} ({exc}){nodes.down()}. Run it again once every node answers") from None


def _node_options(cfg: RedisConfig) -> dict:
    # One try per node: a node that does not answer within the timeout is named, not waited for.
    return {"socket_connect_timeout": 5, "socket_timeout": 5, "retry": Retry(NoBackoff(), 0), **tls_options(cfg)}


async def nodes_of(cfg: RedisConfig, admin: redis.Redis) -> Nodes:
    """The nodes that hold the users: `admin` alone for one Redis; with Sentinel the
    primary (through `admin`), the replicas the sentinels know (down ones included:
    they are named if they miss a change) and the sentinels of the URL; with Redis
    Cluster every node the cluster knows (`cluster_nodes_of`)."""
    if is_cluster(admin):
        return await cluster_nodes_of(cfg)
    if not cfg.url.startswith(SENTINEL_SCHEMES):
        return Nodes(Node(admin, "redis"))
    target = parse_sentinel_url(cfg.url)
    options = _node_options(cfg)
    if target.tls:
        options["ssl"] = True
    password = target.password or cfg.password
    if password:
        options["password"] = password
    nodes = Nodes(Node(admin, "primary"))
    nodes.sentinels = [Node(redis.Redis(host=host, port=port, **options), f"sentinel {host}:{port}", sentinel=True)
                       for host, port in target.sentinels]
    for sentinel in nodes.sentinels:
        try:
            replicas = await sentinel.client.sentinel_slaves(target.service)
        except (RedisError, OSError):
            continue
        nodes.replicas = [Node(redis.Redis(host=r["ip"], port=int(r["port"]), **options), f"{r['ip']}:{r['port']}")
                          for r in replicas]
        return nodes
    raise ServerError(f"no sentinel of {', '.join(f'{h}:{p}' for h, p in target.sentinels)} answered")


async def cluster_nodes_of(cfg: RedisConfig) -> Nodes:
    """Every node of the Redis Cluster as the node of the URL knows it (CLUSTER NODES:
    primaries and replicas, failed ones included, so that they are named if they miss
    a change), each reached at the address the cluster gives its clients."""
    options = _node_options(cfg)
    if cfg.password:
        options["password"] = cfg.password
    if cfg.username:
        options["username"] = cfg.username
    first = redis.Redis.from_url(cfg.url, **options)
    url = urlsplit(cfg.url)
    try:
        listing = await first.execute_command("CLUSTER", "NODES")
    except (RedisError, OSError) as exc:
        await first.aclose()
        raise ServerError(f"the cluster node {url.hostname}:{url.port or 6379} did not list the cluster: {exc}") from None
    if url.scheme == "rediss":
        options["ssl"] = True
    nodes = Nodes(Node(first, f"node {url.hostname}:{url.port or 6379}"), cluster=True)
    for host, port, myself in cluster_nodes(listing.decode() if isinstance(listing, bytes) else listing):
        if not myself:
            nodes.replicas.append(Node(redis.Redis(host=host, port=port, **options), f"node {host}:{port}"))
    return nodes


def cluster_nodes(listing: str) -> list[tuple[str, int, bool]]:
    """(host, port, is the node asked) of each node of a CLUSTER NODES reply; host is the
    name the node gives out (cluster-announce-hostname) if any, else its address. A node
    still in the handshake or with no address yet is left out (it holds nothing)."""
    found = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 3 or {"handshake", "noaddr"} & set(fields[2].split(",")):
            continue
        address, _, hostname = fields[1].partition(",")
        ip_port = address.split("@")[0]
        ip, _, port = ip_port.rpartition(":")
        found.append((hostname or ip.strip("[]"), int(port), "myself" in fields[2].split(",")))
    return found


def agent_url(public_url: str, host: str, password: str) -> str:
    """The shared Redis's URL as the agent of `host` uses it: its user and password in it."""
    if public_url.startswith(SENTINEL_SCHEMES):
        scheme, _, rest = public_url.partition("://")
        try:
            parse_sentinel_url(public_url)
        except ValueError as exc:
            raise ServerError(f"--url {public_url!r}: {exc}") from None
        return f"{scheme}://{acl.host_user(host)}:{password}@{rest.rpartition('@')[2]}"
    parts = urlsplit(public_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ServerError(f"--url {public_url!r}: expected rediss://SERVER:PORT/0 or, with Sentinel, "
                          f"rediss+sentinel://SERVER:26379,.../pyfilter/0 (redis:// only with TLS off)")
    netloc = f"{acl.host_user(host)}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", "", ""))


def agent_settings(host: str, url: str, cluster: bool) -> list[str]:
    """The agent's env lines (but the CA's): its name, its URL, and Cluster mode on a cluster."""
    return [f"PYFILTER_HOST={host}", f"PYFILTER_REDIS_URL={url}", *(["PYFILTER_REDIS_CLUSTER=1"] if cluster else [])]


def write_credentials(out: Path, host: str, url: str, ca: Path | None, cluster: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = out / f"{host}.env"
    lines = agent_settings(host, url, cluster)
    written = [env]
    if ca is not None:
        shutil.copyfile(ca, out / f"{host}-ca.crt")
        written.append(out / f"{host}-ca.crt")
        lines.append(f"PYFILTER_REDIS_CA={host}-ca.crt")
    fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return written


class _Admin:
    """The admin's client of the primary, the keys, and every node holding the users."""

    async def __aenter__(self) -> tuple[redis.Redis, Keys, Nodes]:
        cfg = config.load(rules=False).config.redis
        self.admin = connect(cfg)
        try:
            self.nodes = await nodes_of(cfg, self.admin)
        except BaseException:
            await self.admin.aclose()
            raise
        if self.nodes.cluster:
            # Learn the slots first: redis-py's cluster client picks the node of a client's
            # first command before it knows them, a random primary (then MOVED), which is a
            # node that is down one time in three.
            try:
                await written(self.nodes, "the cluster's slots could not be read", self.admin.initialize)
            except BaseException:
                await self.__aexit__()
                raise
        return self.admin, Keys(cfg.prefix), self.nodes

    async def __aexit__(self, *exc) -> None:
        await self.nodes.aclose()
        # With Cluster the admin's client (it follows the slots) is none of the nodes' own.
        if self.admin is not self.nodes.primary.client:
            await self.admin.aclose()


def cmd_init(args: argparse.Namespace) -> int:
    missing = [env for env in ROLE_PASSWORDS.values() if not os.environ.get(env)]
    if missing:
        raise ServerError(f"set {', '.join(missing)} (`make server` generates them into compose/server.env)")

    async def go():
        async with _Admin() as (admin, keys, nodes):
            await init(admin, keys, {role: os.environ[env] for role, env in ROLE_PASSWORDS.items()}, nodes)
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
        async with _Admin() as (admin, keys, nodes):
            return await add_host(admin, keys, host, nodes)
    cluster = config.load(rules=False).config.redis.cluster
    try:
        password, missed = asyncio.run(go()), None
    except NotEverywhere as exc:  # the host's user works wherever the primary is: it needs its credentials
        password, missed = exc.password, exc
    url = agent_url(public, host, password)
    if args.out:
        for path in write_credentials(Path(args.out), host, url, ca, cluster):
            print(f"wrote {path}")
        print(f"copy them to {host} and run there: make agent AGENT_ENV=/path/to/{host}.env")
    else:
        print("\n".join(agent_settings(host, url, cluster)))
        if ca is not None:
            print(f"PYFILTER_REDIS_CA=<a copy of {ca} on {host}>")
    if missed is not None:
        raise missed
    return 0


def cmd_remove_host(args: argparse.Namespace) -> int:
    host = check_name(args.host)

    async def go() -> bool:
        async with _Admin() as (admin, keys, nodes):
            return await remove_host(admin, keys, host, nodes)
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
