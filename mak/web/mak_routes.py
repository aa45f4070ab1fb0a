"""The MAK service's routes: activation (online, phone, proxy, count) and key administration.

Handlers only translate: JSON in, a ``MakService`` call, JSON out. They and
their schemas are listed in ``MAK_ENDPOINTS``, which ``mak.api`` serves and
describes in ``/openapi.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mak.service import MAX_PROXY_IDS, activation_json, parse_hardware_id
from mak.store.sql import iso, key_json, parse_iso
from mak.web.base import (
    BOOLEAN,
    INTEGER,
    SMALL_BODY,
    STRING,
    Api,
    Endpoint,
    int_field,
    obj,
    text_field,
)

log = logging.getLogger("kmsemu.mak")

PROXY_BODY: Final = 256 * 1024
IMPORT_BODY: Final = 16 * 1024 * 1024

# -- public: activation -----------------------------------------------------------------------


async def health(api: Api, request: Request) -> Response:
    """Liveness and the database in use."""
    return JSONResponse(
        {"status": "ok", "service": "mak", "database": type(api.service.store).__name__}
    )


async def activate(api: Api, request: Request) -> Response:
    """Online activation of one machine."""
    body = await api.body(request, SMALL_BODY)
    hardware_id = parse_hardware_id(body.get("hardware_id"))
    activation = await api.activate_online(
        body.get("key"),
        hardware_id,
        machine_name=text_field(body, "machine_name", required=False, limit=63),
        request_id=text_field(body, "request_id", required=False, limit=64),
    )
    key = activation.key
    log.info(
        "activate online %s …%s %s remaining=%d",
        key.fingerprint,
        key.last5,
        activation.verdict.value,
        key.remaining,
    )
    return JSONResponse(activation_json(activation))


async def phone(api: Api, request: Request) -> Response:
    """Phone activation: installation ID in, confirmation ID out."""
    body = await api.body(request, SMALL_BODY)
    answer = await api.call(
        api.service.activate_phone,
        body.get("installation_id"),
        machine_name=text_field(body, "machine_name", required=False, limit=63),
        request_id=text_field(body, "request_id", required=False, limit=64),
    )
    key = answer.activation.key
    log.info(
        "activate phone %s …%s %s remaining=%d",
        key.fingerprint,
        key.last5,
        answer.activation.verdict.value,
        key.remaining,
    )
    return JSONResponse(
        {"confirmation_id": answer.confirmation_id, **activation_json(answer.activation)}
    )


async def proxy(api: Api, request: Request) -> Response:
    """Proxy activation: several installation IDs in one call."""
    body = await api.body(request, PROXY_BODY)
    results = await api.call(api.service.proxy_activate, body.get("installation_ids"))
    failed = sum(1 for r in results if "error" in r)
    log.info("proxy activation: %d confirmed, %d refused", len(results) - failed, failed)
    return JSONResponse({"results": results, "activated": len(results) - failed, "failed": failed})


async def count(api: Api, request: Request) -> Response:
    """A key's remaining count, for its holder."""
    body = await api.body(request, SMALL_BODY)
    return JSONResponse(key_json(await api.call(api.service.count, body.get("key"))))


# -- administration ----------------------------------------------------------------------------


async def keys(api: Api, request: Request) -> Response:
    """Every key with used/limit/remaining."""
    records = await api.call(api.service.store.keys)
    return JSONResponse({"keys": [key_json(record) for record in records]})


async def add_key(api: Api, request: Request) -> Response:
    """Register a key."""
    body = await api.body(request, SMALL_BODY)
    record = await api.call(
        api.service.register,
        body.get("key"),
        limit=int_field(body, "limit", required=False),
        expires=parse_iso(text_field(body, "expires", required=False), "expires"),
        reactivations=int_field(body, "reactivations", required=False),
    )
    log.info("key added %s …%s limit=%d", record.fingerprint, record.last5, record.total)
    return JSONResponse(key_json(record), status_code=201)


async def key(api: Api, request: Request) -> Response:
    """One key, its increases and machines."""
    fingerprint = request.path_params["fingerprint"]
    record = await api.call(api.service.key, fingerprint)
    increases = await api.call(api.service.store.increases, fingerprint)
    machines = await api.call(api.service.store.machines, fingerprint)
    return JSONResponse(
        {
            **key_json(record),
            "reactivations": record.reactivations,
            "created": iso(record.created),
            "increases": [
                {"amount": i.amount, "at": iso(i.at), "reason": i.reason} for i in increases
            ],
            "machines": [
                {
                    "hardware_id": m.hardware_id.hex(),
                    "machine_name": m.machine_name,
                    "route": m.route,
                    "first_at": iso(m.first_at),
                    "last_at": iso(m.last_at),
                    "reactivations": m.reactivations,
                }
                for m in machines
            ],
        }
    )


async def _change(
    api: Api, request: Request, what: str, fn: Callable[..., Any], *args: Any
) -> Response:
    fingerprint = request.path_params["fingerprint"]
    await api.call(api.service.key, fingerprint)
    record = await api.call(fn, fingerprint, *args)
    log.info("key %s %s …%s", what, record.fingerprint, record.last5)
    return JSONResponse(key_json(record))


async def increase(api: Api, request: Request) -> Response:
    """Grant an activation count increase."""
    body = await api.body(request, SMALL_BODY)
    amount = int_field(body, "by")
    reason = text_field(body, "reason", required=False, limit=500) or ""
    return await _change(
        api, request, f"increased by {amount}", api.service.increase, amount, reason
    )


async def block(api: Api, request: Request) -> Response:
    """Block a key."""
    return await _change(api, request, "blocked", api.service.set_blocked, True)


async def unblock(api: Api, request: Request) -> Response:
    """Unblock a key."""
    return await _change(api, request, "unblocked", api.service.set_blocked, False)


async def expire(api: Api, request: Request) -> Response:
    """Expire a key now or at a time."""
    body = await api.body(request, SMALL_BODY)
    at = parse_iso(text_field(body, "at", required=False), "at")
    return await _change(api, request, "expired", api.service.expire, at)


async def export(api: Api, request: Request) -> Response:
    """Keys and activations for another lab."""
    flags = {
        name: request.query_params.get(name, "true").lower() not in ("0", "false", "no")
        for name in ("keys", "activations", "machine_names")
    }
    return JSONResponse(await api.call(api.service.store.export, **flags))


async def import_(api: Api, request: Request) -> Response:
    """Merge an export (idempotent)."""
    body = await api.body(request, IMPORT_BODY)
    report = await api.call(api.service.store.import_, body)
    log.info("import: %s", report.to_json())
    return JSONResponse(report.to_json())


# -- the table ---------------------------------------------------------------------------------

_NULLABLE_STR = {"type": ["string", "null"]}
_KEY_STATUS = obj(
    ["fingerprint", "last5", "used", "limit", "remaining", "blocked", "expires"],
    fingerprint=STRING,
    last5=STRING,
    used=INTEGER,
    limit=INTEGER,
    remaining=INTEGER,
    blocked=BOOLEAN,
    expires={**_NULLABLE_STR, "format": "date-time"},
    type={"enum": ["mak", "retail", "kms-host"]},
    product=INTEGER,
    base_limit=INTEGER,
    increased=INTEGER,
)
_ACTIVATION = obj(
    ["activated", "counted", "fingerprint", "last5", "used", "limit", "remaining"],
    activated=BOOLEAN,
    counted=BOOLEAN,
    verdict={"enum": ["new", "same", "reactivated"]},
    replayed=BOOLEAN,
    fingerprint=STRING,
    last5=STRING,
    used=INTEGER,
    limit=INTEGER,
    remaining=INTEGER,
)
_WHO = {
    "machine_name": {"type": "string", "maxLength": 63},
    "request_id": {
        "type": "string",
        "maxLength": 64,
        "description": "Repeat a request safely: the same id is answered "
        "again, never counted twice.",
    },
}
_IID = {"type": "string", "description": "nine groups of seven digits"}
_FP = "/v1/keys/{fingerprint}"

MAK_ENDPOINTS: Final = (
    Endpoint("GET", "/v1/health", health, "Liveness and the database in use"),
    Endpoint(
        "POST",
        "/v1/activate",
        activate,
        "Online activation",
        request=obj(
            ["key", "hardware_id"],
            key=STRING,
            hardware_id={"type": "string", "pattern": "^[0-9a-fA-F]{20}$"},
            **_WHO,
        ),
        response=_ACTIVATION,
    ),
    Endpoint(
        "POST",
        "/v1/phone",
        phone,
        "Phone activation: installation ID in, confirmation ID out",
        request=obj(["installation_id"], installation_id=_IID, **_WHO),
        response={
            **_ACTIVATION,
            "properties": {**_ACTIVATION["properties"], "confirmation_id": STRING},
        },
    ),
    Endpoint(
        "POST",
        "/v1/proxy-activate",
        proxy,
        f"Proxy activation: up to {MAX_PROXY_IDS} installation IDs in one call",
        body_limit=PROXY_BODY,
        request=obj(
            ["installation_ids"],
            installation_ids={
                "type": "array",
                "maxItems": MAX_PROXY_IDS,
                "items": {
                    "oneOf": [
                        _IID,
                        obj(["installation_id"], installation_id=_IID, machine_name=STRING),
                    ]
                },
            },
        ),
        response=obj(
            ["results", "activated", "failed"],
            results={"type": "array"},
            activated=INTEGER,
            failed=INTEGER,
        ),
    ),
    Endpoint(
        "POST",
        "/v1/count",
        count,
        "A key's remaining count, for its holder",
        request=obj(["key"], key=STRING),
        response=_KEY_STATUS,
    ),
    Endpoint(
        "GET",
        "/v1/keys",
        keys,
        "Every key with used/limit/remaining",
        admin=True,
        response=obj(["keys"], keys={"type": "array", "items": _KEY_STATUS}),
    ),
    Endpoint(
        "POST",
        "/v1/keys",
        add_key,
        "Register a MAK, retail or KMS host key",
        admin=True,
        status=201,
        request=obj(
            ["key"],
            key=STRING,
            limit=INTEGER,
            reactivations=INTEGER,
            expires={"type": "string", "format": "date-time"},
        ),
        response=_KEY_STATUS,
    ),
    Endpoint(
        "GET", _FP, key, "One key, its increases and machines", admin=True, response=_KEY_STATUS
    ),
    Endpoint(
        "POST",
        _FP + "/increase",
        increase,
        "Grant an activation count increase",
        admin=True,
        request=obj(["by"], by={"type": "integer", "minimum": 1}, reason=STRING),
        response=_KEY_STATUS,
    ),
    Endpoint("POST", _FP + "/block", block, "Block a key", admin=True, response=_KEY_STATUS),
    Endpoint("POST", _FP + "/unblock", unblock, "Unblock a key", admin=True, response=_KEY_STATUS),
    Endpoint(
        "POST",
        _FP + "/expire",
        expire,
        "Expire a key now or at a time",
        admin=True,
        request=obj([], at={"type": "string", "format": "date-time"}),
        response=_KEY_STATUS,
    ),
    Endpoint("GET", "/v1/export", export, "Keys and activations for another lab", admin=True),
    Endpoint(
        "POST",
        "/v1/import",
        import_,
        "Merge an export (idempotent)",
        admin=True,
        body_limit=IMPORT_BODY,
        request=obj(
            ["format", "version"],
            format={"const": "kmsemu-mak-export"},
            version={"const": 1},
            machine_names=BOOLEAN,
            keys={"type": "array", "items": {"type": "object"}},
            activations={"type": "array", "items": {"type": "object"}},
        ),
        response=obj(
            [],
            keys_added=INTEGER,
            keys_kept=INTEGER,
            activations_added=INTEGER,
            activations_kept=INTEGER,
        ),
    ),
)
