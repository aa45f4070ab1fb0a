"""The portal's store contract (``mak.store.portal``), once, against both stores: SQLite
(a file) and PostgreSQL (a fresh database on the session's throwaway server; see
``conftest_postgres.py``), like ``test_mak_store.py``.

Organisations and users (names unique case-insensitively, tokens by hash), offers,
redemption with every refusal of behaviour.md's table that the store decides, sign-up
(all or nothing, or the organisation without the redemption), buying with auto-assign,
assigning from the oldest subscription with a free licence, and forced faults counted
down. Every refusal is checked against a dump of every portal table: a refusal inside
a transaction leaves nothing, even one that comes after the subscription's row was
inserted (a key claimed by another organisation meanwhile). A scripted session gives
the same answers on both backends.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from kmsemu.errors import ServiceError
from kmsemu.keys.product_key import KeyType, ProductKey, mint
from mak.portal_rules import Offer
from mak.store.base import Cursor, Executor
from mak.store.portal import Fault, Org, Subscription, User
from mak.store.sql import SqlStore
from tests.stores import BACKENDS, OTHER, open_store

NOW = 1_700_000_000.0
BASIC, STANDARD, PREMIUM, E3 = 12, 13, 14, 15  # the shipped catalog's subscription products
NAMES = {
    BASIC: "m365-business-basic",
    STANDARD: "m365-business-standard",
    PREMIUM: "m365-business-premium",
    E3: "office-365-e3",
}
TABLES = (
    "portal_orgs",
    "portal_users",
    "portal_offers",
    "portal_subscriptions",
    "portal_redemptions",
    "portal_key_expiry",
    "portal_assignments",
    "portal_faults",
)
_serials = itertools.count(1)
_tokens = itertools.count(1)


# -- stores ------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(backend, request, tmp_path)
    try:
        define_offers(opened)
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A fresh store of the other backend, with the same offers."""
    opened = open_store(OTHER[backend], request, tmp_path, "other.sqlite3")
    try:
        define_offers(opened)
        yield opened
    finally:
        opened.close()


def define_offers(store: SqlStore) -> None:
    """basic: 25 in GB and US; standard: 300 in GB; premium: a trial of 25 in GB and US;
    office-365-e3: no offer at all."""
    store.put_offer(Offer(NAMES[BASIC], BASIC, 25, frozenset({"GB", "US"}), False), NOW)
    store.put_offer(Offer(NAMES[STANDARD], STANDARD, 300, frozenset({"GB"}), False), NOW)
    store.put_offer(Offer(NAMES[PREMIUM], PREMIUM, 25, frozenset({"GB", "US"}), True), NOW)


# -- helpers -------------------------------------------------------------------------------------


def sub_key(
    quantity: int = 5, product: int = BASIC, key_type: KeyType = KeyType.SUBSCRIPTION
) -> ProductKey:
    return mint(
        key_type,
        product,
        serial=next(_serials),
        quantity=quantity if key_type is KeyType.SUBSCRIPTION else 0,
    )


def token_hash() -> str:
    return hashlib.sha256(b"token %d" % next(_tokens)).hexdigest()


def new_org(store: SqlStore, name: str = "Contoso", country: str = "GB") -> Org:
    return store.add_org(name, country, NOW)


def new_user(store: SqlStore, org: Org, name: str, role: str = "user", at: float = NOW) -> User:
    return store.add_user(org.id, name, role, token_hash(), at)


def redeem(
    store: SqlStore, org: Org, key: ProductKey, role: str = "global-admin", at: float = NOW
) -> Subscription:
    return store.redeem(org.id, role, key, NAMES.get(key.product, "windows-11-pro"), at)


def refusal(call: Callable[[], Any]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call()
    return caught.value


def tables(store: SqlStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every portal table: what 'nothing stored' is compared against."""
    with store._transaction(write=False) as db:
        return {
            table: sorted(
                tuple(row) for row in store._exec(db, f"SELECT * FROM {table}").fetchall()
            )
            for table in TABLES
        }


def unchanged(store: SqlStore, call: Callable[[], Any]) -> ServiceError:
    """``call`` is refused and leaves every portal table as it was."""
    before = tables(store)
    error = refusal(call)
    assert tables(store) == before, error.code
    return error


def licences(store: SqlStore, org: Org) -> dict[str, tuple[str, ...]]:
    return {user.name: user.licences for user in store.users(org.id)}


def usage(store: SqlStore, org: Org) -> list[tuple[str, int, int, int]]:
    return [(s.offer, s.licences, s.used, s.free) for s in store.subscriptions(org.id)]


# -- organisations, users, offers ------------------------------------------------------------


def test_orgs_are_unique_case_insensitively(store: SqlStore) -> None:
    org = new_org(store, "Contoso Ltd")
    assert (org.name, org.country, org.created, org.users, org.subscriptions) == (
        "Contoso Ltd",
        "GB",
        NOW,
        0,
        0,
    )
    for taken in ("contoso ltd", "CONTOSO LTD", " Contoso Ltd "):
        assert unchanged(store, partial(new_org, store, taken)).code == "org_exists"
    assert store.org("cOnToSo LtD") == org
    assert store.org("Fabrikam") is None
    fabrikam = new_org(store, "Fabrikam", "US")
    new_user(store, fabrikam, "ann")
    redeem(store, fabrikam, sub_key(3))
    assert [(o.name, o.users, o.subscriptions) for o in store.orgs()] == [
        ("Contoso Ltd", 0, 0),
        ("Fabrikam", 1, 1),
    ]


def test_users_are_unique_per_org_and_found_by_token(store: SqlStore) -> None:
    contoso, fabrikam = new_org(store), new_org(store, "Fabrikam")
    digest = token_hash()
    ann = store.add_user(contoso.id, "Ann", "billing-admin", digest, NOW)
    assert (ann.org_id, ann.name, ann.role, ann.created) == (
        contoso.id,
        "Ann",
        "billing-admin",
        NOW,
    )
    assert store.user_by_token(digest) == ann
    assert store.user_by_token(token_hash()) is None
    error = unchanged(store, lambda: new_user(store, contoso, "ANN"))
    assert error.code == "user_exists"
    assert new_user(store, fabrikam, "ann").org_id == fabrikam.id  # another organisation
    assert [u.name for u in store.users(contoso.id)] == ["Ann"]
    assert (
        unchanged(store, lambda: store.add_user(10**6, "x", "user", token_hash(), NOW)).code
        == "unknown_org"
    )


def test_offers_defined_and_redefined(store: SqlStore) -> None:
    assert [o.name for o in store.offers()] == sorted(NAMES[p] for p in (BASIC, STANDARD, PREMIUM))
    assert store.offer(NAMES[E3]) is None
    changed = Offer(NAMES[BASIC], BASIC, 7, frozenset({"FR"}), True)
    assert store.put_offer(changed, NOW + 1) is False
    assert store.offer(NAMES[BASIC]) == changed
    e3 = Offer(NAMES[E3], E3, 1, frozenset({"US", "GB", "DE"}), False)
    assert store.put_offer(e3, NOW) is True
    assert store.offer(NAMES[E3]) == e3


# -- redemption ---------------------------------------------------------------------------------


def test_a_redeemed_key_is_a_subscription(store: SqlStore) -> None:
    org = new_org(store)
    key = sub_key(7)
    subscription = redeem(store, org, key, "billing-admin")
    assert subscription == Subscription(
        subscription.id, org.id, NAMES[BASIC], 7, None, "key", key.last5, NOW, 0
    )
    assert store.subscriptions(org.id) == [subscription]
    assert subscription.free == 7
    [claim] = tables(store)["portal_redemptions"]
    assert claim[:3] == (key.fingerprint, org.id, subscription.id)
    # the whole key is stored nowhere
    assert str(key).replace("-", "") not in repr(tables(store))


def refusals(store: SqlStore) -> dict[str, tuple[str, Callable[[], Any]]]:
    """One refusal per row of the table the store decides: code, and the call."""
    contoso, fabrikam, paris = (
        new_org(store),
        new_org(store, "Fabrikam"),
        new_org(store, "Paris", "FR"),
    )
    redeemed = sub_key(3)
    redeem(store, contoso, redeemed)
    expired = sub_key(3)
    store.set_key_expiry(expired.fingerprint, expired.last5, NOW)
    redeem(store, contoso, sub_key(1, PREMIUM))
    redeem(store, fabrikam, sub_key(20))
    return {
        "invalid_key (a MAK)": (
            "invalid_key",
            lambda: redeem(store, fabrikam, sub_key(0, 0, KeyType.MAK)),
        ),
        "invalid_key (no licences)": ("invalid_key", lambda: redeem(store, fabrikam, sub_key(0))),
        "already_entered": ("already_entered", lambda: redeem(store, contoso, redeemed)),
        "already_used": ("already_used", lambda: redeem(store, fabrikam, redeemed)),
        "expired": ("expired", lambda: redeem(store, fabrikam, expired)),
        "offer_not_available": ("not_available", lambda: redeem(store, fabrikam, sub_key(2, E3))),
        "not_in_country": ("not_available", lambda: redeem(store, paris, sub_key(2))),
        "trial_used": ("not_available", lambda: redeem(store, contoso, sub_key(1, PREMIUM))),
        "too_many_licences": ("too_many_licences", lambda: redeem(store, fabrikam, sub_key(6))),
        "admin_required": ("admin_required", lambda: redeem(store, fabrikam, sub_key(1), "user")),
    }


REFUSALS = [
    "invalid_key (a MAK)",
    "invalid_key (no licences)",
    "already_entered",
    "already_used",
    "expired",
    "offer_not_available",
    "not_in_country",
    "trial_used",
    "too_many_licences",
    "admin_required",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_redemption_stores_nothing(store: SqlStore, case: str) -> None:
    code, call = refusals(store)[case]
    error = unchanged(store, call)
    assert error.code == code
    if code == "not_available":
        assert error.extra["reason"] == case
    if code == "too_many_licences":
        assert (error.extra["maximum"], error.extra["requested"]) == (25, 26)


def test_expiry_is_reached_at_its_moment(store: SqlStore) -> None:
    org = new_org(store)
    key = sub_key(2)
    store.set_key_expiry(key.fingerprint, key.last5, NOW + 60)
    assert unchanged(store, lambda: redeem(store, org, key, at=NOW + 60)).code == "expired"
    store.set_key_expiry(key.fingerprint, key.last5, NOW + 120)  # redefined, not added
    assert len(tables(store)["portal_key_expiry"]) == 1
    assert redeem(store, org, key, at=NOW + 119).licences == 2


def test_the_maximum_counts_every_subscription_of_the_offer(store: SqlStore) -> None:
    org = new_org(store)
    redeem(store, org, sub_key(10))
    store.buy(org.id, NAMES[BASIC], 10, "monthly", False, NOW)
    assert unchanged(store, lambda: redeem(store, org, sub_key(6))).code == "too_many_licences"
    redeem(store, org, sub_key(5))  # exactly the maximum
    assert sum(s.licences for s in store.subscriptions(org.id)) == 25
    # other offers have their own maximum
    assert redeem(store, org, sub_key(300, STANDARD)).licences == 300


def test_a_claim_lost_after_the_insert_rolls_the_subscription_back(store: SqlStore) -> None:
    """Another organisation's redemption commits between this one's look and its claim:
    the subscription row already inserted must go with the refusal."""
    contoso, fabrikam = new_org(store), new_org(store, "Fabrikam")
    key = sub_key(4)
    winner = redeem(store, fabrikam, key)
    real_exec = store._exec
    looked: list[str] = []

    def blind_first_look(db: Executor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if sql.startswith("SELECT org_id FROM portal_redemptions") and not looked:
            looked.append(sql)  # the look misses the claim; the claim itself will not
            sql += " AND 1 = 0"
        return real_exec(db, sql, params)

    store._exec = blind_first_look  # type: ignore[method-assign]
    try:
        error = unchanged(store, lambda: redeem(store, contoso, key))
    finally:
        del store._exec
    assert looked and error.code == "already_used"
    assert store.subscriptions(contoso.id) == []
    assert store.subscriptions(fabrikam.id) == [winner]
    # and the same organisation is told it entered the key already
    store._exec = blind_first_look  # type: ignore[method-assign]
    looked.clear()
    try:
        assert unchanged(store, lambda: redeem(store, fabrikam, key)).code == "already_entered"
    finally:
        del store._exec


# -- sign-up ---------------------------------------------------------------------------------------


def test_signup_creates_org_admin_and_subscription(store: SqlStore) -> None:
    key, digest = sub_key(5), token_hash()
    org, admin, subscription = store.signup(
        "Northwind", "US", "Nina", digest, key, NAMES[BASIC], NOW
    )
    assert (org.name, org.country) == ("Northwind", "US")
    assert (admin.name, admin.role, admin.org_id) == ("Nina", "global-admin", org.id)
    assert store.user_by_token(digest) == admin
    assert subscription is not None and store.subscriptions(org.id) == [subscription]
    assert (subscription.licences, subscription.source) == (5, "key")


@pytest.mark.parametrize(
    "case",
    ["already_used", "not_in_country", "too_many_licences", "org_exists", "offer_not_available"],
)
def test_a_refused_signup_stores_nothing(store: SqlStore, case: str) -> None:
    used = sub_key(2)
    redeem(store, new_org(store), used)
    keys = {
        "already_used": used,
        "not_in_country": sub_key(2, STANDARD),
        "too_many_licences": sub_key(26),
        "org_exists": sub_key(2),
        "offer_not_available": sub_key(2, E3),
    }
    name = "contoso" if case == "org_exists" else "Northwind"
    error = unchanged(
        store,
        lambda: store.signup(
            name, "US", "Nina", token_hash(), keys[case], NAMES[keys[case].product], NOW
        ),
    )
    assert case in (error.code, error.extra.get("reason"))
    if case != "org_exists":
        assert store.org("Northwind") is None


def test_signup_failing_after_the_account_keeps_org_and_admin_not_the_key(store: SqlStore) -> None:
    key, digest = sub_key(5), token_hash()
    org, admin, subscription = store.signup(
        "Northwind", "GB", "Nina", digest, key, NAMES[BASIC], NOW, fail_after_account=True
    )
    assert subscription is None
    assert store.org("northwind") == org
    assert store.users(org.id) == [admin] and store.user_by_token(digest) == admin
    assert store.subscriptions(org.id) == [] and tables(store)["portal_redemptions"] == []
    # the admin redeems the key again into the organisation
    assert redeem(store, org, key, admin.role).licences == 5


# -- buying --------------------------------------------------------------------------------------


def test_buy_adds_a_purchase_to_the_org(store: SqlStore) -> None:
    org = new_org(store)
    redeem(store, org, sub_key(5))
    purchase = store.buy(org.id, NAMES[BASIC], 3, "yearly", False, NOW + 1)
    bought = purchase.subscription
    assert purchase.assigned == ()
    assert (
        bought.offer,
        bought.licences,
        bought.billing,
        bought.source,
        bought.last5,
        bought.used,
        bought.created,
    ) == (NAMES[BASIC], 3, "yearly", "purchase", None, 0, NOW + 1)
    assert [s.id for s in store.subscriptions(org.id)][-1] == bought.id
    assert usage(store, org) == [(NAMES[BASIC], 5, 0, 5), (NAMES[BASIC], 3, 0, 3)]


@pytest.mark.parametrize(
    "case", ["offer_not_available", "not_in_country", "trial_used", "too_many_licences"]
)
def test_a_refused_purchase_stores_nothing(store: SqlStore, case: str) -> None:
    org = new_org(store, "Fabrikam")
    new_user(store, org, "ann")
    store.buy(org.id, NAMES[PREMIUM], 1, "monthly", False, NOW)
    store.buy(org.id, NAMES[BASIC], 20, "monthly", False, NOW)
    paris = new_org(store, "Paris", "FR")
    calls: dict[str, Callable[[], Any]] = {
        "offer_not_available": lambda: store.buy(org.id, NAMES[E3], 1, "monthly", True, NOW),
        "not_in_country": lambda: store.buy(paris.id, NAMES[BASIC], 1, "monthly", True, NOW),
        "trial_used": lambda: store.buy(org.id, NAMES[PREMIUM], 1, "yearly", True, NOW),
        "too_many_licences": lambda: store.buy(org.id, NAMES[BASIC], 6, "yearly", True, NOW),
    }
    error = unchanged(store, calls[case])
    assert case in (error.code, error.extra.get("reason"))


def test_auto_assign_gives_users_without_any_licence_one_oldest_first(store: SqlStore) -> None:
    org = new_org(store)
    for n, name in enumerate(["u1", "u2", "u3", "u4", "u5"]):
        new_user(store, org, name, at=NOW + n)
    store.buy(org.id, NAMES[STANDARD], 1, "monthly", False, NOW)
    store.assign(org.id, "u2", NAMES[STANDARD], NOW)  # u2 holds a licence (of another offer)
    purchase = store.buy(org.id, NAMES[BASIC], 2, "monthly", True, NOW)
    assert purchase.assigned == ("u1", "u3")  # oldest first, while licences last
    assert (purchase.subscription.used, purchase.subscription.free) == (2, 0)
    assert licences(store, org) == {
        "u1": (NAMES[BASIC],),
        "u2": (NAMES[STANDARD],),
        "u3": (NAMES[BASIC],),
        "u4": (),
        "u5": (),
    }
    more = store.buy(org.id, NAMES[BASIC], 5, "yearly", True, NOW)
    assert more.assigned == ("u4", "u5") and more.subscription.used == 2
    assert store.buy(org.id, NAMES[BASIC], 1, "yearly", True, NOW).assigned == ()
    assert usage(store, org) == [
        (NAMES[STANDARD], 1, 1, 0),
        (NAMES[BASIC], 2, 2, 0),
        (NAMES[BASIC], 5, 2, 3),
        (NAMES[BASIC], 1, 0, 1),
    ]


# -- assigning ------------------------------------------------------------------------------------


def test_assign_takes_the_oldest_subscription_with_a_free_licence(store: SqlStore) -> None:
    org = new_org(store)
    for name in ("ann", "bob", "cat", "dan"):
        new_user(store, org, name)
    first = redeem(store, org, sub_key(1))
    second = store.buy(org.id, NAMES[BASIC], 2, "monthly", False, NOW).subscription
    user, took = store.assign(org.id, "ANN", NAMES[BASIC], NOW)
    assert (user.name, took.id, took.used, took.free) == ("ann", first.id, 1, 0)
    assert store.assign(org.id, "bob", NAMES[BASIC], NOW)[1].id == second.id
    user, gave = store.unassign(org.id, "Ann", NAMES[BASIC])
    assert (user.name, gave.id, gave.used, gave.free) == ("ann", first.id, 0, 1)
    assert store.assign(org.id, "cat", NAMES[BASIC], NOW)[1].id == first.id  # freed again
    assert store.assign(org.id, "ann", NAMES[BASIC], NOW)[1].id == second.id
    assert usage(store, org) == [(NAMES[BASIC], 1, 1, 0), (NAMES[BASIC], 2, 2, 0)]
    error = unchanged(store, lambda: store.assign(org.id, "dan", NAMES[BASIC], NOW))
    assert (error.code, error.message) == (
        "no_free_licences",
        f"There are no free licences for {NAMES[BASIC]}: all 3 are assigned.",
    )
    assert (error.extra["offer"], error.extra["licences"]) == (NAMES[BASIC], 3)


def test_assign_and_unassign_refusals_store_nothing(store: SqlStore) -> None:
    org = new_org(store)
    new_user(store, org, "ann")
    redeem(store, org, sub_key(2))
    store.assign(org.id, "ann", NAMES[BASIC], NOW)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("already_assigned", lambda: store.assign(org.id, "Ann", NAMES[BASIC], NOW)),
        ("unknown_user", lambda: store.assign(org.id, "nobody", NAMES[BASIC], NOW)),
        ("no_free_licences", lambda: store.assign(org.id, "ann", NAMES[STANDARD], NOW)),
        ("not_assigned", lambda: store.unassign(org.id, "ann", NAMES[STANDARD])),
        ("unknown_user", lambda: store.unassign(org.id, "nobody", NAMES[BASIC])),
        ("unknown_org", lambda: store.assign(10**6, "ann", NAMES[BASIC], NOW)),
    ]
    for code, call in cases:
        assert unchanged(store, call).code == code
    assert licences(store, org) == {"ann": (NAMES[BASIC],)}


# -- faults --------------------------------------------------------------------------------------


def test_a_fault_counts_down_then_clears(store: SqlStore) -> None:
    assert store.fault() is None and store.take_fault() is None
    store.set_fault(Fault("expired", 2))
    assert store.fault() == Fault("expired", 2)
    assert store.take_fault() == "expired"
    assert store.fault() == Fault("expired", 1)
    assert store.take_fault() == "expired"
    assert store.fault() is None and store.take_fault() is None
    store.set_fault(Fault("busy", None))
    assert [store.take_fault() for _ in range(5)] == ["busy"] * 5
    store.set_fault(Fault("already_used", 3))  # replaces the one before
    assert store.fault() == Fault("already_used", 3)
    store.set_fault(None)
    assert store.fault() is None and store.take_fault() is None


# -- both backends alike ---------------------------------------------------------------------------


def plain(subscription: Subscription | None) -> tuple[Any, ...]:
    """A subscription without its id (PostgreSQL's identities skip refused inserts)."""
    assert subscription is not None
    return (
        subscription.offer,
        subscription.licences,
        subscription.used,
        subscription.billing,
        subscription.source,
        subscription.last5,
        subscription.created,
    )


def session(store: SqlStore) -> list[Any]:
    """A scripted session of every kind of call; what each answered, without ids."""
    keys = [mint(KeyType.SUBSCRIPTION, BASIC, serial=900_000 + n, quantity=4) for n in range(3)]
    out: list[Any] = []

    def record(call: Callable[[], Any]) -> None:
        try:
            value = call()
        except ServiceError as exc:
            value = (exc.code, exc.message, sorted(exc.extra.items()))
        out.append(repr(value))

    contoso = new_org(store)
    record(lambda: new_org(store, "CONTOSO"))
    for name in ("ann", "bob", "cat"):
        record(partial(lambda name: new_user(store, contoso, name).name, name))
    record(lambda: [(s.offer, s.licences, s.last5) for s in [redeem(store, contoso, keys[0])]])
    record(lambda: redeem(store, contoso, keys[0]))
    record(lambda: store.signup("Fabrikam", "US", "fay", token_hash(), keys[0], NAMES[BASIC], NOW))
    record(
        lambda: plain(
            store.signup("Fabrikam", "US", "fay", token_hash(), keys[1], NAMES[BASIC], NOW)[2]
        )
    )
    record(
        lambda: (
            store.signup(
                "Tailspin",
                "GB",
                "tim",
                token_hash(),
                keys[2],
                NAMES[BASIC],
                NOW,
                fail_after_account=True,
            )[0].name
        )
    )
    record(
        lambda: (
            store.buy(contoso.id, NAMES[BASIC], 2, "monthly", True, NOW).assigned,
            plain(store.buy(contoso.id, NAMES[BASIC], 1, "yearly", False, NOW).subscription),
        )
    )
    record(lambda: store.buy(contoso.id, NAMES[BASIC], 20, "monthly", True, NOW))
    record(lambda: store.assign(contoso.id, "cat", NAMES[BASIC], NOW)[1].licences)
    record(lambda: store.assign(contoso.id, "cat", NAMES[BASIC], NOW))
    record(lambda: store.unassign(contoso.id, "ann", NAMES[BASIC])[1].used)
    record(lambda: store.unassign(contoso.id, "ann", NAMES[BASIC]))
    record(lambda: usage(store, contoso))
    record(lambda: licences(store, contoso))
    record(lambda: [(o.name, o.country, o.users, o.subscriptions) for o in store.orgs()])
    return out


def test_both_backends_answer_a_session_alike(store: SqlStore, other_store: SqlStore) -> None:
    ours, theirs = session(store), session(other_store)
    assert ours == theirs
    assert "already_entered" in ours[5] and "already_used" in ours[6]
