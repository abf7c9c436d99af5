"""Redis connections and the stream plumbing every service shares."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyfilter.common.config import RedisConfig

log = logging.getLogger("pyfilter.redis")

# The one definition of the Redis errors after which a service waits and tries
# again: Redis out of reach or restarting (connection, timeout, LOADING, which
# redis-py raises as a connection error), or refusing writes for now (OOM under
# `noeviction` until the detectors drain the streams, READONLY or MASTERDOWN
# during a failover, TRYAGAIN). Anything else is a bug and should surface.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError,
             MasterDownError, TryAgainError, OSError)


def connect(cfg: RedisConfig, **extra) -> redis.Redis:
    """A client for the configured Redis (TCP, TLS with rediss://, or a unix socket)."""
    options: dict = {"socket_connect_timeout": 5, "health_check_interval": 15,
                     "retry_on_timeout": True, **extra}
    if cfg.password:
        options["password"] = cfg.password
    if cfg.username:
        options["username"] = cfg.username
    options.update(tls_options(cfg))
    return redis.Redis.from_url(cfg.url, **options)


# TLS (rediss://), kept apart from the rest of connecting: the agents verify the
# server's certificate against the deployment's CA (`make server` makes both),
# name included, so a machine in the middle cannot pose as the shared Redis.
def tls_options(cfg: RedisConfig) -> dict:
    if not cfg.url.startswith("rediss://"):
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


async def wait_for_redis(client: redis.Redis, service: str) -> None:
    """Block until Redis answers, with a capped backoff; log while it does not."""
    delay = 0.2
    while True:
        try:
            await client.ping()
            return
        except TRANSIENT as exc:
            log.warning("redis unreachable, retrying", extra={"service": service, "error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
