"""The lab app's ``/openapi.json``: the MAK service's and portal's document with the lab's
own routes added (``kmsemu.lab.web``, docs/lab.md), pure.

The MAK part is ``mak.api.openapi_document`` unchanged, so a client generated from either
document calls the MAK routes alike. Reads of the lab's own routes take the admin token,
or none while every HTTP address is loopback (security ``admin`` or nothing); changes
(the clock, the host's faults) always take it.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from kmsemu.errors import SERVICE_ERRORS
from mak.api import openapi_document

_JSON: Final = "application/json"
_ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}
Security = list[dict[str, list[str]]]
_READ: Final[Security] = [{"admin": []}, {}]  # the token, or none on a loopback-only lab
_CHANGE: Final[Security] = [{"admin": []}]

_FAULTS: Final = {
    "type": "object",
    "required": ["faults", "fired", "file"],
    "properties": {
        "faults": {"type": "array", "items": {"type": "object"}},
        "fired": {"type": "object", "additionalProperties": {"type": "integer"}},
        "file": {"type": "string"},
        "fault": {"type": "object"},
        "cleared": {"type": "integer"},
    },
}
_FAULT_BODY: Final = {
    "type": "object",
    "required": ["kind"],
    "properties": {
        "kind": {
            "description": "an activation HRESULT (0xC004F042) or a network fault (docs/lab.md)",
            "type": "string",
        },
        "times": {"type": "integer", "minimum": 1},
        "product": {"type": "string"},
        "client": {"type": "string"},
        "for": {"type": "string", "description": "a duration such as 10m"},
        "duration_seconds": {"type": "number"},
        "delay": {"anyOf": [{"type": "string"}, {"type": "number"}]},
    },
}
_CLOCK_BODY: Final = {
    "type": "object",
    "properties": {
        "advance": {"type": "string", "description": 'a duration such as "7d" or "-1d"'},
        "reset": {"type": "boolean"},
    },
}
_READY: Final = {
    "type": "object",
    "required": ["ready", "components"],
    "properties": {
        "ready": {"type": "boolean"},
        "components": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "problems": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_FAULT_ID: Final = {
    "name": "fault_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def _content(media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _operation(
    operation_id: str,
    summary: str,
    status: int,
    schema: dict[str, Any],
    *,
    media: str = _JSON,
    security: Security | None = _READ,
    body: dict[str, Any] | None = None,
    also: dict[int, tuple[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "success", "content": _content(media, schema)}
    }
    if security is not None or body is not None:  # the errors a lab route can answer with
        for error in sorted({str(info.status) for info in SERVICE_ERRORS.values()}):
            responses[error] = {"description": "error", "content": _content(_JSON, _ERROR_REF)}
    for code, (description, other) in (also or {}).items():
        responses[str(code)] = {"description": description, "content": _content(_JSON, other)}
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "tags": ["lab"],
        "responses": responses,
    }
    if security is not None:
        operation["security"] = security
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _content(_JSON, body)}
    return operation


def _lab_paths(faults: bool) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {
        "/lab/api/state": {
            "get": _operation(
                "lab_state", "Everything the dashboard shows", 200, {"type": "object"}
            )
        },
        "/lab/events": {
            "get": _operation(
                "lab_events",
                "The state as Server-Sent Events, on every change (a stream that does not end)",
                200,
                {"type": "string"},
                media="text/event-stream",
            )
        },
        "/lab/api/clock": {
            "post": _operation(
                "lab_clock",
                'Move the lab clock: {"advance": "7d"} or {"reset": true}; the new state',
                200,
                {"type": "object"},
                security=_CHANGE,
                body=_CLOCK_BODY,
            )
        },
        "/healthz": {
            "get": _operation(
                "lab_healthz",
                "Liveness",
                200,
                {"type": "object", "properties": {"status": {"const": "ok"}}},
                security=None,
            )
        },
        "/readyz": {
            "get": _operation(
                "lab_readyz",
                "Readiness of each part, and what fails",
                200,
                _READY,
                security=None,
                also={503: ("not ready", _READY)},
            )
        },
        "/metrics": {
            "get": _operation(
                "lab_metrics",
                "Prometheus text format",
                200,
                {"type": "string"},
                media="text/plain",
                security=None,
            )
        },
    }
    if faults:
        paths["/api/host/faults"] = {
            "get": _operation(
                "host_faults", "The host's faults in force and the counts fired", 200, _FAULTS
            ),
            "post": _operation(
                "set_host_fault",
                "Set a fault (as kmsemu host fault set)",
                201,
                _FAULTS,
                security=_CHANGE,
                body=_FAULT_BODY,
            ),
            "delete": _operation(
                "clear_host_faults", "Clear every fault", 200, _FAULTS, security=_CHANGE
            ),
        }
        clear_one = _operation(
            "clear_host_fault", "Clear one fault", 200, _FAULTS, security=_CHANGE
        )
        clear_one["parameters"] = [_FAULT_ID]
        paths["/api/host/faults/{fault_id}"] = {"delete": clear_one}
    return paths


def lab_openapi_document(*, faults: bool) -> dict[str, Any]:
    """The MAK document and the lab's own routes (``faults``: the host-fault routes too)."""
    document = copy.deepcopy(openapi_document())
    document["info"] = {
        **document["info"],
        "title": "kmsemu lab: MAK service, licensing portal, lab clock and host faults",
    }
    document["paths"] = {**_lab_paths(faults), **document["paths"]}
    return document
