"""The licensing portal's routes in the MAK service's HTTP API (``docs/portal.md``).

Handlers only translate: JSON in, a ``PortalService`` call, JSON out. They and
their schemas are listed in ``PORTAL_ENDPOINTS``, which ``mak.api`` serves and
describes in ``/openapi.json``. Who is calling: ``Api.caller`` (the admin
token, or a user's token).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kmsemu.errors import REDEMPTION_ERRORS, ServiceError
from mak.portal import MAX_FAULT_TIMES, Caller
from mak.portal_rules import BILLING, ROLES, Offer
from mak.store.portal import Fault, Org, Subscription, User
from mak.store.sql import iso, parse_iso
from mak.web.base import Api, Endpoint, obj

log = logging.getLogger("kmsemu.portal")


def org_json(org: Org) -> dict[str, Any]:
    """An organisation as JSON."""
    return {
        "org": org.name,
        "country": org.country,
        "created": iso(org.created),
        "users": org.users,
        "subscriptions": org.subscriptions,
    }


def user_json(user: User) -> dict[str, Any]:
    """A user and their licences as JSON."""
    return {
        "user": user.name,
        "role": user.role,
        "licences": list(user.licences),
        "created": iso(user.created),
    }


def subscription_json(org: str, subscription: Subscription) -> dict[str, Any]:
    """A subscription of ``org`` as JSON."""
    return {
        "id": subscription.id,
        "org": org,
        "offer": subscription.offer,
        "licences": subscription.licences,
        "used": subscription.used,
        "free": subscription.free,
        "billing": subscription.billing,
        "source": subscription.source,
        "last5": subscription.last5,
        "created": iso(subscription.created),
    }


def fault_json(fault: Fault | None) -> dict[str, Any]:
    """The forced redemption error (or none) as JSON."""
    return {"fault": None if fault is None else {"code": fault.code, "remaining": fault.remaining}}


def _offer_json(api: Api, offer: Offer) -> dict[str, Any]:
    return offer.to_json(api.portal.catalog.products[offer.product].name)


# -- public ---------------------------------------------------------------------------------------


async def offers(api: Api, request: Request) -> Response:
    """Offers and their sales rules."""
    listed = await api.call(api.portal.store.offers)
    return JSONResponse({"offers": [_offer_json(api, offer) for offer in listed]})


async def signup(api: Api, request: Request) -> Response:
    """Sign up: a new organisation and its global admin, by redeeming a key."""
    body = await api.body(request)
    org, admin, token, subscription = await api.call(
        api.portal.signup, body.get("key"), body.get("org"), body.get("country"), body.get("user")
    )
    log.info(
        "signup %s (%s): admin %s, subscription %d %s ×%d",
        org.name,
        org.country,
        admin.name,
        subscription.id,
        subscription.offer,
        subscription.licences,
    )
    return JSONResponse(
        {
            "org": org.name,
            "country": org.country,
            "user": admin.name,
            "role": admin.role,
            "token": token,
            "subscription": subscription_json(org.name, subscription),
        },
        status_code=201,
    )


# -- the service administrator -------------------------------------------------------------------


async def put_offer(api: Api, request: Request) -> Response:
    """Define or redefine an offer."""
    body = await api.body(request)
    offer, created = await api.call(
        api.portal.put_offer,
        request.path_params["offer"],
        body.get("max_licences"),
        body.get("countries"),
        body.get("trial", False),
    )
    log.info(
        "offer %s %s: max %d, %s%s",
        offer.name,
        "added" if created else "changed",
        offer.max_licences,
        ",".join(sorted(offer.countries)),
        " (trial)" if offer.trial else "",
    )
    return JSONResponse(_offer_json(api, offer), status_code=201 if created else 200)


async def orgs(api: Api, request: Request) -> Response:
    """Every organisation."""
    return JSONResponse({"orgs": [org_json(org) for org in await api.call(api.portal.store.orgs)]})


async def add_org(api: Api, request: Request) -> Response:
    """Create an organisation."""
    body = await api.body(request)
    org = await api.call(api.portal.add_org, body.get("name"), body.get("country"))
    log.info("organisation %s (%s) created", org.name, org.country)
    return JSONResponse(org_json(org), status_code=201)


async def expire_key(api: Api, request: Request) -> Response:
    """Give a subscription key an expiry (default: now)."""
    body = await api.body(request)
    at = body.get("at")
    if at is not None and not isinstance(at, str):
        raise ServiceError("invalid_field", "'at' is an ISO 8601 time", field="at")
    key, when = await api.call(api.portal.expire_key, body.get("key"), parse_iso(at, "at"))
    log.info("subscription key %s …%s expires %s", key.fingerprint, key.last5, iso(when))
    return JSONResponse({"fingerprint": key.fingerprint, "last5": key.last5, "expires": iso(when)})


async def get_fault(api: Api, request: Request) -> Response:
    """The forced redemption error."""
    return JSONResponse(fault_json(await api.call(api.portal.store.fault)))


async def set_fault(api: Api, request: Request) -> Response:
    """Force a redemption error."""
    body = await api.body(request)
    times = body.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
        raise ServiceError("invalid_field", "'times' is an integer", field="times")
    fault = await api.call(api.portal.set_fault, body.get("code"), times)
    log.warning(
        "fault set: every redemption answers %s%s",
        fault.code,
        "" if fault.remaining is None else f" ({fault.remaining} times)",
    )
    return JSONResponse(fault_json(fault))


async def clear_fault(api: Api, request: Request) -> Response:
    """Stop forcing errors."""
    await api.call(api.portal.store.set_fault, None)
    log.warning("fault cleared")
    return JSONResponse(fault_json(None))


# -- an organisation's users ----------------------------------------------------------------------


async def _org(api: Api, request: Request, caller: Caller) -> Org:
    return await api.call(api.portal.org, request.path_params["org"], caller)


async def users(api: Api, request: Request) -> Response:
    """An organisation's users and their licences."""
    caller = await api.caller(request)
    org = await _org(api, request, caller)
    listed = await api.call(api.portal.store.users, org.id)
    return JSONResponse({"org": org.name, "users": [user_json(user) for user in listed]})


async def add_user(api: Api, request: Request) -> Response:
    """Add a user; the answer holds its token, shown once."""
    caller = await api.caller(request)
    body = await api.body(request)
    org = await _org(api, request, caller)
    user, token = await api.call(
        api.portal.add_user, org, caller, body.get("name"), body.get("role")
    )
    log.info("user %s (%s) added to %s", user.name, user.role, org.name)
    return JSONResponse(
        {"org": org.name, "user": user.name, "role": user.role, "token": token}, status_code=201
    )


async def redeem(api: Api, request: Request) -> Response:
    """Redeem a subscription key into the organisation."""
    caller = await api.caller(request)
    body = await api.body(request)
    org = await _org(api, request, caller)
    try:
        subscription = await api.call(api.portal.redeem, org, caller, body.get("key"))
    except ServiceError as exc:
        log.info("redeem into %s refused: %s", org.name, exc.code)
        raise
    log.info(
        "redeemed …%s into %s: %s ×%d",
        subscription.last5,
        org.name,
        subscription.offer,
        subscription.licences,
    )
    return JSONResponse(subscription_json(org.name, subscription), status_code=201)


async def subscriptions(api: Api, request: Request) -> Response:
    """Subscriptions with licences used and free, and totals per offer."""
    caller = await api.caller(request)
    org = await _org(api, request, caller)
    listed = await api.call(api.portal.store.subscriptions, org.id)
    totals: dict[str, dict[str, Any]] = {}
    for s in listed:
        total = totals.setdefault(s.offer, {"offer": s.offer, "licences": 0, "used": 0, "free": 0})
        total["licences"] += s.licences
        total["used"] += s.used
        total["free"] += s.free
    return JSONResponse(
        {
            "org": org.name,
            "country": org.country,
            "subscriptions": [subscription_json(org.name, s) for s in listed],
            "offers": list(totals.values()),
        }
    )


async def buy(api: Api, request: Request) -> Response:
    """Buy another subscription."""
    caller = await api.caller(request)
    body = await api.body(request)
    org = await _org(api, request, caller)
    purchase = await api.call(
        api.portal.buy,
        org,
        caller,
        body.get("offer"),
        body.get("licences"),
        body.get("billing"),
        body.get("auto_assign", False),
    )
    bought = purchase.subscription
    log.info(
        "%s bought %s ×%d (%s), %d assigned",
        org.name,
        bought.offer,
        bought.licences,
        bought.billing,
        len(purchase.assigned),
    )
    return JSONResponse(
        {**subscription_json(org.name, bought), "assigned": list(purchase.assigned)},
        status_code=201,
    )


def _licence_json(org: str, user: str, subscription: Subscription) -> dict[str, Any]:
    return {
        "org": org,
        "user": user,
        "offer": subscription.offer,
        "subscription": subscription_json(org, subscription),
    }


async def assign(api: Api, request: Request) -> Response:
    """Assign a licence of an offer to a user."""
    caller = await api.caller(request)
    body = await api.body(request)
    org = await _org(api, request, caller)
    user, subscription = await api.call(
        api.portal.assign, org, caller, request.path_params["user"], body.get("offer")
    )
    log.info("%s: %s licence assigned to %s", org.name, subscription.offer, user.name)
    return JSONResponse(_licence_json(org.name, user.name, subscription), status_code=201)


async def unassign(api: Api, request: Request) -> Response:
    """Remove a user's licence of an offer."""
    caller = await api.caller(request)
    org = await _org(api, request, caller)
    user, subscription = await api.call(
        api.portal.unassign, org, caller, request.path_params["user"], request.path_params["offer"]
    )
    log.info("%s: %s licence removed from %s", org.name, subscription.offer, user.name)
    return JSONResponse(_licence_json(org.name, user.name, subscription))


# -- the table -------------------------------------------------------------------------------------

_S: Final = {"type": "string"}
_I: Final = {"type": "integer"}
_B: Final = {"type": "boolean"}
_TIME: Final = {"type": ["string", "null"], "format": "date-time"}


def _shape(required: list[str], **properties: Any) -> dict[str, Any]:
    # the answers' shapes say nothing of other properties (``obj`` allows them)
    return {"type": "object", "required": required, "properties": properties}


OFFER: Final = _shape(
    ["offer", "max_licences", "countries", "trial"],
    offer=_S,
    name=_S,
    product=_I,
    max_licences=_I,
    countries={"type": "array", "items": _S},
    trial=_B,
)
ORG: Final = _shape(
    ["org", "country"], org=_S, country=_S, created=_TIME, users=_I, subscriptions=_I
)
SUBSCRIPTION: Final = _shape(
    ["id", "org", "offer", "licences", "used", "free", "source"],
    id=_I,
    org=_S,
    offer=_S,
    licences=_I,
    used=_I,
    free=_I,
    billing={"enum": [*BILLING, None]},
    source={"enum": ["key", "purchase"]},
    last5={"type": ["string", "null"]},
    created=_TIME,
)
LICENCE: Final = _shape(
    ["org", "user", "offer", "subscription"], org=_S, user=_S, offer=_S, subscription=SUBSCRIPTION
)
FAULT: Final = _shape(
    ["fault"],
    fault={
        "oneOf": [
            {"type": "null"},
            _shape(
                ["code", "remaining"],
                code={"enum": list(REDEMPTION_ERRORS)},
                remaining={"type": ["integer", "null"]},
            ),
        ]
    },
)
NEW_USER: Final = _shape(
    ["org", "user", "role", "token"], org=_S, user=_S, role={"enum": list(ROLES)}, token=_S
)

PORTAL_ENDPOINTS: Final = (
    Endpoint(
        "GET",
        "/v1/portal/offers",
        offers,
        "Offers and their sales rules",
        response=obj(["offers"], offers={"type": "array", "items": OFFER}),
    ),
    Endpoint(
        "PUT",
        "/v1/portal/offers/{offer}",
        put_offer,
        "Define or redefine an offer (a catalog product of channel subscription)",
        admin=True,
        request=obj(
            ["max_licences", "countries"],
            max_licences=_I,
            countries={"type": "array", "items": _S},
            trial=_B,
        ),
        response=OFFER,
        also={201: "a new offer"},
    ),
    Endpoint(
        "GET",
        "/v1/portal/orgs",
        orgs,
        "Every organisation",
        admin=True,
        response=obj(["orgs"], orgs={"type": "array", "items": ORG}),
    ),
    Endpoint(
        "POST",
        "/v1/portal/orgs",
        add_org,
        "Create an organisation",
        admin=True,
        status=201,
        request=obj(["name", "country"], name=_S, country=_S),
        response=ORG,
    ),
    Endpoint(
        "POST",
        "/v1/portal/signup",
        signup,
        "Sign up: a new organisation and its global admin, by redeeming a subscription key",
        status=201,
        request=obj(["key", "org", "country", "user"], key=_S, org=_S, country=_S, user=_S),
        also={429: "busy: the rate limit (Retry-After)"},
        response=obj(
            ["org", "user", "role", "token", "subscription"],
            org=_S,
            user=_S,
            role=_S,
            token=_S,
            subscription=SUBSCRIPTION,
        ),
    ),
    Endpoint(
        "GET",
        "/v1/portal/orgs/{org}/users",
        users,
        "An organisation's users and their licences",
        caller=True,
        response=obj(["org", "users"], org=_S, users={"type": "array"}),
    ),
    Endpoint(
        "POST",
        "/v1/portal/orgs/{org}/users",
        add_user,
        "Add a user; the answer holds its token, shown once",
        caller=True,
        status=201,
        request=obj(["name", "role"], name=_S, role={"enum": list(ROLES)}),
        response=NEW_USER,
    ),
    Endpoint(
        "POST",
        "/v1/portal/orgs/{org}/redeem",
        redeem,
        "Redeem a subscription key into the organisation",
        caller=True,
        status=201,
        request=obj(["key"], key=_S),
        response=SUBSCRIPTION,
        also={429: "busy: the rate limit (Retry-After)"},
    ),
    Endpoint(
        "GET",
        "/v1/portal/orgs/{org}/subscriptions",
        subscriptions,
        "Subscriptions with licences used and free, and totals per offer",
        caller=True,
        response=obj(
            ["org", "subscriptions", "offers"],
            org=_S,
            country=_S,
            subscriptions={"type": "array", "items": SUBSCRIPTION},
            offers={"type": "array"},
        ),
    ),
    Endpoint(
        "POST",
        "/v1/portal/orgs/{org}/subscriptions",
        buy,
        "Buy another subscription",
        caller=True,
        status=201,
        request=obj(
            ["offer", "licences", "billing"],
            offer=_S,
            licences={"type": "integer", "minimum": 1},
            billing={"enum": list(BILLING)},
            auto_assign=_B,
        ),
        response=SUBSCRIPTION,
    ),
    Endpoint(
        "POST",
        "/v1/portal/orgs/{org}/users/{user}/licences",
        assign,
        "Assign a licence of an offer to a user",
        caller=True,
        status=201,
        request=obj(["offer"], offer=_S),
        response=LICENCE,
    ),
    Endpoint(
        "DELETE",
        "/v1/portal/orgs/{org}/users/{user}/licences/{offer}",
        unassign,
        "Remove a user's licence of an offer",
        caller=True,
        response=LICENCE,
    ),
    Endpoint(
        "POST",
        "/v1/portal/keys/expire",
        expire_key,
        "Give a subscription key an expiry (default: now)",
        admin=True,
        request=obj(["key"], key=_S, at={"type": "string", "format": "date-time"}),
        response=obj(["fingerprint", "last5", "expires"], fingerprint=_S, last5=_S, expires=_S),
    ),
    Endpoint(
        "GET",
        "/v1/portal/fault",
        get_fault,
        "The forced redemption error",
        admin=True,
        response=FAULT,
    ),
    Endpoint(
        "PUT",
        "/v1/portal/fault",
        set_fault,
        "Force a redemption error (until cleared, or for the next 'times' redemptions)",
        admin=True,
        request=obj(
            ["code"],
            code={"enum": list(REDEMPTION_ERRORS)},
            times={"type": "integer", "minimum": 1, "maximum": MAX_FAULT_TIMES},
        ),
        response=FAULT,
    ),
    Endpoint(
        "DELETE", "/v1/portal/fault", clear_fault, "Stop forcing errors", admin=True, response=FAULT
    ),
)
