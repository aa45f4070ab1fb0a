"""The lab's HTTP face: dashboard, its state and live events, the lab clock, health and
metrics, in front of the MAK service and portal (one port).

Routes of its own::

    GET  /                  the dashboard (static files under /lab/static/)
    GET  /lab/api/state     everything the dashboard shows, as JSON
    GET  /lab/events        the same JSON as Server-Sent Events, on every change
    POST /lab/api/clock     move the lab clock: {"advance": "7d"} or {"reset": true}
    GET  /api/host/faults   the host's faults in force and the counts fired
    POST /api/host/faults   set a fault (as ``kmsemu host fault set``)
    DELETE /api/host/faults[/{id}]  clear every fault, or one
    GET  /healthz /readyz   liveness and readiness
    GET  /metrics           Prometheus text format
    GET  /openapi.json      the MAK service's document with these routes added

Everything else goes to the MAK service's app. Reading the dashboard needs no
token only while every HTTP address is loopback; otherwise the admin token
(``Authorization: Bearer``, or the ``kmsemu_token`` cookie the page sets).
Changes always need the token in the header, so a cookie alone (which a
browser attaches to any site's request) changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Final, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kmsemu.durations import parse_duration
from kmsemu.errors import ServiceError
from kmsemu.lab.fault_api import FAULT_BODY, HostFaults, fault_request
from kmsemu.lab.metrics import LabMetrics
from kmsemu.lab.openapi import lab_openapi_document
from mak.web.base import Api, error_response

STATIC: Final = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
COOKIE: Final = "kmsemu_token"
CLOCK_BODY: Final = 1024
PUSH_INTERVAL: Final = 0.25  # at most four pushes a second per viewer
REFRESH: Final = 10.0  # and one at least this often (the clock and licence texts move)
MAX_TRAVEL: Final = 100 * 365 * 86_400.0
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)


class LabView(Protocol):
    """What the web app needs from the running lab."""

    stopping: bool

    def version(self) -> int:
        """A number that grows whenever something shown changes (live pushes compare it)."""
        ...

    def bump(self) -> None:
        """Something shown changed (a MAK key, say): viewers get a new state."""
        ...

    def state(self, read_only: bool) -> dict[str, Any]:
        """Everything the dashboard shows, as ``GET /lab/api/state`` returns it."""
        ...

    def travel(self, seconds: float | None) -> None:
        """Move the lab clock by ``seconds``; None: back to real time."""
        ...

    def readiness(self) -> dict[str, bool]:
        """Per part (kms, dns, http, database), whether it is serving (``/readyz``)."""
        ...

    def problems(self) -> dict[str, str]:
        """Per part, what keeps it from serving ("" when it serves; ``/readyz`` names it)."""
        ...


def create_lab_app(
    view: LabView,
    mak_app: ASGIApp,
    metrics: LabMetrics,
    *,
    admin_token: str,
    open_reads: bool,
    faults: HostFaults | None = None,
) -> ASGIApp:
    """``open_reads``: the dashboard may be read without a token (loopback only);
    ``faults``: serve ``/api/host/faults`` (None: no host to make fail)."""

    def token_ok(token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), admin_token.encode())

    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def reader(request: Request) -> bool | None:
        """None: may not read; else whether the reader holds the token (may change)."""
        holds = token_ok(bearer(request)) or token_ok(request.cookies.get(COOKIE))
        return holds if holds or open_reads else None

    async def index(request: Request) -> Response:
        return _file("index.html", "text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return error_response(ServiceError("not_found", "no such file"))
        return _file(name, STATIC[name])

    async def state(request: Request) -> Response:
        holds = reader(request)
        if holds is None:
            return _unauthorized()
        return JSONResponse(view.state(read_only=not holds), headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        holds = reader(request)
        if holds is None:
            return _unauthorized()
        return StreamingResponse(
            _stream(view, read_only=not holds),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def clock(request: Request) -> Response:
        if not token_ok(bearer(request)):
            return _unauthorized("changing the lab clock needs it")
        try:
            seconds = _travel(await Api.body(request, CLOCK_BODY))
        except ServiceError as exc:
            return error_response(exc)
        except ValueError as exc:
            return error_response(ServiceError("invalid_field", str(exc)))
        view.travel(seconds)
        return JSONResponse(view.state(read_only=False))

    def change_refused(request: Request) -> Response | None:
        token = bearer(request)
        if token is None:
            return _unauthorized("changing the host's faults needs it")
        return None if token_ok(token) else error_response(ServiceError("forbidden"))

    async def get_faults(request: Request) -> Response:
        assert faults is not None
        if reader(request) is None:
            return _unauthorized()
        try:
            return JSONResponse(faults.document(), headers={"Cache-Control": "no-store"})
        except ServiceError as exc:
            return error_response(exc)

    async def set_fault(request: Request) -> Response:
        assert faults is not None
        refused = change_refused(request)
        if refused is not None:
            return refused
        try:
            made = fault_request(await Api.body(request, FAULT_BODY), faults)
            stored = await asyncio.to_thread(faults.store.add, made)
            faults.reload()
            return JSONResponse(faults.document(fault=stored.to_json()), status_code=201)
        except ServiceError as exc:
            return error_response(exc)
        except OSError as exc:
            return error_response(ServiceError("internal", f"the faults file: {exc}"))

    async def clear_faults(request: Request) -> Response:
        assert faults is not None
        refused = change_refused(request)
        if refused is not None:
            return refused
        fault_id: int | None = request.path_params.get("fault_id")
        try:
            if fault_id is None:
                cleared = await asyncio.to_thread(faults.store.clear)
            elif await asyncio.to_thread(faults.store.remove, fault_id) is None:
                return error_response(
                    ServiceError("not_found", f"no fault {fault_id} (spent, expired or cleared)")
                )
            else:
                cleared = 1
            faults.reload()
            return JSONResponse(faults.document(cleared=cleared))
        except ServiceError as exc:
            return error_response(exc)
        except OSError as exc:
            return error_response(ServiceError("internal", f"the faults file: {exc}"))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = view.problems()
        parts = {part: not why for part, why in problems.items()}
        if all(parts.values()):
            return JSONResponse({"ready": True, "components": parts})
        failing = {part: why for part, why in problems.items() if why}
        return JSONResponse(
            {"ready": False, "components": parts, "problems": failing}, status_code=503
        )

    document = lab_openapi_document(faults=faults is not None)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/lab/static/{name}", static),
        Route("/lab/api/state", state),
        Route("/lab/events", events),
        Route("/lab/api/clock", clock, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        Route("/openapi.json", openapi),
    ]
    if faults is not None:
        routes += [
            Route("/api/host/faults", get_faults, methods=["GET"]),
            Route("/api/host/faults", set_fault, methods=["POST"]),
            Route("/api/host/faults", clear_faults, methods=["DELETE"]),
            Route("/api/host/faults/{fault_id:int}", clear_faults, methods=["DELETE"]),
        ]
    own = [r.path for r in routes if isinstance(r, Route)]
    app = Starlette(routes=[*routes, Mount("", app=mak_app)])
    # what no route matches (the Mount's pattern stops at a newline: /v1/orgs/a%0Ab/users)
    # is the MAK app's to answer, in its JSON, not the bare router's text/plain 404
    app.router.default = mak_app
    app.router.redirect_slashes = False
    return _Observed(app, metrics, _route_names(own, mak_app), on_change=view.bump)


async def _stream(view: LabView, *, read_only: bool) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    sent, last = -1, 0.0
    while not view.stopping:
        version = view.version()
        now = time.monotonic()
        if version != sent or now - last >= REFRESH:
            sent, last = version, now
            text = json.dumps(view.state(read_only=read_only), separators=(",", ":"))
            yield f"event: state\ndata: {text}\n\n"
        await asyncio.sleep(PUSH_INTERVAL)


def _travel(body: dict[str, Any]) -> float | None:
    if len(body) != 1:
        raise ValueError('send {"advance": "7d"} or {"reset": true}')
    if body.get("reset") is True:
        return None
    advance = body.get("advance")
    if not isinstance(advance, str):
        raise ValueError('advance must be a duration such as "7d", "12h" or "-1d"')
    seconds = parse_duration(advance)
    if abs(seconds) > MAX_TRAVEL:
        raise ValueError("the lab clock moves at most 100 years at a time")
    return seconds


def _file(name: str, media_type: str) -> Response:
    try:
        body = resources.files("kmsemu").joinpath("data", "dashboard", name).read_bytes()
    except FileNotFoundError:
        return error_response(ServiceError("not_found", f"the dashboard's {name} is not installed"))
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _unauthorized(
    detail: str = "this lab listens beyond loopback: reading the dashboard needs it",
) -> Response:
    return error_response(ServiceError("unauthorized", detail))


def _route_names(own: list[str], mak_app: ASGIApp) -> Callable[[str], str]:
    """A metrics label per request path: a route's template, or ``other`` (hostile paths
    must not grow the label set)."""
    templates = list(own)
    for route in getattr(mak_app, "routes", []):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            templates.append(path)
    fixed = {t for t in templates if "{" not in t}
    patterns = [(compile_path(t)[0], t) for t in templates if "{" in t]

    def name(path: str) -> str:
        if path in fixed:
            return path
        for regex, template in patterns:
            if regex.match(path):
                return template
        return "other"

    return name


class _Observed:
    """ASGI middleware: time and count every HTTP request; note changes made through the
    MAK service and portal (any request that is not a read) for the dashboard."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: LabMetrics,
        route: Callable[[str], str],
        *,
        on_change: Callable[[], None],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route = route
        self.on_change = on_change

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"]
            route = self.route(scope["path"])
            if route != "/lab/events":  # a stream lasts as long as its viewer
                self.metrics.observe_http(
                    route,
                    method if method in _METHODS else "other",
                    status,
                    time.perf_counter() - started,
                )
            if method not in ("GET", "HEAD", "OPTIONS") and not route.startswith("/lab/"):
                self.on_change()


_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
