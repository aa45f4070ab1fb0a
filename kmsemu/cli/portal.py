"""``kmsemu portal``: the licensing portal of the MAK service, over its HTTP API.

Organisations, their users and tokens, offers, redeeming subscription keys, buying
subscriptions, assigning licences, and the faults that force redemption errors
(docs/portal.md). Every command talks to a running ``kmsemu mak serve`` (``--url``).
Administration sends the admin token as ``kmsemu mak`` does; commands an organisation's
user may run take ``--token`` (``KMSEMU_PORTAL_TOKEN``), and send the admin token when
none is given: the administrator acts as a global admin of every organisation.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from kmsemu.cli.common import DURATION, emit, json_option, table
from kmsemu.cli.mak import admin_token_or_file, client_options, fail_remote, parse_when
from kmsemu.errors import REDEMPTION_ERRORS
from mak.client import RemoteError
from mak.defaults import DEFAULT_URL
from mak.portal_client import PortalClient

F = TypeVar("F", bound=Callable[..., Any])

#: how long to wait for a ``busy`` answer that names no ``Retry-After``, and at least
DEFAULT_WAIT = 10.0
MIN_WAIT = 1.0
#: the real-world rule: after 15 minutes of "busy", contact support
ESCALATE_AFTER = 15 * 60.0

# the retry loop's clock, replaced by tests
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep

_REASONS = {
    "offer_not_available": "the key's product is not an offer",
    "not_in_country": "the offer is not sold in the organisation's country",
    "trial_used": "the organisation had this trial before",
}


@click.group()
def portal() -> None:
    """The licensing portal: organisations, subscription keys, subscriptions, licences."""


# -- options, client and errors ------------------------------------------------------------------


def token_option(func: F) -> F:
    """``--token`` (``KMSEMU_PORTAL_TOKEN``): a portal user's token, else the admin's."""
    return click.option(
        "--token",
        envvar="KMSEMU_PORTAL_TOKEN",
        help="A user's token (KMSEMU_PORTAL_TOKEN); default: the admin token.",
    )(func)


def _client(url: str, admin_token: str | None, token: str | None = None) -> PortalClient:
    """A client sending ``token``, else the admin token (flag, environment or file). An
    ``--admin-token`` on the command line wins over a KMSEMU_PORTAL_TOKEN environment."""
    if token is not None and admin_token is not None:
        ctx = click.get_current_context()
        if (
            ctx.get_parameter_source("token") is ParameterSource.ENVIRONMENT
            and ctx.get_parameter_source("admin_token") is ParameterSource.COMMANDLINE
        ):
            token = None
    try:
        return PortalClient(
            url, token=token if token is not None else admin_token_or_file(admin_token)
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _public_client(url: str) -> PortalClient:
    """A client without a token, for what anybody may do."""
    try:
        return PortalClient(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _duration(seconds: float) -> str:
    """Seconds as the CLI writes durations: 15m, 2h, 90s, 0.5s."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds, 1):g}s"


def _notes(exc: RemoteError, retry_after: float | None = None) -> list[str]:
    """What the text output adds to the service's message and hint for some errors."""
    body = exc.body if isinstance(exc.body, dict) else {}
    notes = [
        str(p["message"])
        for p in body.get("problems") or []
        if isinstance(p, dict) and p.get("message")
    ]
    if exc.code == "not_available" and body.get("reason"):
        reason = str(body["reason"])
        notes.append(
            f"Reason: {reason}" + (f" ({_REASONS[reason]})." if reason in _REASONS else ".")
        )
    elif body.get("token"):  # a sign-up that failed after the account was created
        org, user, token = body.get("org"), body.get("user"), body.get("token")
        notes += [
            f"Organisation {org} and its global admin {user} were created.",
            f"{user}'s token (shown only once): {token}",
            f"Redeem the key again: kmsemu portal redeem KEY --org "
            f"{shlex.quote(str(org))} --token {shlex.quote(str(token))}",
        ]
    elif exc.code == "busy":
        wait = f"in {_duration(retry_after)}" if retry_after is not None else "in a few minutes"
        notes.append(
            f"Try again {wait}, or let 'kmsemu portal redeem --retry-for 15m' retry for you."
        )
    return notes


def _answer(as_json: bool, fn: Callable[[], Any], client: PortalClient) -> Any:
    """The service's answer to ``fn()`` for text output; with --json it is printed as it
    came and None is returned. A refusal exits 1."""
    try:
        record = fn()
    except RemoteError as exc:
        _refuse(exc, client)
    if as_json:
        emit(record)
        return None
    return record


def _refuse(exc: RemoteError, client: PortalClient | None) -> NoReturn:
    retry_after = client.retry_after if client is not None else None
    fail_remote(exc, notes=_notes(exc, retry_after))


def _countries(text: str) -> list[str]:
    countries = [c.strip().upper() for c in text.split(",") if c.strip()]
    if not countries:
        raise click.BadParameter(
            "name at least one country code, e.g. GB,IE", param_hint="--countries"
        )
    return countries


def _show_subscription(sub: dict[str, Any]) -> str:
    return (
        f"subscription {sub['id']}, {sub['licences']} licences of {sub['offer']} "
        f"({sub['used']} used, {sub['free']} free)"
    )


def _role(role: Any) -> str:
    return str(role).replace("-", " ")


# -- organisations -------------------------------------------------------------------------------


@portal.group()
def org() -> None:
    """Organisations (the service administrator)."""


@org.command("create")
@click.argument("name")
@click.option(
    "--country", required=True, help="ISO 3166 country code (offers are sold per country)."
)
@client_options
@json_option
def org_create(name: str, country: str, url: str, admin_token: str | None, as_json: bool) -> None:
    """Create an organisation (admin token)."""
    client = _client(url, admin_token)
    record = _answer(as_json, lambda: client.create_org(name, country.strip().upper()), client)
    if record is not None:
        click.echo(f"Organisation {record['org']} ({record['country']}) created.")


@org.command("list")
@client_options
@json_option
def org_list(url: str, admin_token: str | None, as_json: bool) -> None:
    """Every organisation with its country, users and subscriptions (admin token)."""
    client = _client(url, admin_token)
    record = _answer(as_json, client.orgs, client)
    if record is None:
        return
    orgs = record["orgs"]
    table(
        ("org", "country", "users", "subscriptions", "created"),
        [
            (o["org"], o["country"], o.get("users"), o.get("subscriptions"), o.get("created"))
            for o in orgs
        ],
    )
    if not orgs:
        click.echo("(no organisations; create one with 'kmsemu portal org create')")


# -- users ---------------------------------------------------------------------------------------


@portal.group()
def user() -> None:
    """Users of an organisation and their tokens."""


@user.command("add")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["global-admin", "billing-admin", "user"]),
    required=True,
    help="What the user may do (docs/portal.md).",
)
@token_option
@client_options
@json_option
def user_add(
    org_name: str,
    name: str,
    role: str,
    token: str | None,
    url: str,
    admin_token: str | None,
    as_json: bool,
) -> None:
    """Add a user (admin token, or a global admin's --token); prints the user's token once."""
    client = _client(url, admin_token, token)
    record = _answer(as_json, lambda: client.add_user(org_name, name, role), client)
    if record is not None:
        click.echo(
            f"User {record['user']} added to {record['org']} as "
            f"{_role(record['role'])}; token (shown only once, keep it): "
            f"{record['token']}"
        )


@portal.command("users")
@click.argument("org_name", metavar="ORG")
@token_option
@client_options
@json_option
def users(
    org_name: str, token: str | None, url: str, admin_token: str | None, as_json: bool
) -> None:
    """An organisation's users with their roles and licences (any of its users)."""
    client = _client(url, admin_token, token)
    record = _answer(as_json, lambda: client.users(org_name), client)
    if record is None:
        return
    records = record["users"]
    table(
        ("user", "role", "licences"),
        [(u["user"], u["role"], ", ".join(u.get("licences") or []) or None) for u in records],
    )
    if not records:
        click.echo("(no users; add one with 'kmsemu portal user add')")


# -- offers --------------------------------------------------------------------------------------


@portal.group()
def offer() -> None:
    """Offers: the sales rules of the catalog's subscription products."""


@offer.command("add")
@click.argument("name")
@click.option(
    "--max-licences",
    type=click.IntRange(1, 2**31 - 1),
    required=True,
    help="User licences an organisation may hold of this offer.",
)
@click.option("--countries", required=True, help="Where it is sold: CC,CC,…")
@click.option("--trial", is_flag=True, help="A trial: an organisation may have it once.")
@client_options
@json_option
def offer_add(
    name: str,
    max_licences: int,
    countries: str,
    trial: bool,
    url: str,
    admin_token: str | None,
    as_json: bool,
) -> None:
    """Define or redefine an offer (a catalog product of channel subscription)."""
    sold_in = _countries(countries)
    client = _client(url, admin_token)
    record = _answer(
        as_json,
        lambda: client.put_offer(name, max_licences=max_licences, countries=sold_in, trial=trial),
        client,
    )
    if record is None:
        return
    verb = "defined" if client.last_status == 201 else "redefined"
    trial_text = "; a trial" if record.get("trial") else ""
    click.echo(
        f"Offer {record['offer']} {verb}: up to {record['max_licences']} licences, "
        f"sold in {', '.join(record['countries'])}{trial_text}."
    )


@portal.command("offers")
@click.option(
    "--url",
    envvar="KMSEMU_MAK_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The MAK service.",
)
@json_option
def offers(url: str, as_json: bool) -> None:
    """The offers on sale (no token needed)."""
    client = _public_client(url)
    record = _answer(as_json, client.offers, client)
    if record is None:
        return
    records = record["offers"]
    table(
        ("offer", "max_licences", "countries", "trial", "name"),
        [
            (
                o["offer"],
                o.get("max_licences"),
                ",".join(o.get("countries") or []) or None,
                "yes" if o.get("trial") else "no",
                o.get("name"),
            )
            for o in records
        ],
    )
    if not records:
        click.echo("(no offers; define one with 'kmsemu portal offer add')")


# -- redeeming and signing up --------------------------------------------------------------------


def _retry_for(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < 0:
        raise click.BadParameter("must not be negative")
    return value


def _redeem(client: PortalClient, org_name: str, key: str, retry_for: float) -> dict[str, Any]:
    """Redeem, retrying ``busy`` answers for ``retry_for`` seconds as Retry-After says."""
    deadline = _clock() + retry_for
    attempts = 0
    while True:
        attempts += 1
        try:
            return client.redeem(org_name, key)
        except RemoteError as exc:
            if exc.code != "busy" or retry_for <= 0:
                _refuse(exc, client)
            retry_after = client.retry_after
            left = deadline - _clock()
            if left <= 0:
                _still_busy(exc, retry_for, attempts)
            wait = min(
                max(retry_after if retry_after is not None else DEFAULT_WAIT, MIN_WAIT), left
            )
            click.echo(
                f"Busy (attempt {attempts}); trying again in {_duration(wait)}, "
                f"{_duration(left)} of retrying left.",
                err=True,
            )
            _sleep(wait)


def _still_busy(exc: RemoteError, retry_for: float, attempts: int) -> NoReturn:
    advice = f"Still busy after retrying for {_duration(retry_for)} ({attempts} attempts). "
    if retry_for >= ESCALATE_AFTER:
        advice += (
            "It has been busy for 15 minutes: escalate to support, naming the "
            "organisation and the key's last five characters."
        )
    else:
        advice += (
            "Escalate to support once it has been busy for 15 minutes "
            "('--retry-for 15m' waits that long)."
        )
    fail_remote(
        exc,
        notes=[advice],
        extra={"retried_for": retry_for, "attempts": attempts, "advice": advice},
    )


@portal.command()
@click.argument("key")
@click.option("--org", "org_name", required=True, help="The organisation to redeem into.")
@click.option(
    "--retry-for",
    type=DURATION,
    default=0.0,
    callback=_retry_for,
    help="While the portal answers 'busy', retry this long (e.g. 15m), waiting "
    "as its Retry-After says. Default: no retry.",
)
@token_option
@client_options
@json_option
def redeem(
    key: str,
    org_name: str,
    retry_for: float,
    token: str | None,
    url: str,
    admin_token: str | None,
    as_json: bool,
) -> None:
    """Redeem a subscription key into an organisation (a global or billing admin)."""
    client = _client(url, admin_token, token)
    record = _redeem(client, org_name, key, retry_for)
    if as_json:
        emit(record)
    else:
        click.echo(
            f"Key …{record.get('last5')} redeemed into {record['org']}: "
            f"{_show_subscription(record)}."
        )


@portal.command()
@click.argument("key")
@click.option("--org", "org_name", required=True, help="The new organisation's name.")
@click.option("--country", required=True, help="Its country code.")
@click.option("--user", "user_name", required=True, help="Its first global admin's name.")
@click.option(
    "--url",
    envvar="KMSEMU_MAK_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The MAK service.",
)
@json_option
def signup(key: str, org_name: str, country: str, user_name: str, url: str, as_json: bool) -> None:
    """Sign up: create an organisation and its global admin by redeeming a key (no token).

    Prints the admin's token (shown only once).
    """
    client = _public_client(url)
    record = _answer(
        as_json,
        lambda: client.signup(key, org=org_name, country=country.strip().upper(), user=user_name),
        client,
    )
    if record is None:
        return
    sub = record["subscription"]
    country = record.get("country") or country.strip().upper()
    click.echo(
        f"Organisation {record['org']} ({country}) created; {record['user']} is its "
        f"{_role(record['role'])}."
    )
    click.echo(f"Token (shown only once, keep it): {record['token']}")
    click.echo(f"Key …{sub.get('last5')} redeemed: {_show_subscription(sub)}.")


# -- subscriptions and licences ------------------------------------------------------------------


@portal.command()
@click.option("--org", "org_name", required=True, help="The organisation.")
@click.option("--offer", "offer_name", required=True, help="The offer to buy.")
@click.option(
    "--licences", type=click.IntRange(1, 2**31 - 1), required=True, help="User licences to buy."
)
@click.option("--billing", type=click.Choice(["monthly", "yearly"]), required=True)
@click.option(
    "--auto-assign", is_flag=True, help="Give a licence to every user without any, oldest first."
)
@token_option
@client_options
@json_option
def buy(
    org_name: str,
    offer_name: str,
    licences: int,
    billing: str,
    auto_assign: bool,
    token: str | None,
    url: str,
    admin_token: str | None,
    as_json: bool,
) -> None:
    """Buy a subscription (a global or billing admin)."""
    client = _client(url, admin_token, token)
    record = _answer(
        as_json,
        lambda: client.buy(
            org_name, offer=offer_name, licences=licences, billing=billing, auto_assign=auto_assign
        ),
        client,
    )
    if record is None:
        return
    click.echo(
        f"Bought for {record['org']}, billed {record['billing']}: {_show_subscription(record)}."
    )
    if auto_assign:
        assigned = record.get("assigned") or []
        click.echo(
            "Assigned to "
            + (", ".join(assigned) if assigned else "nobody (every user has a licence)")
            + "."
        )


@portal.command()
@click.option("--org", "org_name", required=True, help="The organisation.")
@token_option
@client_options
@json_option
def subscriptions(
    org_name: str, token: str | None, url: str, admin_token: str | None, as_json: bool
) -> None:
    """An organisation's subscriptions, licences used and free, totals per offer."""
    client = _client(url, admin_token, token)
    record = _answer(as_json, lambda: client.subscriptions(org_name), client)
    if record is None:
        return
    subs = record.get("subscriptions") or []
    click.echo(f"{record['org']} ({record.get('country')})")
    table(
        ("id", "offer", "licences", "used", "free", "billing", "source", "key", "created"),
        [
            (
                s["id"],
                s["offer"],
                s["licences"],
                s["used"],
                s["free"],
                s.get("billing"),
                s.get("source"),
                f"…{s['last5']}" if s.get("last5") else None,
                s.get("created"),
            )
            for s in subs
        ],
    )
    if not subs:
        click.echo(
            "(no subscriptions; redeem a key with 'kmsemu portal redeem' or buy one "
            "with 'kmsemu portal buy')"
        )
        return
    click.echo("")
    click.echo("Totals per offer:")
    table(
        ("offer", "licences", "used", "free"),
        [(o["offer"], o["licences"], o["used"], o["free"]) for o in record.get("offers") or []],
    )


def _licence_command(name: str, doc: str) -> click.Command:
    @click.argument("org_name", metavar="ORG")
    @click.argument("user_name", metavar="USER")
    @click.option("--offer", "offer_name", required=True, help="The offer of the licence.")
    @token_option
    @client_options
    @json_option
    def command(
        org_name: str,
        user_name: str,
        offer_name: str,
        token: str | None,
        url: str,
        admin_token: str | None,
        as_json: bool,
    ) -> None:
        client = _client(url, admin_token, token)
        change = client.assign if name == "assign" else client.unassign
        record = _answer(as_json, lambda: change(org_name, user_name, offer_name), client)
        if record is None:
            return
        sub = record["subscription"]["id"]
        if name == "assign":
            click.echo(
                f"{record['user']} now has a licence of {record['offer']} "
                f"(from subscription {sub})."
            )
        else:
            click.echo(
                f"{record['user']}'s licence of {record['offer']} is free again "
                f"(in subscription {sub})."
            )

    command.__doc__ = doc
    return portal.command(name)(command)


_licence_command("assign", "Give USER a free licence of an offer (a global or billing admin).")
_licence_command("unassign", "Take USER's licence of an offer back (a global or billing admin).")


# -- keys and faults (the service administrator) -------------------------------------------------


@portal.command()
@click.argument("key")
@click.option("--at", help="When (ISO 8601 or +DURATION); default now.")
@client_options
@json_option
def expire(key: str, at: str | None, url: str, admin_token: str | None, as_json: bool) -> None:
    """Give a subscription key an expiry: redeeming it after fails with 'expired'."""
    when = parse_when(at)
    client = _client(url, admin_token)
    record = _answer(as_json, lambda: client.expire_key(key, when), client)
    if record is not None:
        click.echo(f"Key {record['fingerprint']} (…{record['last5']}) expires {record['expires']}.")


@portal.group()
def fault() -> None:
    """Force one of the redemption errors (admin token)."""


def _show_fault(record: dict[str, Any] | None) -> None:
    """The fault in force, for text output (None: --json printed it already)."""
    if record is None:
        return
    current = record.get("fault")
    if not current:
        click.echo("No fault: redemptions are answered normally.")
        return
    code, remaining = current["code"], current.get("remaining")
    if remaining is None:
        click.echo(f"Fault: every redemption fails with {code} until 'kmsemu portal fault clear'.")
    elif remaining == 1:
        click.echo(f"Fault: the next redemption fails with {code}.")
    else:
        click.echo(f"Fault: the next {remaining} redemptions fail with {code}.")


@fault.command("set")
@click.argument("code", type=click.Choice(REDEMPTION_ERRORS), metavar="CODE")
@click.option(
    "--times",
    type=click.IntRange(1, 2**31 - 1),
    help="Only the next N redemptions (default: until 'fault clear').",
)
@client_options
@json_option
def fault_set(
    code: str, times: int | None, url: str, admin_token: str | None, as_json: bool
) -> None:
    """Make redemptions fail with CODE.

    CODE is one of invalid_key, already_entered, expired, already_used, busy,
    not_available, too_many_licences, admin_required, account_not_created,
    order_not_processed (docs/portal.md).
    """
    client = _client(url, admin_token)
    _show_fault(_answer(as_json, lambda: client.set_fault(code, times), client))


@fault.command("clear")
@client_options
@json_option
def fault_clear(url: str, admin_token: str | None, as_json: bool) -> None:
    """Stop forcing errors."""
    client = _client(url, admin_token)
    _show_fault(_answer(as_json, client.clear_fault, client))


@fault.command("show")
@client_options
@json_option
def fault_show(url: str, admin_token: str | None, as_json: bool) -> None:
    """The fault in force, if any."""
    client = _client(url, admin_token)
    _show_fault(_answer(as_json, client.fault, client))
