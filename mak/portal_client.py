"""The licensing portal's HTTP API (docs/portal.md) as methods of the MAK service's client.

One token per client: a user's token (``kmsemu portal user add`` printed it) or the
service's admin token, which acts as a global admin of every organisation. Offers and
sign-up need none. A refusal is ``RemoteError`` as for the MAK API; ``busy`` comes with a
``Retry-After`` header, so the client keeps the status and headers of the last answer.
"""

from __future__ import annotations

import email.utils
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from mak.client import MakClient, _drop_none


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now; None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class PortalClient(MakClient):
    """``MakClient`` plus the portal's routes."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the last answer asked the caller to wait (``Retry-After``), if it did."""
        if self.last_headers is None:
            return None
        return retry_after_seconds(self.last_headers.get("Retry-After"))

    def _signed(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A call with the client's token (a user's, or the admin's)."""
        return dict(self.request(method, "/v1/portal" + path, body, admin=True))

    # -- anybody ---------------------------------------------------------------------------------

    def offers(self) -> dict[str, Any]:
        """``{"offers": [offer]}``."""
        return dict(self.request("GET", "/v1/portal/offers"))

    def signup(self, key: str, *, org: str, country: str, user: str) -> dict[str, Any]:
        """Create an organisation with ``user`` as its global admin by redeeming ``key``."""
        return dict(
            self.request(
                "POST",
                "/v1/portal/signup",
                {"key": key, "org": org, "country": country, "user": user},
            )
        )

    # -- the service administrator ---------------------------------------------------------------

    def put_offer(
        self, offer: str, *, max_licences: int, countries: list[str], trial: bool = False
    ) -> dict[str, Any]:
        """Define or redefine an offer and its sales rules (admin)."""
        return self._signed(
            "PUT",
            f"/offers/{_segment(offer)}",
            {"max_licences": max_licences, "countries": countries, "trial": trial},
        )

    def orgs(self) -> dict[str, Any]:
        """``{"orgs": [org]}``."""
        return self._signed("GET", "/orgs")

    def create_org(self, name: str, country: str) -> dict[str, Any]:
        """Create an organisation (admin)."""
        return self._signed("POST", "/orgs", {"name": name, "country": country})

    def expire_key(self, key: str, at: str | None = None) -> dict[str, Any]:
        """Make a subscription key expire at ``at`` (ISO time; None: now) (admin)."""
        return self._signed("POST", "/keys/expire", _drop_none(key=key, at=at))

    def fault(self) -> dict[str, Any]:
        """The forced redemption error in place, if any (admin)."""
        return self._signed("GET", "/fault")

    def set_fault(self, code: str, times: int | None = None) -> dict[str, Any]:
        """Force a redemption error ``times`` times (None: until cleared) (admin)."""
        return self._signed("PUT", "/fault", _drop_none(code=code, times=times))

    def clear_fault(self) -> dict[str, Any]:
        """Remove the forced redemption error (admin)."""
        return self._signed("DELETE", "/fault")

    # -- an organisation -------------------------------------------------------------------------

    def users(self, org: str) -> dict[str, Any]:
        """``{"users": [user]}``."""
        return self._signed("GET", f"/orgs/{_segment(org)}/users")

    def add_user(self, org: str, name: str, role: str) -> dict[str, Any]:
        """Add a user to ``org``; the answer holds the user's token, shown once."""
        return self._signed("POST", f"/orgs/{_segment(org)}/users", {"name": name, "role": role})

    def redeem(self, org: str, key: str) -> dict[str, Any]:
        """Redeem a subscription key for ``org``."""
        return self._signed("POST", f"/orgs/{_segment(org)}/redeem", {"key": key})

    def subscriptions(self, org: str) -> dict[str, Any]:
        """The organisation's subscriptions and their licences."""
        return self._signed("GET", f"/orgs/{_segment(org)}/subscriptions")

    def buy(
        self, org: str, *, offer: str, licences: int, billing: str, auto_assign: bool = False
    ) -> dict[str, Any]:
        """Buy licences of an offer for ``org``, billed monthly or yearly."""
        return self._signed(
            "POST",
            f"/orgs/{_segment(org)}/subscriptions",
            {"offer": offer, "licences": licences, "billing": billing, "auto_assign": auto_assign},
        )

    def assign(self, org: str, user: str, offer: str) -> dict[str, Any]:
        """Give ``user`` a licence of ``offer``."""
        return self._signed(
            "POST", f"/orgs/{_segment(org)}/users/{_segment(user)}/licences", {"offer": offer}
        )

    def unassign(self, org: str, user: str, offer: str) -> dict[str, Any]:
        """Take back ``user``'s licence of ``offer``."""
        return self._signed(
            "DELETE", f"/orgs/{_segment(org)}/users/{_segment(user)}/licences/{_segment(offer)}"
        )
