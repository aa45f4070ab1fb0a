"""The licensing portal's tables and transactions, in the MAK store's database.

A mixin of ``SqlStore``: the same connections, transactions and placeholder
translation serve both. Every change that touches an organisation's
subscriptions first locks the organisation's row (PostgreSQL ``FOR
UPDATE``; SQLite writers are serialised anyway), so two redemptions or
purchases for one organisation cannot both pass the licence maximum, and a
key's redemption is claimed by the primary key of ``portal_redemptions``, so
two organisations cannot both redeem it. A refusal raised inside a
transaction rolls all of it back: nothing is ever half-written.

Users' tokens are stored as SHA-256 hashes; keys as fingerprint and last five.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kmsemu.errors import ServiceError
from kmsemu.keys.product_key import ProductKey
from mak import portal_rules
from mak.portal_rules import Offer, OrgState, Redeemed
from mak.store.base import Cursor, Executor

PORTAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_orgs (
    id {serial},
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    country TEXT NOT NULL,
    created {real} NOT NULL);
CREATE TABLE IF NOT EXISTS portal_users (
    id {serial},
    org_id BIGINT NOT NULL REFERENCES portal_orgs (id),
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created {real} NOT NULL,
    UNIQUE (org_id, name_key));
CREATE TABLE IF NOT EXISTS portal_offers (
    name TEXT PRIMARY KEY,
    product INTEGER NOT NULL,
    max_licences INTEGER NOT NULL,
    countries TEXT NOT NULL,
    trial INTEGER NOT NULL,
    updated {real} NOT NULL);
CREATE TABLE IF NOT EXISTS portal_subscriptions (
    id {serial},
    org_id BIGINT NOT NULL REFERENCES portal_orgs (id),
    offer TEXT NOT NULL,
    licences INTEGER NOT NULL,
    billing TEXT,
    source TEXT NOT NULL,
    fingerprint TEXT,
    last5 TEXT,
    created {real} NOT NULL);
CREATE INDEX IF NOT EXISTS portal_subscriptions_org ON portal_subscriptions (org_id, offer);
CREATE TABLE IF NOT EXISTS portal_redemptions (
    fingerprint TEXT PRIMARY KEY,
    org_id BIGINT NOT NULL REFERENCES portal_orgs (id),
    subscription_id BIGINT NOT NULL REFERENCES portal_subscriptions (id),
    at {real} NOT NULL);
CREATE TABLE IF NOT EXISTS portal_key_expiry (
    fingerprint TEXT PRIMARY KEY,
    last5 TEXT NOT NULL,
    expires {real} NOT NULL);
CREATE TABLE IF NOT EXISTS portal_assignments (
    user_id BIGINT NOT NULL REFERENCES portal_users (id),
    offer TEXT NOT NULL,
    subscription_id BIGINT NOT NULL REFERENCES portal_subscriptions (id),
    at {real} NOT NULL,
    PRIMARY KEY (user_id, offer));
CREATE INDEX IF NOT EXISTS portal_assignments_sub ON portal_assignments (subscription_id);
CREATE TABLE IF NOT EXISTS portal_faults (
    id INTEGER PRIMARY KEY,
    code TEXT NOT NULL,
    remaining INTEGER);
"""


@dataclass(frozen=True, slots=True)
class Org:
    """An organisation; listings add how many users and subscriptions it has."""

    id: int
    name: str
    country: str
    created: float
    users: int = 0
    subscriptions: int = 0


@dataclass(frozen=True, slots=True)
class User:
    """A user of one organisation, with its role and the offers it holds licences of."""

    id: int
    org_id: int
    name: str
    role: str
    created: float
    licences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscription:
    """Licences of one offer an organisation holds, from a redeemed key or a purchase."""

    id: int
    org_id: int
    offer: str
    licences: int
    billing: str | None
    source: str
    last5: str | None
    created: float
    used: int = 0

    @property
    def free(self) -> int:
        """Licences not yet assigned to a user."""
        return self.licences - self.used


@dataclass(frozen=True, slots=True)
class Fault:
    """A forced redemption error, for testing how clients handle it."""

    code: str
    #: Redemptions it still answers; None: until cleared.
    remaining: int | None


@dataclass(frozen=True, slots=True)
class Purchase:
    """What a purchase made: the subscription and who was given a licence of it."""

    subscription: Subscription
    #: Users who got a licence of it (``auto_assign``), oldest first.
    assigned: tuple[str, ...] = ()


_ORG = "SELECT id, name, country, created FROM portal_orgs"
_USER = "SELECT id, org_id, name, role, created FROM portal_users"
_SUBSCRIPTION = (
    "SELECT s.id, s.org_id, s.offer, s.licences, s.billing, s.source, s.last5, s.created,"
    " (SELECT COUNT(*) FROM portal_assignments a WHERE a.subscription_id = s.id)"
    " FROM portal_subscriptions s"
)
_OFFER = "SELECT name, product, max_licences, countries, trial FROM portal_offers"


def _org(row: Sequence[Any]) -> Org:
    return Org(int(row[0]), row[1], row[2], row[3])


def _user(row: Sequence[Any]) -> User:
    return User(int(row[0]), int(row[1]), row[2], row[3], row[4])


def _subscription(row: Sequence[Any]) -> Subscription:
    return Subscription(
        int(row[0]), int(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], int(row[8])
    )


def _offer(row: Sequence[Any]) -> Offer:
    return Offer(row[0], row[1], row[2], frozenset(filter(None, row[3].split(","))), bool(row[4]))


def name_key(name: str) -> str:
    """How names are compared (organisations, users): trimmed and case-folded."""
    return name.strip().casefold()


class PortalSql:
    """The portal's half of ``SqlStore`` (which supplies the transaction and ``_exec``)."""

    #: Appended to a SELECT whose row the transaction must hold: a key's in ``activate``,
    #: an organisation's in its orders, the fault's (PostgreSQL: `` FOR UPDATE``).
    _lock_key = ""

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Executor]:
        raise NotImplementedError

    def _exec(self, db: Executor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    # -- organisations and users -------------------------------------------------------------

    def add_org(self, name: str, country: str, now: float) -> Org:
        """Create an organisation; ``org_exists`` when the name is taken (in any case)."""
        with self._transaction(write=True) as db:
            return self._insert_org(db, name, country, now)

    def _insert_org(self, db: Executor, name: str, country: str, now: float) -> Org:
        row = self._exec(
            db,
            "INSERT INTO portal_orgs (name, name_key, country, created)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (name_key) DO NOTHING RETURNING id",
            (name, name_key(name), country, now),
        ).fetchone()
        if row is None:
            raise ServiceError("org_exists", name)
        return Org(int(row[0]), name, country, now)

    def orgs(self) -> list[Org]:
        """Every organisation, oldest first, with its user and subscription counts."""
        with self._transaction(write=False) as db:
            rows = self._exec(
                db,
                "SELECT o.id, o.name, o.country, o.created,"
                " (SELECT COUNT(*) FROM portal_users u WHERE u.org_id = o.id),"
                " (SELECT COUNT(*) FROM portal_subscriptions s"
                "  WHERE s.org_id = o.id)"
                " FROM portal_orgs o ORDER BY o.id",
            ).fetchall()
        return [Org(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5])) for r in rows]

    def org(self, name: str) -> Org | None:
        """The organisation of that name (in any case), or None."""
        with self._transaction(write=False) as db:
            return self._select_org(db, name)

    def _select_org(self, db: Executor, name: str) -> Org | None:
        row = self._exec(db, _ORG + " WHERE name_key = ?", (name_key(name),)).fetchone()
        return _org(row) if row else None

    def _lock_org(self, db: Executor, org_id: int) -> Org:
        row = self._exec(db, _ORG + " WHERE id = ?" + self._lock_key, (org_id,)).fetchone()
        if row is None:
            raise ServiceError("unknown_org", f"organisation #{org_id}")
        return _org(row)

    def add_user(self, org_id: int, name: str, role: str, token_hash: str, now: float) -> User:
        """Add a user with a token hash; ``user_exists`` when the org has that name."""
        with self._transaction(write=True) as db:
            self._lock_org(db, org_id)
            return self._insert_user(db, org_id, name, role, token_hash, now)

    def _insert_user(
        self, db: Executor, org_id: int, name: str, role: str, token_hash: str, now: float
    ) -> User:
        row = self._exec(
            db,
            "INSERT INTO portal_users (org_id, name, name_key, role, token_hash,"
            " created) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (org_id, name_key) DO NOTHING RETURNING id",
            (org_id, name, name_key(name), role, token_hash, now),
        ).fetchone()
        if row is None:
            raise ServiceError("user_exists", name)
        return User(int(row[0]), org_id, name, role, now)

    def user_by_token(self, token_hash: str) -> User | None:
        """The user whose token hashes to ``token_hash``, or None."""
        with self._transaction(write=False) as db:
            row = self._exec(db, _USER + " WHERE token_hash = ?", (token_hash,)).fetchone()
        return _user(row) if row else None

    def users(self, org_id: int) -> list[User]:
        """The organisation's users, oldest first, each with the offers they hold."""
        with self._transaction(write=False) as db:
            rows = self._exec(db, _USER + " WHERE org_id = ? ORDER BY id", (org_id,)).fetchall()
            held: dict[int, list[str]] = {}
            for user_id, offer in self._exec(
                db,
                "SELECT a.user_id, a.offer FROM portal_assignments a"
                " JOIN portal_users u ON u.id = a.user_id WHERE u.org_id = ?"
                " ORDER BY a.offer",
                (org_id,),
            ).fetchall():
                held.setdefault(int(user_id), []).append(offer)
        return [replace(_user(r), licences=tuple(held.get(int(r[0]), ()))) for r in rows]

    # -- offers, key expiry, faults ------------------------------------------------------------

    def put_offer(self, offer: Offer, now: float) -> bool:
        """Define or redefine an offer; True when it is new."""
        with self._transaction(write=True) as db:
            known = self._exec(
                db, "SELECT 1 FROM portal_offers WHERE name = ?", (offer.name,)
            ).fetchone()
            self._exec(
                db,
                "INSERT INTO portal_offers (name, product, max_licences, countries,"
                " trial, updated) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET product = excluded.product, max_licences = excluded.max_licences,"
                " countries = excluded.countries, trial = excluded.trial,"
                " updated = excluded.updated",
                (
                    offer.name,
                    offer.product,
                    offer.max_licences,
                    ",".join(sorted(offer.countries)),
                    int(offer.trial),
                    now,
                ),
            )
        return known is None

    def offers(self) -> list[Offer]:
        """Every offer, by name."""
        with self._transaction(write=False) as db:
            return [_offer(r) for r in self._exec(db, _OFFER + " ORDER BY name").fetchall()]

    def offer(self, name: str) -> Offer | None:
        """The offer of that name, or None."""
        with self._transaction(write=False) as db:
            return self._select_offer(db, name)

    def _select_offer(self, db: Executor, name: str) -> Offer | None:
        row = self._exec(db, _OFFER + " WHERE name = ?", (name,)).fetchone()
        return _offer(row) if row else None

    def set_key_expiry(self, fingerprint: str, last5: str, expires: float) -> None:
        """Set when a subscription key expires (replacing any earlier expiry)."""
        with self._transaction(write=True) as db:
            self._exec(
                db,
                "INSERT INTO portal_key_expiry (fingerprint, last5, expires)"
                " VALUES (?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE"
                " SET expires = excluded.expires",
                (fingerprint, last5, expires),
            )

    def set_fault(self, fault: Fault | None) -> None:
        """Put a forced redemption error in place of any other; None clears it."""
        with self._transaction(write=True) as db:
            self._exec(db, "DELETE FROM portal_faults")
            if fault is not None:
                self._exec(
                    db,
                    "INSERT INTO portal_faults (id, code, remaining) VALUES (1, ?, ?)",
                    (fault.code, fault.remaining),
                )

    def fault(self) -> Fault | None:
        """The forced redemption error in place, or None."""
        with self._transaction(write=False) as db:
            row = self._exec(db, "SELECT code, remaining FROM portal_faults").fetchone()
        return Fault(row[0], row[1]) if row else None

    def take_fault(self) -> str | None:
        """The forced error for this redemption, if any, counted down (atomically)."""
        if self.fault() is None:  # the usual case: no write transaction for it
            return None
        with self._transaction(write=True) as db:
            row = self._exec(
                db, "SELECT code, remaining FROM portal_faults WHERE id = 1" + self._lock_key
            ).fetchone()
            if row is None:
                return None
            code, remaining = row
            if remaining is not None and remaining <= 1:
                self._exec(db, "DELETE FROM portal_faults")
            elif remaining is not None:
                self._exec(db, "UPDATE portal_faults SET remaining = remaining - 1")
        return str(code)

    # -- subscriptions ---------------------------------------------------------------------------

    def _org_state(self, db: Executor, org: Org, offer: str) -> OrgState:
        row = self._exec(
            db,
            "SELECT COUNT(*), COALESCE(SUM(licences), 0)"
            " FROM portal_subscriptions WHERE org_id = ? AND offer = ?",
            (org.id, offer),
        ).fetchone()
        return OrgState(org.id, org.country, licences=int(row[1]), had_offer=int(row[0]) > 0)

    def _insert_subscription(
        self,
        db: Executor,
        org: Org,
        offer: Offer,
        licences: int,
        billing: str | None,
        source: str,
        key: ProductKey | None,
        now: float,
    ) -> Subscription:
        last5 = key.last5 if key else None
        row = self._exec(
            db,
            "INSERT INTO portal_subscriptions (org_id, offer, licences, billing,"
            " source, fingerprint, last5, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                org.id,
                offer.name,
                licences,
                billing,
                source,
                key.fingerprint if key else None,
                last5,
                now,
            ),
        ).fetchone()
        return Subscription(int(row[0]), org.id, offer.name, licences, billing, source, last5, now)

    def redeem(
        self, org_id: int, caller_role: str, key: ProductKey, offer_name: str, now: float
    ) -> Subscription:
        """Redeem a subscription key into an organisation, or refuse with nothing stored."""
        with self._transaction(write=True) as db:
            org = self._lock_org(db, org_id)
            return self._redeem(db, org, caller_role, key, offer_name, now)

    def _redeem(
        self, db: Executor, org: Org, caller_role: str, key: ProductKey, offer_name: str, now: float
    ) -> Subscription:
        row = self._exec(
            db, "SELECT org_id FROM portal_redemptions WHERE fingerprint = ?", (key.fingerprint,)
        ).fetchone()
        expires = self._exec(
            db, "SELECT expires FROM portal_key_expiry WHERE fingerprint = ?", (key.fingerprint,)
        ).fetchone()
        offer = portal_rules.check_redemption(
            caller_role=caller_role,
            key=key,
            redeemed=Redeemed(int(row[0])) if row else None,
            expires=expires[0] if expires else None,
            now=now,
            offer=self._select_offer(db, offer_name),
            org=self._org_state(db, org, offer_name),
        )
        subscription = self._insert_subscription(
            db, org, offer, key.quantity, None, "key", key, now
        )
        claimed = self._exec(
            db,
            "INSERT INTO portal_redemptions (fingerprint, org_id,"
            " subscription_id, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (fingerprint) DO NOTHING RETURNING org_id",
            (key.fingerprint, org.id, subscription.id, now),
        ).fetchone()
        if claimed is None:  # another organisation's redemption committed meanwhile
            winner = self._exec(
                db,
                "SELECT org_id FROM portal_redemptions WHERE fingerprint = ?",
                (key.fingerprint,),
            ).fetchone()
            portal_rules.check_redeemed(Redeemed(int(winner[0])), org.id)
        return subscription

    def signup(
        self,
        name: str,
        country: str,
        user: str,
        token_hash: str,
        key: ProductKey | None,
        offer_name: str,
        now: float,
        *,
        fail_after_account: bool = False,
    ) -> tuple[Org, User, Subscription | None]:
        """A new organisation with its global admin, by redeeming a key: all or nothing, or
        (``fail_after_account``) the organisation and admin without the redemption."""
        with self._transaction(write=True) as db:
            org = self._insert_org(db, name, country, now)
            admin = self._insert_user(db, org.id, user, "global-admin", token_hash, now)
            if fail_after_account:
                return org, admin, None
            if key is None:
                raise ValueError("a sign-up redeems a key")
            return org, admin, self._redeem(db, org, admin.role, key, offer_name, now)

    def buy(
        self,
        org_id: int,
        offer_name: str,
        licences: int,
        billing: str,
        auto_assign: bool,
        now: float,
    ) -> Purchase:
        """Buy a subscription under the offer's rules; ``auto_assign``: to users with no licence."""
        with self._transaction(write=True) as db:
            org = self._lock_org(db, org_id)
            offer = portal_rules.check_offer(
                self._select_offer(db, offer_name), self._org_state(db, org, offer_name), licences
            )
            subscription = self._insert_subscription(
                db, org, offer, licences, billing, "purchase", None, now
            )
            assigned: list[str] = []
            if auto_assign:
                bare = self._exec(
                    db,
                    "SELECT u.id, u.name FROM portal_users u WHERE u.org_id = ?"
                    " AND NOT EXISTS (SELECT 1 FROM portal_assignments a"
                    " WHERE a.user_id = u.id) ORDER BY u.id LIMIT ?",
                    (org.id, licences),
                ).fetchall()
                for user_id, user_name in bare:
                    self._exec(
                        db,
                        "INSERT INTO portal_assignments (user_id, offer,"
                        " subscription_id, at) VALUES (?, ?, ?, ?)",
                        (user_id, offer.name, subscription.id, now),
                    )
                    assigned.append(user_name)
        return Purchase(replace(subscription, used=len(assigned)), tuple(assigned))

    def subscriptions(self, org_id: int) -> list[Subscription]:
        """The organisation's subscriptions, oldest first, with licences used."""
        with self._transaction(write=False) as db:
            rows = self._exec(
                db, _SUBSCRIPTION + " WHERE s.org_id = ? ORDER BY s.id", (org_id,)
            ).fetchall()
        return [_subscription(r) for r in rows]

    def _select_user(self, db: Executor, org_id: int, name: str) -> User:
        row = self._exec(
            db, _USER + " WHERE org_id = ? AND name_key = ?", (org_id, name_key(name))
        ).fetchone()
        if row is None:
            raise ServiceError("unknown_user", name)
        return _user(row)

    def assign(
        self, org_id: int, user_name: str, offer: str, now: float
    ) -> tuple[User, Subscription]:
        """Give the user a licence from the oldest subscription of the offer with one free."""
        with self._transaction(write=True) as db:
            self._lock_org(db, org_id)
            user = self._select_user(db, org_id, user_name)
            if self._exec(
                db,
                "SELECT 1 FROM portal_assignments WHERE user_id = ? AND offer = ?",
                (user.id, offer),
            ).fetchone():
                raise ServiceError("already_assigned", f"{user.name} has {offer}")
            subscriptions = [
                _subscription(r)
                for r in self._exec(
                    db,
                    _SUBSCRIPTION + " WHERE s.org_id = ? AND s.offer = ? ORDER BY s.id",
                    (org_id, offer),
                ).fetchall()
            ]
            chosen = next((s for s in subscriptions if s.free > 0), None)
            if chosen is None:
                total = sum(s.licences for s in subscriptions)
                raise ServiceError(
                    "no_free_licences",
                    variant=None if subscriptions else "none_bought",
                    offer=offer,
                    licences=total,
                )
            self._exec(
                db,
                "INSERT INTO portal_assignments (user_id, offer, subscription_id, at)"
                " VALUES (?, ?, ?, ?)",
                (user.id, offer, chosen.id, now),
            )
        return user, replace(chosen, used=chosen.used + 1)

    def unassign(self, org_id: int, user_name: str, offer: str) -> tuple[User, Subscription]:
        """Take back the user's licence of the offer; ``not_assigned`` if it had none."""
        with self._transaction(write=True) as db:
            self._lock_org(db, org_id)
            user = self._select_user(db, org_id, user_name)
            row = self._exec(
                db,
                "DELETE FROM portal_assignments WHERE user_id = ? AND offer = ?"
                " RETURNING subscription_id",
                (user.id, offer),
            ).fetchone()
            if row is None:
                raise ServiceError("not_assigned", f"{user.name} has no {offer} licence")
            return user, _subscription(
                self._exec(db, _SUBSCRIPTION + " WHERE s.id = ?", (row[0],)).fetchone()
            )
