"""What every HTTP handler of the MAK service shares (Starlette), below the route tables.

Owns the handler context (``Api``: the services, the administrator token, the
thread pool), the route description (``Endpoint``), reading a JSON body within
a size limit, its fields, the bearer token, and the error response: every
refusal is ``{"error": {"code", "message", "hint", "hresult"?}}`` with a code
of ``kmsemu.errors.SERVICE_ERRORS`` and its HTTP status.

Store calls run on the event loop when the store says they may (SQLite),
else in a thread pool (PostgreSQL), where online activations of one key go
in combined calls (``mak.web.combine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from kmsemu.errors import ServiceError
from mak.portal import ADMIN, Caller, PortalService
from mak.service import MakService, activating_key
from mak.store.base import Activation, CombiningStore, Pending, WouldWait
from mak.store.sql import short_name
from mak.web.combine import LoopCombiner

SMALL_BODY: Final = 16 * 1024
T = TypeVar("T")

#: JSON schemas of the scalar types, for route tables.
STRING: Final = {"type": "string"}
INTEGER: Final = {"type": "integer"}
BOOLEAN: Final = {"type": "boolean"}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    """A JSON schema of an object with these properties (others allowed)."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def error_response(exc: ServiceError) -> JSONResponse:
    """``{"error": {...}}`` with the error's status (and ``WWW-Authenticate`` on 401)."""
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def text_field(
    body: dict[str, Any], name: str, *, required: bool = True, limit: int = 256
) -> str | None:
    """A string field of a JSON body, at most ``limit`` characters (None when absent and
    not required)."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ServiceError(
            "invalid_field", f"'{name}' is a string of at most {limit} characters", field=name
        )
    return value


def int_field(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    """An integer field of a JSON body, 0 to 2^31-1 (None when absent and not required)."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ServiceError("invalid_field", f"'{name}' is an integer from 0 to 2^31-1", field=name)
    return value


class Api:
    """What the handlers share: the services, the token, the thread pool."""

    def __init__(
        self,
        service: MakService,
        portal: PortalService,
        *,
        admin_token: str,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.service = service
        self.portal = portal
        self._token = admin_token.encode()
        self._inline = service.store.blocking_ok
        self._without_waiting: Callable[[], contextlib.AbstractContextManager[None]] = getattr(
            service.store, "without_waiting", contextlib.nullcontext
        )
        self._executor = executor
        store = service.store
        self._combiner: LoopCombiner[str, Pending, Activation | ServiceError] | None = (
            LoopCombiner(store.activate_many, executor)
            if isinstance(store, CombiningStore) and not self._inline
            else None
        )

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``: inline for SQLite, else in the thread pool; inline
        without waiting for another process's lock on the file (``WouldWait``: nothing was
        written, so the call runs again in a thread, which waits, and the loop serves on)."""
        loop = asyncio.get_running_loop()
        if self._inline:
            try:
                with self._without_waiting():
                    return fn(*args, **kwargs)
            except WouldWait:
                pass
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    async def activate_online(
        self,
        text: Any,
        hardware_id: bytes,
        *,
        machine_name: str | None = None,
        request_id: str | None = None,
    ) -> Activation:
        """``MakService.activate_online``; on a ``CombiningStore`` gathered on the loop with
        the key's other activations arriving while its previous call is out."""
        if self._combiner is None:
            return await self.call(
                self.service.activate_online,
                text,
                hardware_id,
                machine_name=machine_name,
                request_id=request_id,
            )
        key = activating_key(text)
        pending = Pending(
            hardware_id, self.service.now(), "online", short_name(machine_name), request_id
        )
        answer = await self._combiner.submit(key.fingerprint, pending)
        if isinstance(answer, ServiceError):
            raise answer
        return answer

    def authorise(self, request: Request) -> None:
        """Refuse (unauthorized, forbidden) a request without the administrator token."""
        token = bearer_token(request)
        if token is None:
            raise ServiceError("unauthorized")
        if not hmac.compare_digest(token.encode(), self._token):
            raise ServiceError("forbidden")

    async def caller(self, request: Request) -> Caller:
        """The portal caller: the service administrator, or the user the token names."""
        token = bearer_token(request)
        if token is not None and hmac.compare_digest(token.encode(), self._token):
            return ADMIN
        return await self.call(self.portal.caller, token)

    @staticmethod
    async def body(request: Request, limit: int = SMALL_BODY) -> dict[str, Any]:
        """The request's body: one JSON object (UTF-8) of at most ``limit`` bytes."""
        declared = request.headers.get("content-length")
        if declared is not None and (
            not (declared.isascii() and declared.isdigit()) or int(declared) > limit
        ):
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


#: A route's handler: the shared context and the request in, the response out.
Handler = Callable[[Api, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route: what serves it, who may call it, and its OpenAPI description."""

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
