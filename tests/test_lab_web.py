"""The lab's web app in process (kmsemu.lab.web): who may read and change, routes, metrics.

A lab bound beyond loopback cannot be started by a loopback-only test, so these
tests build the app with ``open_reads=False`` and call it as ASGI directly.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from kmsemu.lab.metrics import LabGauges, LabMetrics
from kmsemu.lab.web import create_lab_app

TOKEN = "web-test-token"


class FakeView:
    def __init__(self) -> None:
        self.stopping = False
        self.offset = 0.0
        self.changes = 0

    def version(self) -> int:
        return self.changes

    def bump(self) -> None:
        self.changes += 1

    def state(self, read_only: bool) -> dict[str, Any]:
        return {"read_only": read_only, "clock_offset": self.offset}

    def travel(self, seconds: float | None) -> None:
        self.offset = 0.0 if seconds is None else self.offset + seconds

    def readiness(self) -> dict[str, bool]:
        return {"kms": True, "dns": not self.stopping}

    def problems(self) -> dict[str, str]:
        return {"kms": "", "dns": "stopping" if self.stopping else ""}


async def mak_key(request: Any) -> JSONResponse:
    return JSONResponse({"mak": request.path_params["fingerprint"]})


def build(*, open_reads: bool) -> tuple[Any, FakeView, LabMetrics]:
    view = FakeView()
    metrics = LabMetrics(
        {},
        lambda: LabGauges(
            counts={"Windows": 3},
            connections=0,
            mak_keys=[],
            clock_offset=view.offset,
            dns_queries={"udp": 2},
            host_faults={"0xC004F042": 2, "reset": 1},
        ),
    )
    mak = Starlette(routes=[Route("/v1/keys/{fingerprint}", mak_key, methods=["GET", "POST"])])
    return (
        create_lab_app(view, mak, metrics, admin_token=TOKEN, open_reads=open_reads),
        view,
        metrics,
    )


def call(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app; the response's status, headers and body. ``path``
    as sent (``%0A`` escapes stay in ``raw_path``, decoded in ``path``, as uvicorn does);
    header values Latin-1, as HTTP's."""
    scope = {
        "type": "http",
        "method": method,
        "path": unquote_to_bytes(path).decode("utf-8", "surrogateescape"),
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8688),
        "client": ("127.0.0.1", 5555),
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    got = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], got, b"".join(m.get("body", b"") for m in sent[1:])


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_beyond_loopback_reading_needs_the_token_by_header_or_cookie() -> None:
    app, _, _ = build(open_reads=False)
    status, headers, body = call(app, "GET", "/lab/api/state")
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    assert call(app, "GET", "/lab/api/state", headers=bearer("wrong"))[0] == 401
    assert call(app, "GET", "/lab/events")[0] == 401
    status, _, body = call(app, "GET", "/lab/api/state", headers=bearer())
    assert status == 200 and json.loads(body)["read_only"] is False
    status, _, body = call(
        app, "GET", "/lab/api/state", headers={"Cookie": f"kmsemu_token={TOKEN}"}
    )
    assert status == 200 and json.loads(body)["read_only"] is False


def test_on_loopback_reading_is_open_but_read_only() -> None:
    app, _, _ = build(open_reads=True)
    status, _, body = call(app, "GET", "/lab/api/state")
    assert status == 200 and json.loads(body)["read_only"] is True


@pytest.mark.parametrize("open_reads", [True, False])
def test_changes_need_the_token_in_the_header_never_a_cookie_alone(open_reads: bool) -> None:
    app, view, _ = build(open_reads=open_reads)
    advance = json.dumps({"advance": "7d"}).encode()
    assert call(app, "POST", "/lab/api/clock", advance)[0] == 401
    assert (
        call(app, "POST", "/lab/api/clock", advance, headers={"Cookie": f"kmsemu_token={TOKEN}"})[0]
        == 401
    )
    assert view.offset == 0
    status, _, body = call(app, "POST", "/lab/api/clock", advance, headers=bearer())
    assert status == 200 and json.loads(body)["clock_offset"] == 7 * 86_400
    call(app, "POST", "/lab/api/clock", b'{"reset": true}', headers=bearer())
    assert view.offset == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "bad_json"),
        (b"[]", 400, "bad_json"),
        (b"{", 400, "bad_json"),
        (b"\xff", 400, "bad_json"),
        (b'{"a": "' + b"x" * 2000 + b'"}', 413, "body_too_large"),
        (b'{"advance": 7}', 422, "invalid_field"),
        (b'{"advance": "soon"}', 422, "invalid_field"),
        (b'{"advance": "1d", "reset": true}', 422, "invalid_field"),
        (b'{"reset": false}', 422, "invalid_field"),
        (b'{"advance": "40000d"}', 422, "invalid_field"),
    ],
)
def test_a_bad_clock_change_changes_nothing(body: bytes, status: int, code: str) -> None:
    app, view, _ = build(open_reads=True)
    got, _, answer = call(app, "POST", "/lab/api/clock", body, headers=bearer())
    assert got == status and json.loads(answer)["error"]["code"] == code
    assert view.offset == 0


def test_static_files_are_a_fixed_list() -> None:
    app, _, _ = build(open_reads=True)
    assert call(app, "GET", "/lab/static/..%2Fdashboard%2Findex.html")[0] == 404
    assert call(app, "GET", "/lab/static/runner.py")[0] == 404


def test_health_readiness_and_metrics_need_no_token() -> None:
    app, view, _ = build(open_reads=False)
    assert call(app, "GET", "/healthz")[:1] == (200,)
    status, _, body = call(app, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {
        "ready": True,
        "components": {"kms": True, "dns": True},
    }
    view.stopping = True
    status, _, body = call(app, "GET", "/readyz")
    assert status == 503 and json.loads(body) == {
        "ready": False,
        "components": {"kms": True, "dns": False},
        "problems": {"dns": "stopping"},
    }
    status, headers, text = call(app, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'kmsemu_kms_count{application="Windows"} 3.0' in text
    assert b'kmsemu_dns_queries_total{transport="udp"} 2.0' in text
    assert b'kmsemu_host_faults_total{kind="0xC004F042"} 2.0' in text
    assert b'kmsemu_host_faults_total{kind="reset"} 1.0' in text


def test_other_paths_reach_the_mak_service_and_hostile_paths_share_one_label() -> None:
    app, view, metrics = build(open_reads=False)
    status, _, body = call(app, "GET", "/v1/keys/abc")
    assert status == 200 and json.loads(body) == {"mak": "abc"}
    assert view.changes == 0
    call(app, "POST", "/v1/keys/abc")
    assert view.changes == 1  # a change through the MAK service: viewers are told
    for n in range(5):
        call(app, "GET", f"/no/such/{n}")
    text = metrics.render().decode()
    assert 'route="/v1/keys/{fingerprint}"' in text
    assert 'kmsemu_http_requests_total{method="GET",route="other",status="404"} 5.0' in text
    assert "/no/such" not in text


def test_the_event_stream_sends_the_state_and_ends_when_the_lab_stops() -> None:
    app, view, _ = build(open_reads=True)

    async def stream() -> bytes:
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            chunks.append(message.get("body", b""))
            if b"event: state" in b"".join(chunks):
                view.stopping = True

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/lab/events",
            "raw_path": b"",
            "query_string": b"",
            "root_path": "",
            "headers": [],
            "scheme": "http",
            "http_version": "1.1",
            "server": ("127.0.0.1", 1),
            "client": ("127.0.0.1", 2),
        }
        await asyncio.wait_for(app(scope, receive, send), 10)
        return b"".join(chunks)

    text = asyncio.run(stream()).decode()
    assert text.startswith("retry: 2000\n\n")
    event = text.split("event: state\ndata: ", 1)[1].split("\n\n", 1)[0]
    assert json.loads(event) == {"read_only": True, "clock_offset": 0.0}
