"""The MAK service's HTTP API, against a real service (BackgroundMak) on 127.0.0.1.

Raw HTTP (``http.client``, or a socket where the headers must be exactly ours) for
the protocol: routes against ``/openapi.json``, the administrator token, body
limits, bad JSON, field types, unknown paths and methods, the error body's shape.
``MakClient`` for what the service decides: online, phone and proxy activation
outcomes with their HRESULTs, request replays, counts, export and import, and that
no whole key ever leaves it in a listing, an export or a log line.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import logging
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from kmsemu.catalog import default_catalog
from kmsemu.clock import FakeClock
from kmsemu.errors import SERVICE_ERRORS, format_hresult
from kmsemu.keys.activation_ids import installation_id, verify_confirmation_id
from kmsemu.keys.product_key import ALPHABET, KeyType, mint, normalise, parse, setup_key
from kmsemu.testing.mak import BackgroundMak
from mak.api import ENDPOINTS, create_app
from mak.client import MakClient, RemoteError
from mak.portal_client import PortalClient
from mak.server import GuardedHttp
from mak.service import MAX_PROXY_IDS
from mak.web.base import SMALL_BODY, Endpoint
from mak.web.mak_routes import IMPORT_BODY, PROXY_BODY
from tests import httpraw
from tests.conftest import mistype_key
from tests.httpraw import Reply

_serials = itertools.count(secrets.randbits(30) << 10)
#: A whole lab key, with or without its dashes, in any case (keys.md section 1).
WHOLE_KEY = re.compile(
    rf"(?<![{ALPHABET}])[{ALPHABET}]{{5}}(?:-?[{ALPHABET}]{{5}}){{4}}"
    rf"(?![{ALPHABET}])",
    re.IGNORECASE,
)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svc() -> Iterator[BackgroundMak]:
    """One service for the module (stopping one takes a fifth of a second): tests mint
    their own keys and request IDs, and look only at those."""
    with BackgroundMak(clock=FakeClock()) as service:
        yield service


@pytest.fixture
def own_svc() -> Iterator[BackgroundMak]:
    """A service of the test's own, for what looks at every key (exports, its clock)."""
    with BackgroundMak(clock=FakeClock()) as service:
        yield service


def rid(name: str) -> str:
    """A request ID no other test uses (they are unique across keys)."""
    return f"{name}-{secrets.token_hex(6)}"


def request(
    svc: BackgroundMak,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return httpraw.request(svc.address, method, path, body, token=token, headers=headers)


def exchange(svc: BackgroundMak, head: bytes, *pieces: bytes) -> Reply:
    return httpraw.exchange(svc.address, head, *pieces)


def error_schema() -> dict[str, Any]:
    from mak.api import openapi_document

    schema: dict[str, Any] = openapi_document()["components"]["schemas"]["Error"]
    return schema


def assert_error(status: int | None, body: Any, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "hint", "hresult"?, ...}}`` with the registry's
    status, wording and HRESULT for its code."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    for name in ("code", "message", "hint"):
        assert isinstance(error.get(name), str), (name, error)
    if code is not None:
        assert error["code"] == code, error
    info = SERVICE_ERRORS[error["code"]]
    assert status == info.status, (status, error)
    assert error["message"].startswith(info.message)
    assert error["hint"] == info.hint
    if info.hresult is None:
        assert "hresult" not in error
    else:
        assert error["hresult"] == format_hresult(info.hresult)
    OAS31Validator(error_schema()).validate(body)
    return error


def assert_reply_error(reply: Reply, code: str) -> dict[str, Any]:
    assert reply.headers.get_content_type() == "application/json", reply.raw
    return assert_error(reply.status, reply.body, code)


def refused(call: Callable[[], Any], code: str) -> dict[str, Any]:
    """``call`` (a MakClient method) must be refused with ``code``; the error object."""
    with pytest.raises(RemoteError) as caught:
        call()
    return assert_error(caught.value.status, {"error": caught.value.body}, code)


def fresh_key(key_type: KeyType = KeyType.MAK) -> str:
    """A well-formed key that no service has seen."""
    return str(mint(key_type, 0, serial=next(_serials)))


def fp(key: str) -> str:
    return parse(key).fingerprint


def hw(n: int | str) -> bytes:
    """A machine's hardware ID; different ``n`` are different machines (<= 6 bytes equal)."""
    return hashlib.sha256(f"machine {n}".encode()).digest()[:10]


def changed(hardware: bytes, positions: range | tuple[int, ...]) -> bytes:
    """The hardware ID with the bytes at ``positions`` changed (the rest kept)."""
    return bytes(b ^ 0xFF if i in positions else b for i, b in enumerate(hardware))


def iid(key: str, hardware: bytes, key_type: KeyType = KeyType.MAK) -> str:
    return installation_id(key_type, fp(key), hardware)


def mistype_group(text: str, group: int) -> str:
    """The IID with one data digit of ``group`` (1-based) changed: its check digit fails."""
    groups = text.split("-")
    digits = groups[group - 1]
    groups[group - 1] = str((int(digits[0]) + 1) % 10) + digits[1:]
    return "-".join(groups)


def endpoint_id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path}"


ADMIN = [e for e in ENDPOINTS if e.admin]
PUBLIC = [e for e in ENDPOINTS if not e.admin and not e.caller]
#: The routes that read a request body (block and unblock read none).
BODY_READERS = [
    e
    for e in ENDPOINTS
    if e.method in ("POST", "PUT") and not e.path.endswith(("/block", "/unblock"))
]
OFFER = "m365-business-basic"


def token_for(svc: BackgroundMak, endpoint: Endpoint) -> str | None:
    """The token a valid request sends: the admin's, which also acts in every organisation."""
    return svc.admin_token if endpoint.admin or endpoint.caller else None


def portal_org(svc: BackgroundMak) -> str:
    """A new organisation with the offer, a user 'ann' holding one of its licences, and a
    subscription with licences to spare."""
    portal = PortalClient(svc.url, token=svc.admin_token)
    portal.put_offer(OFFER, max_licences=1000, countries=["GB"])
    org = f"org-{next(_serials)}"
    portal.create_org(org, "GB")
    portal.add_user(org, "ann", "user")
    portal.add_user(org, "bo", "user")
    portal.buy(org, offer=OFFER, licences=5, billing="monthly")
    portal.assign(org, "ann", OFFER)
    return org


def subscription_key() -> str:
    offer = next(p for p in default_catalog() if p.key == OFFER)
    return str(mint(KeyType.SUBSCRIPTION, offer.number, serial=next(_serials), quantity=2))


def valid_request(svc: BackgroundMak, endpoint: Endpoint) -> tuple[str, Any]:
    """A request to ``endpoint`` that succeeds: its concrete path and body."""
    key = svc.mint_key(limit=5)
    path = endpoint.path.replace("{fingerprint}", fp(key))
    if "{org}" in path:
        path = path.replace("{org}", portal_org(svc))
        path = path.replace("{offer}", OFFER).replace(
            "{user}", "ann" if "{offer}" in path else "bo"
        )
    elif endpoint.path == "/v1/portal/offers/{offer}":
        path = path.replace("{offer}", OFFER)
    bodies: dict[tuple[str, str], Any] = {
        ("GET", "/v1/health"): None,
        ("GET", "/openapi.json"): None,
        ("POST", "/v1/activate"): {"key": key, "hardware_id": hw(1).hex()},
        ("POST", "/v1/phone"): {"installation_id": iid(key, hw(1))},
        ("POST", "/v1/proxy-activate"): {"installation_ids": [iid(key, hw(2))]},
        ("POST", "/v1/count"): {"key": key},
        ("GET", "/v1/keys"): None,
        ("POST", "/v1/keys"): {"key": fresh_key(), "limit": 3},
        ("GET", "/v1/keys/{fingerprint}"): None,
        ("POST", "/v1/keys/{fingerprint}/increase"): {"by": 2, "reason": "pilot"},
        ("POST", "/v1/keys/{fingerprint}/block"): None,
        ("POST", "/v1/keys/{fingerprint}/unblock"): None,
        ("POST", "/v1/keys/{fingerprint}/expire"): {},
        ("GET", "/v1/export"): None,
        ("POST", "/v1/import"): {"format": "kmsemu-mak-export", "version": 1},
        ("GET", "/v1/portal/offers"): None,
        ("PUT", "/v1/portal/offers/{offer}"): {"max_licences": 1000, "countries": ["GB"]},
        ("GET", "/v1/portal/orgs"): None,
        ("POST", "/v1/portal/orgs"): {"name": f"org-{next(_serials)}", "country": "GB"},
        ("POST", "/v1/portal/signup"): {
            "key": subscription_key(),
            "org": f"org-{next(_serials)}",
            "country": "GB",
            "user": "ann",
        },
        ("GET", "/v1/portal/orgs/{org}/users"): None,
        ("POST", "/v1/portal/orgs/{org}/users"): {"name": "cy", "role": "user"},
        ("POST", "/v1/portal/orgs/{org}/redeem"): {"key": subscription_key()},
        ("GET", "/v1/portal/orgs/{org}/subscriptions"): None,
        ("POST", "/v1/portal/orgs/{org}/subscriptions"): {
            "offer": OFFER,
            "licences": 3,
            "billing": "yearly",
        },
        ("POST", "/v1/portal/orgs/{org}/users/{user}/licences"): {"offer": OFFER},
        ("DELETE", "/v1/portal/orgs/{org}/users/{user}/licences/{offer}"): None,
        ("POST", "/v1/portal/keys/expire"): {"key": subscription_key()},
        ("GET", "/v1/portal/fault"): None,
        ("PUT", "/v1/portal/fault"): {"code": "busy", "times": 1},
        ("DELETE", "/v1/portal/fault"): None,
    }
    return path, bodies[endpoint.method, endpoint.path]


# -- routes and the OpenAPI document -------------------------------------------------------


def test_openapi_document_validates_and_lists_exactly_the_routes(svc: BackgroundMak) -> None:
    reply = request(svc, "GET", "/openapi.json")
    assert reply.status == 200
    document = reply.body
    validate(document)
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    table = {(e.method, e.path) for e in ENDPOINTS}
    assert documented == table
    # what the application routes is the table too (HEAD comes with every GET)
    app = create_app(svc.service, admin_token="unused")
    routes = [route for route in app.routes if isinstance(route, Route)]
    assert len(routes) == len(app.routes)
    routed = {
        (method, route.path) for route in routes for method in (route.methods or set()) - {"HEAD"}
    }
    assert routed == table | {("GET", "/healthz"), ("GET", "/readyz")}  # outside the schema
    # security and success status as the table says; every error status is documented
    statuses = {str(info.status) for info in SERVICE_ERRORS.values()}
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        assert ("security" in operation) == (endpoint.admin or endpoint.caller), endpoint_id(
            endpoint
        )
        assert str(endpoint.status) in operation["responses"]
        assert statuses <= set(operation["responses"])
    for scheme in ("admin", "user"):
        assert document["components"]["securitySchemes"][scheme]["scheme"] == "bearer"


def test_every_documented_operation_is_served(svc: BackgroundMak) -> None:
    """Each (method, path) of the document reaches a handler: never not_found or
    method_not_allowed, whatever else the handler thinks of an empty request."""
    document = request(svc, "GET", "/openapi.json").body
    for path, operations in document["paths"].items():
        concrete = path.replace("{fingerprint}", "0123456789abcdef")
        for method in operations:
            reply = request(svc, method.upper(), concrete, {}, token=svc.admin_token)
            code = (
                (reply.body.get("error") or {}).get("code")
                if isinstance(reply.body, dict)
                else None
            )
            assert code not in ("not_found", "method_not_allowed"), (method, path, reply.body)


def test_the_valid_request_table_covers_every_endpoint(svc: BackgroundMak) -> None:
    for endpoint in ENDPOINTS:
        valid_request(svc, endpoint)  # a KeyError names the endpoint left out


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
def test_every_route_answers_its_documented_status_and_schema(
    svc: BackgroundMak, endpoint: Endpoint
) -> None:
    path, body = valid_request(svc, endpoint)
    reply = request(svc, endpoint.method, path, body, token=token_for(svc, endpoint))
    assert reply.status == endpoint.status, reply.body
    assert reply.headers.get_content_type() == "application/json"
    OAS31Validator(endpoint.response).validate(reply.body)


@pytest.mark.parametrize("endpoint", ADMIN, ids=endpoint_id)
def test_admin_routes_need_the_token(svc: BackgroundMak, endpoint: Endpoint) -> None:
    path, body = valid_request(svc, endpoint)
    missing = request(svc, endpoint.method, path, body)
    assert_reply_error(missing, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Basic " + svc.admin_token, "Bearer", "Bearer ", svc.admin_token):
        other = request(svc, endpoint.method, path, body, headers={"Authorization": header})
        assert_reply_error(other, "unauthorized")
        assert other.headers["WWW-Authenticate"] == "Bearer"
    for wrong in ("wrong", svc.admin_token + "x", svc.admin_token[:-1]):
        forbidden = request(svc, endpoint.method, path, body, token=wrong)
        assert_reply_error(forbidden, "forbidden")
        assert "WWW-Authenticate" not in forbidden.headers
    right = request(svc, endpoint.method, path, body, token=svc.admin_token)
    assert right.status == endpoint.status, right.body
    # the scheme is case-insensitive (RFC 9110)
    lower = request(
        svc,
        endpoint.method,
        *valid_request(svc, endpoint),
        headers={"Authorization": "bearer " + svc.admin_token},
    )
    assert lower.status == endpoint.status, lower.body


@pytest.mark.parametrize("endpoint", PUBLIC, ids=endpoint_id)
def test_public_routes_need_no_token(svc: BackgroundMak, endpoint: Endpoint) -> None:
    path, body = valid_request(svc, endpoint)
    reply = request(svc, endpoint.method, path, body)
    assert reply.status == endpoint.status, reply.body
    # and a wrong token is not looked at
    path, body = valid_request(svc, endpoint)
    assert request(svc, endpoint.method, path, body, token="wrong").status == endpoint.status


def test_unknown_path_is_a_json_404(svc: BackgroundMak) -> None:
    for method, path in (
        ("GET", "/"),
        ("GET", "/v1/nope"),
        ("POST", "/v1/activation"),
        ("GET", "/v1/keys/0123456789abcdef/machines"),
        ("GET", "/v2/health"),
    ):
        assert_reply_error(request(svc, method, path), "not_found")
    # with the token too: the token does not reveal routes
    assert_reply_error(request(svc, "GET", "/v1/secret", token=svc.admin_token), "not_found")


def test_trailing_slash_is_a_json_404_not_a_redirect(svc: BackgroundMak) -> None:
    reply = request(svc, "POST", "/v1/activate/", {})
    assert_reply_error(reply, "not_found")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
def test_wrong_method_is_a_json_405(svc: BackgroundMak, endpoint: Endpoint) -> None:
    path = endpoint.path.replace("{fingerprint}", "0123456789abcdef")
    served = {e.method for e in ENDPOINTS if e.path == endpoint.path}
    for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - served):
        assert_reply_error(request(svc, method, path, {}), "method_not_allowed")
        # admin routes too: the method is refused before the token is asked for
        assert_reply_error(request(svc, method, path, {}, token="wrong"), "method_not_allowed")


# -- bodies --------------------------------------------------------------------------------


def _head(path: str, token: str | None, *lines: str, method: str = "POST") -> bytes:
    auth = [f"Authorization: Bearer {token}"] if token else []
    return (
        "\r\n".join(
            [
                f"{method} {path} HTTP/1.1",
                "Host: 127.0.0.1",
                "Content-Type: application/json",
                *auth,
                *lines,
            ]
        )
        + "\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("endpoint", BODY_READERS, ids=endpoint_id)
def test_declared_length_over_the_limit_is_refused_before_the_body(
    svc: BackgroundMak, endpoint: Endpoint
) -> None:
    """Content-Length over the route's limit: 413 at once, nothing of the body sent."""
    path, _ = valid_request(svc, endpoint)
    reply = exchange(
        svc,
        _head(
            path,
            token_for(svc, endpoint),
            f"Content-Length: {endpoint.body_limit + 1}",
            method=endpoint.method,
        ),
    )
    assert_reply_error(reply, "body_too_large")


def test_every_route_that_reads_a_body_documents_it(svc: BackgroundMak) -> None:
    paths = request(svc, "GET", "/openapi.json").body["paths"]
    undocumented = [
        endpoint_id(e) for e in BODY_READERS if "requestBody" not in paths[e.path][e.method.lower()]
    ]
    assert undocumented == []


def test_body_limits_are_per_route() -> None:
    limits = {e.path: e.body_limit for e in ENDPOINTS if e.method == "POST"}
    assert limits["/v1/activate"] == SMALL_BODY
    assert limits["/v1/proxy-activate"] == PROXY_BODY
    assert limits["/v1/import"] == IMPORT_BODY


def _chunks(total: int, size: int = 4096) -> list[bytes]:
    return [b"%x\r\n" % size + b" " * size + b"\r\n" for _ in range(-(-total // size))]


@pytest.mark.parametrize(
    "path,limit",
    [("/v1/activate", SMALL_BODY), ("/v1/count", SMALL_BODY), ("/v1/proxy-activate", PROXY_BODY)],
)
def test_chunked_body_growing_past_the_limit_is_refused(
    svc: BackgroundMak, path: str, limit: int
) -> None:
    """No Content-Length: the service counts what arrives and answers 413 once the body
    passes the limit, without waiting for the last chunk (never sent here)."""
    reply = exchange(svc, _head(path, None, "Transfer-Encoding: chunked"), *_chunks(limit + 1))
    assert_reply_error(reply, "body_too_large")


def test_chunked_body_within_the_limit_is_read(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=1)
    body = json.dumps({"key": key, "hardware_id": hw(1).hex()}).encode()
    pieces = [body[:7], body[7:30], body[30:]]
    reply = exchange(
        svc,
        _head("/v1/activate", None, "Transfer-Encoding: chunked"),
        *(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces),
        b"0\r\n\r\n",
    )
    assert reply.status == 200 and reply.body["counted"] is True


def test_body_of_exactly_the_limit_is_accepted(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=1)
    body = json.dumps({"key": key, "hardware_id": hw(1).hex()}).encode()
    padded = body[:-1] + b" " * (SMALL_BODY - len(body)) + b"}"
    assert len(padded) == SMALL_BODY
    assert request(svc, "POST", "/v1/activate", padded).status == 200
    over = body[:-1] + b" " * (SMALL_BODY + 1 - len(body)) + b"}"
    assert_reply_error(request(svc, "POST", "/v1/activate", over), "body_too_large")


BAD_JSON = {
    "truncated": b'{"key": ',
    "not json": b"key=BCDFG",
    "list": b'[{"key": "x"}]',
    "string": b'"{}"',
    "number": b"42",
    "null": b"null",
    "empty": b"",
    "non-utf-8": b'{"key": "\xff\xfe"}',
    "latin-1": '{"machine_name": "Gr\u00fcn"}'.encode("latin-1"),
    "deep": b"[" * 10_000,
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
@pytest.mark.parametrize("path", ["/v1/activate", "/v1/phone", "/v1/count", "/v1/proxy-activate"])
def test_a_body_that_is_not_one_json_object_is_bad_json(
    svc: BackgroundMak, path: str, body: bytes
) -> None:
    assert_reply_error(request(svc, "POST", path, body), "bad_json")


def test_admin_bodies_are_checked_too(svc: BackgroundMak) -> None:
    for path in ("/v1/keys", "/v1/import", f"/v1/keys/{fp(svc.mint_key())}/increase"):
        for body in (b"[]", b"{", b"\xff"):
            assert_reply_error(request(svc, "POST", path, body, token=svc.admin_token), "bad_json")


def test_a_utf16_body_is_bad_json(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=1)
    body = json.dumps({"key": key, "hardware_id": hw(1).hex()}).encode("utf-16")
    assert_reply_error(request(svc, "POST", "/v1/activate", body), "bad_json")


def _invalid_fields(svc: BackgroundMak, key: str) -> list[tuple[str, Any, str, bool]]:
    good = {"key": key, "hardware_id": hw(1).hex()}
    finger = fp(key)
    return [
        ("/v1/activate", {**good, "key": 5}, "key", False),
        ("/v1/activate", {**good, "key": None}, "key", False),
        ("/v1/activate", {"key": key}, "hardware_id", False),
        ("/v1/activate", {**good, "hardware_id": 1234}, "hardware_id", False),
        ("/v1/activate", {**good, "hardware_id": "zz" * 10}, "hardware_id", False),
        ("/v1/activate", {**good, "hardware_id": "00" * 9}, "hardware_id", False),
        ("/v1/activate", {**good, "hardware_id": "00" * 11}, "hardware_id", False),
        ("/v1/activate", {**good, "machine_name": 3}, "machine_name", False),
        ("/v1/activate", {**good, "machine_name": "x" * 64}, "machine_name", False),
        ("/v1/activate", {**good, "request_id": ["r1"]}, "request_id", False),
        ("/v1/activate", {**good, "request_id": "r" * 65}, "request_id", False),
        ("/v1/phone", {"installation_id": 12345}, "installation_id", False),
        ("/v1/phone", {}, "installation_id", False),
        ("/v1/proxy-activate", {"installation_ids": "123"}, "installation_ids", False),
        ("/v1/proxy-activate", {}, "installation_ids", False),
        ("/v1/count", {"key": ["x"]}, "key", False),
        ("/v1/keys", {"key": fresh_key(), "limit": "3"}, "limit", True),
        ("/v1/keys", {"key": fresh_key(), "limit": True}, "limit", True),
        ("/v1/keys", {"key": fresh_key(), "limit": -1}, "limit", True),
        ("/v1/keys", {"key": fresh_key(), "limit": 2**31}, "limit", True),
        ("/v1/keys", {"key": fresh_key(), "limit": 1.5}, "limit", True),
        ("/v1/keys", {"key": fresh_key()}, "limit", True),  # a MAK needs its limit
        ("/v1/keys", {"key": fresh_key(), "limit": 3, "expires": "soon"}, "expires", True),
        ("/v1/keys", {"key": fresh_key(), "limit": 3, "expires": 17}, "expires", True),
        ("/v1/keys", {"key": fresh_key(), "limit": 3, "reactivations": "9"}, "reactivations", True),
        (f"/v1/keys/{finger}/increase", {}, "by", True),
        (f"/v1/keys/{finger}/increase", {"by": 0}, "by", True),
        (f"/v1/keys/{finger}/increase", {"by": "2"}, "by", True),
        (f"/v1/keys/{finger}/increase", {"by": 2, "reason": 7}, "reason", True),
        (f"/v1/keys/{finger}/expire", {"at": "yesterday"}, "at", True),
        ("/v1/import", {"format": "something else"}, "format", True),
        ("/v1/import", {"format": "kmsemu-mak-export", "version": 2}, "version", True),
        ("/v1/import", {"format": "kmsemu-mak-export", "version": 1, "keys": {}}, "keys", True),
    ]


def test_wrong_field_types_are_invalid_field_naming_the_field(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=3)
    registered = len(svc.client(admin=True).keys())
    for path, body, field, admin in _invalid_fields(svc, key):
        reply = request(svc, "POST", path, body, token=svc.admin_token if admin else None)
        error = assert_reply_error(reply, "invalid_field")
        assert error["field"] == field, (path, body, error)
    # nothing was counted or registered on the way
    assert svc.client().count(key)["used"] == 0
    assert len(svc.client(admin=True).keys()) == registered


# -- online activation ---------------------------------------------------------------------


def test_online_activation_outcomes_of_a_mak(svc: BackgroundMak) -> None:
    client = svc.client(admin=True)
    key = svc.mint_key(limit=3)
    finger = fp(key)
    machine = hw("A")

    first = client.activate(key, machine.hex(), machine_name="PC-A")
    assert (first["activated"], first["counted"], first["verdict"]) == (True, True, "new")
    assert (first["used"], first["limit"], first["remaining"]) == (1, 3, 2)
    assert (first["fingerprint"], first["last5"]) == (finger, normalise(key)[-5:])

    # three components changed: 7 of 10 bytes equal, the same machine, free
    same = client.activate(key, changed(machine, (0, 1, 2)).hex())
    assert (same["counted"], same["verdict"], same["used"]) == (False, "same", 1)
    assert client.activate(key, machine.hex())["verdict"] == "same"

    # four changed: 6 of 10 equal, a significant hardware change, counted again
    significant = client.activate(key, changed(machine, (6, 7, 8, 9)).hex())
    assert (significant["counted"], significant["verdict"], significant["used"]) == (True, "new", 2)

    # the comparison is with the ID recorded when counted, not with the last free one:
    # 7 of 10 equal to the free reactivation above, 4 of 10 to the recorded machine
    drifted = client.activate(key, changed(machine, (0, 1, 2, 3, 4, 5)).hex())
    assert (drifted["counted"], drifted["used"], drifted["remaining"]) == (True, 3, 0)

    limit = refused(lambda: client.activate(key, hw("B").hex()), "mak_limit_exceeded")
    assert limit["hresult"] == "0xC004C020"
    # a known machine still reactivates for free at the limit
    assert client.activate(key, machine.hex())["counted"] is False

    increased = client.increase(finger, 1, "more PCs")
    assert (
        increased["limit"],
        increased["base_limit"],
        increased["increased"],
        increased["remaining"],
    ) == (4, 3, 1, 1)
    assert client.activate(key, hw("B").hex())["remaining"] == 0
    extension = refused(lambda: client.activate(key, hw("C").hex()), "mak_extension_limit_exceeded")
    assert extension["hresult"] == "0xC004C021"

    assert client.change(finger, "block")["blocked"] is True
    blocked = refused(lambda: client.activate(key, machine.hex()), "key_blocked")
    assert blocked["hresult"] == "0xC004C003"
    assert client.change(finger, "unblock")["blocked"] is False
    assert client.activate(key, machine.hex())["activated"] is True

    assert client.change(finger, "expire")["expires"] is not None
    expired = refused(lambda: client.activate(key, machine.hex()), "key_expired")
    assert expired["hresult"] == "0xC004C031"

    shown = client.key(finger)
    assert (shown["used"], len(shown["machines"])) == (4, 4)
    assert [m["machine_name"] for m in shown["machines"]] == ["PC-A", None, None, None]
    assert {m["route"] for m in shown["machines"]} == {"online"}
    assert [(i["amount"], i["reason"]) for i in shown["increases"]] == [(1, "more PCs")]


def test_expiry_in_the_future_then_passing(own_svc: BackgroundMak) -> None:
    svc = own_svc
    assert isinstance(svc.clock, FakeClock)
    client = svc.client(admin=True)
    key = svc.mint_key(limit=5)
    at = "2023-11-15T00:00:00+00:00"  # FakeClock starts at 2023-11-14T22:13:20Z
    assert client.change(fp(key), "expire", {"at": at})["expires"] == at
    assert client.activate(key, hw(1).hex())["counted"] is True
    svc.clock.advance(24 * 3600)
    refused(lambda: client.activate(key, hw(1).hex()), "key_expired")


def test_malformed_key_gets_problems_and_candidates(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=3)
    typo = mistype_key(key, 13)
    error = refused(lambda: client.activate(typo, hw(1).hex()), "key_malformed")
    assert error["hresult"] == "0xC004C001"
    assert [p["code"] for p in error["problems"]] == ["check_failed"]
    assert normalise(key) in [normalise(c) for c in error["candidates"]]
    assert len(error["candidates"]) <= 5

    # a character keys never use, where the symbol was: its position, and the key
    zero = normalise(key)[:12] + "0" + normalise(key)[13:]
    error = refused(lambda: client.activate(zero, hw(1).hex()), "key_malformed")
    assert error["problems"][0] == {
        "code": "invalid_character",
        "position": 13,
        "character": "0",
        "message": error["problems"][0]["message"],
    }
    assert normalise(key) in [normalise(c) for c in error["candidates"]]

    short = refused(lambda: client.activate(key[:-1], hw(1).hex()), "key_malformed")
    assert ([p["code"] for p in short["problems"]], short["candidates"]) == (["wrong_length"], [])
    # count and registration diagnose the same way
    refused(lambda: client.count(typo), "key_malformed")
    refused(lambda: svc.client(admin=True).add_key(typo, limit=3), "key_malformed")
    assert client.count(key)["used"] == 0


def test_malformed_key_candidates_are_keys_as_shown(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=3)
    error = refused(lambda: svc.client().activate(mistype_key(key), hw(1).hex()), "key_malformed")
    assert key in error["candidates"]


def test_unknown_and_wrong_type_keys(svc: BackgroundMak) -> None:
    client = svc.client(admin=True)
    unknown = refused(lambda: client.activate(fresh_key(), hw(1).hex()), "key_unknown")
    assert unknown["hresult"] == "0xC004C001"
    refused(lambda: client.count(fresh_key()), "key_unknown")
    for other in (
        str(setup_key(0)),
        fresh_key(KeyType.KMS_CLIENT),
        fresh_key(KeyType.SUBSCRIPTION),
    ):
        wrong = refused(partial(client.activate, other, hw(1).hex()), "key_wrong_type")
        assert wrong["hresult"] == "0xC004C001"
        refused(partial(client.add_key, other, limit=5), "key_wrong_type")
    key = svc.mint_key(limit=2)
    refused(lambda: client.add_key(key, limit=9), "key_exists")
    refused(lambda: client.add_key(key.lower().replace("-", " "), limit=9), "key_exists")
    refused(lambda: client.key("0123456789abcdef"), "key_unknown")
    refused(lambda: client.increase("0123456789abcdef", 1), "key_unknown")
    for action in ("block", "unblock", "expire"):
        refused(partial(client.change, "0123456789abcdef", action), "key_unknown")
    assert client.activate(key.lower(), hw(1).hex())["counted"] is True  # keys.md: normalised


def test_a_retail_key_activates_one_machine(svc: BackgroundMak) -> None:
    client = svc.client(admin=True)
    key = svc.mint_key(limit=None, key_type=KeyType.RETAIL)
    assert client.count(key)["limit"] == 1
    assert client.activate(key, hw(1).hex())["counted"] is True
    for _ in range(3):  # the same machine again and again: free
        assert client.activate(key, changed(hw(1), (9,)).hex())["verdict"] == "same"
    second = refused(lambda: client.activate(key, hw(2).hex()), "key_unlock_limit")
    assert second["hresult"] == "0xC004C008"
    assert client.count(key)["used"] == 1


def test_a_kms_host_key_six_hosts_each_reactivated_nine_times(svc: BackgroundMak) -> None:
    client = svc.client(admin=True)
    key = svc.mint_key(limit=None, key_type=KeyType.KMS_HOST)
    hosts = [hw(f"host {n}") for n in range(7)]
    for n, host in enumerate(hosts[:6], 1):
        answer = client.activate(key, host.hex())
        assert (answer["counted"], answer["used"]) == (True, n)
    seventh = refused(lambda: client.activate(key, hosts[6].hex()), "key_unlock_limit")
    assert seventh["hresult"] == "0xC004C008"
    for _ in range(9):
        again = client.activate(key, hosts[0].hex())
        assert (again["verdict"], again["counted"], again["used"]) == ("reactivated", False, 6)
    tenth = refused(lambda: client.activate(key, hosts[0].hex()), "key_unlock_limit")
    assert tenth["hresult"] == "0xC004C008"
    assert client.activate(key, hosts[1].hex())["verdict"] == "reactivated"  # others may
    machines = client.key(fp(key))["machines"]
    assert [m["reactivations"] for m in machines] == [9, 1, 0, 0, 0, 0]


# -- phone and proxy activation ----------------------------------------------------------------


def test_phone_activation(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=2)
    installation = iid(key, hw(1))
    answer = client.phone(installation, machine_name="LAB-1")
    assert verify_confirmation_id(installation, answer["confirmation_id"], svc.secret).valid
    assert not verify_confirmation_id(installation, answer["confirmation_id"], "other").valid
    assert (answer["counted"], answer["used"], answer["remaining"]) == (True, 1, 1)

    again = client.phone(installation)
    assert (again["counted"], again["used"]) == (False, 1)
    assert again["confirmation_id"] == answer["confirmation_id"]
    # spaces instead of dashes, the same machine after a small hardware change: free
    assert client.phone(installation.replace("-", " "))["counted"] is False
    similar = iid(key, changed(hw(1), (0, 5)))
    assert client.phone(similar)["verdict"] == "same"
    # online and phone count the same machines
    assert svc.client().activate(key, hw(1).hex())["counted"] is False

    mistyped = mistype_group(installation, 3)
    error = refused(lambda: client.phone(mistyped), "installation_id_invalid")
    assert error["failed_groups"] == [3]
    assert "hresult" not in error
    two = mistype_group(mistype_group(installation, 2), 9)
    assert refused(lambda: client.phone(two), "installation_id_invalid")["failed_groups"] == [2, 9]
    assert (
        refused(lambda: client.phone(installation[:-2]), "installation_id_invalid")["failed_groups"]
        == []
    )
    refused(lambda: client.phone(iid(fresh_key(), hw(1))), "key_unknown")
    # an IID naming the key's fingerprint with another type is not this key
    refused(lambda: client.phone(iid(key, hw(2), KeyType.RETAIL)), "key_unknown")
    refused(lambda: client.phone(iid(key, hw(2), KeyType.KMS_CLIENT)), "key_wrong_type")
    shown = svc.client(admin=True).key(fp(key))
    assert shown["used"] == 1
    assert [(m["route"], m["machine_name"]) for m in shown["machines"]] == [("phone", "LAB-1")]


def test_proxy_activation_answers_each_id(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=3)
    good1, good2 = iid(key, hw(1)), iid(key, hw(2))
    mistyped = mistype_group(iid(key, hw(3)), 4)
    items: list[Any] = [
        good1,
        good1,  # a duplicate: the same machine, free, the same CID
        {"installation_id": good2, "machine_name": "PROXY-2"},
        mistyped,
        iid(fresh_key(), hw(4)),
        {"machine_name": "no id"},
        42,
    ]
    answer = client.proxy_activate(items)
    results = answer["results"]
    assert len(results) == len(items)
    assert (answer["activated"], answer["failed"]) == (3, 4)
    assert [r["installation_id"] for r in results] == [
        good1,
        good1,
        good2,
        mistyped,
        items[4],
        None,
        42,
    ]
    assert [r.get("counted") for r in results[:3]] == [True, False, True]
    assert results[0]["confirmation_id"] == results[1]["confirmation_id"]
    for result, installation in zip(results[:3], (good1, good1, good2), strict=True):
        assert verify_confirmation_id(installation, result["confirmation_id"], svc.secret).valid
    assert results[2]["machine_name"] == "PROXY-2"
    codes = ["installation_id_invalid", "key_unknown", "invalid_field", "invalid_field"]
    for result, code in zip(results[3:], codes, strict=True):
        assert_error(SERVICE_ERRORS[code].status, {"error": result["error"]}, code)
    assert results[3]["error"]["failed_groups"] == [4]
    assert results[2]["used"] == 2
    shown = svc.client(admin=True).key(fp(key))
    assert shown["used"] == 2
    assert {m["route"] for m in shown["machines"]} == {"proxy"}
    assert [m["machine_name"] for m in shown["machines"]] == [None, "PROXY-2"]


def test_proxy_activation_takes_at_most_1000_ids(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=1)
    one = iid(key, hw(1))
    answer = client.proxy_activate([one] * MAX_PROXY_IDS)
    assert (answer["activated"], answer["failed"]) == (MAX_PROXY_IDS, 0)
    assert sum(r["counted"] for r in answer["results"]) == 1
    refused(lambda: client.proxy_activate([one] * (MAX_PROXY_IDS + 1)), "body_too_large")
    refused(
        lambda: client.proxy_activate([iid(key, hw(n)) for n in range(MAX_PROXY_IDS + 1)]),
        "body_too_large",
    )
    assert client.count(key)["used"] == 1
    assert client.proxy_activate([]) == {"results": [], "activated": 0, "failed": 0}


# -- replays -------------------------------------------------------------------------------


def test_a_replayed_request_is_answered_again_never_counted_twice(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=3)
    req1, req2, phone1, later = rid("req-1"), rid("req-2"), rid("phone-1"), rid("later")
    first = client.activate(key, hw(1).hex(), request_id=req1)
    assert (first["counted"], first["replayed"], first["used"]) == (True, False, 1)
    for _ in range(3):
        again = client.activate(key, hw(1).hex(), request_id=req1)
        assert (again["counted"], again["replayed"], again["verdict"], again["used"]) == (
            False,
            True,
            "new",
            1,
        )
    # a free reactivation replayed stays what it was
    client.activate(key, hw(1).hex(), request_id=req2)
    assert client.activate(key, hw(1).hex(), request_id=req2)["verdict"] == "same"

    installation = iid(key, hw(2))
    phoned = client.phone(installation, request_id=phone1)
    replayed = client.phone(installation, request_id=phone1)
    assert (phoned["counted"], replayed["counted"], replayed["replayed"]) == (True, False, True)
    assert replayed["confirmation_id"] == phoned["confirmation_id"]
    assert client.count(key)["used"] == 2
    assert len(svc.client(admin=True).key(fp(key))["machines"]) == 2

    # a refused request is not remembered: once the key allows it, the same id counts
    full = svc.mint_key(limit=0)
    refused(lambda: client.activate(full, hw(3).hex(), request_id=later), "mak_limit_exceeded")
    svc.client(admin=True).increase(fp(full), 1)
    assert client.activate(full, hw(3).hex(), request_id=later)["counted"] is True


def test_a_request_id_reused_for_another_machine_does_not_activate_it(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=1)
    req = rid("req")
    client.activate(key, hw(1).hex(), request_id=req)
    refused(lambda: client.activate(key, hw(2).hex()), "mak_limit_exceeded")
    with pytest.raises(RemoteError):  # another machine must not get "activated": true
        client.activate(key, hw(2).hex(), request_id=req)


def test_a_phone_request_id_reused_for_another_machine_gets_no_cid(svc: BackgroundMak) -> None:
    client = svc.client()
    key = svc.mint_key(limit=1)
    call = rid("call")
    client.phone(iid(key, hw(1)), request_id=call)
    other = iid(key, hw(2))
    refused(lambda: client.phone(other), "mak_limit_exceeded")
    with pytest.raises(RemoteError):
        client.phone(other, request_id=call)


def test_a_request_id_reused_on_another_key_is_not_an_internal_error(svc: BackgroundMak) -> None:
    client = svc.client()
    one, two = svc.mint_key(limit=2), svc.mint_key(limit=2)
    shared = rid("shared")
    client.activate(one, hw(1).hex(), request_id=shared)
    try:
        client.activate(two, hw(1).hex(), request_id=shared)
    except RemoteError as exc:
        assert exc.code != "internal", exc.body  # a refusal of the client's request is fine


# -- count, export, import -------------------------------------------------------------------


def test_count_needs_the_key_not_the_token(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=4)
    svc.client().activate(key, hw(1).hex())
    reply = request(svc, "POST", "/v1/count", {"key": key})
    assert reply.status == 200
    assert {k: reply.body[k] for k in ("used", "limit", "remaining", "blocked", "expires")} == {
        "used": 1,
        "limit": 4,
        "remaining": 3,
        "blocked": False,
        "expires": None,
    }
    listed = svc.client(admin=True).keys()
    assert [reply.body] == [k for k in listed if k["fingerprint"] == fp(key)]
    # the fingerprint alone is not enough: count is for whoever holds the key
    refused(lambda: svc.client().count(fp(key)), "key_malformed")


def _walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from _walk_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_keys(item)


def _populate(svc: BackgroundMak) -> list[str]:
    """Keys of every type, increases, a block and activations on every route."""
    admin = svc.client(admin=True)
    mak, retail, host = fresh_key(), fresh_key(KeyType.RETAIL), fresh_key(KeyType.KMS_HOST)
    admin.add_key(mak, limit=5, expires="2030-01-01T00:00:00+00:00")
    admin.add_key(retail)
    admin.add_key(host)
    admin.increase(fp(mak), 2, "second floor")
    admin.activate(mak, hw(1).hex(), machine_name="SECRET-NAME-1")
    admin.phone(iid(mak, hw(2)), machine_name="SECRET-NAME-2")
    admin.proxy_activate([{"installation_id": iid(mak, hw(3)), "machine_name": "SECRET-NAME-3"}])
    admin.activate(retail, hw(4).hex())
    admin.activate(host, hw(5).hex(), machine_name="SECRET-NAME-5")
    admin.activate(host, hw(5).hex())  # a reactivation, recorded with the machine
    admin.change(fp(retail), "block")
    return [mak, retail, host]


def test_export_without_machine_names_has_none_anywhere(own_svc: BackgroundMak) -> None:
    svc = own_svc
    _populate(svc)
    reply = request(svc, "GET", "/v1/export?machine_names=false", token=svc.admin_token)
    assert reply.status == 200
    assert "machine_name" not in set(_walk_keys(reply.body))
    assert b"SECRET-NAME" not in reply.raw
    assert len(reply.body["activations"]) == 5 and len(reply.body["keys"]) == 3
    with_names = svc.client(admin=True).export()
    assert "machine_name" in set(_walk_keys(with_names))
    assert {a.get("machine_name") for a in with_names["activations"]} == {
        "SECRET-NAME-1",
        "SECRET-NAME-2",
        "SECRET-NAME-3",
        "SECRET-NAME-5",
        None,
    }
    keys_only = svc.client(admin=True).export(activations=False)
    assert "activations" not in keys_only and len(keys_only["keys"]) == 3
    activations_only = svc.client(admin=True).export(keys=False)
    assert "keys" not in activations_only and len(activations_only["activations"]) == 5


def _state(client: MakClient) -> list[dict[str, Any]]:
    keys = sorted(client.keys(), key=lambda k: k["fingerprint"])
    return [{**k, "show": client.key(k["fingerprint"])} for k in keys]


def test_import_reproduces_keys_and_activations_and_is_idempotent(own_svc: BackgroundMak) -> None:
    svc = own_svc
    keys = _populate(svc)
    source = svc.client(admin=True)
    document = source.export()
    with BackgroundMak(clock=FakeClock()) as other:
        target = other.client(admin=True)
        report = target.import_(document)
        assert report == {
            "keys_added": 3,
            "keys_kept": 0,
            "activations_added": 5,
            "activations_kept": 0,
        }
        assert _state(target) == _state(source)
        again = target.import_(copy.deepcopy(document))
        assert again == {
            "keys_added": 0,
            "keys_kept": 3,
            "activations_added": 0,
            "activations_kept": 5,
        }
        assert _state(target) == _state(source)
        # the imported counts go on counting: known machines free, the limit kept
        mak = keys[0]
        assert target.activate(mak, hw(1).hex())["counted"] is False
        assert target.count(mak)["remaining"] == 4
        refused(lambda: target.activate(keys[1], hw(9).hex()), "key_blocked")
        # activations of a key the target does not know are refused, nothing imported
        bare = {
            "format": "kmsemu-mak-export",
            "version": 1,
            "activations": [{**document["activations"][0], "fingerprint": "0" * 16}],
        }
        error = refused(lambda: target.import_(bare), "invalid_field")
        assert error["field"] == "activations"


@pytest.mark.parametrize(
    "where,value", [("reactivations", "many"), ("reactivations", None)], ids=["string", "null"]
)
def test_import_with_a_bad_reactivations_is_invalid_field(
    svc: BackgroundMak, where: str, value: Any
) -> None:
    key = svc.mint_key(limit=1)
    document = svc.client(admin=True).export()
    document["keys"] = [k for k in document["keys"] if k["fingerprint"] == fp(key)]
    document["activations"] = []
    document["keys"][0][where] = value
    with BackgroundMak() as other:
        error = refused(lambda: other.client(admin=True).import_(document), "invalid_field")
        assert error["field"].startswith("keys[0]")


def test_import_with_a_string_blocked_is_invalid_field(svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=1)
    document = svc.client(admin=True).export()
    document["keys"] = [k for k in document["keys"] if k["fingerprint"] == fp(key)]
    document["activations"] = []
    document["keys"][0]["blocked"] = "false"
    with BackgroundMak() as other:
        try:
            other.client(admin=True).import_(document)
        except RemoteError as exc:
            assert_error(exc.status, {"error": exc.body}, "invalid_field")
        else:
            assert other.client().count(key)["blocked"] is False


# -- no whole key leaves the service -------------------------------------------------------


def _forms(key: str) -> set[str]:
    symbols = normalise(key)
    return {symbols, key, symbols.lower(), key.lower()}


def test_no_whole_key_in_listings_exports_or_logs(
    svc: BackgroundMak, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger="kmsemu.mak"):
        keys = _populate(svc)
        client = svc.client()
        refused(lambda: client.activate(fresh_key(), hw(1).hex()), "key_unknown")
        refused(lambda: client.activate(mistype_key(keys[0]), hw(1).hex()), "key_malformed")
        refused(
            lambda: client.activate(keys[0], hw(99).hex(), request_id="r" * 65), "invalid_field"
        )
        refused(lambda: client.activate(keys[1], hw(1).hex()), "key_blocked")
        svc.client(admin=True).import_(svc.client(admin=True).export())
        bodies = [
            request(svc, "GET", "/v1/keys", token=svc.admin_token).raw,
            request(svc, "GET", "/v1/export", token=svc.admin_token).raw,
            request(svc, "GET", "/openapi.json").raw,
            request(svc, "GET", "/v1/health").raw,
            request(svc, "POST", "/v1/activate", {"key": keys[0], "hardware_id": hw(1).hex()}).raw,
            request(svc, "POST", "/v1/phone", {"installation_id": iid(keys[0], hw(2))}).raw,
            request(
                svc, "POST", "/v1/proxy-activate", {"installation_ids": [iid(keys[0], hw(3))]}
            ).raw,
            *(request(svc, "POST", "/v1/count", {"key": k}).raw for k in keys),
            *(request(svc, "GET", f"/v1/keys/{fp(k)}", token=svc.admin_token).raw for k in keys),
            request(
                svc, "POST", f"/v1/keys/{fp(keys[0])}/increase", {"by": 1}, token=svc.admin_token
            ).raw,
            request(
                svc, "POST", "/v1/keys", {"key": keys[0], "limit": 1}, token=svc.admin_token
            ).raw,  # key_exists
            request(svc, "POST", "/v1/activate", {"key": keys[1], "hardware_id": "00"}).raw,
        ]
    logged = [record.getMessage() for record in caplog.records]
    assert any("key added" in line for line in logged)  # the capture works
    assert any(fp(keys[0]) in line for line in logged)
    texts = [body.decode() for body in bodies] + logged + [caplog.text]
    for text in texts:
        assert not WHOLE_KEY.search(text), WHOLE_KEY.search(text)
        for key in keys:
            assert not any(form in text for form in _forms(key)), text


def test_a_client_gone_inside_the_body_is_bad_json_not_an_internal_error(
    svc: BackgroundMak, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer closes after part of the body: Starlette raises ClientDisconnect while the
    body is read; that is the client's doing, answered (to nobody) as bad_json and never
    logged as an internal error (the soak found it 444 times)."""
    app = create_app(svc.service, admin_token=svc.admin_token)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"key": "', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/activate",
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [(b"content-type", b"application/json")],
        "server": ("127.0.0.1", 8688),
        "client": ("127.0.0.1", 5555),
    }
    with caplog.at_level(logging.ERROR):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "bad_json"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def quick_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Request heads due within 0.3 s and at most 1 KiB (connections opened from now on)."""
    monkeypatch.setattr(GuardedHttp, "head_timeout", 0.3)
    monkeypatch.setattr(GuardedHttp, "max_head", 1024)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the service sends until it closes the connection (bounded by the socket
    timeout: a connection left open fails the test)."""
    sock.settimeout(5)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/activ", b"GET /v1/health HTTP/1.1\r\nHost: x"],
    ids=["silent", "stalled request line", "stalled headers"],
)
def test_a_request_head_that_does_not_arrive_in_time_is_closed(
    svc: BackgroundMak, quick_heads: None, sent: bytes
) -> None:
    with socket.create_connection(svc.address) as sock:
        sock.sendall(sent)
        assert read_until_closed(sock) == b""


def test_a_head_is_due_again_after_each_response(svc: BackgroundMak, quick_heads: None) -> None:
    with socket.create_connection(svc.address) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /v1/hea")  # and then nothing
        assert read_until_closed(sock) == b""


def test_a_head_over_the_limit_is_refused(svc: BackgroundMak, quick_heads: None) -> None:
    with socket.create_connection(svc.address) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400")


def test_a_head_in_pieces_within_the_deadline_is_served(
    svc: BackgroundMak, quick_heads: None
) -> None:
    with socket.create_connection(svc.address) as sock:
        for piece in (b"GET /v1/he", b"alth HTTP/1.1\r\nHo", b"st: x\r\nConnection: close\r\n\r\n"):
            sock.sendall(piece)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


def test_an_unfinished_head_over_the_limit_is_refused_at_once(
    svc: BackgroundMak, quick_heads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedHttp, "head_timeout", 30.0)  # the size decides, not the time
    with socket.create_connection(svc.address) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1500)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400")
