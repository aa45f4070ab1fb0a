"""The host's faults through the lab's HTTP API (``/api/host/faults``): who may change them,
what a bad body gets, and a real lab whose real host obeys a fault set over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.host.faults import FaultStore
from kmsemu.lab.fault_api import HostFaults
from kmsemu.lab.metrics import LabGauges, LabMetrics
from kmsemu.lab.web import create_lab_app
from tests.httpraw import request
from tests.test_lab import Lab
from tests.test_lab_web import FakeView, bearer, call

TOKEN = "web-test-token"  # the token tests.test_lab_web's bearer() sends
NOW = 1_800_000_000.0


class Built:
    """The lab app with a fake view, a real faults file and a host that only counts reloads."""

    def __init__(self, tmp_path: Path, *, open_reads: bool = True) -> None:
        self.path = tmp_path / "lab.faults.json"
        self.reloads = 0
        self.fired = {"reset": 2}
        metrics = LabMetrics(
            {},
            lambda: LabGauges(
                counts={}, connections=0, mak_keys=[], clock_offset=0.0, dns_queries={}
            ),
        )
        faults = HostFaults(
            FaultStore(self.path), default_catalog(), lambda: NOW, self.reload, lambda: self.fired
        )
        self.app = create_lab_app(
            FakeView(), _no_mak, metrics, admin_token=TOKEN, open_reads=open_reads, faults=faults
        )

    def reload(self) -> None:
        self.reloads += 1

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        status, _, answer = call(self.app, method, path, raw or b"", headers)
        return status, json.loads(answer)

    def file(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None


async def _no_mak(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b'{"error": {"code": "not_found"}}'})


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return Built(tmp_path)


def test_reading_is_open_on_loopback_and_shows_the_counts_fired(built: Built) -> None:
    status, body = built.call("GET", "/api/host/faults")
    assert status == 200
    assert body == {"faults": [], "fired": {"reset": 2}, "file": str(built.path)}


def test_beyond_loopback_reading_needs_the_token(tmp_path: Path) -> None:
    built = Built(tmp_path, open_reads=False)
    status, body = built.call("GET", "/api/host/faults")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = built.call("GET", "/api/host/faults", headers=bearer())
    assert status == 200 and body["faults"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/host/faults"),
        ("DELETE", "/api/host/faults"),
        ("DELETE", "/api/host/faults/1"),
    ],
)
def test_changes_without_the_token_are_refused_and_change_nothing(
    built: Built, method: str, path: str
) -> None:
    status, _ = built.call("POST", "/api/host/faults", {"kind": "reset"}, bearer())
    assert status == 201
    before = built.file()
    body = {"kind": "refuse"} if method == "POST" else None
    status, answer = built.call(method, path, body)
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    status, answer = built.call(method, path, body, {"Cookie": f"kmsemu_token={TOKEN}"})
    assert (status, answer["error"]["code"]) == (401, "unauthorized")  # a cookie alone: no
    status, answer = built.call(method, path, body, bearer("wrong"))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert built.file() == before
    assert built.reloads == 1  # only the change made with the token


def test_a_fault_set_with_the_token_is_stored_and_the_host_reloads(built: Built) -> None:
    status, body = built.call(
        "POST",
        "/api/host/faults",
        {"kind": "product_not_served", "times": 2, "product": "windows-11-pro", "for": "10m"},
        bearer(),
    )
    assert status == 201
    fault = {
        "id": 1,
        "kind": "0xC004F042",
        "status": "0xC004F042",
        "delay": 0.0,
        "remaining": 2,
        "product": "windows-11-pro",
        "sku_id": "54cb0ac5-d4ac-593a-808d-377c43341134",
        "client": None,
        "expires": 1_800_000_600.0,
        "set_at": 1_800_000_000.0,
    }
    assert body == {
        "fault": fault,
        "faults": [fault],
        "fired": {"reset": 2},
        "file": str(built.path),
    }
    assert built.reloads == 1
    assert json.loads(built.file() or b"")["faults"] == [fault]  # the file the CLI reads
    status, body = built.call(
        "POST", "/api/host/faults", {"kind": "slow", "delay": "2s", "times": 1}, bearer()
    )
    assert status == 201 and body["fault"]["id"] == 2 and body["fault"]["delay"] == 2.0
    status, body = built.call(
        "POST", "/api/host/faults", {"kind": "reset", "duration_seconds": 30}, bearer()
    )
    assert status == 201 and body["fault"]["expires"] == 1_800_000_030.0
    assert [f["kind"] for f in body["faults"]] == ["0xC004F042", "slow", "reset"]


def test_delete_clears_one_fault_by_id_or_every_fault(built: Built) -> None:
    for kind in ("reset", "garbage", "0xC004F050"):
        assert built.call("POST", "/api/host/faults", {"kind": kind}, bearer())[0] == 201
    status, body = built.call("DELETE", "/api/host/faults/2", headers=bearer())
    assert status == 200 and body["cleared"] == 1
    assert [f["kind"] for f in body["faults"]] == ["reset", "0xC004F050"]
    status, body = built.call("DELETE", "/api/host/faults/2", headers=bearer())
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = built.call("DELETE", "/api/host/faults", headers=bearer())
    assert status == 200 and body["cleared"] == 2 and body["faults"] == []
    assert built.reloads == 5  # three sets and two clears; the 404 changed nothing


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"not json", 400, "bad_json", None),
        (b"[1]", 400, "bad_json", None),
        (b"{}", 422, "invalid_field", "kind"),
        ({"kind": 42}, 422, "invalid_field", "kind"),
        ({"kind": "bogus"}, 422, "invalid_field", "kind"),
        ({"kind": "0x00000000"}, 422, "invalid_field", "kind"),
        ({"kind": "reset", "time": 2}, 422, "invalid_field", "time"),
        ({"kind": "reset", "times": 0}, 422, "invalid_field", "times"),
        ({"kind": "reset", "times": "2"}, 422, "invalid_field", "times"),
        ({"kind": "reset", "times": True}, 422, "invalid_field", "times"),
        ({"kind": "reset", "for": "soon"}, 422, "invalid_field", "for"),
        ({"kind": "reset", "for": "367d"}, 422, "invalid_field", "for"),
        ({"kind": "reset", "duration_seconds": 0}, 422, "invalid_field", "duration_seconds"),
        ({"kind": "reset", "for": "1m", "duration_seconds": 60}, 422, "invalid_field", "for"),
        ({"kind": "slow"}, 422, "invalid_field", "delay"),
        ({"kind": "slow", "delay": "2h"}, 422, "invalid_field", "delay"),
        ({"kind": "reset", "delay": 2}, 422, "invalid_field", "delay"),
        ({"kind": "refuse", "product": "windows-11-pro"}, 422, "invalid_field", "product"),
        (
            {"kind": "close-after-bind", "client": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"},
            422,
            "invalid_field",
            "client",
        ),
        ({"kind": "reset", "product": "windows-99"}, 422, "invalid_field", "product"),
        ({"kind": "0xC004F042", "client": "nope"}, 422, "invalid_field", "client"),
        (b'{"kind": "reset", "pad": "' + b"x" * 3000 + b'"}', 413, "body_too_large", None),
    ],
)
def test_a_bad_body_gets_a_stable_code_and_writes_nothing(
    built: Built, body: Any, status: int, code: str, field: str | None
) -> None:
    got, answer = built.call("POST", "/api/host/faults", body, bearer())
    assert (got, answer["error"]["code"], answer["error"].get("field")) == (status, code, field)
    assert built.file() is None and built.reloads == 0


def test_without_a_host_the_routes_are_not_there(tmp_path: Path) -> None:
    metrics = LabMetrics(
        {},
        lambda: LabGauges(counts={}, connections=0, mak_keys=[], clock_offset=0.0, dns_queries={}),
    )
    app = create_lab_app(FakeView(), _no_mak, metrics, admin_token=TOKEN, open_reads=True)
    assert call(app, "GET", "/api/host/faults")[0] == 404


# -- a real lab ---------------------------------------------------------------------------


def activate(lab: Lab, *args: str) -> dict[str, Any]:
    """``kmsemu client activate`` in process against the lab's KMS host."""
    result = CliRunner().invoke(
        main,
        ["client", "activate", "--host", f"127.0.0.1:{lab.kms[1]}", "--json", *args],
        env={"KMSEMU_HOME": str(lab.home)},
    )
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_the_lab_host_obeys_a_fault_set_through_the_api(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "home", "--admin-token", TOKEN, "--quiet")
    try:
        refused = request(lab.http, "POST", "/api/host/faults", {"kind": "0xC004F042"})
        assert (refused.status, refused.body["error"]["code"]) == (401, "unauthorized")
        assert not (lab.home / "lab.faults.json").exists()
        made = request(
            lab.http,
            "POST",
            "/api/host/faults",
            {"kind": "0xC004F042", "product": "windows-11-pro", "times": 1},
            token=TOKEN,
        )
        assert made.status == 201 and made.body["fault"]["remaining"] == 1
        assert made.body["file"] == str(lab.home / "lab.faults.json")
        assert lab.state()["host_faults"]["faults"][0]["kind"] == "0xC004F042"
        reply = activate(lab, "--product", "windows-11-pro", "--required-count", "1")
        assert reply["activated"] is False and reply["hresult"] == "0xC004F042"
        assert reply["error"]["code"] == "product_not_served"
        metrics = request(lab.http, "GET", "/metrics").raw.decode()
        assert 'kmsemu_host_faults_total{kind="0xC004F042"} 1.0' in metrics
        shown = request(lab.http, "GET", "/api/host/faults")
        assert shown.body["faults"] == [] and shown.body["fired"] == {"0xC004F042": 1}
        # a fault until cleared, cleared through the API: the next activation succeeds
        made = request(lab.http, "POST", "/api/host/faults", {"kind": "reset"}, token=TOKEN)
        assert made.status == 201
        reply = activate(lab, "--product", "windows-11-pro", "--required-count", "1")
        assert reply["error"]["hresult"] == "0xC004F074", reply
        cleared = request(lab.http, "DELETE", "/api/host/faults", token=TOKEN)
        assert cleared.status == 200 and cleared.body["cleared"] == 1
        assert cleared.body["fired"] == {"0xC004F042": 1, "reset": 1}
        reply = activate(lab, "--product", "windows-11-pro", "--required-count", "1")
        assert reply["activated"] is True and reply["hresult"] == "0x00000000"
        metrics = request(lab.http, "GET", "/metrics").raw.decode()
        assert 'kmsemu_host_faults_total{kind="reset"} 1.0' in metrics
        assert lab.state()["host_faults"] == {
            "faults": [],
            "fired": {"0xC004F042": 1, "reset": 1},
        }
    finally:
        assert lab.stop() == 0
