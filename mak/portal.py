"""The licensing portal: organisations, subscription keys, subscriptions and licences.

Where tokens, keys, the catalog, the clock, the rate limit and forced faults
meet the store (``mak.store.portal``) and the rules (``mak.portal_rules``).
Synchronous and I/O-free beyond the store, like ``MakService``; the HTTP API
calls it.

Callers: the service's admin token acts as a global admin of every
organisation (``ADMIN``, a ``Caller`` without a user); a user's token acts as that user, in that
user's organisation only.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kmsemu.catalog import Catalog, Product
from kmsemu.errors import REDEMPTION_ERRORS, ConfigError, ServiceError
from kmsemu.keys.product_key import ProductKey
from mak import portal_rules
from mak.defaults import DEFAULT_REDEEM_RATE
from mak.portal_rules import Offer
from mak.service import parse_key
from mak.store.portal import Fault, Org, PortalSql, Purchase, Subscription, User

#: Redemption attempts one organisation may make per window before ``busy``.
REDEEM_WINDOW: Final = 60.0
#: Retry-After of a forced ``busy`` (maintenance).
MAINTENANCE_RETRY_AFTER: Final = 60
#: A forced redemption error fires at most this many times (the store keeps a 64-bit count).
MAX_FAULT_TIMES: Final = 2**31 - 1
TOKEN_PREFIX: Final = "kpt_"


def hash_token(token: str) -> str:
    """What the store keeps of a bearer token: its SHA-256, never the token."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the service administrator, or a user of one organisation."""

    role: str
    #: None for the service administrator.
    user: User | None = None

    def check_org(self, org: Org) -> None:
        """Refuse (``wrong_org``) a user acting in an organisation that is not theirs."""
        if self.user is not None and self.user.org_id != org.id:
            raise ServiceError("wrong_org", f"not a user of {org.name}")


ADMIN: Final = Caller("global-admin")


class RateLimit:
    """At most ``rate`` events per ``window`` seconds per name (a sliding window of
    timestamps); ``check`` answers how many seconds to wait, 0 when allowed."""

    def __init__(
        self, rate: int, window: float = REDEEM_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.window = window
        self._clock = clock
        self._events: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str) -> int:
        """Count one event for ``name``; 0 when allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0
        now = self._clock()
        with self._lock:
            events = [t for t in self._events.get(name, ()) if now - t < self.window]
            if len(events) >= self.rate:
                self._events[name] = events
                return max(1, math.ceil(events[0] + self.window - now))
            events.append(now)
            self._events[name] = events
            if len(self._events) > 10_000:  # names that went quiet
                self._events = {
                    k: v for k, v in self._events.items() if v and now - v[-1] < self.window
                }
        return 0


def _busy(retry_after: int, *, status: int, detail: str) -> ServiceError:
    return ServiceError(
        "busy",
        detail,
        status=status,
        retry_after=retry_after,
        headers={"Retry-After": str(retry_after)},
    )


class PortalService:
    """The portal's operations over its store, catalog, clock and redemption rate limit."""

    def __init__(
        self,
        store: PortalSql,
        *,
        now: Callable[[], float],
        catalog: Catalog,
        redeem_rate: int = DEFAULT_REDEEM_RATE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.now = now
        self.catalog = catalog
        self.limit = RateLimit(redeem_rate, clock=monotonic)

    # -- who is calling ------------------------------------------------------------------------

    def caller(self, token: str | None) -> Caller:
        """The user a bearer token names (the API recognises the admin token first)."""
        if not token:
            raise ServiceError("login_required")
        user = self.store.user_by_token(hash_token(token))
        if user is None:
            raise ServiceError("token_unknown")
        return Caller(user.role, user)

    def org(self, name: str, caller: Caller | None = None) -> Org:
        """The organisation of that name, if ``caller`` may act in it."""
        org = self.store.org(name)
        if org is None:
            raise ServiceError("unknown_org", name)
        if caller is not None:
            caller.check_org(org)
        return org

    # -- administration ------------------------------------------------------------------------

    def add_org(self, name: Any, country: Any) -> Org:
        """Create an organisation, its name and country checked."""
        return self.store.add_org(
            portal_rules.name(name, "name"), portal_rules.country(country), self.now()
        )

    def add_user(self, org: Org, caller: Caller, name: Any, role: Any) -> tuple[User, str]:
        """Add a user to ``org`` (global admins only); the user and their new token."""
        if caller.role != "global-admin":
            raise ServiceError("admin_required", variant="add_user", role=caller.role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        user = self.store.add_user(
            org.id,
            portal_rules.name(name, "name"),
            portal_rules.role(role),
            hash_token(token),
            self.now(),
        )
        return user, token

    def offer_product(self, name: str) -> Product:
        """The catalog product an offer sells: channel ``subscription`` only."""
        try:
            product = self.catalog.find(name)
        except ConfigError:
            product = None
        if product is None or product.channel != "subscription":
            names = ", ".join(p.key for p in self.catalog if p.channel == "subscription")
            raise ServiceError(
                "unknown_offer",
                f"{name!r} is not a subscription product of the catalog; known: {names}",
            )
        return product

    def put_offer(
        self, name: str, max_licences: Any, countries: Any, trial: Any
    ) -> tuple[Offer, bool]:
        """Define or redefine an offer for a subscription product; True when it is new."""
        product = self.offer_product(name)
        if (
            not isinstance(max_licences, int)
            or isinstance(max_licences, bool)
            or not 1 <= max_licences <= portal_rules.MAX_LICENCES
        ):
            raise ServiceError(
                "invalid_field",
                f"'max_licences' is from 1 to {portal_rules.MAX_LICENCES}",
                field="max_licences",
            )
        if not isinstance(countries, list) or not countries or len(countries) > 300:
            raise ServiceError(
                "invalid_field",
                "'countries' is a list of 1 to 300 two-letter country codes",
                field="countries",
            )
        if not isinstance(trial, bool):
            raise ServiceError("invalid_field", "'trial' is true or false", field="trial")
        offer = Offer(
            product.key,
            product.number,
            max_licences,
            frozenset(portal_rules.country(c, "countries") for c in countries),
            trial,
        )
        return offer, self.store.put_offer(offer, self.now())

    def expire_key(self, text: Any, at: float | None) -> tuple[ProductKey, float]:
        """Make a subscription key expire at ``at`` (None: now); the key and when."""
        key = self.subscription_key(text)
        when = self.now() if at is None else at
        self.store.set_key_expiry(key.fingerprint, key.last5, when)
        return key, when

    def set_fault(self, code: Any, times: int | None) -> Fault:
        """Force a redemption error for the next ``times`` redemptions (None: until cleared)."""
        if code not in REDEMPTION_ERRORS:
            raise ServiceError(
                "invalid_field", f"'code' is one of {', '.join(REDEMPTION_ERRORS)}", field="code"
            )
        if times is not None and not 1 <= times <= MAX_FAULT_TIMES:
            raise ServiceError(
                "invalid_field", f"'times' is 1 to {MAX_FAULT_TIMES:,}", field="times"
            )
        fault = Fault(str(code), times)
        self.store.set_fault(fault)
        return fault

    # -- redemption ------------------------------------------------------------------------------

    def subscription_key(self, text: Any) -> ProductKey:
        """A well-formed subscription key for an offer product, or ``invalid_key``."""
        try:
            key = parse_key(text)
        except ServiceError as exc:
            if exc.code != "key_malformed":
                raise
            raise ServiceError(
                "invalid_key",
                exc.detail,
                problems=exc.extra.get("problems"),
                candidates=exc.extra.get("candidates"),
            ) from None
        portal_rules.subscription_key(key)
        if (
            key.product >= len(self.catalog)
            or self.catalog.products[key.product].channel != "subscription"
        ):
            raise ServiceError(
                "invalid_key",
                f"product #{key.product} is not a subscription offer",
                variant="not_subscription",
            )
        return key

    def _admit(self, org_key: str) -> str | None:
        """The rate limit and the forced fault, before a redemption is looked at."""
        wait = self.limit.check(org_key)
        if wait:
            raise _busy(wait, status=429, detail="too many redemption attempts")
        return self.store.take_fault()

    def _forced(self, code: str, text: Any) -> ServiceError:
        """The error a fault forces, worded as the real one would be."""
        if code == "busy":
            return _busy(MAINTENANCE_RETRY_AFTER, status=503, detail="maintenance (forced)")
        if code == "too_many_licences":  # the message names the maximum of the key's offer
            try:
                offer = self.store.offer(
                    self.catalog.products[self.subscription_key(text).product].key
                )
            except ServiceError:
                offer = None
            if offer is None:
                return ServiceError(code, "forced")
            return ServiceError(code, "forced", maximum=offer.max_licences)
        if code == "not_available":
            return ServiceError(code, "forced", reason="offer_not_available")
        return ServiceError(code, "forced")

    def redeem(self, org: Org, caller: Caller, text: Any) -> Subscription:
        """Redeem a subscription key for ``org`` (rate limit and faults first): a subscription."""
        forced = self._admit(f"org:{org.id}")
        if forced is not None:
            raise self._forced(forced, text)
        portal_rules.require_buyer(caller.role)
        key = self.subscription_key(text)
        offer = self.catalog.products[key.product].key
        return self.store.redeem(org.id, caller.role, key, offer, self.now())

    def signup(
        self, text: Any, org_name: Any, country: Any, user_name: Any
    ) -> tuple[Org, User, str, Subscription]:
        """A new organisation and its global admin, by redeeming a key (all or nothing); a
        forced partial failure leaves the organisation and admin, the key unredeemed."""
        name = portal_rules.name(org_name, "org")
        country = portal_rules.country(country)
        user = portal_rules.name(user_name, "user")
        forced = self._admit(f"signup:{name.casefold()}")
        partial = forced in ("account_not_created", "order_not_processed")
        if forced is not None and not partial:
            raise self._forced(forced, text)
        # a forced partial failure comes before the key is looked at, like every fault
        key = None if partial else self.subscription_key(text)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        org, admin, subscription = self.store.signup(
            name,
            country,
            user,
            hash_token(token),
            key,
            "" if key is None else self.catalog.products[key.product].key,
            self.now(),
            fail_after_account=partial,
        )
        if subscription is None:
            assert forced is not None
            raise ServiceError(
                forced, "forced", org=org.name, user=admin.name, role=admin.role, token=token
            )
        return org, admin, token, subscription

    # -- subscriptions and licences ----------------------------------------------------------

    def buy(
        self, org: Org, caller: Caller, offer: Any, licences: Any, billing: Any, auto_assign: Any
    ) -> Purchase:
        """Buy licences of an offer for ``org`` (buyer roles only), fields checked."""
        portal_rules.require_buyer(caller.role, "buy")
        if not isinstance(offer, str):
            raise ServiceError("invalid_field", "'offer' is an offer's name", field="offer")
        product = self.offer_product(offer)
        if (
            not isinstance(licences, int)
            or isinstance(licences, bool)
            or not 1 <= licences <= portal_rules.MAX_LICENCES
        ):
            raise ServiceError(
                "invalid_field",
                f"'licences' is from 1 to {portal_rules.MAX_LICENCES}",
                field="licences",
            )
        if billing not in portal_rules.BILLING:
            raise ServiceError("invalid_field", "'billing' is monthly or yearly", field="billing")
        if not isinstance(auto_assign, bool):
            raise ServiceError(
                "invalid_field", "'auto_assign' is true or false", field="auto_assign"
            )
        return self.store.buy(org.id, product.key, licences, str(billing), auto_assign, self.now())

    def assign(self, org: Org, caller: Caller, user: str, offer: Any) -> tuple[User, Subscription]:
        """Give ``user`` a licence of ``offer`` from the org's subscriptions (buyer roles only)."""
        portal_rules.require_buyer(caller.role, "assign")
        if not isinstance(offer, str):
            raise ServiceError("invalid_field", "'offer' is an offer's name", field="offer")
        product = self.offer_product(offer)
        return self.store.assign(org.id, user, product.key, self.now())

    def unassign(
        self, org: Org, caller: Caller, user: str, offer: str
    ) -> tuple[User, Subscription]:
        """Take back ``user``'s licence of ``offer``; it is free to assign again."""
        portal_rules.require_buyer(caller.role, "unassign")
        return self.store.unassign(org.id, user, self.offer_product(offer).key)
