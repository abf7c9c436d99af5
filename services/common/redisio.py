"""Redis connections and the stream plumbing every service shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AskError, ClusterDownError, MasterDownError, OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError, SlotNotCoveredError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyfilter.common.config import SENTINEL_SCHEMES, RedisConfig, parse_sentinel_url

log = logging.getLogger("pyfilter.redis")


class NotReplicated(RedisError):
    """A write the primary took but not enough replicas confirmed (WAIT): it does
    not count as done, and is written again (writes that must be confirmed are
    the ones that are harmless to repeat)."""


# The one definition of the Redis errors after which a service waits and tries
# again: Redis out of reach or restarting (connection, timeout, LOADING, which
# redis-py raises as a connection error; a Sentinel with no primary to give,
# MasterNotFoundError, is one too), or refusing writes for now (OOM under
# `noeviction` until the detectors drain the streams, READONLY or MASTERDOWN
# during a failover, TRYAGAIN; on Redis Cluster, CLUSTERDOWN or a slot no
# primary serves while a replica is being promoted, or no node answering: a
# Cluster client that must learn the slots again, after a connection error,
# raises RedisClusterException then, not a ConnectionError), or a write not yet
# confirmed by the replicas. Anything else is a bug and should surface.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError, MasterDownError,
             TryAgainError, ClusterDownError, SlotNotCoveredError, NotReplicated, RedisClusterException, OSError)


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a write before it counts as done, and how long to wait for them."""

    replicas: int = 0
    timeout_ms: int = 1000

    def wait_command(self) -> tuple:
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, confirmed: int) -> None:
        """Raise NotReplicated unless `confirmed` (WAIT's reply) is enough."""
        if confirmed < self.replicas:
            raise NotReplicated(f"written to the primary but confirmed by {confirmed} of "
                                f"{self.replicas} replica(s) within {self.timeout_ms} ms, so not done")


SINGLE = Durability()


def connect(cfg: RedisConfig, **extra) -> redis.Redis | RedisCluster:
    """A client for the configured Redis: TCP, TLS with rediss://, a unix socket,
    the primary named by Sentinel (redis+sentinel://), followed through failovers,
    or Redis Cluster (`cluster`). The client carries the configured durability (`durability`)."""
    options: dict = {"socket_connect_timeout": 5, "health_check_interval": 15,
                     "retry_on_timeout": True, **extra}
    if cfg.password:
        options["password"] = cfg.password
    if cfg.username:
        options["username"] = cfg.username
    options.update(tls_options(cfg))
    if cfg.cluster:
        client = connect_cluster(cfg.url, options)
    elif cfg.url.startswith(SENTINEL_SCHEMES):
        client = _sentinel_primary(cfg.url, options)
    else:
        client = redis.Redis.from_url(cfg.url, **options)
    client.durability = Durability(cfg.wait_replicas, cfg.wait_timeout_ms)
    return client


def is_cluster(client) -> bool:
    """Whether `client` talks to a Redis Cluster (one command's keys must then share a slot)."""
    return isinstance(client, RedisCluster)


def _sentinel_primary(url: str, options: dict) -> redis.Redis:
    """The primary's client, through Sentinel: each new connection asks the
    sentinels where the primary is, and a connection to a primary that became
    a replica (READONLY) is dropped, so the retry goes to the new one."""
    target = parse_sentinel_url(url)
    if target.username:
        options["username"] = target.username
    if target.password:
        options["password"] = target.password
    if target.tls:
        options["ssl"] = True
    # The sentinels take the same credentials, TLS and timeouts as the data nodes.
    ask = {k: v for k, v in options.items()
           if k.startswith(("socket_", "ssl")) or k in ("username", "password")}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=ask, **options)
    return sentinel.master_for(target.service, db=target.db)


def durability(client: redis.Redis) -> Durability:
    """What the client's writes that must not be lost wait for (none for a client not made by `connect`)."""
    return getattr(client, "durability", SINGLE)


class _ConfirmedTransaction(Pipeline):
    """MULTI/EXEC, then WAIT on the same connection in the same attempt.

    WAIT counts the replicas that hold everything this connection wrote, so it
    must follow the write on its connection: on another connection, or on a new
    one after a failover, it would confirm nothing. A connection lost between
    the two makes redis-py's retry send the whole transaction again."""

    durability: Durability = SINGLE

    async def _execute_transaction(self, connection, commands, raise_on_error):
        replies = await super()._execute_transaction(connection, commands, raise_on_error)
        if self.durability.replicas:
            await connection.send_command(*self.durability.wait_command())
            self.durability.check(await connection.read_response())
        return replies


class _ShardConnections:
    """A Cluster node's connections, lent the way a connection pool lends them (to a Pipeline)."""

    def __init__(self, node: ClusterNode):
        self.node = node

    async def get_connection(self, *_args, **_options):
        return self.node.acquire_connection()

    async def release(self, connection) -> None:
        self.node.release(connection)


class _ShardTransactions(Pipeline):
    """On Redis Cluster: the queued writes as one MULTI/EXEC per slot (in the order
    each slot first appears), each on its slot's primary and confirmed there.

    A shard's replicas hold only what its primary took, and WAIT counts those
    that hold this connection's writes: so each transaction is followed by its
    WAIT on the connection that sent it (_ConfirmedTransaction). A slot that
    moved (MOVED, ASK) is looked up again and written there; a primary out of
    reach or a cluster still promoting a replica raises (TRANSIENT) after the
    client learnt the layout again, so the caller's next try goes where the
    slot is now. The slots' transactions are separate: one that failed is not
    undone by those before it, so callers group writes that are harmless to
    repeat."""

    def __init__(self, client: RedisCluster, wanted: Durability):
        super().__init__(None, client.response_callbacks, True, None)
        self.cluster, self.durability = client, wanted

    async def execute(self, raise_on_error: bool = True) -> list:
        await self.cluster.initialize()  # learns the slots at first use (then does nothing)
        by_slot: dict[int, list[int]] = {}
        for i, (args, _options) in enumerate(self.command_stack):  # each command's key follows its name
            by_slot.setdefault(self.cluster.keyslot(args[1]), []).append(i)
        replies: list = [None] * len(self.command_stack)
        for slot, indexes in by_slot.items():
            answer = await self._on_shard(slot, [self.command_stack[i] for i in indexes], raise_on_error)
            for i, reply in zip(indexes, answer):
                replies[i] = reply
        return replies

    async def _on_shard(self, slot: int, commands: list, raise_on_error: bool) -> list:
        for attempt in (1, 2, 3):
            node = self.cluster.nodes_manager.get_node_from_slot(slot)
            tx = _ConfirmedTransaction(_ShardConnections(node), self.response_callbacks, True, None)
            tx.durability, tx.command_stack = self.durability, commands
            try:
                return await tx.execute(raise_on_error)
            except (AskError, *TRANSIENT) as exc:  # MovedError is an AskError
                if isinstance(exc, NotReplicated):
                    raise
                await _learn_layout(self.cluster)
                if attempt == 3 or not isinstance(exc, AskError):
                    raise
            finally:
                await tx.reset()
        raise AssertionError("unreachable")


async def _learn_layout(client: RedisCluster) -> None:
    """Ask the cluster again which node serves which slot. Nodes out of reach
    too are left for the next try, which fails on its own if they still are."""
    with contextlib.suppress(RedisError, RedisClusterException, OSError):
        await client.nodes_manager.initialize()


def transaction(client: redis.Redis | RedisCluster) -> Pipeline:
    """A MULTI/EXEC pipeline for writes that must not be lost: its `execute()`
    returns once the configured replicas hold them, else raises NotReplicated
    (TRANSIENT: write it again). Without replicas to wait for, a plain transaction.
    On Redis Cluster, one transaction per slot, each confirmed by its own shard
    (_ShardTransactions)."""
    wanted = durability(client)
    if is_cluster(client):
        return _ShardTransactions(client, wanted)
    if not wanted.replicas:
        return client.pipeline(transaction=True)
    tx = _ConfirmedTransaction(client.connection_pool, client.response_callbacks, True, None)
    tx.durability = wanted
    return tx


def connect_cluster(url: str, options: dict) -> RedisCluster:
    """A Redis Cluster client from one node's URL. Each command goes to the primary
    of its key's slot (every command a service sends names keys of one slot: keys.py);
    on a failover or resharding the client learns the new layout and sends it again."""
    options.pop("retry_on_timeout", None)  # the cluster client retries itself
    return RedisCluster.from_url(url, **options)


# TLS (rediss://), kept apart from the rest of connecting: the agents verify the
# server's certificate against the deployment's CA (`make server` makes both),
# name included, so a machine in the middle cannot pose as the shared Redis.
def tls_options(cfg: RedisConfig) -> dict:
    if not cfg.url.startswith(("rediss://", "rediss+sentinel://")):
        return {}
    options: dict = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if cfg.tls_ca_file:
        options["ssl_ca_certs"] = cfg.tls_ca_file
    return options


async def ensure_group(client: redis.Redis, stream: str, group: str, start: str = "0") -> None:
    """Create a consumer group (and the stream) unless it exists."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def wait_for_redis(client: redis.Redis | RedisCluster, service: str) -> None:
    """Block until Redis answers, with a capped backoff; log while it does not.

    On Redis Cluster, until every primary answers: any node answers a plain
    PING, but a service starting again after an error (a primary killed)
    then talks to every primary (loading the library, reading every slot),
    and would fail again on one not yet replaced. Between tries the client
    learns the layout again, so a replica promoted meanwhile is found."""
    delay = 0.2
    while True:
        try:
            if is_cluster(client):
                await client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await client.ping()
            return
        except TRANSIENT as exc:
            log.warning("redis unreachable, retrying", extra={"service": service, "error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if is_cluster(client):
                await _learn_layout(client)
