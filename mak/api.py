"""The MAK service's HTTP JSON API (Starlette; served by uvicorn in ``mak.server``).

One table, ``ENDPOINTS``, lists every route with its method, whether it needs
the administrator token, its body limit and its schemas; the Starlette
routes and ``/openapi.json`` are both generated from it, so they cannot
drift apart. Handlers only translate: JSON in, a ``MakService`` call, JSON
out. Every refusal is ``{"error": {"code", "message", "hint", "hresult"?}}``
with a code of ``kmsemu.errors.SERVICE_ERRORS`` and its HTTP status.

Store calls run on the event loop when the store says they may (SQLite),
else in a thread pool (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kmsemu.errors import REDEMPTION_ERRORS, SERVICE_ERRORS, ServiceError
from mak import portal_api as portal
from mak.portal import ADMIN, DEFAULT_REDEEM_RATE, Caller, PortalService
from mak.portal_rules import BILLING, ROLES
from mak.service import MAX_PROXY_IDS, MakService, activation_json, parse_hardware_id
from mak.store.portal import PortalSql
from mak.store.sql import iso, key_json, parse_iso

log = logging.getLogger("kmsemu.mak")

SMALL_BODY: Final = 16 * 1024
PROXY_BODY: Final = 256 * 1024
IMPORT_BODY: Final = 16 * 1024 * 1024
T = TypeVar("T")
Handler = Callable[["Api", Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    admin: bool = False
    #: Needs a portal caller: a user's token, or the admin token.
    caller: bool = False
    body_limit: int = SMALL_BODY
    request: dict[str, Any] | None = None
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200
    #: Other answers it documents beyond the error statuses: {status: description}.
    also: dict[int, str] = field(default_factory=dict)


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": True}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_NULLABLE_STR = {"type": ["string", "null"]}
_KEY_STATUS = _obj(["fingerprint", "last5", "used", "limit", "remaining", "blocked", "expires"],
                   fingerprint=_STR, last5=_STR, used=_INT, limit=_INT, remaining=_INT,
                   blocked=_BOOL, expires={**_NULLABLE_STR, "format": "date-time"},
                   type={"enum": ["mak", "retail", "kms-host"]}, product=_INT,
                   base_limit=_INT, increased=_INT)
_ACTIVATION = _obj(["activated", "counted", "fingerprint", "last5", "used", "limit",
                    "remaining"],
                   activated=_BOOL, counted=_BOOL,
                   verdict={"enum": ["new", "same", "reactivated"]}, replayed=_BOOL,
                   fingerprint=_STR, last5=_STR, used=_INT, limit=_INT, remaining=_INT)
_WHO = {"machine_name": {"type": "string", "maxLength": 63},
        "request_id": {"type": "string", "maxLength": 64,
                       "description": "Repeat a request safely: the same id is answered "
                                      "again, never counted twice."}}
_ERROR = _obj(["error"], error=_obj(["code", "message", "hint"], code=_STR, message=_STR,
                                    hint=_STR, hresult=_STR))


def _text(body: dict[str, Any], name: str, *, required: bool = True,
          limit: int = 256) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ServiceError("invalid_field", f"'{name}' is a string of at most {limit} "
                           "characters", field=name)
    return value


def _int(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ServiceError("invalid_field", f"'{name}' is an integer from 0 to 2^31-1",
                           field=name)
    return value


class Api:
    """The handlers, with what they share: the service, the token, the thread pool."""

    def __init__(self, service: MakService, portal: PortalService, *, admin_token: str,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.service = service
        self.portal = portal
        self._token = admin_token.encode()
        self._inline = service.store.blocking_ok
        self._executor = executor

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._inline:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    @staticmethod
    def _bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def authorise(self, request: Request) -> None:
        token = self._bearer(request)
        if token is None:
            raise ServiceError("unauthorized")
        if not hmac.compare_digest(token.encode(), self._token):
            raise ServiceError("forbidden")

    async def caller(self, request: Request) -> Caller:
        """The portal caller: the service administrator, or the user the token names."""
        token = self._bearer(request)
        if token is not None and hmac.compare_digest(token.encode(), self._token):
            return ADMIN
        return await self.call(self.portal.caller, token)

    @staticmethod
    async def body(request: Request, limit: int = SMALL_BODY) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ServiceError("body_too_large", f"at most {limit} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ServiceError("body_too_large", f"at most {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the answer goes nowhere; it is no internal error
            raise ServiceError("bad_json", "the connection closed inside the body") from None
        try:  # UTF-8 only (json.loads would guess UTF-16 and UTF-32 from bytes)
            value = json.loads(b"".join(chunks).decode("utf-8") or "null")
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ServiceError("bad_json") from None
        if not isinstance(value, dict):
            raise ServiceError("bad_json")
        return value

    # -- public: activation ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "mak",
                             "database": type(self.service.store).__name__})

    async def activate(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        hardware_id = parse_hardware_id(body.get("hardware_id"))
        activation = await self.call(
            self.service.activate_online, body.get("key"), hardware_id,
            machine_name=_text(body, "machine_name", required=False, limit=63),
            request_id=_text(body, "request_id", required=False, limit=64))
        key = activation.key
        log.info("activate online %s …%s %s remaining=%d", key.fingerprint, key.last5,
                 activation.verdict.value, key.remaining)
        return JSONResponse(activation_json(activation))

    async def phone(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        answer = await self.call(
            self.service.activate_phone, body.get("installation_id"),
            machine_name=_text(body, "machine_name", required=False, limit=63),
            request_id=_text(body, "request_id", required=False, limit=64))
        key = answer.activation.key
        log.info("activate phone %s …%s %s remaining=%d", key.fingerprint, key.last5,
                 answer.activation.verdict.value, key.remaining)
        return JSONResponse({"confirmation_id": answer.confirmation_id,
                             **activation_json(answer.activation)})

    async def proxy(self, request: Request) -> Response:
        body = await self.body(request, PROXY_BODY)
        results = await self.call(self.service.proxy_activate, body.get("installation_ids"))
        failed = sum(1 for r in results if "error" in r)
        log.info("proxy activation: %d confirmed, %d refused", len(results) - failed, failed)
        return JSONResponse({"results": results, "activated": len(results) - failed,
                             "failed": failed})

    async def count(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        return JSONResponse(key_json(await self.call(self.service.count, body.get("key"))))

    # -- administration ------------------------------------------------------------------------

    async def keys(self, request: Request) -> Response:
        records = await self.call(self.service.store.keys)
        return JSONResponse({"keys": [key_json(record) for record in records]})

    async def add_key(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        record = await self.call(
            self.service.register, body.get("key"), limit=_int(body, "limit", required=False),
            expires=parse_iso(_text(body, "expires", required=False), "expires"),
            reactivations=_int(body, "reactivations", required=False))
        log.info("key added %s …%s limit=%d", record.fingerprint, record.last5, record.total)
        return JSONResponse(key_json(record), status_code=201)

    async def key(self, request: Request) -> Response:
        fingerprint = request.path_params["fingerprint"]
        record = await self.call(self.service.key, fingerprint)
        increases = await self.call(self.service.store.increases, fingerprint)
        machines = await self.call(self.service.store.machines, fingerprint)
        return JSONResponse({
            **key_json(record), "reactivations": record.reactivations,
            "created": iso(record.created),
            "increases": [{"amount": i.amount, "at": iso(i.at), "reason": i.reason}
                          for i in increases],
            "machines": [{"hardware_id": m.hardware_id.hex(), "machine_name": m.machine_name,
                          "route": m.route, "first_at": iso(m.first_at),
                          "last_at": iso(m.last_at), "reactivations": m.reactivations}
                         for m in machines]})

    async def _change(self, request: Request, what: str,
                      fn: Callable[..., Any], *args: Any) -> Response:
        fingerprint = request.path_params["fingerprint"]
        await self.call(self.service.key, fingerprint)
        record = await self.call(fn, fingerprint, *args)
        log.info("key %s %s …%s", what, record.fingerprint, record.last5)
        return JSONResponse(key_json(record))

    async def increase(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        amount = _int(body, "by")
        reason = _text(body, "reason", required=False, limit=500) or ""
        return await self._change(request, f"increased by {amount}", self.service.increase,
                                  amount, reason)

    async def block(self, request: Request) -> Response:
        return await self._change(request, "blocked", self.service.set_blocked, True)

    async def unblock(self, request: Request) -> Response:
        return await self._change(request, "unblocked", self.service.set_blocked, False)

    async def expire(self, request: Request) -> Response:
        body = await self.body(request, SMALL_BODY)
        at = parse_iso(_text(body, "at", required=False), "at")
        return await self._change(request, "expired", self.service.expire, at)

    async def export(self, request: Request) -> Response:
        flags = {name: request.query_params.get(name, "true").lower() not in ("0", "false", "no")
                 for name in ("keys", "activations", "machine_names")}
        return JSONResponse(await self.call(self.service.store.export, **flags))

    async def import_(self, request: Request) -> Response:
        body = await self.body(request, IMPORT_BODY)
        report = await self.call(self.service.store.import_, body)
        log.info("import: %s", report.to_json())
        return JSONResponse(report.to_json())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


_IID = {"type": "string", "description": "nine groups of seven digits"}
_FP = "/v1/keys/{fingerprint}"

ENDPOINTS: Final = (
    Endpoint("GET", "/v1/health", Api.health, "Liveness and the database in use"),
    Endpoint("POST", "/v1/activate", Api.activate, "Online activation",
             request=_obj(["key", "hardware_id"], key=_STR,
                          hardware_id={"type": "string", "pattern": "^[0-9a-fA-F]{20}$"},
                          **_WHO),
             response=_ACTIVATION),
    Endpoint("POST", "/v1/phone", Api.phone, "Phone activation: installation ID in, "
             "confirmation ID out", request=_obj(["installation_id"], installation_id=_IID,
                                                  **_WHO),
             response={**_ACTIVATION, "properties": {**_ACTIVATION["properties"],
                                                     "confirmation_id": _STR}}),
    Endpoint("POST", "/v1/proxy-activate", Api.proxy,
             f"Proxy activation: up to {MAX_PROXY_IDS} installation IDs in one call",
             body_limit=PROXY_BODY,
             request=_obj(["installation_ids"], installation_ids={
                 "type": "array", "maxItems": MAX_PROXY_IDS,
                 "items": {"oneOf": [_IID, _obj(["installation_id"], installation_id=_IID,
                                                machine_name=_STR)]}}),
             response=_obj(["results", "activated", "failed"], results={"type": "array"},
                           activated=_INT, failed=_INT)),
    Endpoint("POST", "/v1/count", Api.count, "A key's remaining count, for its holder",
             request=_obj(["key"], key=_STR), response=_KEY_STATUS),
    Endpoint("GET", "/v1/keys", Api.keys, "Every key with used/limit/remaining", admin=True,
             response=_obj(["keys"], keys={"type": "array", "items": _KEY_STATUS})),
    Endpoint("POST", "/v1/keys", Api.add_key, "Register a MAK, retail or KMS host key",
             admin=True, status=201,
             request=_obj(["key"], key=_STR, limit=_INT, reactivations=_INT,
                          expires={"type": "string", "format": "date-time"}),
             response=_KEY_STATUS),
    Endpoint("GET", _FP, Api.key, "One key, its increases and machines", admin=True,
             response=_KEY_STATUS),
    Endpoint("POST", _FP + "/increase", Api.increase, "Grant an activation count increase",
             admin=True, request=_obj(["by"], by={"type": "integer", "minimum": 1},
                                      reason=_STR), response=_KEY_STATUS),
    Endpoint("POST", _FP + "/block", Api.block, "Block a key", admin=True,
             response=_KEY_STATUS),
    Endpoint("POST", _FP + "/unblock", Api.unblock, "Unblock a key", admin=True,
             response=_KEY_STATUS),
    Endpoint("POST", _FP + "/expire", Api.expire, "Expire a key now or at a time", admin=True,
             request=_obj([], at={"type": "string", "format": "date-time"}),
             response=_KEY_STATUS),
    Endpoint("GET", "/v1/export", Api.export, "Keys and activations for another lab",
             admin=True),
    Endpoint("POST", "/v1/import", Api.import_, "Merge an export (idempotent)", admin=True,
             body_limit=IMPORT_BODY,
             request=_obj(["format", "version"], format={"const": "kmsemu-mak-export"},
                          version={"const": 1}, machine_names=_BOOL,
                          keys={"type": "array", "items": {"type": "object"}},
                          activations={"type": "array", "items": {"type": "object"}}),
             response=_obj([], keys_added=_INT, keys_kept=_INT, activations_added=_INT,
                           activations_kept=_INT)),
    # -- the licensing portal (docs/portal.md) ----------------------------------------------
    Endpoint("GET", "/v1/portal/offers", portal.offers, "Offers and their sales rules",
             response=_obj(["offers"], offers={"type": "array", "items": portal.OFFER})),
    Endpoint("PUT", "/v1/portal/offers/{offer}", portal.put_offer, "Define or redefine an "
             "offer (a catalog product of channel subscription)", admin=True,
             request=_obj(["max_licences", "countries"], max_licences=_INT,
                          countries={"type": "array", "items": _STR}, trial=_BOOL),
             response=portal.OFFER, also={201: "a new offer"}),
    Endpoint("GET", "/v1/portal/orgs", portal.orgs, "Every organisation", admin=True,
             response=_obj(["orgs"], orgs={"type": "array", "items": portal.ORG})),
    Endpoint("POST", "/v1/portal/orgs", portal.add_org, "Create an organisation", admin=True,
             status=201, request=_obj(["name", "country"], name=_STR, country=_STR),
             response=portal.ORG),
    Endpoint("POST", "/v1/portal/signup", portal.signup, "Sign up: a new organisation and its "
             "global admin, by redeeming a subscription key", status=201,
             request=_obj(["key", "org", "country", "user"], key=_STR, org=_STR, country=_STR,
                          user=_STR), also={429: "busy: the rate limit (Retry-After)"},
             response=_obj(["org", "user", "role", "token", "subscription"], org=_STR,
                           user=_STR, role=_STR, token=_STR, subscription=portal.SUBSCRIPTION)),
    Endpoint("GET", "/v1/portal/orgs/{org}/users", portal.users, "An organisation's users and "
             "their licences", caller=True,
             response=_obj(["org", "users"], org=_STR, users={"type": "array"})),
    Endpoint("POST", "/v1/portal/orgs/{org}/users", portal.add_user, "Add a user; the answer "
             "holds its token, shown once", caller=True, status=201,
             request=_obj(["name", "role"], name=_STR, role={"enum": list(ROLES)}),
             response=portal.NEW_USER),
    Endpoint("POST", "/v1/portal/orgs/{org}/redeem", portal.redeem, "Redeem a subscription "
             "key into the organisation", caller=True, status=201,
             request=_obj(["key"], key=_STR), response=portal.SUBSCRIPTION,
             also={429: "busy: the rate limit (Retry-After)"}),
    Endpoint("GET", "/v1/portal/orgs/{org}/subscriptions", portal.subscriptions,
             "Subscriptions with licences used and free, and totals per offer", caller=True,
             response=_obj(["org", "subscriptions", "offers"], org=_STR, country=_STR,
                           subscriptions={"type": "array", "items": portal.SUBSCRIPTION},
                           offers={"type": "array"})),
    Endpoint("POST", "/v1/portal/orgs/{org}/subscriptions", portal.buy, "Buy another "
             "subscription", caller=True, status=201,
             request=_obj(["offer", "licences", "billing"], offer=_STR,
                          licences={"type": "integer", "minimum": 1},
                          billing={"enum": list(BILLING)}, auto_assign=_BOOL),
             response=portal.SUBSCRIPTION),
    Endpoint("POST", "/v1/portal/orgs/{org}/users/{user}/licences", portal.assign,
             "Assign a licence of an offer to a user", caller=True, status=201,
             request=_obj(["offer"], offer=_STR), response=portal.LICENCE),
    Endpoint("DELETE", "/v1/portal/orgs/{org}/users/{user}/licences/{offer}", portal.unassign,
             "Remove a user's licence of an offer", caller=True, response=portal.LICENCE),
    Endpoint("POST", "/v1/portal/keys/expire", portal.expire_key, "Give a subscription key an "
             "expiry (default: now)", admin=True,
             request=_obj(["key"], key=_STR, at={"type": "string", "format": "date-time"}),
             response=_obj(["fingerprint", "last5", "expires"], fingerprint=_STR, last5=_STR,
                           expires=_STR)),
    Endpoint("GET", "/v1/portal/fault", portal.get_fault, "The forced redemption error",
             admin=True, response=portal.FAULT),
    Endpoint("PUT", "/v1/portal/fault", portal.set_fault, "Force a redemption error (until "
             "cleared, or for the next 'times' redemptions)", admin=True,
             request=_obj(["code"], code={"enum": list(REDEMPTION_ERRORS)},
                          times={"type": "integer", "minimum": 1}), response=portal.FAULT),
    Endpoint("DELETE", "/v1/portal/fault", portal.clear_fault, "Stop forcing errors",
             admin=True, response=portal.FAULT),
    Endpoint("GET", "/openapi.json", Api.openapi, "This document"),
)


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        errors = {str(info.status) for info in SERVICE_ERRORS.values()}
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__.strip("_"),
            "responses": {
                str(endpoint.status): {"description": "success", "content": {
                    "application/json": {"schema": endpoint.response}}},
                **{status: {"description": "error", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                   for status in sorted(errors)},
            },
        }
        for status, description in endpoint.also.items():
            schema = endpoint.response if status < 400 else {"$ref": "#/components/schemas/Error"}
            operation["responses"][str(status)] = {"description": description, "content": {
                "application/json": {"schema": schema}}}
        if endpoint.admin:
            operation["security"] = [{"admin": []}]
        if endpoint.caller:
            operation["security"] = [{"user": []}, {"admin": []}]
        if endpoint.request is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": endpoint.request}}}
        if "{fingerprint}" in endpoint.path:
            operation["parameters"] = [{"name": "fingerprint", "in": "path", "required": True,
                                        "schema": {"type": "string",
                                                   "pattern": "^[0-9a-f]{16}$"}}]
        names = [n for n in ("org", "user", "offer") if f"{{{n}}}" in endpoint.path]
        if names:
            operation["parameters"] = [{"name": n, "in": "path", "required": True,
                                        "schema": {"type": "string"}} for n in names]
        if endpoint.path == "/v1/export":
            operation["parameters"] = [{"name": name, "in": "query", "required": False,
                                        "schema": {"type": "boolean", "default": True}}
                                       for name in ("keys", "activations", "machine_names")]
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "kmsemu MAK service and licensing portal", "version": "1",
                 "description": "Lab MAK activation (online, phone, proxy), key "
                                "administration, and the licensing portal (organisations, "
                                "subscription keys, subscriptions, licences). Lab keys only "
                                "(keys.md)."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR},
                       "securitySchemes": {
                           "admin": {"type": "http", "scheme": "bearer",
                                     "description": "the service's admin token"},
                           "user": {"type": "http", "scheme": "bearer",
                                    "description": "a portal user's token"}}},
    }


def error_response(exc: ServiceError) -> JSONResponse:
    """``{"error": {...}}`` with the error's status (and ``WWW-Authenticate`` on 401)."""
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def _route(api: Api, endpoint: Endpoint) -> Route:
    handler = partial(endpoint.handler, api)

    async def endpoint_fn(request: Request) -> Response:
        try:
            if endpoint.admin:
                api.authorise(request)
            return await handler(request)
        except ServiceError as exc:
            return error_response(exc)

    return Route(endpoint.path, endpoint_fn, methods=[endpoint.method],
                 name=endpoint.handler.__name__)


def create_app(service: MakService, *, admin_token: str,
               executor: ThreadPoolExecutor | None = None,
               redeem_rate: int = DEFAULT_REDEEM_RATE) -> Starlette:
    """The MAK service's and the portal's routes (the portal keeps its tables in the MAK
    store's database)."""
    store = service.store
    if not isinstance(store, PortalSql):
        raise TypeError(f"the portal needs a SQL store, not {type(store).__name__}")
    portal_service = PortalService(store, now=service.now, catalog=service.catalog,
                                   redeem_rate=redeem_rate)
    api = Api(service, portal_service, admin_token=admin_token, executor=executor)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_json")
        return error_response(ServiceError(code))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ServiceError("internal"))

    app = Starlette(routes=[_route(api, e) for e in ENDPOINTS],
                    exception_handlers={HTTPException: http_error, Exception: internal})
    app.router.redirect_slashes = False  # /v1/activate/ is a 404, not a redirect
    return app
