"""Small pieces every route shares: JSON responses, errors that name a field, body decoding."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from pyfilter.api.schemas import Error


class FieldError(Exception):
    """Bad input; becomes a 422 whose message starts with the field's name."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.status = status


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status,
                        content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json(Error(error=message), status)


async def decode_body(request: web.Request, decoder: msgspec.json.Decoder) -> Any:
    """The request body decoded and validated, or FieldError naming what was wrong.

    msgspec says "Expected `str`, got `int` - at `$[1].address`"; the
    operator reads "[1].address: expected str, got int".
    """
    try:
        return decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at ")
        if not message:
            raise FieldError("body", str(exc).replace("`", "")) from None
        field = where.strip("`").removeprefix("$").lstrip(".") or "body"
        text = message.replace("`", "")
        raise FieldError(field, text[:1].lower() + text[1:]) from None
    except msgspec.DecodeError as exc:
        raise FieldError("body", f"not valid JSON ({exc})") from None


def int_param(query, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FieldError(name, f"expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise FieldError(name, f"expected a number from {low} to {high}, got {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def bool_param(query, name: str) -> bool:
    raw = query.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise FieldError(name, f"expected 1 or 0 (true/false), got {raw!r}")
