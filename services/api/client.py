"""A small client of the HTTP API for the CLI, on the standard library only.

It returns the status and decoded JSON of every answer, 4xx included, and
raises `Unreachable` when no answer came (refused, timed out, not JSON, or
a 5xx): the CLI turns those into its exit codes.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8470"


class Unreachable(Exception):
    """No usable answer from the API."""


def quote(value: str) -> str:
    """A path segment: a CIDR's slash is encoded (%2F), as the API expects."""
    return urllib.parse.quote(value, safe="")


class Client:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None) -> tuple[int, Any]:
        # Imported here: they cost ~40 ms, and `pyfilter match` and `explain`
        # (which share the CLI's start-up) never make a request.
        import urllib.error
        import urllib.request

        url = f"{self.base}/api/v1{path}"
        if query := {k: v for k, v in (query or {}).items() if v is not None and v is not False}:
            url += "?" + urllib.parse.urlencode({k: 1 if v is True else v for k, v in query.items()})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _decode(resp.read(), url)
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            if exc.code >= 500:
                raise Unreachable(f"{url}: the API failed ({exc.code}): {_message(payload)}") from None
            return exc.code, _decode(payload, url)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the API at {self.base}: {reason}") from None


def _decode(payload: bytes, url: str) -> Any:
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        raise Unreachable(f"{url}: the answer is not JSON (is this the PyFilter API?)") from None


def _message(payload: bytes) -> str:
    try:
        return json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")
