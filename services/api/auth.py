"""Bearer-token check for writes: constant-time, and no token means no writes."""

from __future__ import annotations

import functools
import hmac

import msgspec
from aiohttp import web


# Where the app keeps the expected token (None: writes are refused).
TOKEN = web.AppKey("token", str)


def deny(message: str) -> web.Response:
    return web.Response(body=msgspec.json.encode({"error": message}), status=401,
                        content_type="application/json",
                        headers={"WWW-Authenticate": 'Bearer realm="pyfilter"'})


def token_ok(expected: str | None, header: str | None) -> bool:
    if not expected or not header or not header.startswith("Bearer "):
        return False
    given = header.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected.encode())


def require_token(handler):
    """Wrap a write handler: 401 and no change unless the bearer token matches.

    Works for plain handlers `(request)` and methods `(self, request)`.
    """

    @functools.wraps(handler)
    async def checked(*args) -> web.StreamResponse:
        request: web.Request = args[-1]
        if not token_ok(request.app.get(TOKEN), request.headers.get("Authorization")):
            return deny("missing or wrong bearer token")
        return await handler(*args)

    return checked
