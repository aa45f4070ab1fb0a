"""API fuzzing with schemathesis (issue 17, point 2): the MAK service and portal, and the
lab's web app in front of them, against the ``/openapi.json`` they serve.

Each app is built in process on a fresh SQLite file in ``tmp_path`` and seeded through
its own API (a MAK key with an activation, an offer, an organisation with a global
admin, a redeemed subscription, an assigned licence), so generated requests meet real
rows. Then, for every operation of the schema, with the admin token and without any:

- no 5xx, and every answer conforms to the schema (status documented, content type,
  body schema, headers): schemathesis' own checks;
- without a token, nothing stored changes (every table of the SQLite file, sorted rows,
  read with ``sqlite3`` before and after each request), except for the operations the
  API documents as public and changing (``PUBLIC_CHANGES``), which may touch only
  their own tables;
- each operation with path parameters is also sent with the seeded names in its path
  (``/v1/keys/<the seeded key>/block``), where a missing check would show;
- stateful: ``as_state_machine()``, on the document's OpenAPI links (``mak.api.LINKS``:
  ``POST /v1/keys`` -> ``/v1/keys/{fingerprint}...``, ``POST /v1/portal/orgs`` ->
  ``/v1/portal/orgs/{org}/...``, a new user -> its licences) and those schemathesis
  infers, with the token and without (where the same table rule holds per step).

The lab's ``/openapi.json`` is the MAK service's document with the lab's own routes added
(``/lab/api/clock``, ``/api/host/faults``..., tagged ``lab``): those are fuzzed apart
(``LAB_OWN_SCHEMA``, every example; the endless ``/lab/events`` stream left out), the MAK
part through the lab (``LAB_SCHEMA``) with a third; the lab's state is then the SQLite
file, the host's faults file and the lab clock.

Bounded: ``KMSEMU_API_FUZZ_EXAMPLES`` examples per operation and token mode (default
10; a third of them for the lab's passthrough) and scenarios per stateful run; from 100
on (the long run of docs/quality.md, "API fuzzing (issue 17)") the coverage phase too.
``KMSEMU_API_FUZZ_RANDOM=1``: new examples each run;
``KMSEMU_API_FUZZ_COUNTS=FILE``: the requests sent, as JSON.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

schemathesis = pytest.importorskip(
    "schemathesis",
    minversion="4",
    reason="schemathesis>=4 is not installed (pip install 'schemathesis>=4'): no API fuzzing",
)

from hypothesis import HealthCheck, settings  # noqa: E402
from openapi_spec_validator import validate  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kmsemu.catalog import default_catalog  # noqa: E402
from kmsemu.clock import FakeClock  # noqa: E402
from kmsemu.host.faults import FaultStore, faults_path  # noqa: E402
from kmsemu.keys.product_key import KeyType, mint  # noqa: E402
from kmsemu.lab.fault_api import HostFaults  # noqa: E402
from kmsemu.lab.metrics import LabGauges, LabMetrics  # noqa: E402
from kmsemu.lab.web import create_lab_app  # noqa: E402
from kmsemu.run.mak import MakConfig, OpenMak, open_mak  # noqa: E402
from mak.api import openapi_document  # noqa: E402
from tests.test_lab_web import FakeView  # noqa: E402

EXAMPLES: Final = int(os.environ.get("KMSEMU_API_FUZZ_EXAMPLES", "10"))
TOKEN: Final = "fuzz-admin-token"
SECRET: Final = "fuzz-lab-secret"
CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
FUZZ: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("KMSEMU_API_FUZZ_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

#: What the seed creates, for paths: the key, organisation, user and offer.
ORG: Final = "Contoso"
USER: Final = "alice"
OFFER: Final = "m365-business-basic"
OFFER_PRODUCT: Final = 12  # m365-business-basic's product number in the catalog

#: Operations anybody may call without a credential that change what is stored, by
#: design, and the tables each may touch (everything else must change nothing without
#: a token):
PUBLIC_CHANGES: Final = {
    # online, phone and proxy activation: clients (slmgr /ato, /atp, VAMT) call them with
    # only the MAK itself, never the admin token (docs/architecture.md, "MAK counting").
    ("POST", "/v1/activate"): {"mak_keys", "mak_machines", "mak_requests"},
    ("POST", "/v1/phone"): {"mak_keys", "mak_machines", "mak_requests"},
    ("POST", "/v1/proxy-activate"): {"mak_keys", "mak_machines", "mak_requests"},
    # sign-up: "anybody | none | ... sign up: create an organisation with a global admin
    # by redeeming a key" (docs/portal.md, "Who may do what").
    ("POST", "/v1/portal/signup"): {
        "portal_orgs",
        "portal_users",
        "portal_subscriptions",
        "portal_redemptions",
    },
}


# -- the apps ----------------------------------------------------------------------------------


def _url(path: str) -> str:
    return f"http://{asgi.HOST}{path}"


def _seed(app: Any) -> dict[str, str]:
    """Rows for the generated requests to meet, made through the API with the admin
    token; the names the paths may use."""
    mak = str(mint(KeyType.MAK, 0, serial=4242))
    sub = str(mint(KeyType.SUBSCRIPTION, OFFER_PRODUCT, serial=4243, quantity=5))
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with asgi.get_client(app) as client:

        def ok(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            reply = client.request(method, _url(path), json=body, headers=admin)
            assert reply.status_code < 300, (method, path, reply.status_code, reply.text)
            return reply.json()

        fingerprint = ok("POST", "/v1/keys", {"key": mak, "limit": 5})["fingerprint"]
        ok("POST", "/v1/activate", {"key": mak, "hardware_id": "00112233445566778899"})
        ok("PUT", f"/v1/portal/offers/{OFFER}", {"max_licences": 25, "countries": ["GB"]})
        ok("POST", "/v1/portal/orgs", {"name": ORG, "country": "GB"})
        ok("POST", f"/v1/portal/orgs/{ORG}/users", {"name": USER, "role": "global-admin"})
        ok("POST", f"/v1/portal/orgs/{ORG}/redeem", {"key": sub})
        ok("POST", f"/v1/portal/orgs/{ORG}/users/{USER}/licences", {"offer": OFFER})
    return {"fingerprint": fingerprint, "org": ORG, "user": USER, "offer": OFFER}


@dataclass
class Env:
    """One app on its own database, seeded, and how to read everything it stores."""

    app: Any
    db: Path
    names: dict[str, str]
    extra_state: Callable[[], Any] = field(default=lambda: None)
    lab: bool = False

    def dump(self) -> dict[str, Any]:
        """Every table of the SQLite file, rows sorted; and the app's other state."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            dumped: dict[str, Any] = {
                t: sorted((tuple(row) for row in con.execute(f'SELECT * FROM "{t}"')), key=repr)
                for t in sorted(tables)
            }
        finally:
            con.close()
        dumped["(other state)"] = self.extra_state()
        return dumped


def _open(tmp_path: Path) -> OpenMak:
    return open_mak(
        MakConfig(
            tmp_path,
            SECRET,
            FakeClock(),
            default_catalog(),
            db=str(tmp_path / "lab.sqlite3"),
            admin_token=TOKEN,
        )
    )


def _mak_env(where: Path) -> tuple[Env, OpenMak]:
    opened = _open(where)
    try:
        return Env(opened.app, where / "lab.sqlite3", _seed(opened.app)), opened
    except BaseException:
        opened.close()
        raise


@pytest.fixture
def mak_env(tmp_path: Path) -> Iterator[Env]:
    env, opened = _mak_env(tmp_path)
    try:
        yield env
    finally:
        opened.close()


def _lab_app(opened: OpenMak, db: Path) -> tuple[Any, FakeView, FaultStore]:
    view = FakeView()
    metrics = LabMetrics(
        {},
        lambda: LabGauges(
            counts={},
            connections=0,
            mak_keys=[],
            clock_offset=view.offset,
            dns_queries={},
            host_faults={},
        ),
    )
    store = FaultStore(faults_path(db))
    faults = HostFaults(store, default_catalog(), lambda: 1_800_000_000.0, lambda: None, dict)
    app = create_lab_app(
        view, opened.app, metrics, admin_token=TOKEN, open_reads=False, faults=faults
    )
    return app, view, store


def _lab_env(where: Path) -> tuple[Env, OpenMak]:
    opened = _open(where)
    db = where / "lab.sqlite3"
    try:
        app, view, store = _lab_app(opened, db)

        def other() -> Any:
            faults = store.path.read_bytes() if store.path.exists() else None
            return {"clock_offset": view.offset, "faults_file": faults}

        return Env(app, db, _seed(app), other, lab=True), opened
    except BaseException:
        opened.close()
        raise


@pytest.fixture
def lab_env(tmp_path: Path) -> Iterator[Env]:
    env, opened = _lab_env(tmp_path)
    try:
        yield env
    finally:
        opened.close()


def _loaded(build: Callable[[OpenMak, Path], Any]) -> Any:
    """The schema as the app serves it (an app on a throwaway database, only to read it)."""
    with tempfile.TemporaryDirectory() as where:
        opened = _open(Path(where))
        try:
            return schemathesis.openapi.from_asgi("/openapi.json", build(opened, Path(where)))
        finally:
            opened.close()


MAK_SCHEMA = _loaded(lambda opened, _: opened.app)
LAB_SERVED = _loaded(lambda opened, where: _lab_app(opened, where / "lab.sqlite3")[0])
#: The MAK service's and portal's operations, through the lab's router and middleware.
LAB_SCHEMA = LAB_SERVED.exclude(tag="lab")
#: The bounded run skips schemathesis' coverage phase (its deterministic edge cases, a
#: few dozen per operation); the long run (``LONG``) has it. The lab's /openapi.json is
#: the MAK app's, through the lab's router and middleware: in the bounded run it gets a
#: third of the examples.
LONG: Final = EXAMPLES >= 100
if not LONG:
    MAK_SCHEMA.config.phases.coverage.enabled = False
    LAB_SCHEMA.config.phases.coverage.enabled = False
LAB_FUZZ: Final = settings(FUZZ, max_examples=EXAMPLES if LONG else max(3, EXAMPLES // 3))

#: The lab's own routes (tag ``lab``), every example; its event stream never ends.
LAB_OWN_SCHEMA = LAB_SERVED.include(tag="lab").exclude(path="/lab/events")
if not LONG:
    LAB_OWN_SCHEMA.config.phases.coverage.enabled = False


# -- one request -------------------------------------------------------------------------------


def _headers(auth: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"} if auth == "admin" else {}


def _send(env: Env, case: Any, auth: str) -> None:
    """``case`` as generated and, when its path has parameters, again with the seeded
    names; the checks on each answer; without a token, the tables compared."""
    variants = [dict(case.path_parameters or {})]
    if case.path_parameters:
        variants.append({k: env.names.get(k, v) for k, v in case.path_parameters.items()})
    for path_parameters in variants:
        case.path_parameters = path_parameters
        if auth == "none" and case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        before = env.dump() if auth == "none" else None
        response = case.call(app=env.app, headers=_headers(auth))
        _count(case, auth, response.status_code)
        case.validate_response(response, checks=CHECKS)
        if before is not None:
            _unchanged_without_token(case, before, env.dump(), response.status_code)


def _unchanged_without_token(
    case: Any, before: dict[str, Any], after: dict[str, Any], status: int
) -> None:
    allowed = PUBLIC_CHANGES.get((case.method.upper(), case.operation.path), set())
    changed = {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}
    assert changed <= allowed, (
        f"{case.method.upper()} {case.formatted_path} without a token answered {status} "
        f"and changed {sorted(changed - allowed)}"
    )


#: Requests sent, by (operation, token, status class); written as JSON to the file
#: ``KMSEMU_API_FUZZ_COUNTS`` names, if any, when the module's tests end (for the record).
SENT: Counter[tuple[str, str, str]] = Counter()


def _count(case: Any, auth: str, status: int) -> None:
    SENT[(f"{case.method.upper()} {case.operation.path}", auth, f"{status // 100}xx")] += 1


@pytest.fixture(scope="module", autouse=True)
def _counts() -> Iterator[None]:
    yield
    where = os.environ.get("KMSEMU_API_FUZZ_COUNTS")
    if where:
        rows = [[*k, n] for k, n in sorted(SENT.items())]
        Path(where).write_text(json.dumps({"total": sum(SENT.values()), "rows": rows}))


AUTH = pytest.mark.parametrize("auth", ["admin", "none"])


# -- stateless ---------------------------------------------------------------------------------


@AUTH
@MAK_SCHEMA.parametrize()
@FUZZ
def test_mak_service(case: Any, auth: str, mak_env: Env) -> None:
    _send(mak_env, case, auth)


@AUTH
@LAB_SCHEMA.parametrize()
@LAB_FUZZ
def test_lab_app(case: Any, auth: str, lab_env: Env) -> None:
    """The lab's /openapi.json (the MAK service's, through the lab's middleware)."""
    _send(lab_env, case, auth)


@AUTH
@LAB_OWN_SCHEMA.parametrize()
@FUZZ
def test_lab_own_routes(case: Any, auth: str, lab_env: Env) -> None:
    _send(lab_env, case, auth)


# -- stateful ----------------------------------------------------------------------------------


def _run_machine(
    schema: Any, make: Callable[[Path], tuple[Env, OpenMak]], tmp_path: Path, auth: str
) -> None:
    """Each scenario on a fresh, seeded app of its own (Hypothesis replays scenarios
    while shrinking: answers must not depend on what an earlier scenario stored)."""
    base = schema.as_state_machine()
    scenarios = iter(range(10**9))

    class Machine(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            where = tmp_path / f"scenario-{next(scenarios)}"
            where.mkdir()
            self.env, self.opened = make(where)

        def teardown(self) -> None:
            self.opened.close()

        def before_call(self, case: Any) -> None:
            env = self.env
            if auth == "none" and case.headers:
                case.headers = {
                    k: v for k, v in case.headers.items() if k.lower() != "authorization"
                }
            self._before = env.dump() if auth == "none" else None

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"app": self.env.app, "headers": _headers(auth)}

        def after_call(self, response: Any, case: Any) -> None:
            _count(case, f"{auth}, stateful", response.status_code)
            if self._before is not None:
                _unchanged_without_token(case, self._before, self.env.dump(), response.status_code)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Machine.run(
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=os.environ.get("KMSEMU_API_FUZZ_RANDOM") is None,
        )
    )


def test_the_links_name_real_operations_and_their_parameters() -> None:
    """The document's OpenAPI links, which the stateful runs follow: each from a 201 to
    an operation that exists, filling exactly that operation's path parameters, from
    fields the 201's schema requires."""
    operations = {
        op["operationId"]: (path, op)
        for path, ops in openapi_document()["paths"].items()
        for op in ops.values()
    }
    found = {}
    for source, (_, op) in operations.items():
        answer = op["responses"].get("201", {})
        for link in answer.get("links", {}).values():
            target_path, _ = operations[link["operationId"]]
            assert set(link["parameters"]) == set(re.findall(r"{(\w+)}", target_path))
            required = answer["content"]["application/json"]["schema"]["required"]
            for expression in link["parameters"].values():
                assert expression.removeprefix("$response.body#/") in required
            found.setdefault(source, set()).add(link["operationId"])
    assert found == {
        "add_key": {"key", "increase", "block", "unblock", "expire"},
        "add_org": {"users", "add_user", "redeem", "subscriptions", "buy"},
        "signup": {"users", "add_user", "redeem", "subscriptions", "buy"},
        "add_user": {"assign"},
        "assign": {"unassign"},
    }
    transitions = [n for n in dir(MAK_SCHEMA.as_state_machine()) if "__" in n and n[0] != "_"]
    assert any(n.startswith("POST_v1_keys___201") for n in transitions), transitions


def test_the_lab_document_has_the_lab_routes_and_the_mak_services() -> None:
    """The lab's /openapi.json: its own routes (docs/lab.md) with their methods, who may
    call them, and every MAK operation as ``kmsemu mak serve`` serves it."""
    served = LAB_SERVED.raw_schema
    validate(served)  # a valid OpenAPI 3.1 document
    own = {
        path: {method: op.get("security") for method, op in ops.items()}
        for path, ops in served["paths"].items()
        if all("lab" in op.get("tags", ()) for op in ops.values())
    }
    read, change = [{"admin": []}, {}], [{"admin": []}]
    assert own == {
        "/lab/api/state": {"get": read},
        "/lab/events": {"get": read},
        "/lab/api/clock": {"post": change},
        "/healthz": {"get": None},
        "/readyz": {"get": None},
        "/metrics": {"get": None},
        "/api/host/faults": {"get": read, "post": change, "delete": change},
        "/api/host/faults/{fault_id}": {"delete": change},
    }
    mak = openapi_document()["paths"]
    assert {p: served["paths"][p] for p in mak} == mak
    assert served["paths"]["/readyz"]["get"]["responses"].keys() >= {"200", "503"}


@AUTH
def test_mak_service_stateful(auth: str, tmp_path: Path) -> None:
    _run_machine(MAK_SCHEMA, _mak_env, tmp_path, auth)


@AUTH
def test_lab_app_stateful(auth: str, tmp_path: Path) -> None:
    _run_machine(LAB_SCHEMA, _lab_env, tmp_path, auth)


def test_the_dump_sees_a_change(mak_env: Env) -> None:
    """The table comparison is not blind: a change made with the token shows in it."""
    before = mak_env.dump()
    with asgi.get_client(mak_env.app) as client:
        reply = client.post(
            _url(f"/v1/keys/{mak_env.names['fingerprint']}/block"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert reply.status_code == 200, reply.text
    after = mak_env.dump()
    assert {t for t in before if before[t] != after[t]} == {"mak_keys"}
    assert json.dumps(sorted(before)) == json.dumps(sorted(after))
