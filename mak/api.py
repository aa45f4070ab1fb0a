"""The MAK service's HTTP JSON API (Starlette; served by uvicorn in ``mak.server``).

Owns the app: ``ENDPOINTS``, one table of every route (``mak.web.mak_routes``'s,
``mak.web.portal_routes``'s and ``/openapi.json``), with its method, whether it
needs the administrator token, its body limit and its schemas; the Starlette
routes and ``/openapi.json`` are both generated from it, so they cannot drift
apart. What the handlers share (context, body parsing, errors) is
``mak.web.base``'s.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kmsemu.errors import SERVICE_ERRORS, ServiceError
from mak.defaults import DEFAULT_REDEEM_RATE
from mak.portal import PortalService
from mak.service import MakService
from mak.store.portal import PortalSql
from mak.web.base import STRING, Api, Endpoint, error_response, obj
from mak.web.mak_routes import MAK_ENDPOINTS
from mak.web.portal_routes import PORTAL_ENDPOINTS

log = logging.getLogger("kmsemu.mak")

_ERROR = obj(
    ["error"],
    error=obj(
        ["code", "message", "hint"], code=STRING, message=STRING, hint=STRING, hresult=STRING
    ),
)


async def openapi(api: Api, request: Request) -> Response:
    """This document."""
    return JSONResponse(openapi_document())


ENDPOINTS: Final = (
    *MAK_ENDPOINTS,
    # -- the licensing portal (docs/portal.md) ----------------------------------------------
    *PORTAL_ENDPOINTS,
    Endpoint("GET", "/openapi.json", openapi, "This document"),
)


_FROM_KEY: Final = {"fingerprint": "$response.body#/fingerprint"}
_FROM_ORG: Final = {"org": "$response.body#/org"}
_FROM_USER: Final = {"org": "$response.body#/org", "user": "$response.body#/user"}
#: OpenAPI links: from the answer of an operation that makes something (by operationId)
#: to the operations that take what it names, and the parameters they take from it.
LINKS: Final[dict[str, dict[str, dict[str, str]]]] = {
    "add_key": {op: _FROM_KEY for op in ("key", "increase", "block", "unblock", "expire")},
    "add_org": {op: _FROM_ORG for op in ("users", "add_user", "redeem", "subscriptions", "buy")},
    "signup": {op: _FROM_ORG for op in ("users", "add_user", "redeem", "subscriptions", "buy")},
    "add_user": {"assign": _FROM_USER},
    "assign": {"unassign": {**_FROM_USER, "offer": "$response.body#/offer"}},
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``ENDPOINTS``."""
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        errors = {str(info.status) for info in SERVICE_ERRORS.values()}
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__.strip("_"),
            "responses": {
                str(endpoint.status): {
                    "description": "success",
                    "content": {"application/json": {"schema": endpoint.response}},
                },
                **{
                    status: {
                        "description": "error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                    for status in sorted(errors)
                },
            },
        }
        links = LINKS.get(operation["operationId"])
        if links:
            operation["responses"][str(endpoint.status)]["links"] = {
                target: {"operationId": target, "parameters": parameters}
                for target, parameters in links.items()
            }
        for status, description in endpoint.also.items():
            schema = endpoint.response if status < 400 else {"$ref": "#/components/schemas/Error"}
            operation["responses"][str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
        if endpoint.admin:
            operation["security"] = [{"admin": []}]
        if endpoint.caller:
            operation["security"] = [{"user": []}, {"admin": []}]
        if endpoint.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": endpoint.request}},
            }
        if "{fingerprint}" in endpoint.path:
            operation["parameters"] = [
                {
                    "name": "fingerprint",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                }
            ]
        names = [n for n in ("org", "user", "offer") if f"{{{n}}}" in endpoint.path]
        if names:
            operation["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in names
            ]
        if endpoint.path == "/v1/export":
            operation["parameters"] = [
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": True},
                }
                for name in ("keys", "activations", "machine_names")
            ]
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kmsemu MAK service and licensing portal",
            "version": "1",
            "description": "Lab MAK activation (online, phone, proxy), key "
            "administration, and the licensing portal (organisations, "
            "subscription keys, subscriptions, licences). Lab keys only "
            "(keys.md).",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "admin": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the service's admin token",
                },
                "user": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a portal user's token",
                },
            },
        },
    }


def _route(api: Api, endpoint: Endpoint) -> Route:
    handler = partial(endpoint.handler, api)

    async def endpoint_fn(request: Request) -> Response:
        try:
            if endpoint.admin:
                api.authorise(request)
            return await handler(request)
        except ServiceError as exc:
            return error_response(exc)

    return Route(
        endpoint.path, endpoint_fn, methods=[endpoint.method], name=endpoint.handler.__name__
    )


def create_app(
    service: MakService,
    *,
    admin_token: str,
    executor: ThreadPoolExecutor | None = None,
    redeem_rate: int = DEFAULT_REDEEM_RATE,
) -> Starlette:
    """The MAK service's and the portal's routes (the portal keeps its tables in the MAK
    store's database)."""
    store = service.store
    if not isinstance(store, PortalSql):
        raise TypeError(f"the portal needs a SQL store, not {type(store).__name__}")
    portal_service = PortalService(
        store, now=service.now, catalog=service.catalog, redeem_rate=redeem_rate
    )
    api = Api(service, portal_service, admin_token=admin_token, executor=executor)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_json")
        return error_response(ServiceError(code))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ServiceError("internal"))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problem = await run_in_threadpool(store.problem)
        if not problem:
            return JSONResponse({"ready": True, "components": {"database": True}})
        return JSONResponse(
            {"ready": False, "components": {"database": False}, "problems": {"database": problem}},
            status_code=503,
        )

    app = Starlette(
        routes=[
            *(_route(api, e) for e in ENDPOINTS),
            Route("/healthz", healthz),  # liveness and readiness, outside the API's schema
            Route("/readyz", readyz),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal},
    )
    app.router.redirect_slashes = False  # /v1/activate/ is a 404, not a redirect
    return app
