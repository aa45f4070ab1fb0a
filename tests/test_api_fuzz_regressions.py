"""Failures the API fuzzing of issue 17 found (tests/test_api_fuzz.py), one minimal test
each, kept once fixed: a path with a newline through the lab app (now the MAK app's JSON
404), a portal fault ``times`` beyond 64 bits (now 422 ``invalid_field``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmsemu.catalog import default_catalog
from kmsemu.clock import FakeClock
from kmsemu.lab.metrics import LabGauges, LabMetrics
from kmsemu.lab.web import create_lab_app
from kmsemu.run.mak import MakConfig, OpenMak, open_mak
from tests.test_lab_web import FakeView, call

TOKEN = "regression-token"


@pytest.fixture
def mak(tmp_path: Path) -> Iterator[OpenMak]:
    opened = open_mak(
        MakConfig(
            tmp_path,
            "regression-secret",
            FakeClock(),
            default_catalog(),
            db=str(tmp_path / "lab.sqlite3"),
            admin_token=TOKEN,
        )
    )
    try:
        yield opened
    finally:
        opened.close()


def _lab(mak: OpenMak) -> Any:
    gauges = LabGauges(
        counts={}, connections=0, mak_keys=[], clock_offset=0.0, dns_queries={}, host_faults={}
    )
    metrics = LabMetrics({}, lambda: gauges)
    return create_lab_app(FakeView(), mak.app, metrics, admin_token=TOKEN, open_reads=True)


def _call(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
    """One request with the admin token: status, content type, body."""
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    status, headers, answer = call(app, method, path, body, auth)
    return status, headers.get("content-type", ""), answer


#: Found by test_lab_app[PUT /v1/portal/offers/{offer}] (and the users and licences
#: routes, and the stateful run): a path parameter holding a newline (``%0A``), not at
#: the end of the path, sent to the lab app. Starlette's ``Mount("")`` matches with
#: ``^/(?P<path>.*)$``, whose ``.`` takes no newline (one at the very end passes, ``$``
#: matching before it), so no route matches and the lab's router answers its default
#: 404, text/plain "Not Found", which the schema does not document.
NEWLINE_PATH = "/v1/portal/orgs/a%0Ab/users"


def test_the_mak_app_alone_answers_a_path_with_a_newline_in_json(mak: OpenMak) -> None:
    status, content_type, body = _call(mak.app, "GET", NEWLINE_PATH)
    assert content_type == "application/json", (status, body)
    assert json.loads(body)["error"]["code"] == "unknown_org"


def test_lab_app_answers_a_path_with_a_newline_in_json(mak: OpenMak) -> None:
    """The lab must answer as the MAK app does (docs/errors.md: every refusal is
    ``{"error": ...}`` in JSON, a documented status): not Starlette's text/plain."""
    status, content_type, body = _call(_lab(mak), "GET", NEWLINE_PATH)
    assert content_type == "application/json", (status, body)
    assert status == 404 and "code" in json.loads(body)["error"]


def test_a_fault_times_beyond_64_bits_is_an_invalid_field(mak: OpenMak) -> None:
    """Found by test_mak_service[PUT /v1/portal/fault][admin] in the long run: the
    schema says ``times`` is an integer, so 2**64 is valid input, and the answer was a
    500. The other integer fields refuse it (``int_field``: 0 to 2^31-1; the portal's
    ``max_licences`` and ``licences``: 1 to 1000000)."""
    body = json.dumps({"code": "busy", "times": 2**64}).encode()
    status, _, answer = _call(mak.app, "PUT", "/v1/portal/fault", body)
    assert status == 422, (status, answer)
    assert json.loads(answer)["error"]["code"] == "invalid_field"
