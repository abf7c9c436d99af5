"""The API fuzzed by schemathesis against its own OpenAPI document.

A real api process over a real redis-server on 127.0.0.1; every operation of
`GET /api/v1/openapi.json` gets schema-valid and schema-violating requests,
with the write token. Each response must: not be a 5xx, use a documented
status code and content type, match the documented body schema, refuse
invalid input with a 4xx, accept valid input (see `valid_input_accepted`),
and answer undeclared methods with a 405 that carries `Allow`.

Findings are kept below as explicit regression tests.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pyfilter.api import openapi
from tests.conftest import start_redis
from tests.unit.apiserver import start_api
from tests.unit.apisupport import AUTH

SCHEMA = schemathesis.openapi.from_dict(msgspec.json.decode(openapi.document()))


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """One api process and its own redis-server for the whole module."""
    directory = tmp_path_factory.mktemp("api-schema")
    redis_proc, redis_url = start_redis(directory)
    api_proc, url = start_api(directory, redis_url)
    yield url
    api_proc.terminate()
    api_proc.wait(10)
    redis_proc.terminate()
    redis_proc.wait(10)


UNSAYABLE = ("has host bits set", "duration: at most", "wider than the widest manual ban", "cursor: not a cursor")


def valid_input_accepted(ctx, response, case):
    """schemathesis's positive_data_acceptance, minus the limits no schema can say.

    A CIDR whose host bits are set (`198.51.100.7/24`) matches the documented
    pattern, yet the API refuses it on purpose: a typo must not ban a range
    the operator did not mean. A duration written as text ("999999w") must
    not exceed 10 years. A manual ban may not be wider than api.widest_ban_v4/v6 (a
    setting, not a pattern). A cursor is opaque: only one the API handed out is
    valid. Every other refusal of schema-valid input fails.
    """
    if response.status_code == 422 and any(why in response.text for why in UNSAYABLE):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.unsupported_method,
    valid_input_accepted,
]


@SCHEMA.parametrize()
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_to_the_openapi_document(case, api_url):
    case.call_and_validate(base_url=api_url, headers=AUTH, checks=CHECKS)


# --- Regression tests: what the fuzzing found -------------------------------------------


def request(url: str, method: str = "GET", body=None, headers=None) -> tuple[int, dict, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_served_document_is_the_one_fuzzed(api_url):
    status, headers, doc = request(f"{api_url}/api/v1/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert doc == msgspec.json.decode(openapi.document())


@pytest.mark.parametrize("method, path, allowed", [
    ("TRACE", "/api/v1/bans", {"GET", "POST"}),
    ("PUT", "/api/v1/bans/198.51.100.7", {"GET", "DELETE"}),
    ("PATCH", "/api/v1/whitelist", {"GET", "POST", "DELETE"}),
    ("POST", "/api/v1/stats", {"GET"}),
])
def test_wrong_method_gets_405_with_allow_header_and_json_error(api_url, method, path, allowed):
    # Finding: the JSON error middleware dropped aiohttp's `Allow` header (RFC 9110 requires it).
    status, headers, body = request(api_url + path, method, headers=AUTH)
    assert status == 405
    assert allowed <= set(headers["Allow"].split(","))
    assert body["error"].startswith(f"{method} {path}")


@pytest.mark.parametrize("duration, seconds", [(3600.0, 3600), (-1.0, -1), (1e3, 1000)])
def test_duration_as_a_whole_json_float_is_accepted(api_url, duration, seconds):
    # Finding: {"duration": 30136.0} is an integer to JSON Schema (and what Python's
    # timedelta.total_seconds() gives), but msgspec refused it: "expected int | str, got float".
    status, _, body = request(f"{api_url}/api/v1/bans", "POST",
                              {"address": "198.51.100.40", "duration": duration}, AUTH)
    assert status == 201, body
    status, _, ban = request(f"{api_url}/api/v1/bans/198.51.100.40")
    assert ban["duration"] == seconds


@pytest.mark.parametrize("duration", [
    18446744073709551616,  # past uint64: was a 500 (the decision could not be encoded)
    99999999999999999999999,
    "99999999999999999999999d",  # was a 500 too
    9223372036854775808,  # was accepted: a ban the enforcer cannot turn into kernel milliseconds
    315360001,
    1e300,
])
def test_absurd_durations_are_refused_with_422_not_a_server_error(api_url, duration):
    status, _, body = request(f"{api_url}/api/v1/bans", "POST",
                              {"address": "198.51.100.41", "duration": duration}, AUTH)
    assert status == 422, body
    assert body["error"].startswith("duration: ")


def test_fractional_duration_is_refused(api_url):
    status, _, body = request(f"{api_url}/api/v1/bans", "POST",
                              {"address": "198.51.100.42", "duration": 1.5}, AUTH)
    assert (status, body["error"]) == (422, "duration: expected whole seconds, got 1.5")


def test_ten_years_is_the_longest_timed_ban(api_url):
    status, _, body = request(f"{api_url}/api/v1/bans", "POST",
                              {"address": "198.51.100.43", "duration": "3650d"}, AUTH)
    assert status == 201, body


@pytest.mark.parametrize("query", ["days=", "days=7"])
def test_stats_days_may_be_empty_as_documented(api_url, query):
    # Finding: `?days=` (empty) means the default, but the document said integer only.
    status, _, body = request(f"{api_url}/api/v1/stats?{query}")
    assert status == 200 and body["days"] == (7 if query == "days=7" else 10)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "0", "false", "no", "off", ""])
def test_every_documented_value_of_all_is_accepted(api_url, value):
    # Finding: the server took yes/no/on/off and empty, the document listed only 0/1/true/false.
    documented = next(p for p in msgspec.json.decode(openapi.document())["paths"]["/api/v1/bans"]["get"]
                      ["parameters"] if p["name"] == "all")
    assert value in documented["schema"]["enum"]
    status, _, _ = request(f"{api_url}/api/v1/bans?all={value}&limit=&cursor=")
    assert status == 200


@pytest.mark.parametrize("query", ["until=%0A", "since=%20", "address=", "prefix=%09"])
def test_blank_filters_are_no_filter_as_documented(api_url, query):
    # Finding: blank filters were accepted (no filter) but documented as times or addresses only.
    status, _, body = request(f"{api_url}/api/v1/bans?{query}")
    assert status == 200, body


@pytest.mark.parametrize("target", ["198.51.100.7", "2001:db8::7", "198.51.100.0/26", "2001:db8:7::/48",
                                    "::ffff:198.51.100.9"])
def test_documented_address_forms_are_what_the_api_takes(api_url, target):
    # Finding: the document said "string" for every address; it now says IPv4, IPv6 or a CIDR.
    validator = _validator(msgspec.json.decode(openapi.document())["components"]["schemas"]
                           ["BanRequest"]["properties"]["address"])
    assert validator(target)
    status, _, body = request(f"{api_url}/api/v1/bans", "POST", {"address": target, "duration": 60}, AUTH)
    assert status == 201, body


@pytest.mark.parametrize("text", ["0", "", "198.51.100", "2001:db8::/129", "198.51.100.0/33", ":/120"])
def test_what_is_not_an_address_is_outside_the_documented_schema(text):
    validator = _validator(msgspec.json.decode(openapi.document())["components"]["schemas"]
                           ["BanRequest"]["properties"]["address"])
    assert not validator(text)


def _validator(schema: dict):
    import jsonschema_rs  # schemathesis's validator

    check = jsonschema_rs.validator_for(schema, validate_formats=True)
    return check.is_valid
