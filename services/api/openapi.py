"""GET /api/v1/openapi.json: the API described as OpenAPI 3.1.

Body schemas are generated from the Structs in `schemas.py` (the same ones
the handlers encode), so the document follows the code; only the paths,
parameters and status codes are written out here.
"""

from __future__ import annotations

import functools

import msgspec
from aiohttp import web

from pyfilter.api import schemas as s

REF = "#/components/schemas/{name}"
MODELS = [s.Ban, s.BanDetail, s.BanList, s.BanRequest, s.Banned, s.Unbanned, s.WhitelistEntry,
          s.WhitelistList, s.WhitelistRequest, s.WhitelistAdded, s.WhitelistRemoved, s.Stats, s.StatusReport,
          s.Health, s.AuthCheck, s.Error]


def _ref(model: type) -> dict:
    return {"$ref": REF.format(name=model.__name__)}


def _body(model_schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": model_schema}}}


def _errors(*codes: int) -> dict:
    text = {
        401: "missing or wrong bearer token (nothing changed; on reads only with api.read_token)",
        404: "not found",
        409: "refused: the address must not be banned, or the entry is read-only",
        415: "a body not sent as Content-Type: application/json (nothing changed)",
        421: "the Host header is not one of the api's names (api.names)",
        422: "invalid input; the message starts with the field's name",
        503: "Redis unreachable",
    }
    return {str(c): _body(_ref(s.Error), text[c]) for c in codes}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": s.TARGET_SCHEMA,
            "description": description}


STRING = {"type": "string"}
BLANK = {"type": "string", "pattern": r"^\s*$"}  # a blank filter is no filter
EMPTY = {"type": "string", "maxLength": 0}


def _number(low: int, high: int, default: int) -> dict:
    """A whole number from low to high; empty means the default."""
    return {"anyOf": [{"type": "integer", "minimum": low, "maximum": high}, EMPTY], "default": default}

TARGET_OR_NONE = {"type": "string", "anyOf": [*s.TARGET_SCHEMA["anyOf"], BLANK]}
TIME_OR_NONE = {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"},
                                            {"pattern": r"^-?[0-9]{1,15}(\.[0-9]{1,9})?$"}, BLANK]}
WRITE = [{"bearer": []}]
READ = (401, 421)  # 401 only with api.read_token on
WRITE_ERRORS = (401, 415, 421)

BAN_FILTERS = [
    _query("all", {"type": "string", "enum": ["1", "true", "yes", "on", "0", "false", "no", "off", ""]},
           "1: every ban in the history, not only the ones in force (any case)"),
    _query("address", TARGET_OR_NONE, "exact address or CIDR"),
    _query("prefix", TARGET_OR_NONE, "CIDR: bans inside it"),
    _query("rule", STRING, "rule name, e.g. sshd or manual"),
    _query("host", STRING, "host that saw the failures"),
    _query("country", STRING, 'ISO country code, or "unknown"'),
    _query("since", TIME_OR_NONE, "banned at or after: ISO 8601 or epoch seconds"),
    _query("until", TIME_OR_NONE, "banned at or before: ISO 8601 or epoch seconds"),
    _query("limit", _number(1, 1000, 50), "page size"),
    _query("cursor", STRING, "the `next` of the page before (opaque), with the same filters"),
]


def _paths() -> dict:
    address = _path("address", "an IP address, or a CIDR with its slash URL-encoded (%2F)")
    network = _path("network", "a CIDR with its slash URL-encoded (%2F)")
    ban_body = {"oneOf": [_ref(s.BanRequest),
                          {"type": "array", "items": _ref(s.BanRequest), "minItems": 1, "maxItems": 10000}]}
    return {
        "/healthz": {"get": {"summary": "Liveness (Redis reachable)", "operationId": "health",
                             "responses": {"200": _body(_ref(s.Health), "healthy"), **_errors(503)}}},
        "/api/v1/bans": {
            "get": {"summary": "List and search bans, newest first", "operationId": "listBans",
                    "parameters": BAN_FILTERS,
                    "responses": {"200": _body(_ref(s.BanList), "a page of bans"), **_errors(*READ, 422)}},
            "post": {"summary": "Ban by hand: one ban or a list (up to 10,000)", "operationId": "createBans",
                     "security": WRITE,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": ban_body}}},
                     "responses": {"201": _body(_ref(s.Banned), "banned; decisions published"),
                                   **_errors(*WRITE_ERRORS, 409, 422)}},
        },
        "/api/v1/bans/{address}": {
            "get": {"summary": "One address: its ban and history", "operationId": "showBan",
                    "parameters": [address],
                    "responses": {"200": _body(_ref(s.BanDetail), "the address's ban"),
                                  **_errors(*READ, 404, 422)}},
            "delete": {"summary": "Unban", "operationId": "deleteBan", "security": WRITE,
                       "parameters": [address],
                       "responses": {"200": _body(_ref(s.Unbanned), "unban decision published"),
                                     **_errors(*WRITE_ERRORS, 404, 422)}},
        },
        "/api/v1/whitelist": {
            "get": {"summary": "Whitelist: configuration entries (read-only) and the operator's",
                    "operationId": "listWhitelist",
                    "responses": {"200": _body(_ref(s.WhitelistList), "every entry"), **_errors(*READ)}},
            "post": {"summary": "Whitelist a network and lift every ban in force inside it",
                     "operationId": "addWhitelist", "security": WRITE,
                     "requestBody": {"required": True,
                                     "content": {"application/json": {"schema": _ref(s.WhitelistRequest)}}},
                     "responses": {"200": _body(_ref(s.WhitelistAdded), "already whitelisted"),
                                   "201": _body(_ref(s.WhitelistAdded), "added"),
                                   **_errors(*WRITE_ERRORS, 422)}},
            "delete": {"summary": "Remove an operator entry (?network=CIDR)",
                       "operationId": "removeWhitelistByQuery", "security": WRITE,
                       "parameters": [{**_query("network", s.TARGET_SCHEMA, "the CIDR"), "required": True}],
                       "responses": {"200": _body(_ref(s.WhitelistRemoved), "removed"),
                                     **_errors(*WRITE_ERRORS, 404, 409, 422)}},
        },
        "/api/v1/whitelist/{network}": {
            "delete": {"summary": "Remove an operator entry", "operationId": "removeWhitelist",
                       "security": WRITE, "parameters": [network],
                       "responses": {"200": _body(_ref(s.WhitelistRemoved), "removed"),
                                     **_errors(*WRITE_ERRORS, 404, 409, 422)}},
        },
        "/api/v1/stats": {
            "get": {"summary": "Dashboard numbers and pipeline lag", "operationId": "stats",
                    "parameters": [_query("days", _number(1, 366, 10), "days covered, today included")],
                    "responses": {"200": _body(_ref(s.Stats), "statistics"), **_errors(*READ, 422)}},
        },
        "/api/v1/status": {
            "get": {"summary": "What is protected: per host, each rule's sources, counts and bans, "
                               "the firewall, and problems in words", "operationId": "status",
                    "responses": {"200": _body(_ref(s.StatusReport), "the report"), **_errors(*READ)}},
        },
        "/api/v1/auth": {
            "get": {"summary": "Check a bearer token (the web page's login)", "operationId": "checkToken",
                    "security": WRITE,
                    "responses": {"200": _body(_ref(s.AuthCheck), "the token is right"), **_errors(401, 421)}},
        },
        "/api/v1/openapi.json": {
            "get": {"summary": "This document", "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.1 document",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}}},
        },
    }


@functools.cache
def document() -> bytes:
    _, components = msgspec.json.schema_components(MODELS, ref_template=REF)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "PyFilter API", "version": "1",
                 "description": "Bans, whitelist and statistics of PyFilter. Writes need "
                                "`Authorization: Bearer <token>` and a JSON body (Content-Type: "
                                "application/json); reads too with api.read_token. Requests whose Host "
                                "is not one of the api's names get 421."},
        "paths": _paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return msgspec.json.encode(doc)


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=document(), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/openapi.json", get_openapi)]

