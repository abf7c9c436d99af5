"""What a request must be before any handler sees it (docs/api.md, "Who may ask").

- Its Host must be one of the api's names: a page of another site that
  rebinds its DNS name to 127.0.0.1 reaches the port, but names its own host
  (421). /healthz is exempt: a health check carries no data, and the stack's
  own (HTTP/1.0 from bash) sends no Host.
- A body must be JSON, said so (`Content-Type: application/json`, else 415):
  a browser sends a cross-site `text/plain` or form POST without asking first,
  never a JSON one.
- With `api.read_token` on, reads under /api/v1 need the token too (but the
  OpenAPI document); the page and /healthz stay open.
"""

from __future__ import annotations

from aiohttp import web

from pyfilter.api.auth import TOKEN, deny, token_ok
from pyfilter.api.responses import error
from pyfilter.common.config import ApiConfig

DEFAULT_NAMES = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = ("/healthz",)
OPEN_READS = ("/api/v1/openapi.json",)
WITH_BODY = ("POST", "PUT", "PATCH")


def host_names(cfg: ApiConfig) -> frozenset[str]:
    """The Host values (without port, lower case) the api answers to."""
    return frozenset(n.lower() for n in (*DEFAULT_NAMES, *cfg.names))


def host_name(header: str) -> str:
    """A Host header without its port: `[::1]:8470` -> `[::1]`, `api:8470` -> `api`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.partition(":")[0]


def middleware(cfg: ApiConfig):
    names = host_names(cfg)

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        host = host_name(request.headers.get("Host", ""))
        if host not in names:
            return error(421, f"Host {host or '(none)'!r} is not one of this api's names "
                              f"({', '.join(sorted(names))}); add it to api.names")
        routed = request.match_info.http_exception is None  # else aiohttp answers 404/405 itself
        if routed and (request.method in WITH_BODY or request.body_exists):
            if request.content_type != "application/json":
                return error(415, f"a request body must be JSON, sent with Content-Type: application/json "
                                  f"(got {request.headers.get('Content-Type', 'none')!r})")
        if (cfg.read_token and request.method in ("GET", "HEAD") and request.path.startswith("/api/")
                and request.path not in OPEN_READS
                and not token_ok(request.app.get(TOKEN), request.headers.get("Authorization"))):
            return deny("reads need the bearer token here (api.read_token)")
        return await handler(request)

    return guard
