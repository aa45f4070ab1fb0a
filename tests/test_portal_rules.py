"""The licensing portal's pure rules (``mak.portal_rules``) and its rate limit
(``mak.portal.RateLimit``), without a store or a socket.

The rules: field validation (names, countries, roles), the redemption checks one by
one, and the order ``check_redemption`` applies them in (role, key, redeemed here or
elsewhere, expiry, then the offer: sold at all, in the country, a trial once, the
maximum). The rate limit: a Hypothesis property on an injected clock, never more than
``rate`` allowed in any window, and a ``retry-after`` that is honest (waiting that long
allows one) and tight (waiting a second less does not).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.errors import REDEMPTION_ERRORS, SERVICE_ERRORS, ServiceError
from kmsemu.keys.product_key import KeyType, ProductKey, mint
from mak import portal_rules as rules
from mak.portal import RateLimit
from mak.portal_rules import Offer, OrgState, Redeemed

NOW = 1_700_000_000.0
BASIC = 12  # m365-business-basic's product number in the shipped catalog
_serials = itertools.count(1)

#: behaviour.md's wording, copied here so that a drift of errors.py is caught.
NOT_VALID = "This product key isn't valid. Please enter a different product key."
TOO_MANY = (
    "You've added more user licenses than this offer allows. The maximum is {} user licenses."
)


def key(
    quantity: int = 5, key_type: KeyType = KeyType.SUBSCRIPTION, product: int = BASIC
) -> ProductKey:
    return mint(key_type, product, serial=next(_serials), quantity=quantity)


def offer(
    max_licences: int = 25, countries: tuple[str, ...] = ("GB", "US"), trial: bool = False
) -> Offer:
    return Offer("m365-business-basic", BASIC, max_licences, frozenset(countries), trial)


def org(
    licences: int = 0, had_offer: bool = False, country: str = "GB", org_id: int = 1
) -> OrgState:
    return OrgState(org_id, country, licences=licences, had_offer=had_offer)


def refusal(call: Callable[[], Any]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call()
    error = caught.value
    assert error.code in SERVICE_ERRORS
    return error


# -- field validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected", [("GB", "GB"), ("gb", "GB"), (" us ", "US"), ("Fr", "FR")]
)
def test_country_codes_are_normalised(text: str, expected: str) -> None:
    assert rules.country(text) == expected


@pytest.mark.parametrize("text", ["", "G", "GBR", "G1", "1A", "G-", "é", None, 44, ["GB"], True])
def test_bad_country_codes_are_invalid_field(text: object) -> None:
    error = refusal(lambda: rules.country(text))
    assert (error.code, error.extra["field"]) == ("invalid_field", "country")
    assert refusal(lambda: rules.country(text, "countries")).extra["field"] == "countries"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Contoso", "Contoso"),
        ("  Contoso Ltd ", "Contoso Ltd"),
        ("x" * 64, "x" * 64),
        ("Café & Co. 100%", "Café & Co. 100%"),
    ],
)
def test_names_are_stripped_and_kept(text: str, expected: str) -> None:
    assert rules.name(text, "name") == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "x" * 65, "a/b", "/", "a\x00b", "a\nb", "a\tb", "a\x1fb", "a\x7fb", None, 7, ["a"]],
    ids=repr,
)
def test_bad_names_are_invalid_field(text: object) -> None:
    error = refusal(lambda: rules.name(text, "org"))
    assert (error.code, error.extra["field"]) == ("invalid_field", "org")


@pytest.mark.parametrize("text", ["a\x85b", "a\x9b31mb"], ids=["NEL", "CSI"])
def test_c1_control_characters_are_not_names(text: str) -> None:
    assert refusal(lambda: rules.name(text, "name")).code == "invalid_field"


def test_roles() -> None:
    for role in rules.ROLES:
        assert rules.role(role) == role
    for bad in ("admin", "Global-Admin", "", None, 1):
        error = refusal(partial(rules.role, bad))
        assert (error.code, error.extra["field"]) == ("invalid_field", "role")


def test_buyers_are_global_and_billing_admins() -> None:
    rules.require_buyer("global-admin")
    rules.require_buyer("billing-admin")
    error = refusal(lambda: rules.require_buyer("user"))
    assert (error.code, error.status, error.extra["role"]) == ("admin_required", 403, "user")
    assert error.message == "You must be a global or billing admin to redeem a product key."
    error = refusal(lambda: rules.require_buyer("user", "buy"))  # a registry wording
    assert error.message == "You must be a global or billing admin to buy subscriptions."


# -- the checks one by one -----------------------------------------------------------------------


def test_only_subscription_keys_with_licences_are_redeemed() -> None:
    good = key(3)
    assert rules.subscription_key(good) is good
    for other in (key(0), *(key(0, kind) for kind in KeyType if kind is not KeyType.SUBSCRIPTION)):
        error = refusal(partial(rules.subscription_key, other))
        assert (error.code, error.status, error.message) == ("invalid_key", 400, NOT_VALID)


def test_redeemed_here_or_elsewhere() -> None:
    rules.check_redeemed(None, 1)
    assert refusal(lambda: rules.check_redeemed(Redeemed(1), 1)).code == "already_entered"
    assert refusal(lambda: rules.check_redeemed(Redeemed(2), 1)).code == "already_used"


def test_expiry_is_reached_at_the_moment() -> None:
    rules.check_expiry(None, NOW)
    rules.check_expiry(NOW + 0.5, NOW)
    for expires in (NOW, NOW - 1):
        error = refusal(partial(rules.check_expiry, expires, NOW))
        assert (error.code, error.status) == ("expired", 410)


def test_offer_rules() -> None:
    sold = offer(max_licences=10)
    assert rules.check_offer(sold, org(), 10) is sold
    assert rules.check_offer(sold, org(licences=9, had_offer=True), 1) is sold
    reasons = {
        "offer_not_available": lambda: rules.check_offer(None, org(), 1),
        "not_in_country": lambda: rules.check_offer(sold, org(country="FR"), 1),
        "trial_used": lambda: rules.check_offer(offer(trial=True), org(had_offer=True), 1),
    }
    for reason, call in reasons.items():
        error = refusal(call)
        assert (error.code, error.status, error.extra["reason"]) == ("not_available", 409, reason)
        assert error.message == "The requested subscription is not available."
    # a trial the organisation never had is sold once
    assert rules.check_offer(offer(trial=True), org(), 1).trial


@pytest.mark.parametrize("held,more", [(0, 11), (10, 1), (5, 6), (0, 10**6)])
def test_too_many_licences_names_the_maximum(held: int, more: int) -> None:
    error = refusal(
        lambda: rules.check_offer(
            offer(max_licences=10), org(licences=held, had_offer=held > 0), more
        )
    )
    assert (error.code, error.status) == ("too_many_licences", 422)
    assert error.message == TOO_MANY.format(10)
    assert (error.extra["maximum"], error.extra["requested"]) == (10, held + more)


# -- the order of the checks ----------------------------------------------------------------------


def redemption(**changes: Any) -> Offer:
    """``check_redemption`` of a redemption that passes, with ``changes`` applied."""
    arguments: dict[str, Any] = {
        "caller_role": "billing-admin",
        "key": key(5),
        "redeemed": None,
        "expires": None,
        "now": NOW,
        "offer": offer(),
        "org": org(),
    }
    return rules.check_redemption(**{**arguments, **changes})


def test_a_good_redemption_passes() -> None:
    assert redemption() == offer()
    assert redemption(caller_role="global-admin", expires=NOW + 1) == offer()


#: Each step breaks one more rule; the answer is always the earliest broken rule's.
ORDER: list[tuple[str, dict[str, Any]]] = [
    ("too_many_licences", {"key": key(26)}),
    ("trial_used", {"offer": offer(trial=True), "org": org(licences=1, had_offer=True)}),
    ("not_in_country", {"org": org(licences=1, had_offer=True, country="FR")}),
    ("offer_not_available", {"offer": None}),
    ("expired", {"expires": NOW - 60}),
    ("already_used", {"redeemed": Redeemed(2)}),
    ("invalid_key", {"key": key(0, KeyType.MAK)}),
    ("admin_required", {"caller_role": "user"}),
]


@pytest.mark.parametrize("depth", range(1, len(ORDER) + 1), ids=[name for name, _ in ORDER])
def test_the_earliest_broken_rule_answers(depth: int) -> None:
    changes: dict[str, Any] = {}
    for _, change in ORDER[:depth]:
        changes.update(change)
    expected = ORDER[depth - 1][0]
    error = refusal(lambda: redemption(**changes))
    assert expected in (error.code, error.extra.get("reason")), (expected, error.code)
    assert error.code in REDEMPTION_ERRORS


def test_already_entered_comes_before_expired() -> None:
    error = refusal(lambda: redemption(redeemed=Redeemed(1), expires=NOW - 1, offer=None))
    assert error.code == "already_entered"


def test_a_malformed_quantity_zero_key_is_invalid_before_being_redeemed() -> None:
    error = refusal(lambda: redemption(key=key(0), redeemed=Redeemed(1)))
    assert (error.code, error.message) == ("invalid_key", NOT_VALID)


def test_offer_json() -> None:
    assert offer(countries=("US", "GB")).to_json("Microsoft 365 Business Basic") == {
        "offer": "m365-business-basic",
        "name": "Microsoft 365 Business Basic",
        "product": BASIC,
        "max_licences": 25,
        "countries": ["GB", "US"],
        "trial": False,
    }
    assert offer().to_json()["name"] == "m365-business-basic"


# -- the rate limit -------------------------------------------------------------------------------


class Clock:
    """An injected monotonic clock in eighths of a second (exact in binary floating point)."""

    def __init__(self) -> None:
        self.eighths = 0

    def __call__(self) -> float:
        return self.eighths / 8

    def advance(self, seconds: float) -> None:
        self.eighths += round(seconds * 8)


steps = st.lists(
    st.tuples(
        st.integers(0, 8 * 130),  # eighths of a second to wait first
        st.sampled_from("ab"),  # which name asks
        st.booleans(),
    ),  # on a refusal: wait as told?
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(1, 5), window_eighths=st.integers(1, 8 * 60), steps=steps)
def test_rate_limit_never_allows_more_than_rate_per_window_and_is_honest(
    rate: int, window_eighths: int, steps: list[tuple[int, str, bool]]
) -> None:
    clock = Clock()
    window = window_eighths / 8
    limit = RateLimit(rate, window, clock=clock)
    allowed: dict[str, list[float]] = {"a": [], "b": []}
    for wait, name, obey in steps:
        clock.eighths += wait
        retry_after = limit.check(name)
        if retry_after == 0:
            allowed[name].append(clock())
            continue
        assert isinstance(retry_after, int) and 1 <= retry_after <= max(1, math.ceil(window))
        if not obey:
            continue
        if retry_after > 1:  # tight: a second less is still too early (and adds nothing)
            clock.advance(retry_after - 1)
            assert limit.check(name) > 0, (rate, window, allowed[name], clock())
            clock.advance(1)
        else:
            clock.advance(retry_after)
        # honest: waiting as long as it said allows one
        assert limit.check(name) == 0, (rate, window, allowed[name], clock())
        allowed[name].append(clock())
    for times in allowed.values():
        # any `rate + 1` allowed events span at least a whole window
        for first, last in zip(times, times[rate:], strict=False):
            assert last - first >= window, (rate, window, times)


def test_rate_limit_names_are_independent_and_zero_disables() -> None:
    clock = Clock()
    limit = RateLimit(2, 60, clock=clock)
    assert [limit.check("org:1") for _ in range(4)] == [0, 0, 60, 60]
    assert limit.check("org:2") == 0
    clock.advance(59.5)
    assert limit.check("org:1") == 1
    clock.advance(0.5)
    assert limit.check("org:1") == 0
    unlimited = RateLimit(0, 60, clock=clock)
    assert all(unlimited.check("x") == 0 for _ in range(100))


@pytest.mark.parametrize("bad", [".", "..", " .. ", "a/b", "", "x" * 65, "tab\there"])
def test_names_that_would_not_survive_a_url_path_are_refused(bad: str) -> None:
    with pytest.raises(ServiceError) as info:
        rules.name(bad, "name")
    assert info.value.code == "invalid_field" and info.value.extra["field"] == "name"
