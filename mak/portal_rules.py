"""The licensing portal's rules: who may redeem and buy what (pure: values in, verdicts out).

The order of the redemption checks is the order an administrator meets them:
the caller's role, the key itself, whether it was redeemed (here or
elsewhere), its expiry, then the offer's rules (sold at all, sold in the
organisation's country, a trial only once, at most so many licences).
Every refusal is a ``ServiceError`` whose code is a row of behaviour.md's
redemption table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from kmsemu.errors import ServiceError
from kmsemu.keys.product_key import KeyType, ProductKey

ROLES: Final = ("global-admin", "billing-admin", "user")
#: Roles that may redeem keys, buy subscriptions and assign licences.
BUYER_ROLES: Final = frozenset({"global-admin", "billing-admin"})
BILLING: Final = ("monthly", "yearly")
MAX_LICENCES: Final = 1_000_000
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_NAME: Final = re.compile(r"[^/]{1,64}")


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer: a catalog product of channel ``subscription`` and its sales rules."""

    name: str
    product: int
    max_licences: int
    countries: frozenset[str]
    trial: bool

    def to_json(self, display_name: str = "") -> dict[str, object]:
        """The offer as the API shows it (``display_name``: the catalog's product name)."""
        return {
            "offer": self.name,
            "name": display_name or self.name,
            "product": self.product,
            "max_licences": self.max_licences,
            "countries": sorted(self.countries),
            "trial": self.trial,
        }


@dataclass(frozen=True, slots=True)
class OrgState:
    """What the rules need to know of an organisation about one offer."""

    org_id: int
    country: str
    #: Licences of the offer's subscriptions the organisation holds now.
    licences: int
    #: Whether the organisation ever had a subscription of the offer.
    had_offer: bool


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A key's redemption, if any: by which organisation."""

    org_id: int


def country(text: object, field: str = "country") -> str:
    """A two-letter country code, upper-cased; ``invalid_field`` names ``field``."""
    value = text.strip().upper() if isinstance(text, str) else ""
    if not _COUNTRY.fullmatch(value):
        raise ServiceError(
            "invalid_field", f"'{field}' is a two-letter country code such as GB or US", field=field
        )
    return value


def name(text: object, field: str) -> str:
    """An organisation's or user's name: 1 to 64 printable characters, no slash."""
    value = text.strip() if isinstance(text, str) else ""
    if not _NAME.fullmatch(value) or not value.isprintable() or value in (".", ".."):
        raise ServiceError(
            "invalid_field", f"'{field}' is 1 to 64 printable characters without '/'", field=field
        )
    return value


def role(text: object) -> str:
    """One of ``ROLES``, else ``invalid_field``."""
    if text not in ROLES:
        raise ServiceError("invalid_field", f"'role' is one of {', '.join(ROLES)}", field="role")
    return str(text)


def require_buyer(caller_role: str, action: str | None = None) -> None:
    """A global or billing admin may redeem keys (or ``action``: a variant of
    ``admin_required`` in the registry: ``buy``, ``assign``, ``unassign``)."""
    if caller_role not in BUYER_ROLES:
        raise ServiceError("admin_required", variant=action, role=caller_role)


def subscription_key(key: ProductKey) -> ProductKey:
    """The key if it is a subscription key that adds licences, else ``invalid_key``."""
    if key.type is not KeyType.SUBSCRIPTION:
        raise ServiceError("invalid_key", f"a {key.type.label} key", variant="not_subscription")
    if key.quantity < 1:
        raise ServiceError("invalid_key", "it adds no licences", variant="not_subscription")
    return key


def check_redeemed(redeemed: Redeemed | None, org_id: int) -> None:
    """Refuse a key already redeemed: by this organisation, or by another one."""
    if redeemed is None:
        return
    if redeemed.org_id == org_id:
        raise ServiceError("already_entered")
    raise ServiceError("already_used")


def check_expiry(expires: float | None, now: float) -> None:
    """Refuse (``expired``) a key whose expiry has passed."""
    if expires is not None and now >= expires:
        raise ServiceError("expired")


def check_offer(offer: Offer | None, org: OrgState, licences: int) -> Offer:
    """An order of ``licences`` more licences of ``offer`` for ``org``: allowed, or why not."""
    if offer is None:
        raise ServiceError("not_available", "the offer is not sold", reason="offer_not_available")
    if org.country not in offer.countries:
        raise ServiceError(
            "not_available",
            f"{offer.name} is not sold in {org.country}",
            reason="not_in_country",
            country=org.country,
        )
    if offer.trial and org.had_offer:
        raise ServiceError(
            "not_available", f"the {offer.name} trial was used before", reason="trial_used"
        )
    if org.licences + licences > offer.max_licences:
        raise ServiceError(
            "too_many_licences", maximum=offer.max_licences, requested=org.licences + licences
        )
    return offer


def check_redemption(
    *,
    caller_role: str,
    key: ProductKey,
    redeemed: Redeemed | None,
    expires: float | None,
    now: float,
    offer: Offer | None,
    org: OrgState,
) -> Offer:
    """Every rule of a redemption, in the order the portal applies them."""
    require_buyer(caller_role)
    subscription_key(key)
    check_redeemed(redeemed, org.org_id)
    check_expiry(expires, now)
    return check_offer(offer, org, key.quantity)
