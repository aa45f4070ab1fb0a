"""The licensing portal's HTTP API (docs/portal.md), against a real service
(``BackgroundMak``) on 127.0.0.1, in raw HTTP (``http.client``).

One test per row of behaviour.md's product-key redemption table, each checking the
status, the code, the table's exact wording and what is stored afterwards (organisations,
users, subscriptions, and whether the key can still be redeemed): nothing is ever
half-written. Then every redemption error forced through ``/v1/portal/fault``; buying,
auto-assign and licence assignment; who may call what; bad input; ``/openapi.json``.
Successful answers are checked against the route's documented response schema.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from kmsemu.clock import FakeClock
from kmsemu.errors import REDEMPTION_ERRORS, SERVICE_ERRORS
from kmsemu.keys.product_key import ALPHABET, KeyType, mint, normalise, setup_key
from kmsemu.testing.mak import BackgroundMak
from mak.api import ENDPOINTS
from mak.web.base import SMALL_BODY, Endpoint
from tests.httpraw import Reply, request

TIMEOUT = 10.0
BASIC, STANDARD, PREMIUM, E3 = (
    "m365-business-basic",
    "m365-business-standard",
    "m365-business-premium",
    "office-365-e3",
)
PRODUCTS = {BASIC: 12, STANDARD: 13, PREMIUM: 14, E3: 15}
#: basic: 25 in GB and US; standard: 300 in GB; premium: a trial of 25; e3: no offer.
OFFERS: dict[str, dict[str, Any]] = {
    BASIC: {"max_licences": 25, "countries": ["GB", "US"], "trial": False},
    STANDARD: {"max_licences": 300, "countries": ["GB"]},
    PREMIUM: {"max_licences": 25, "countries": ["GB", "US"], "trial": True},
}
_serials = itertools.count(secrets.randbits(30) << 10)
_names = itertools.count(1)

#: behaviour.md's wording, copied so that a drift of kmsemu/errors.py is caught.
MESSAGES = {
    "invalid_key": "The product key you entered isn't valid. Try entering it again.",
    "already_entered": "You have already entered this product key. Enter a different key.",
    "expired": "The product key you entered has expired. Enter a different key.",
    "already_used": "This product key has already been used. Please enter a different product key.",
    "busy": "Sorry, we can't process your request right now. Please wait a few minutes and "
    "try again.",
    "not_available": "The requested subscription is not available.",
    "too_many_licences": "You've added more user licenses than this offer allows. The "
    "maximum is {} user licenses.",
    "admin_required": "You must be a global or billing admin to redeem a product key.",
    "account_not_created": "Sorry, we can't create your account right now.",
    "order_not_processed": "Your order can't be processed.",
}
NOT_VALID = "This product key isn't valid. Please enter a different product key."
assert set(MESSAGES) == set(REDEMPTION_ERRORS)


# -- the service and raw HTTP ------------------------------------------------------------------


class Lab:
    """A portal on a ``BackgroundMak``: raw requests, and short-cuts to set things up."""

    def __init__(self, service: BackgroundMak) -> None:
        self.service = service
        self.token = service.admin_token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return request(self.service.address, method, path, body, token=token, headers=headers)

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        return self.call(method, path, body, token=self.token)

    def org(self, country: str = "GB", name: str | None = None) -> str:
        name = name or f"Org {next(_names)}"
        ok(
            self.admin("POST", "/v1/portal/orgs", {"name": name, "country": country}),
            "POST",
            "/v1/portal/orgs",
        )
        return name

    def user(self, org: str, name: str, role: str = "user") -> str:
        """A new user's token."""
        reply = ok(
            self.admin("POST", org_path(org, "users"), {"name": name, "role": role}),
            "POST",
            "/v1/portal/orgs/{org}/users",
        )
        assert (reply["user"], reply["role"]) == (name, role)
        return str(reply["token"])

    def redeem(self, org: str, key: Any, token: str | None = None) -> Reply:
        return self.call("POST", org_path(org, "redeem"), {"key": key}, token=token or self.token)

    def buy(
        self,
        org: str,
        offer: str,
        licences: int,
        billing: str = "monthly",
        auto_assign: bool = False,
        token: str | None = None,
    ) -> Reply:
        return self.call(
            "POST",
            org_path(org, "subscriptions"),
            {"offer": offer, "licences": licences, "billing": billing, "auto_assign": auto_assign},
            token=token or self.token,
        )

    def assign(self, org: str, user: str, offer: str, token: str | None = None) -> Reply:
        return self.call(
            "POST",
            org_path(org, "users", user, "licences"),
            {"offer": offer},
            token=token or self.token,
        )

    def unassign(self, org: str, user: str, offer: str, token: str | None = None) -> Reply:
        return self.call(
            "DELETE", org_path(org, "users", user, "licences", offer), token=token or self.token
        )

    def subscriptions(self, org: str) -> dict[str, Any]:
        return dict(
            ok(
                self.admin("GET", org_path(org, "subscriptions")),
                "GET",
                "/v1/portal/orgs/{org}/subscriptions",
            )
        )

    def users(self, org: str) -> dict[str, tuple[str, ...]]:
        listed = ok(
            self.admin("GET", org_path(org, "users")), "GET", "/v1/portal/orgs/{org}/users"
        )["users"]
        return {u["user"]: (u["role"], *u["licences"]) for u in listed}

    def orgs(self) -> list[dict[str, Any]]:
        return list(ok(self.admin("GET", "/v1/portal/orgs"), "GET", "/v1/portal/orgs")["orgs"])

    def state(self, *orgs: str) -> dict[str, Any]:
        """What is stored: every organisation, and these ones' users and subscriptions."""
        return {
            "orgs": self.orgs(),
            **{org: (self.users(org), self.subscriptions(org)) for org in orgs},
        }

    def fault(self) -> Any:
        return ok(self.admin("GET", "/v1/portal/fault"), "GET", "/v1/portal/fault")["fault"]

    def set_fault(self, code: str, times: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"code": code, **({} if times is None else {"times": times})}
        return dict(ok(self.admin("PUT", "/v1/portal/fault", body), "PUT", "/v1/portal/fault"))


def org_path(org: str, *rest: str) -> str:
    return "/".join(["/v1/portal/orgs", *(quote(part, safe="") for part in (org, *rest))])


def key(
    offer: str = BASIC,
    quantity: int = 5,
    key_type: KeyType = KeyType.SUBSCRIPTION,
    product: int | None = None,
) -> str:
    """A fresh key (a subscription key of ``offer`` unless told otherwise)."""
    number = PRODUCTS[offer] if product is None else product
    return str(
        mint(
            key_type,
            number,
            serial=next(_serials),
            quantity=quantity if key_type is KeyType.SUBSCRIPTION else 0,
        )
    )


def endpoint(method: str, template: str) -> Endpoint:
    [found] = [e for e in ENDPOINTS if (e.method, e.path) == (method, template)]
    return found


def ok(reply: Reply, method: str, template: str) -> Any:
    """A success: the route's documented status and response schema; the body."""
    route = endpoint(method, template)
    assert reply.status == route.status, (reply.status, reply.body)
    assert reply.headers.get_content_type() == "application/json"
    OAS31Validator(route.response).validate(reply.body)
    return reply.body


def refused(
    reply: Reply, code: str, *, status: int | None = None, message: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` with ``code``, its registry status and hint, and ``message``
    exactly (the table's wording for redemption errors); the error object."""
    assert reply.headers.get_content_type() == "application/json", reply.raw
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply.body
    error: dict[str, Any] = reply.body["error"]
    assert error["code"] == code, error
    info = SERVICE_ERRORS[code]
    assert reply.status == (status or info.status), (reply.status, error)
    assert error["hint"] == info.hint
    if message is None and code in MESSAGES and code != "too_many_licences":
        message = MESSAGES[code]
    if message is not None:
        assert error["message"] == message, error
    else:
        assert error["message"].startswith(info.message.format_map(error)), error
    return error


def fix(text: str, position: int, typed: str) -> str:
    """The key with what was ``typed`` at ``position`` (1-based, dashes not counted)."""
    symbols = normalise(text)
    return symbols[: position - 1] + typed + symbols[position:]


# -- fixtures -----------------------------------------------------------------------------------


def define_offers(lab: Lab) -> None:
    for offer, rules in OFFERS.items():
        reply = lab.admin("PUT", f"/v1/portal/offers/{offer}", rules)
        assert reply.status in (200, 201), reply.body


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One service for the module: tests make their own organisations and keys. The rate
    limit is high enough never to answer 'busy' (its own test has its own service)."""
    with BackgroundMak(clock=FakeClock(), redeem_rate=1000) as service:
        portal = Lab(service)
        define_offers(portal)
        yield portal


@pytest.fixture
def faults(lab: Lab) -> Iterator[Lab]:
    """The module's service, its forced fault cleared afterwards whatever happens."""
    try:
        yield lab
    finally:
        lab.admin("DELETE", "/v1/portal/fault")


# -- the redemption table, row by row -----------------------------------------------------------


@pytest.mark.parametrize("typed", ["0", "O", "o", "5", "S", "1", "l", "I"])
def test_invalid_key_mistyped_character_gets_problems_and_candidates(lab: Lab, typed: str) -> None:
    org = lab.org()
    good = key(quantity=3)
    before = lab.state(org)
    error = refused(lab.redeem(org, fix(good, 13, typed)), "invalid_key")
    assert error["problems"][0] == {
        "code": "invalid_character",
        "position": 13,
        "character": typed.upper(),
        "message": error["problems"][0]["message"],
    }
    assert good in error["candidates"] and len(error["candidates"]) <= 5
    assert lab.state(org) == before
    ok(lab.redeem(org, good), "POST", "/v1/portal/orgs/{org}/redeem")


def test_invalid_key_check_digit_and_length(lab: Lab) -> None:
    org = lab.org()
    good = key(quantity=3)
    symbols = normalise(good)
    neighbour = ALPHABET[(ALPHABET.index(symbols[12]) + 1) % len(ALPHABET)]
    before = lab.state(org)
    error = refused(lab.redeem(org, fix(good, 13, neighbour)), "invalid_key")
    assert [p["code"] for p in error["problems"]] == ["check_failed"]
    assert good in error["candidates"]
    short = refused(lab.redeem(org, good[:-1]), "invalid_key")
    assert ([p["code"] for p in short["problems"]], short["candidates"]) == (["wrong_length"], [])
    # the docs' example of a key that is not valid
    example = refused(lab.redeem(org, "BCDFG-HJKMP-QRTVW-XY234-6789B"), "invalid_key")
    assert example["problems"]
    assert lab.state(org) == before
    assert lab.redeem(org, good.lower().replace("-", " ")).status == 201  # keys.md: normalised


@pytest.mark.parametrize(
    "kind",
    [
        "mak",
        "kms-client setup key",
        "retail",
        "kms-host",
        "windows-11-pro subscription",
        "product 999",
        "no licences",
    ],
)
def test_invalid_key_well_formed_but_not_a_subscription_key(lab: Lab, kind: str) -> None:
    org = lab.org()
    text = {
        "mak": key(key_type=KeyType.MAK, product=0),
        "kms-client setup key": str(setup_key(0)),
        "retail": key(key_type=KeyType.RETAIL, product=12),
        "kms-host": key(key_type=KeyType.KMS_HOST, product=0),
        "windows-11-pro subscription": key(product=0),
        "product 999": key(product=999),
        "no licences": key(quantity=0),
    }[kind]
    before = lab.state(org)
    error = refused(lab.redeem(org, text), "invalid_key", message=NOT_VALID)
    assert "problems" not in error and "candidates" not in error
    assert lab.state(org) == before
    # nor does it become redeemable anywhere else
    refused(lab.redeem(lab.org(), text), "invalid_key", message=NOT_VALID)


def test_already_entered(lab: Lab) -> None:
    org, other = lab.org(), lab.org()
    text = key(quantity=4)
    first = ok(lab.redeem(org, text), "POST", "/v1/portal/orgs/{org}/redeem")
    assert (
        first["org"],
        first["offer"],
        first["licences"],
        first["used"],
        first["free"],
        first["billing"],
        first["source"],
        first["last5"],
    ) == (org, BASIC, 4, 0, 4, None, "key", normalise(text)[-5:])
    before = lab.state(org, other)
    refused(lab.redeem(org, text), "already_entered")
    refused(lab.redeem(org.upper(), text.lower()), "already_entered")
    assert lab.state(org, other) == before
    assert [s["id"] for s in before[org][1]["subscriptions"]] == [first["id"]]
    refused(lab.redeem(other, text), "already_used")


def test_expired_through_keys_expire(lab: Lab) -> None:
    org, other = lab.org(), lab.org()
    text = key(quantity=2)
    reply = lab.admin("POST", "/v1/portal/keys/expire", {"key": text})
    expired = ok(reply, "POST", "/v1/portal/keys/expire")
    assert expired["last5"] == normalise(text)[-5:]
    assert expired["expires"] == "2023-11-14T22:13:20+00:00"  # the service's clock: now
    before = lab.state(org, other)
    refused(lab.redeem(org, text), "expired")
    refused(lab.redeem(other, text), "expired")  # expired for everybody
    assert lab.state(org, other) == before
    # a later expiry lets it be redeemed again
    assert (
        lab.admin(
            "POST", "/v1/portal/keys/expire", {"key": text, "at": "2099-01-01T00:00:00Z"}
        ).status
        == 200
    )
    ok(lab.redeem(org, text), "POST", "/v1/portal/orgs/{org}/redeem")


def test_an_expiry_in_the_future_is_met_as_the_clock_moves() -> None:
    clock = FakeClock()
    with BackgroundMak(clock=clock) as service:
        lab = Lab(service)
        define_offers(lab)
        org = lab.org()
        soon, later = key(quantity=1), key(quantity=1)
        for text in (soon, later):
            lab.admin(
                "POST", "/v1/portal/keys/expire", {"key": text, "at": "2023-11-15T00:00:00+00:00"}
            )
        ok(lab.redeem(org, soon), "POST", "/v1/portal/orgs/{org}/redeem")
        clock.advance(24 * 3600)
        before = lab.state(org)
        refused(lab.redeem(org, later), "expired")
        refused(lab.redeem(org, soon), "already_entered")  # redeemed before it expired
        assert lab.state(org) == before


def test_already_used(lab: Lab) -> None:
    first, second = lab.org(), lab.org("US")
    text = key(quantity=3)
    ok(lab.redeem(first, text), "POST", "/v1/portal/orgs/{org}/redeem")
    before = lab.state(first, second)
    refused(lab.redeem(second, text), "already_used")
    assert lab.state(first, second) == before
    assert lab.subscriptions(second)["subscriptions"] == []
    assert [s["licences"] for s in lab.subscriptions(first)["subscriptions"]] == [3]
    refused(lab.redeem(lab.org(), text), "already_used")  # and for anybody else


def test_busy_through_the_rate_limit() -> None:
    with BackgroundMak(clock=FakeClock(), redeem_rate=2) as service:
        lab = Lab(service)
        define_offers(lab)
        org, other = lab.org(), lab.org()
        refused(lab.redeem(org, "not a key"), "invalid_key")  # a refused attempt counts
        ok(lab.redeem(org, key(quantity=1)), "POST", "/v1/portal/orgs/{org}/redeem")
        third = key(quantity=1)
        before = lab.state(org, other)
        for _ in range(2):  # refused attempts do not push the wait further
            reply = lab.redeem(org, third)
            error = refused(reply, "busy", status=429)
            retry_after = reply.headers["Retry-After"]
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
            assert error["retry_after"] == int(retry_after)
        assert lab.state(org, other) == before
        # another organisation has its own allowance, and the key was not redeemed
        ok(lab.redeem(other, third), "POST", "/v1/portal/orgs/{org}/redeem")
        # sign-up has its own allowance too, per organisation name
        for n in range(2):
            assert (
                lab.call(
                    "POST",
                    "/v1/portal/signup",
                    {"key": "nope", "org": "Signup Co", "country": "GB", "user": f"u{n}"},
                ).status
                == 400
            )
        reply = lab.call(
            "POST",
            "/v1/portal/signup",
            {"key": key(quantity=1), "org": "signup co", "country": "GB", "user": "u"},
        )
        refused(reply, "busy", status=429)
        assert "Signup Co" not in [o["org"] for o in lab.orgs()]


def test_busy_forced_is_maintenance(faults: Lab) -> None:
    lab = faults
    org = lab.org()
    text = key(quantity=2)
    lab.set_fault("busy")
    before = lab.state(org)
    reply = lab.redeem(org, text)
    error = refused(reply, "busy", status=503)
    assert reply.headers["Retry-After"] == "60" and error["retry_after"] == 60
    assert lab.state(org) == before
    assert lab.admin("DELETE", "/v1/portal/fault").body == {"fault": None}
    ok(lab.redeem(org, text), "POST", "/v1/portal/orgs/{org}/redeem")


@pytest.mark.parametrize("reason", ["offer_not_available", "not_in_country", "trial_used"])
def test_not_available(lab: Lab, reason: str) -> None:
    org = lab.org("FR" if reason == "not_in_country" else "GB")
    if reason == "trial_used":
        ok(lab.redeem(org, key(PREMIUM, 1)), "POST", "/v1/portal/orgs/{org}/redeem")
    text = key(
        E3 if reason == "offer_not_available" else PREMIUM if reason == "trial_used" else BASIC, 1
    )
    before = lab.state(org)
    error = refused(lab.redeem(org, text), "not_available")
    assert error["reason"] == reason
    assert lab.state(org) == before
    # the key itself is still good for an organisation the rules allow
    if reason != "offer_not_available":
        ok(lab.redeem(lab.org("US"), text), "POST", "/v1/portal/orgs/{org}/redeem")


def test_too_many_licences(lab: Lab) -> None:
    org = lab.org()
    over = key(quantity=26)
    before = lab.state(org)
    error = refused(
        lab.redeem(org, over), "too_many_licences", message=MESSAGES["too_many_licences"].format(25)
    )
    assert error["maximum"] == 25
    assert lab.state(org) == before
    ok(lab.redeem(org, key(quantity=20)), "POST", "/v1/portal/orgs/{org}/redeem")
    before = lab.state(org)
    error = refused(
        lab.redeem(org, key(quantity=6)),
        "too_many_licences",
        message=MESSAGES["too_many_licences"].format(25),
    )
    assert (error["maximum"], error["requested"]) == (25, 26)
    assert lab.state(org) == before
    ok(lab.redeem(org, key(quantity=5)), "POST", "/v1/portal/orgs/{org}/redeem")  # exactly 25
    assert lab.subscriptions(org)["offers"] == [
        {"offer": BASIC, "licences": 25, "used": 0, "free": 25}
    ]


def test_admin_required(lab: Lab) -> None:
    org = lab.org()
    user = lab.user(org, "ursula", "user")
    text = key(quantity=2)
    before = lab.state(org)
    error = refused(lab.redeem(org, text, user), "admin_required")
    assert error["role"] == "user"
    # the role is looked at before the key
    refused(lab.redeem(org, "not a key", user), "admin_required")
    refused(lab.redeem(org, key(key_type=KeyType.MAK, product=0), user), "admin_required")
    assert lab.state(org) == before
    billing = lab.user(org, "bill", "billing-admin")
    ok(lab.redeem(org, text, billing), "POST", "/v1/portal/orgs/{org}/redeem")


@pytest.mark.parametrize("code", ["account_not_created", "order_not_processed"])
def test_signup_failing_after_the_account(faults: Lab, code: str) -> None:
    lab = faults
    name = f"Signup {next(_names)}"
    text = key(quantity=3)
    assert lab.set_fault(code, 1) == {"fault": {"code": code, "remaining": 1}}
    reply = lab.call(
        "POST", "/v1/portal/signup", {"key": text, "org": name, "country": "gb", "user": "Ada"}
    )
    error = refused(reply, code)
    assert (error["org"], error["user"], error["role"]) == (name, "Ada", "global-admin")
    assert lab.fault() is None  # it was forced once
    # the organisation and its admin exist; the key was not redeemed
    [listed] = [o for o in lab.orgs() if o["org"] == name]
    assert (listed["country"], listed["users"], listed["subscriptions"]) == ("GB", 1, 0)
    assert lab.users(name) == {"Ada": ("global-admin",)}
    assert lab.subscriptions(name)["subscriptions"] == []
    # the admin's token works: redeeming again into the organisation succeeds
    redeemed = ok(lab.redeem(name, text, error["token"]), "POST", "/v1/portal/orgs/{org}/redeem")
    assert (redeemed["org"], redeemed["licences"]) == (name, 3)
    # and signing up again is refused: the organisation exists
    again = lab.call(
        "POST",
        "/v1/portal/signup",
        {"key": key(), "org": name.lower(), "country": "GB", "user": "Ada"},
    )
    refused(again, "org_exists")


@pytest.mark.parametrize("code", ["account_not_created", "order_not_processed"])
def test_partial_failure_codes_on_a_plain_redemption_store_nothing(faults: Lab, code: str) -> None:
    lab = faults
    org = lab.org()
    text = key(quantity=3)
    lab.set_fault(code)
    before = lab.state(org)
    error = refused(lab.redeem(org, text), code)
    assert "token" not in error
    assert lab.state(org) == before
    lab.admin("DELETE", "/v1/portal/fault")
    ok(lab.redeem(org, text), "POST", "/v1/portal/orgs/{org}/redeem")


# -- sign-up ----------------------------------------------------------------------------------


def test_signup_creates_org_admin_and_subscription(lab: Lab) -> None:
    name = f"Northwind {next(_names)}"
    text = key(STANDARD, 10)
    reply = lab.call(
        "POST",
        "/v1/portal/signup",
        {"key": text, "org": f"  {name} ", "country": "gb", "user": "Nina"},
    )
    answer = ok(reply, "POST", "/v1/portal/signup")
    assert (answer["org"], answer["user"], answer["role"]) == (name, "Nina", "global-admin")
    assert answer["token"].startswith("kpt_")
    assert (answer["subscription"]["offer"], answer["subscription"]["licences"]) == (STANDARD, 10)
    token = answer["token"]
    listed = ok(
        lab.call("GET", org_path(name, "subscriptions"), token=token),
        "GET",
        "/v1/portal/orgs/{org}/subscriptions",
    )
    assert listed["country"] == "GB" and len(listed["subscriptions"]) == 1
    lab.user(name, "ned")  # the admin token adds users to any organisation
    added = lab.call("POST", org_path(name, "users"), {"name": "olga", "role": "user"}, token=token)
    ok(added, "POST", "/v1/portal/orgs/{org}/users")
    assert set(lab.users(name)) == {"Nina", "ned", "olga"}


@pytest.mark.parametrize(
    "case", ["already_used", "invalid_key", "not_in_country", "too_many_licences", "org_exists"]
)
def test_a_refused_signup_creates_nothing(lab: Lab, case: str) -> None:
    used = key(quantity=1)
    existing = lab.org()
    ok(lab.redeem(existing, used), "POST", "/v1/portal/orgs/{org}/redeem")
    text = {
        "already_used": used,
        "invalid_key": fix(key(), 13, "0"),
        "not_in_country": key(STANDARD, 1),
        "too_many_licences": key(quantity=26),
        "org_exists": key(quantity=1),
    }[case]
    name = existing.upper() if case == "org_exists" else f"Nobody {next(_names)}"
    before = lab.state(existing)
    reply = lab.call(
        "POST", "/v1/portal/signup", {"key": text, "org": name, "country": "US", "user": "Ada"}
    )
    error = reply.body["error"]
    refused(reply, error["code"])
    assert case in (error["code"], error.get("reason"))
    assert lab.state(existing) == before


# -- every redemption error, forced ---------------------------------------------------------------


@pytest.mark.parametrize("code", REDEMPTION_ERRORS)
def test_every_redemption_error_can_be_forced(faults: Lab, code: str) -> None:
    lab = faults
    org = lab.org()
    text = key(quantity=2)
    status = 503 if code == "busy" else None

    def forced() -> None:
        before = lab.state(org)
        reply = lab.redeem(org, text)
        error = refused(reply, code, status=status)
        if code == "busy":
            assert reply.headers["Retry-After"] == "60" and error["retry_after"] == 60
        if code == "too_many_licences":  # the maximum of the key's offer
            assert (error["message"], error["maximum"]) == (MESSAGES[code].format(25), 25)
        if code == "not_available":
            assert error["reason"] in ("offer_not_available", "not_in_country", "trial_used")
        assert lab.state(org) == before

    assert lab.set_fault(code, 2) == {"fault": {"code": code, "remaining": 2}}
    assert lab.fault() == {"code": code, "remaining": 2}
    forced()
    assert lab.fault() == {"code": code, "remaining": 1}
    forced()
    assert lab.fault() is None
    # until cleared
    assert lab.set_fault(code) == {"fault": {"code": code, "remaining": None}}
    forced()
    forced()
    assert lab.fault() == {"code": code, "remaining": None}
    cleared = lab.admin("DELETE", "/v1/portal/fault")
    assert ok(cleared, "DELETE", "/v1/portal/fault") == {"fault": None}
    assert lab.fault() is None
    ok(lab.redeem(org, text), "POST", "/v1/portal/orgs/{org}/redeem")


def test_a_forced_error_comes_after_authentication_and_the_org(faults: Lab) -> None:
    lab = faults
    org, other = lab.org(), lab.org()
    stranger = lab.user(other, "sam", "global-admin")
    lab.set_fault("expired", 1)
    refused(lab.call("POST", org_path(org, "redeem"), {"key": key()}), "login_required")
    refused(lab.redeem(org, key(), "kpt_nobody"), "token_unknown")
    refused(lab.redeem(org, key(), stranger), "wrong_org")
    refused(lab.redeem("No Such Org", key()), "unknown_org")
    assert lab.fault() == {"code": "expired", "remaining": 1}  # none of those took it
    refused(lab.redeem(org, key()), "expired")
    assert lab.fault() is None


def test_a_forced_error_on_signup_creates_nothing(faults: Lab) -> None:
    lab = faults
    lab.set_fault("already_used", 1)
    name = f"Forced {next(_names)}"
    body = {"key": key(), "org": name, "country": "GB", "user": "Ada"}
    before = lab.orgs()
    refused(lab.call("POST", "/v1/portal/signup", body), "already_used")
    assert lab.orgs() == before
    ok(lab.call("POST", "/v1/portal/signup", body), "POST", "/v1/portal/signup")


def test_fault_values_are_checked(faults: Lab) -> None:
    lab = faults
    for body, field in [
        ({"code": "internal"}, "code"),
        ({}, "code"),
        ({"code": "busy", "times": 0}, "times"),
        ({"code": "busy", "times": -3}, "times"),
        ({"code": "busy", "times": "2"}, "times"),
        ({"code": "busy", "times": True}, "times"),
        ({"code": "busy", "times": 1.5}, "times"),
    ]:
        error = refused(lab.admin("PUT", "/v1/portal/fault", body), "invalid_field")
        assert error["field"] == field, body
    assert lab.fault() is None


# -- buying and assigning ------------------------------------------------------------------------


@pytest.mark.parametrize("billing", ["monthly", "yearly"])
def test_buy_a_subscription(lab: Lab, billing: str) -> None:
    org = lab.org()
    ok(lab.redeem(org, key(quantity=3)), "POST", "/v1/portal/orgs/{org}/redeem")
    bought = ok(lab.buy(org, BASIC, 4, billing), "POST", "/v1/portal/orgs/{org}/subscriptions")
    assert (
        bought["org"],
        bought["offer"],
        bought["licences"],
        bought["used"],
        bought["free"],
        bought["billing"],
        bought["source"],
        bought["last5"],
        bought["assigned"],
    ) == (org, BASIC, 4, 0, 4, billing, "purchase", None, [])
    listed = lab.subscriptions(org)
    assert [(s["source"], s["licences"]) for s in listed["subscriptions"]] == [
        ("key", 3),
        ("purchase", 4),
    ]
    assert listed["offers"] == [{"offer": BASIC, "licences": 7, "used": 0, "free": 7}]


@pytest.mark.parametrize(
    "case",
    ["not_in_country", "trial_used", "too_many_licences", "offer_not_available", "unknown_offer"],
)
def test_buying_obeys_the_offer(lab: Lab, case: str) -> None:
    org = lab.org("FR" if case == "not_in_country" else "GB")
    lab.user(org, "ann")  # auto-assign would give her a licence
    if case == "trial_used":
        ok(lab.buy(org, PREMIUM, 1), "POST", "/v1/portal/orgs/{org}/subscriptions")
    offer, licences = {
        "not_in_country": (BASIC, 1),
        "trial_used": (PREMIUM, 1),
        "too_many_licences": (BASIC, 26),
        "offer_not_available": (E3, 1),
        "unknown_offer": ("windows-11-pro", 1),
    }[case]
    before = lab.state(org)
    reply = lab.buy(org, offer, licences, "yearly", auto_assign=True)
    if case == "too_many_licences":
        error = refused(reply, case, message=MESSAGES[case].format(25))
        assert error["maximum"] == 25
    elif case == "unknown_offer":
        refused(reply, case)
    else:
        assert refused(reply, "not_available")["reason"] == case
    assert lab.state(org) == before


def test_billing_is_monthly_or_yearly(lab: Lab) -> None:
    org = lab.org()
    before = lab.state(org)
    for billing in ("weekly", "Monthly", "", None, 12, ["monthly"]):
        reply = lab.call(
            "POST",
            org_path(org, "subscriptions"),
            {"offer": BASIC, "licences": 1, "billing": billing},
            token=lab.token,
        )
        assert refused(reply, "invalid_field")["field"] == "billing"
    reply = lab.call(
        "POST", org_path(org, "subscriptions"), {"offer": BASIC, "licences": 1}, token=lab.token
    )
    assert refused(reply, "invalid_field")["field"] == "billing"
    assert lab.state(org) == before


def test_auto_assign_gives_licences_to_users_without_any_oldest_first(lab: Lab) -> None:
    org = lab.org()
    for name in ("u1", "u2", "u3", "u4", "u5"):
        lab.user(org, name)
    ok(lab.buy(org, STANDARD, 1), "POST", "/v1/portal/orgs/{org}/subscriptions")
    ok(lab.assign(org, "u2", STANDARD), "POST", "/v1/portal/orgs/{org}/users/{user}/licences")
    first = ok(
        lab.buy(org, BASIC, 2, auto_assign=True), "POST", "/v1/portal/orgs/{org}/subscriptions"
    )
    assert (first["assigned"], first["used"], first["free"]) == (["u1", "u3"], 2, 0)
    second = ok(
        lab.buy(org, BASIC, 5, "yearly", auto_assign=True),
        "POST",
        "/v1/portal/orgs/{org}/subscriptions",
    )
    assert (second["assigned"], second["used"], second["free"]) == (["u4", "u5"], 2, 3)
    third = ok(
        lab.buy(org, PREMIUM, 3, auto_assign=True), "POST", "/v1/portal/orgs/{org}/subscriptions"
    )
    assert third["assigned"] == []  # everybody has a licence of something
    assert lab.users(org) == {
        "u1": ("user", BASIC),
        "u2": ("user", STANDARD),
        "u3": ("user", BASIC),
        "u4": ("user", BASIC),
        "u5": ("user", BASIC),
    }
    listed = lab.subscriptions(org)
    assert [(s["offer"], s["licences"], s["used"], s["free"]) for s in listed["subscriptions"]] == [
        (STANDARD, 1, 1, 0),
        (BASIC, 2, 2, 0),
        (BASIC, 5, 2, 3),
        (PREMIUM, 3, 0, 3),
    ]
    assert listed["offers"] == [
        {"offer": STANDARD, "licences": 1, "used": 1, "free": 0},
        {"offer": BASIC, "licences": 7, "used": 4, "free": 3},
        {"offer": PREMIUM, "licences": 3, "used": 0, "free": 3},
    ]


def test_assign_takes_the_oldest_subscription_with_a_free_licence(lab: Lab) -> None:
    org = lab.org()
    for name in ("ann", "bob", "cat", "dan"):
        lab.user(org, name)
    first = ok(lab.redeem(org, key(quantity=1)), "POST", "/v1/portal/orgs/{org}/redeem")
    second = ok(lab.buy(org, BASIC, 2), "POST", "/v1/portal/orgs/{org}/subscriptions")
    route = ("POST", "/v1/portal/orgs/{org}/users/{user}/licences")
    took = ok(lab.assign(org, "ANN", BASIC), *route)
    assert (took["org"], took["user"], took["offer"]) == (org, "ann", BASIC)
    assert (
        took["subscription"]["id"],
        took["subscription"]["used"],
        took["subscription"]["free"],
    ) == (first["id"], 1, 0)
    assert ok(lab.assign(org, "bob", BASIC), *route)["subscription"]["id"] == second["id"]
    gave = ok(
        lab.unassign(org, "ann", BASIC),
        "DELETE",
        "/v1/portal/orgs/{org}/users/{user}/licences/{offer}",
    )
    assert (gave["user"], gave["subscription"]["id"], gave["subscription"]["free"]) == (
        "ann",
        first["id"],
        1,
    )
    assert ok(lab.assign(org, "cat", BASIC), *route)["subscription"]["id"] == first["id"]
    assert ok(lab.assign(org, "ann", BASIC), *route)["subscription"]["id"] == second["id"]
    before = lab.state(org)
    error = refused(
        lab.assign(org, "dan", BASIC),
        "no_free_licences",
        message=f"There are no free licences for {BASIC}: all 3 are assigned.",
    )
    assert (error["offer"], error["licences"]) == (BASIC, 3)
    refused(lab.assign(org, "ann", BASIC), "already_assigned")
    refused(lab.unassign(org, "dan", BASIC), "not_assigned")
    refused(lab.assign(org, "nobody", BASIC), "unknown_user")
    refused(lab.unassign(org, "nobody", BASIC), "unknown_user")
    refused(lab.assign(org, "dan", "windows-11-pro"), "unknown_offer")
    refused(lab.unassign(org, "ann", "windows-11-pro"), "unknown_offer")
    assert lab.state(org) == before
    assert lab.subscriptions(org)["offers"] == [
        {"offer": BASIC, "licences": 3, "used": 3, "free": 0}
    ]
    assert lab.users(org) == {
        "ann": ("user", BASIC),
        "bob": ("user", BASIC),
        "cat": ("user", BASIC),
        "dan": ("user",),
    }


def test_no_free_licences_without_any_subscription(lab: Lab) -> None:
    org = lab.org()
    lab.user(org, "ann")
    error = refused(
        lab.assign(org, "ann", STANDARD),
        "no_free_licences",
        message=f"The organisation has no {STANDARD} subscription.",
    )
    assert (error["offer"], error["licences"]) == (STANDARD, 0)


# -- who may call what -----------------------------------------------------------------------------

CALLER_ROUTES = [e for e in ENDPOINTS if e.caller]
ADMIN_ROUTES = [e for e in ENDPOINTS if e.admin and e.path.startswith("/v1/portal/")]


def endpoint_id(route: Endpoint) -> str:
    return f"{route.method} {route.path}"


def concrete(route: Endpoint, org: str, user: str = "ann") -> str:
    return (
        route.path.replace("{org}", quote(org, safe=""))
        .replace("{user}", user)
        .replace("{offer}", BASIC)
    )


@pytest.mark.parametrize("route", CALLER_ROUTES, ids=endpoint_id)
def test_caller_routes_need_a_known_token_of_the_org(lab: Lab, route: Endpoint) -> None:
    org, other = lab.org(), lab.org()
    lab.user(org, "ann")
    outsider = lab.user(other, "olaf", "global-admin")
    path = concrete(route, org)
    body: dict[str, Any] | None = {} if route.method == "POST" else None
    for headers in (
        {},
        {"Authorization": "Basic " + lab.token},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer  "},
    ):
        reply = lab.call(route.method, path, body, headers=headers)
        refused(reply, "login_required")
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    unknown = lab.call(route.method, path, body, token="kpt_" + secrets.token_urlsafe(24))
    refused(unknown, "token_unknown")
    assert "WWW-Authenticate" not in unknown.headers
    refused(lab.call(route.method, path, body, token=outsider), "wrong_org")


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=endpoint_id)
def test_admin_routes_refuse_user_tokens(lab: Lab, route: Endpoint) -> None:
    org = lab.org()
    global_admin = lab.user(org, "gus", "global-admin")
    path = route.path.replace("{offer}", BASIC)
    body: dict[str, Any] | None = {} if route.method in ("POST", "PUT") else None
    missing = lab.call(route.method, path, body)
    refused(missing, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    refused(lab.call(route.method, path, body, token=global_admin), "forbidden")


def test_public_routes_need_no_token(lab: Lab) -> None:
    offers = ok(lab.call("GET", "/v1/portal/offers"), "GET", "/v1/portal/offers")["offers"]
    assert {o["offer"]: (o["max_licences"], o["countries"], o["trial"]) for o in offers} == {
        BASIC: (25, ["GB", "US"], False),
        STANDARD: (300, ["GB"], False),
        PREMIUM: (25, ["GB", "US"], True),
    }
    assert {o["offer"]: o["name"] for o in offers}[BASIC] == "Microsoft 365 Business Basic"
    assert lab.call("GET", "/v1/portal/offers", token="wrong").status == 200
    reply = lab.call(
        "POST",
        "/v1/portal/signup",
        {"key": key(), "org": f"Pub {next(_names)}", "country": "US", "user": "p"},
        token="not looked at",
    )
    ok(reply, "POST", "/v1/portal/signup")


def test_the_admin_token_is_a_global_admin_of_every_org(lab: Lab) -> None:
    org = lab.org()
    lab.user(org, "ann")
    ok(lab.redeem(org, key(quantity=2)), "POST", "/v1/portal/orgs/{org}/redeem")
    ok(lab.buy(org, BASIC, 1), "POST", "/v1/portal/orgs/{org}/subscriptions")
    ok(lab.assign(org, "ann", BASIC), "POST", "/v1/portal/orgs/{org}/users/{user}/licences")
    ok(
        lab.unassign(org, "ann", BASIC),
        "DELETE",
        "/v1/portal/orgs/{org}/users/{user}/licences/{offer}",
    )
    lab.user(org, "gail", "global-admin")


def test_a_global_admin_acts_in_its_own_org_only(lab: Lab) -> None:
    org, other = lab.org(), lab.org()
    admin = lab.user(org, "gus", "global-admin")
    reply = lab.call(
        "POST", org_path(org, "users"), {"name": "new", "role": "billing-admin"}, token=admin
    )
    ok(reply, "POST", "/v1/portal/orgs/{org}/users")
    ok(lab.redeem(org, key(quantity=2), admin), "POST", "/v1/portal/orgs/{org}/redeem")
    before = lab.state(other)
    refused(
        lab.call("POST", org_path(other, "users"), {"name": "x", "role": "user"}, token=admin),
        "wrong_org",
    )
    refused(lab.redeem(other, key(), admin), "wrong_org")
    refused(lab.buy(other, BASIC, 1, token=admin), "wrong_org")
    assert lab.state(other) == before


def test_a_billing_admin_redeems_buys_and_assigns_but_adds_no_users(lab: Lab) -> None:
    org = lab.org()
    lab.user(org, "ann")
    billing = lab.user(org, "bill", "billing-admin")
    ok(lab.redeem(org, key(quantity=2), billing), "POST", "/v1/portal/orgs/{org}/redeem")
    ok(lab.buy(org, BASIC, 1, token=billing), "POST", "/v1/portal/orgs/{org}/subscriptions")
    ok(
        lab.assign(org, "ann", BASIC, billing),
        "POST",
        "/v1/portal/orgs/{org}/users/{user}/licences",
    )
    ok(
        lab.unassign(org, "ann", BASIC, billing),
        "DELETE",
        "/v1/portal/orgs/{org}/users/{user}/licences/{offer}",
    )
    before = lab.state(org)
    reply = lab.call("POST", org_path(org, "users"), {"name": "x", "role": "user"}, token=billing)
    error = refused(reply, "admin_required", message="You must be a global admin to add users.")
    assert error["role"] == "billing-admin"
    assert lab.state(org) == before


def test_a_user_reads_but_changes_nothing(lab: Lab) -> None:
    org = lab.org()
    ok(lab.redeem(org, key(quantity=2)), "POST", "/v1/portal/orgs/{org}/redeem")
    token = lab.user(org, "ursula")
    listed = ok(
        lab.call("GET", org_path(org, "subscriptions"), token=token),
        "GET",
        "/v1/portal/orgs/{org}/subscriptions",
    )
    assert listed["offers"][0]["licences"] == 2
    users = ok(
        lab.call("GET", org_path(org, "users"), token=token), "GET", "/v1/portal/orgs/{org}/users"
    )
    assert [u["user"] for u in users["users"]] == ["ursula"]
    before = lab.state(org)
    for reply, action in [
        (lab.redeem(org, key(), token), "redeem a product key"),
        (lab.buy(org, BASIC, 1, token=token), "buy subscriptions"),
        (lab.assign(org, "ursula", BASIC, token), "assign licences"),
        (lab.unassign(org, "ursula", BASIC, token), "remove licences"),
    ]:
        refused(
            reply, "admin_required", message=f"You must be a global or billing admin to {action}."
        )
    refused(
        lab.call("POST", org_path(org, "users"), {"name": "x", "role": "user"}, token=token),
        "admin_required",
        message="You must be a global admin to add users.",
    )
    assert lab.state(org) == before


def test_tokens_are_stored_hashed_and_shown_once(lab: Lab) -> None:
    org = lab.org()
    token = lab.user(org, "ann")
    assert token.startswith("kpt_") and len(token) > 30
    assert token not in json.dumps(lab.state(org))
    assert lab.call("GET", org_path(org, "users"), token=f"  {token} ").status == 200


# -- bad input -------------------------------------------------------------------------------------


BAD_JSON = {
    "truncated": b'{"key": ',
    "not json": b"key=x",
    "list": b"[]",
    "string": b'"{}"',
    "null": b"null",
    "empty": b"",
    "non-utf-8": b'{"key": "\xff"}',
    "deep": b"[" * 10_000,
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_a_body_that_is_not_one_json_object_is_bad_json(lab: Lab, body: bytes) -> None:
    org = lab.org()
    lab.user(org, "ann")
    before = lab.state(org)
    for method, path in [
        ("PUT", f"/v1/portal/offers/{BASIC}"),
        ("POST", "/v1/portal/orgs"),
        ("POST", "/v1/portal/signup"),
        ("POST", org_path(org, "users")),
        ("POST", org_path(org, "redeem")),
        ("POST", org_path(org, "subscriptions")),
        ("POST", org_path(org, "users", "ann", "licences")),
        ("POST", "/v1/portal/keys/expire"),
        ("PUT", "/v1/portal/fault"),
    ]:
        refused(lab.admin(method, path, body), "bad_json")
    assert lab.state(org) == before


def wrong_types(lab: Lab, org: str) -> list[tuple[str, str, dict[str, Any], str, list[Any]]]:
    """(method, path, a valid body, the field made wrong, its wrong values)."""
    offer = {"max_licences": 25, "countries": ["GB", "US"], "trial": False}
    signup = {"key": key(), "org": f"Typed {next(_names)}", "country": "GB", "user": "ann"}
    buy = {"offer": BASIC, "licences": 1, "billing": "monthly", "auto_assign": False}
    nothing: list[Any] = [None, 5, True, [], {}]
    return [
        (
            "PUT",
            f"/v1/portal/offers/{BASIC}",
            offer,
            "max_licences",
            [None, "25", 25.5, True, 0, -1, 10**6 + 1, []],
        ),
        (
            "PUT",
            f"/v1/portal/offers/{BASIC}",
            offer,
            "countries",
            [None, "GB", [], ["GBR"], [5], [None], {"GB": 1}, ["G"] * 301],
        ),
        ("PUT", f"/v1/portal/offers/{BASIC}", offer, "trial", [None, "yes", 1, []]),
        ("POST", "/v1/portal/orgs", {"name": "Typed", "country": "GB"}, "name", nothing),
        (
            "POST",
            "/v1/portal/orgs",
            {"name": "Typed", "country": "GB"},
            "country",
            [*nothing, "GBR", "G", "1A", "", "G B"],
        ),
        ("POST", "/v1/portal/signup", signup, "org", nothing),
        ("POST", "/v1/portal/signup", signup, "country", [*nothing, "GBR"]),
        ("POST", "/v1/portal/signup", signup, "user", nothing),
        ("POST", "/v1/portal/signup", signup, "key", nothing),
        ("POST", org_path(org, "users"), {"name": "x", "role": "user"}, "name", nothing),
        (
            "POST",
            org_path(org, "users"),
            {"name": "x", "role": "user"},
            "role",
            [*nothing, "admin", "Global-Admin"],
        ),
        ("POST", org_path(org, "redeem"), {"key": key()}, "key", nothing),
        ("POST", org_path(org, "subscriptions"), buy, "offer", nothing),
        (
            "POST",
            org_path(org, "subscriptions"),
            buy,
            "licences",
            [None, "1", 1.5, True, 0, -1, 10**6 + 1, []],
        ),
        ("POST", org_path(org, "subscriptions"), buy, "billing", [*nothing, "weekly"]),
        ("POST", org_path(org, "subscriptions"), buy, "auto_assign", [None, "yes", 1, []]),
        ("POST", "/v1/portal/keys/expire", {"key": key()}, "key", nothing),
        (
            "POST",
            "/v1/portal/keys/expire",
            {"key": key()},
            "at",
            [5, True, [], "tomorrow", "2024-13-01"],
        ),
        ("PUT", "/v1/portal/fault", {"code": "busy"}, "code", [*nothing, "internal"]),
        ("PUT", "/v1/portal/fault", {"code": "busy"}, "times", ["2", True, 1.5, 0, []]),
    ]


def test_wrong_field_types_are_invalid_field_naming_the_field(faults: Lab) -> None:
    lab = faults
    org = lab.org()
    before = lab.state(org)
    offers = lab.call("GET", "/v1/portal/offers").body
    for method, path, body, field, values in wrong_types(lab, org):
        for value in values:
            reply = lab.admin(method, path, {**body, field: value})
            error = refused(reply, "invalid_field")
            assert error["field"] == field, (method, path, field, value, error)
    assert lab.state(org) == before
    assert lab.call("GET", "/v1/portal/offers").body == offers
    assert lab.fault() is None


@pytest.mark.parametrize("value", [None, 5, ["m365-business-basic"]], ids=repr)
def test_assign_with_a_wrong_offer_type_is_invalid_field(lab: Lab, value: Any) -> None:
    org = lab.org()
    lab.user(org, "ann")
    reply = lab.call(
        "POST", org_path(org, "users", "ann", "licences"), {"offer": value}, token=lab.token
    )
    assert refused(reply, "invalid_field")["field"] == "offer"


@pytest.mark.parametrize(
    "name",
    ["a/b", "/", "", "   ", "x" * 65, "a\x00b", "a\nb", "tab\there", "bell\x07", "del\x7f"],
    ids=repr,
)
def test_bad_org_and_user_names(lab: Lab, name: str) -> None:
    org = lab.org()
    before = lab.state(org)
    refused(lab.admin("POST", "/v1/portal/orgs", {"name": name, "country": "GB"}), "invalid_field")
    reply = lab.admin("POST", org_path(org, "users"), {"name": name, "role": "user"})
    assert refused(reply, "invalid_field")["field"] == "name"
    for field in ("org", "user"):
        body = {"key": key(), "org": "Fine", "country": "GB", "user": "fine", field: name}
        reply = lab.call("POST", "/v1/portal/signup", body)
        assert refused(reply, "invalid_field")["field"] == field
    assert lab.state(org) == before


def test_names_are_stripped_and_64_characters_is_enough(lab: Lab) -> None:
    long = "L" * 63 + f"{next(_names) % 10}"
    created = ok(
        lab.admin("POST", "/v1/portal/orgs", {"name": f"  {long}\t", "country": "us"}),
        "POST",
        "/v1/portal/orgs",
    )
    assert (created["org"], created["country"], created["users"], created["subscriptions"]) == (
        long,
        "US",
        0,
        0,
    )
    lab.user(long, "u" * 64)


def test_org_and_user_names_are_case_insensitive(lab: Lab) -> None:
    name = f"Contoso {next(_names)}"
    lab.org(name=name)
    before = lab.state(name)
    for taken in (name.lower(), name.upper(), f" {name} "):
        refused(
            lab.admin("POST", "/v1/portal/orgs", {"name": taken, "country": "US"}), "org_exists"
        )
        signup = {"key": key(), "org": taken, "country": "GB", "user": "x"}
        refused(lab.call("POST", "/v1/portal/signup", signup), "org_exists")
    assert lab.state(name) == before
    lab.user(name, "Ann")
    refused(
        lab.admin("POST", org_path(name.upper(), "users"), {"name": "aNN", "role": "user"}),
        "user_exists",
    )
    # any case reaches the organisation; answers name it as created
    listed = lab.admin("GET", org_path(name.lower(), "users"))
    assert ok(listed, "GET", "/v1/portal/orgs/{org}/users")["org"] == name


@pytest.mark.parametrize(
    "name",
    ["Café & Co.", "100% Lab #1?", "Zoë's Ünïcødé", "a+b=c;d,e", "日本語の組織", "dots.and~tilde"],
)
def test_percent_encoded_names_in_paths(lab: Lab, name: str) -> None:
    name = f"{name} {next(_names)}"
    lab.org(name=name)
    lab.user(name, name)  # the same name for a user, in its own path segment
    ok(lab.redeem(name, key(quantity=2)), "POST", "/v1/portal/orgs/{org}/redeem")
    took = ok(lab.assign(name, name, BASIC), "POST", "/v1/portal/orgs/{org}/users/{user}/licences")
    assert (took["org"], took["user"]) == (name, name)
    assert lab.users(name) == {name: ("user", BASIC)}
    ok(
        lab.unassign(name, name, BASIC),
        "DELETE",
        "/v1/portal/orgs/{org}/users/{user}/licences/{offer}",
    )
    assert lab.subscriptions(name)["org"] == name


def test_an_encoded_slash_or_unknown_name_is_not_found(lab: Lab) -> None:
    org = lab.org()
    refused(lab.admin("GET", "/v1/portal/orgs/a%2Fb/users"), "not_found")
    refused(lab.admin("GET", org_path("No Such Org", "users")), "unknown_org")
    refused(lab.admin("GET", org_path("No Such Org", "subscriptions")), "unknown_org")
    refused(lab.assign(org, "nobody", BASIC), "unknown_user")


def test_a_body_too_large_is_refused(lab: Lab) -> None:
    org = lab.org()
    before = lab.state(org)
    padded = json.dumps({"key": key(), "pad": " " * SMALL_BODY}).encode()
    for method, path in [
        ("POST", org_path(org, "redeem")),
        ("POST", "/v1/portal/signup"),
        ("POST", "/v1/portal/orgs"),
        ("PUT", f"/v1/portal/offers/{BASIC}"),
    ]:
        refused(lab.admin(method, path, padded), "body_too_large")
    refused(lab.redeem(org, "B" * (SMALL_BODY + 1)), "body_too_large")
    assert lab.state(org) == before
    refused(lab.redeem(org, "B" * 1000), "invalid_key")  # long, but within the limit


@pytest.mark.parametrize("product", ["windows-11-pro", "office-ltsc-2021-proplus", "nope"])
def test_offers_are_subscription_products_only(lab: Lab, product: str) -> None:
    offers = lab.call("GET", "/v1/portal/offers").body
    reply = lab.admin(
        "PUT", f"/v1/portal/offers/{product}", {"max_licences": 5, "countries": ["GB"]}
    )
    refused(reply, "unknown_offer")
    assert lab.call("GET", "/v1/portal/offers").body == offers


def test_an_offer_is_defined_then_redefined() -> None:
    """On a service of its own: the module's keeps office-365-e3 without an offer."""
    with BackgroundMak(clock=FakeClock()) as service:
        lab = Lab(service)
        assert lab.call("GET", "/v1/portal/offers").body == {"offers": []}
        created = lab.admin(
            "PUT",
            "/v1/portal/offers/Office%20365%20E3",  # its display name
            {"max_licences": 3, "countries": ["us", " gb "]},
        )
        assert created.status == 201
        OAS31Validator(endpoint("PUT", "/v1/portal/offers/{offer}").response).validate(created.body)
        assert created.body == {
            "offer": E3,
            "name": "Office 365 E3",
            "product": 15,
            "max_licences": 3,
            "countries": ["GB", "US"],
            "trial": False,
        }
        org = lab.org("US")
        refused(
            lab.redeem(org, key(E3, 4)),
            "too_many_licences",
            message=MESSAGES["too_many_licences"].format(3),
        )
        changed = lab.admin(
            "PUT",
            f"/v1/portal/offers/{E3.upper()}",
            {"max_licences": 4, "countries": ["US"], "trial": True},
        )
        assert changed.status == 200
        assert (changed.body["max_licences"], changed.body["countries"], changed.body["trial"]) == (
            4,
            ["US"],
            True,
        )
        ok(lab.redeem(org, key(E3, 4)), "POST", "/v1/portal/orgs/{org}/redeem")
        assert [o["offer"] for o in lab.call("GET", "/v1/portal/offers").body["offers"]] == [E3]


# -- the OpenAPI document ----------------------------------------------------------------------

#: docs/portal.md's table of routes, and who may call each.
PORTAL_ROUTES = {
    ("GET", "/v1/portal/offers"): "none",
    ("PUT", "/v1/portal/offers/{offer}"): "admin",
    ("GET", "/v1/portal/orgs"): "admin",
    ("POST", "/v1/portal/orgs"): "admin",
    ("POST", "/v1/portal/signup"): "none",
    ("GET", "/v1/portal/orgs/{org}/users"): "org",
    ("POST", "/v1/portal/orgs/{org}/users"): "org",
    ("POST", "/v1/portal/orgs/{org}/redeem"): "org",
    ("GET", "/v1/portal/orgs/{org}/subscriptions"): "org",
    ("POST", "/v1/portal/orgs/{org}/subscriptions"): "org",
    ("POST", "/v1/portal/orgs/{org}/users/{user}/licences"): "org",
    ("DELETE", "/v1/portal/orgs/{org}/users/{user}/licences/{offer}"): "org",
    ("POST", "/v1/portal/keys/expire"): "admin",
    ("GET", "/v1/portal/fault"): "admin",
    ("PUT", "/v1/portal/fault"): "admin",
    ("DELETE", "/v1/portal/fault"): "admin",
}


def test_openapi_lists_every_portal_route_with_its_method(lab: Lab) -> None:
    document = ok(lab.call("GET", "/openapi.json"), "GET", "/openapi.json")
    validate(document)
    listed = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if path.startswith("/v1/portal/")
    }
    assert listed == set(PORTAL_ROUTES)
    security: dict[str, Any] = {
        "none": None,
        "admin": [{"admin": []}],
        "org": [{"user": []}, {"admin": []}],
    }
    for (method, path), who in PORTAL_ROUTES.items():
        operation = document["paths"][path][method.lower()]
        assert operation.get("security") == security[who], (method, path)
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        assert [p["name"] for p in operation.get("parameters", [])] == names
        statuses = {str(SERVICE_ERRORS[code].status) for code in REDEMPTION_ERRORS}
        assert statuses <= set(operation["responses"])
    assert set(document["components"]["securitySchemes"]) == {"admin", "user"}


@pytest.mark.parametrize("path", ["/v1/portal/orgs/{org}/redeem", "/v1/portal/signup"])
def test_openapi_documents_the_rate_limit_status(lab: Lab, path: str) -> None:
    document = lab.call("GET", "/openapi.json").body
    assert "429" in document["paths"][path]["post"]["responses"]


def test_openapi_documents_201_for_a_new_offer(lab: Lab) -> None:
    document = lab.call("GET", "/openapi.json").body
    assert {"200", "201"} <= set(document["paths"]["/v1/portal/offers/{offer}"]["put"]["responses"])


def test_a_forced_partial_signup_failure_comes_before_the_key_is_looked_at(faults: Lab) -> None:
    lab = faults
    lab.set_fault("account_not_created", 1)
    name = f"Early {next(_names)}"
    reply = lab.call(
        "POST",
        "/v1/portal/signup",
        {"key": "BCDFG-HJKMP-QRTVW-XY234-6789B", "org": name, "country": "GB", "user": "Ada"},
    )
    assert (reply.status, lab.fault()) != (400, None), "the fault was spent on invalid_key"
