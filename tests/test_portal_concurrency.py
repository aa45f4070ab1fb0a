"""The portal's rules hold under concurrency, whatever serves the requests.

Threads against the store (SQLite file and PostgreSQL, each thread its own connection):
two organisations redeeming one key get exactly one success, round after round; 20
purchases into one organisation (and redemptions mixed with purchases) never pass the
offer's maximum; licences are never assigned twice over; sign-ups racing for a key or
a name create one organisation; a fault forced N times answers exactly N redemptions.

Then real ``kmsemu mak serve`` processes: two sharing one PostgreSQL database, many
threads redeeming one key for different organisations: one 201, the rest already_used.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from kmsemu.errors import ServiceError
from kmsemu.keys.product_key import KeyType, ProductKey, mint
from mak.portal_rules import Offer
from mak.store.portal import Fault
from mak.store.postgres import PostgresStore
from mak.store.sql import SqlStore
from mak.store.sqlite import SqliteStore
from tests.conftest import RunningMak, start_mak_process

NOW = 1_700_000_000.0
BASIC, STANDARD = "m365-business-basic", "m365-business-standard"
PRODUCT = {BASIC: 12, STANDARD: 13}
ROUNDS = 100
THREADS = 24
BARRIER_TIMEOUT = 30.0
TOKEN = "portal-concurrency-token"
_serials = itertools.count(1)
_tokens = itertools.count(1)
T = TypeVar("T")


# -- stores ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """basic: at most 25 licences; standard: as many as allowed (the maximum is not what
    the redemption race is about)."""
    opened: SqlStore
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "portal.sqlite3")
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_db_url"))
    try:
        opened.put_offer(Offer(BASIC, PRODUCT[BASIC], 25, frozenset({"GB"}), False), NOW)
        opened.put_offer(Offer(STANDARD, PRODUCT[STANDARD], 10**6, frozenset({"GB"}), False), NOW)
        yield opened
    finally:
        opened.close()


def sub_key(offer: str = STANDARD, quantity: int = 1) -> ProductKey:
    return mint(KeyType.SUBSCRIPTION, PRODUCT[offer], serial=next(_serials), quantity=quantity)


def token_hash() -> str:
    return hashlib.sha256(b"token %d" % next(_tokens)).hexdigest()


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except ServiceError as exc:
        return exc.code
    return "ok"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads kept from round to round: each keeps its database connection."""
    with ThreadPoolExecutor(THREADS) as threads:
        yield threads


def together(pool: ThreadPoolExecutor, calls: list[Callable[[], T]]) -> list[T]:
    """Every call in a thread of its own, all released at once; their results in order."""
    assert len(calls) <= THREADS
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        start.wait(BARRIER_TIMEOUT)
        return call()

    return list(pool.map(run, calls))


def redeeming(
    store: SqlStore, org_id: int, key: ProductKey, offer: str = STANDARD, role: str = "global-admin"
) -> Callable[[], str]:
    return lambda: outcome(lambda: store.redeem(org_id, role, key, offer, NOW))


def buying(
    store: SqlStore, org_id: int, licences: int, auto_assign: bool = False
) -> Callable[[], str]:
    return lambda: outcome(lambda: store.buy(org_id, BASIC, licences, "monthly", auto_assign, NOW))


def redemptions(store: SqlStore) -> int:
    with store._transaction(write=False) as db:
        return int(store._exec(db, "SELECT COUNT(*) FROM portal_redemptions").fetchone()[0])


# -- threads against the store ---------------------------------------------------------------------


def test_two_orgs_redeeming_one_key_one_wins(store: SqlStore, pool: ThreadPoolExecutor) -> None:
    first, second = store.add_org("Contoso", "GB", NOW), store.add_org("Fabrikam", "GB", NOW)
    wins: Counter[str] = Counter()
    for _ in range(ROUNDS):
        key = sub_key()
        answers = together(pool, [redeeming(store, org.id, key) for org in (first, second)])
        assert sorted(answers) == ["already_used", "ok"], answers
        wins[("first", "second")[answers.index("ok")]] += 1
    held = [store.subscriptions(org.id) for org in (first, second)]
    assert sum(len(h) for h in held) == ROUNDS == redemptions(store)
    assert sum(wins.values()) == ROUNDS


def test_many_orgs_racing_for_one_key(store: SqlStore, pool: ThreadPoolExecutor) -> None:
    orgs = [store.add_org(f"Org {n}", "GB", NOW) for n in range(8)]
    for _ in range(5):
        key = sub_key()
        answers = together(
            pool, [redeeming(store, org.id, key, role="billing-admin") for org in orgs]
        )
        assert Counter(answers) == {"ok": 1, "already_used": len(orgs) - 1}
    assert sum(len(store.subscriptions(o.id)) for o in orgs) == 5 == redemptions(store)


def test_one_org_redeeming_one_key_twice_at_once(store: SqlStore, pool: ThreadPoolExecutor) -> None:
    org = store.add_org("Contoso", "GB", NOW)
    for _ in range(10):
        key = sub_key()
        answers = together(pool, [redeeming(store, org.id, key)] * 2)
        assert sorted(answers) == ["already_entered", "ok"]
    assert len(store.subscriptions(org.id)) == 10


def test_twenty_concurrent_purchases_never_pass_the_maximum(
    store: SqlStore, pool: ThreadPoolExecutor
) -> None:
    org = store.add_org("Contoso", "GB", NOW)
    answers = together(pool, [buying(store, org.id, 2)] * 20)
    assert Counter(answers) == {"ok": 12, "too_many_licences": 8}
    held = store.subscriptions(org.id)
    assert sum(s.licences for s in held) == 24 and len(held) == 12


def test_redemptions_and_purchases_together_never_pass_the_maximum(
    store: SqlStore, pool: ThreadPoolExecutor
) -> None:
    org = store.add_org("Contoso", "GB", NOW)
    calls = [
        redeeming(store, org.id, sub_key(BASIC, 3), BASIC)
        if n % 2
        else buying(store, org.id, 3, auto_assign=True)
        for n in range(16)
    ]
    answers = together(pool, calls)
    assert Counter(answers) == {"ok": 8, "too_many_licences": 8}
    assert sum(s.licences for s in store.subscriptions(org.id)) == 24


def test_licences_are_never_assigned_twice_over(store: SqlStore, pool: ThreadPoolExecutor) -> None:
    org = store.add_org("Contoso", "GB", NOW)
    names = [f"user{n}" for n in range(12)]
    for name in names:
        store.add_user(org.id, name, "user", token_hash(), NOW)
    store.buy(org.id, BASIC, 2, "monthly", False, NOW)
    store.buy(org.id, BASIC, 3, "monthly", False, NOW)
    answers = together(
        pool, [partial(outcome, partial(store.assign, org.id, name, BASIC, NOW)) for name in names]
    )
    assert Counter(answers) == {"ok": 5, "no_free_licences": 7}
    assert [(s.licences, s.used) for s in store.subscriptions(org.id)] == [(2, 2), (3, 3)]
    # and racing auto-assigning purchases give each bare user one licence at most
    answers = together(pool, [buying(store, org.id, 4, auto_assign=True)] * 4)
    assert Counter(answers) == {"ok": 4}
    held = [u.licences for u in store.users(org.id)]
    assert all(len(h) == 1 for h in held) and len(held) == 12


def test_signups_racing_for_a_key_or_a_name_create_one_org(
    store: SqlStore, pool: ThreadPoolExecutor
) -> None:
    key = sub_key()
    answers = together(
        pool,
        [
            partial(
                outcome,
                partial(
                    store.signup, f"Racer {n}", "GB", "admin", token_hash(), key, STANDARD, NOW
                ),
            )
            for n in range(6)
        ],
    )
    assert Counter(answers) == {"ok": 1, "already_used": 5}
    assert len(store.orgs()) == 1
    answers = together(
        pool,
        [
            lambda: outcome(
                lambda: store.signup(
                    "Same Name", "GB", "admin", token_hash(), sub_key(), STANDARD, NOW
                )
            )
        ]
        * 6,
    )
    assert Counter(answers) == {"ok": 1, "org_exists": 5}
    same = store.org("same name")
    assert same is not None and len(store.subscriptions(same.id)) == 1
    assert [o.name for o in store.orgs()].count("Same Name") == 1
    assert redemptions(store) == 2


def test_a_fault_forced_n_times_answers_exactly_n(
    store: SqlStore, pool: ThreadPoolExecutor
) -> None:
    store.set_fault(Fault("busy", 5))
    answers = together(pool, [store.take_fault] * 20)
    assert Counter(answers) == {"busy": 5, None: 15}
    assert store.fault() is None


# -- real processes sharing one PostgreSQL database ------------------------------------------


def post(url: str, path: str, body: Any, method: str = "POST") -> tuple[int, Any]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def get(url: str, path: str) -> Any:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def serve(tmp_path: Path, name: str, db: str) -> RunningMak:
    return start_mak_process(
        tmp_path / name, "--db", db, "--admin-token", TOKEN, "--redeem-rate", "1000"
    )


@pytest.mark.slow
def test_two_services_on_one_postgresql_redeem_a_key_once(
    tmp_path: Path, postgres_db_url: str, pool: ThreadPoolExecutor
) -> None:
    services = [serve(tmp_path, "a", postgres_db_url), serve(tmp_path, "b", postgres_db_url)]
    try:
        urls = [s.url for s in services]
        assert (
            post(
                urls[0],
                f"/v1/portal/offers/{STANDARD}",
                {"max_licences": 10**6, "countries": ["GB"]},
                "PUT",
            )[0]
            == 201
        )
        orgs = [f"Org {n}" for n in range(24)]
        for n, org in enumerate(orgs):  # created through either service
            assert post(urls[n % 2], "/v1/portal/orgs", {"name": org, "country": "GB"})[0] == 201
        keys = [str(sub_key()) for _ in range(3)]
        for key in keys:
            answers = together(
                pool,
                [
                    partial(post, urls[n % 2], f"/v1/portal/orgs/Org%20{n}/redeem", {"key": key})
                    for n in range(len(orgs))
                ],
            )
            statuses = Counter(status for status, _ in answers)
            codes = Counter(body["error"]["code"] for status, body in answers if status != 201)
            assert (statuses, codes) == (
                {201: 1, 409: len(orgs) - 1},
                {"already_used": len(orgs) - 1},
            ), answers
        # both services see the same: one subscription per key, each in one organisation
        for url in urls:
            listed = get(url, "/v1/portal/orgs")["orgs"]
            assert sum(o["subscriptions"] for o in listed) == len(keys)
            last5 = sorted(
                s["last5"]
                for org in orgs
                for s in get(url, f"/v1/portal/orgs/{org.replace(' ', '%20')}/subscriptions")[
                    "subscriptions"
                ]
            )
            assert last5 == sorted(k.replace("-", "")[-5:] for k in keys)
    finally:
        for service in services:
            assert service.stop() == 0
