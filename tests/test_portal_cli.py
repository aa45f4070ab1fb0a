"""``kmsemu portal ...`` (cli.md, docs/portal.md) through click's CliRunner against a real
MAK service (BackgroundMak), and a few runs of ``python -m kmsemu portal`` as real
processes against it.

Exit codes: 0 ok, 1 refused by the service or unreachable (``{"error": {...}}`` on stdout
with --json), 2 a usage error. Administration takes --admin-token, else
KMSEMU_ADMIN_TOKEN, else ``$KMSEMU_HOME/mak/admin-token``; what an organisation's users
may do takes --token (KMSEMU_PORTAL_TOKEN), else the admin token.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import kmsemu_command, start_mak_process  # tests/ is on sys.path (rootdir)

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.errors import REDEMPTION_ERRORS, SERVICE_ERRORS
from kmsemu.keys.product_key import KeyType, mint, normalise, parse
from kmsemu.testing.mak import BackgroundMak
from mak.portal_client import PortalClient, retry_after_seconds
from mak.server import ensure_token
from tests.conftest import closed_url, mistype_key

BASIC = "m365-business-basic"  # max 25, GB and IE
PREMIUM = "m365-business-premium"  # max 5, GB only
TRIAL = "m365-business-standard"  # a trial, max 10, GB
UNSOLD = "office-365-e3"  # a subscription product without an offer
NOT_A_KEY = "BCDFG-HJKMP-QRTVW-XY234-6789B"  # docs/portal.md's invalid key

_serials = itertools.count(secrets.randbits(30) << 8)
_names = itertools.count(1)
CATALOG = default_catalog()
#: the module (``kmsemu.cli.portal`` as an attribute is the click group)
portal_cli = importlib.import_module("kmsemu.cli.portal")


@pytest.fixture(scope="module")
def svc() -> Iterator[BackgroundMak]:
    with BackgroundMak() as service:
        client = PortalClient(service.url, token=service.admin_token)
        client.put_offer(BASIC, max_licences=25, countries=["GB", "IE"])
        client.put_offer(PREMIUM, max_licences=5, countries=["GB"])
        client.put_offer(TRIAL, max_licences=10, countries=["GB"], trial=True)
        yield service


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty KMSEMU_HOME, and none of the environment's kmsemu settings."""
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    for name in (
        "KMSEMU_ADMIN_TOKEN",
        "KMSEMU_MAK_URL",
        "KMSEMU_PORTAL_TOKEN",
        "KMSEMU_SECRET",
        "KMSEMU_MAK_DB",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def no_fault(svc: BackgroundMak) -> Iterator[None]:
    """Every test starts and ends without a forced error (faults are service-wide)."""
    api = PortalClient(svc.url, token=svc.admin_token)
    api.clear_fault()
    yield
    api.clear_fault()


def portal(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["portal", *args], env=env)


def admin(svc: BackgroundMak, *args: str) -> Result:
    """A `kmsemu portal` command with the service's URL and admin token."""
    return portal(*args, "--url", svc.url, "--admin-token", svc.admin_token)


def as_user(svc: BackgroundMak, token: str, *args: str) -> Result:
    """A `kmsemu portal` command with a user's token (and no admin token anywhere)."""
    return portal(*args, "--url", svc.url, "--token", token)


def ok(result: Result) -> Any:
    """A --json command that succeeded: its one JSON object, nothing else on stdout."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def failed(result: Result, code: str) -> dict[str, Any]:
    """A --json command that failed (exit 1): its error object."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    body = json.loads(result.stdout)
    assert "error" in body and body["error"]["code"] == code, body
    assert {"code", "message", "hint"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


def refused(result: Result, message: str) -> str:
    """A text command that failed (exit 1): nothing on stdout, ``Error: message`` first."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {message}"), result.stderr
    return result.stderr


def api(svc: BackgroundMak, token: str | None = None) -> PortalClient:
    return PortalClient(svc.url, token=token or svc.admin_token)


def sub_key(offer: str = BASIC, quantity: int = 1) -> str:
    return str(
        mint(
            KeyType.SUBSCRIPTION,
            CATALOG.find(offer).number,
            serial=next(_serials),
            quantity=quantity,
        )
    )


def new_org(svc: BackgroundMak, country: str = "GB") -> tuple[str, str]:
    """A fresh organisation (the portal rate-limits redemptions per organisation) and its
    global admin's token."""
    name = f"Org {next(_names)}-{secrets.token_hex(2)}"
    client = api(svc)
    client.create_org(name, country)
    return name, client.add_user(name, "admin", "global-admin")["token"]


# -- offers ------------------------------------------------------------------------------------


def test_offer_add_and_offers_text_and_json() -> None:
    with BackgroundMak() as fresh:
        assert ok(portal("offers", "--url", fresh.url, "--json")) == {"offers": []}
        empty = portal("offers", "--url", fresh.url)
        assert (empty.exit_code, empty.stdout) == (
            0,
            "OFFER  MAX_LICENCES  COUNTRIES  TRIAL  NAME\n"
            "(no offers; define one with 'kmsemu portal offer add')\n",
        )

        added = admin(fresh, "offer", "add", BASIC, "--max-licences", "25", "--countries", "gb, ie")
        assert (added.exit_code, added.stdout) == (
            0,
            f"Offer {BASIC} defined: up to 25 licences, sold in GB, IE.\n",
        )
        again = ok(
            admin(
                fresh,
                "offer",
                "add",
                BASIC,
                "--max-licences",
                "30",
                "--countries",
                "GB",
                "--trial",
                "--json",
            )
        )
        assert again == {
            "offer": BASIC,
            "name": "Microsoft 365 Business Basic",
            "product": CATALOG.find(BASIC).number,
            "max_licences": 30,
            "countries": ["GB"],
            "trial": True,
        }
        text = admin(
            fresh, "offer", "add", BASIC, "--max-licences", "30", "--countries", "GB", "--trial"
        )
        assert text.stdout == (
            f"Offer {BASIC} redefined: up to 30 licences, sold in GB; a trial.\n"
        )

        # anybody may list offers: no token anywhere
        assert ok(portal("offers", "--url", fresh.url, "--json")) == {"offers": [again]}
        lines = portal("offers", "--url", fresh.url).stdout.splitlines()
        assert lines[0].split() == ["OFFER", "MAX_LICENCES", "COUNTRIES", "TRIAL", "NAME"]
        assert lines[1].split() == [
            BASIC,
            "30",
            "GB",
            "yes",
            "Microsoft",
            "365",
            "Business",
            "Basic",
        ]
        assert len(lines) == 2


def test_offer_add_refusals_and_usage(svc: BackgroundMak) -> None:
    error = failed(
        admin(
            svc,
            "offer",
            "add",
            "windows-11-pro",
            "--max-licences",
            "5",
            "--countries",
            "GB",
            "--json",
        ),
        "unknown_offer",
    )
    assert "m365-business-basic" in error["message"]
    failed(
        admin(svc, "offer", "add", BASIC, "--max-licences", "5", "--countries", "GBR", "--json"),
        "invalid_field",
    )
    failed(
        portal(
            "offer",
            "add",
            BASIC,
            "--max-licences",
            "5",
            "--countries",
            "GB",
            "--url",
            svc.url,
            "--json",
        ),
        "unauthorized",
    )
    failed(
        portal(
            "offer",
            "add",
            BASIC,
            "--max-licences",
            "5",
            "--countries",
            "GB",
            "--url",
            svc.url,
            "--admin-token",
            "wrong",
            "--json",
        ),
        "forbidden",
    )
    for bad in (
        ["--max-licences", "0", "--countries", "GB"],
        ["--max-licences", "x", "--countries", "GB"],
        ["--max-licences", "5", "--countries", " , "],
        ["--countries", "GB"],
        ["--max-licences", "5"],
    ):
        assert admin(svc, "offer", "add", BASIC, *bad).exit_code == 2, bad
    # nothing changed
    offers = {o["offer"]: o for o in ok(portal("offers", "--url", svc.url, "--json"))["offers"]}
    assert offers[BASIC]["max_licences"] == 25


# -- organisations and users -------------------------------------------------------------------


def test_org_create_and_list(svc: BackgroundMak) -> None:
    name = f"Contoso {secrets.token_hex(3)}"
    text = admin(svc, "org", "create", name, "--country", "gb")
    assert (text.exit_code, text.stdout) == (0, f"Organisation {name} (GB) created.\n")
    other = ok(admin(svc, "org", "create", name + " Ltd", "--country", "IE", "--json"))
    assert other["org"] == name + " Ltd" and other["country"] == "IE"
    assert (other["users"], other["subscriptions"]) == (0, 0) and other["created"]

    listed = ok(admin(svc, "org", "list", "--json"))
    assert set(listed) == {"orgs"}
    mine = [o for o in listed["orgs"] if o["org"] in (name, name + " Ltd")]
    assert [(o["org"], o["country"]) for o in mine] == [(name, "GB"), (name + " Ltd", "IE")]
    lines = admin(svc, "org", "list").stdout.splitlines()
    assert lines[0].split() == ["ORG", "COUNTRY", "USERS", "SUBSCRIPTIONS", "CREATED"]
    assert len(lines) == 1 + len(listed["orgs"])
    assert any(line.startswith(name + "  ") and "  GB  " in line for line in lines)

    refused(
        admin(svc, "org", "create", name.upper(), "--country", "GB"),
        "An organisation with this name exists.",
    )
    failed(admin(svc, "org", "create", name, "--country", "GB", "--json"), "org_exists")
    error = failed(
        admin(svc, "org", "create", "x", "--country", "Britain", "--json"), "invalid_field"
    )
    assert error["field"] == "country"
    assert admin(svc, "org", "create", "x").exit_code == 2  # --country missing
    # the admin's only: a user's token is not an admin token
    _, token = new_org(svc)
    failed(portal("org", "list", "--url", svc.url, "--admin-token", token, "--json"), "forbidden")


def test_org_list_of_an_empty_service() -> None:
    with BackgroundMak() as fresh:
        assert ok(admin(fresh, "org", "list", "--json")) == {"orgs": []}
        text = admin(fresh, "org", "list")
        assert text.stdout == (
            "ORG  COUNTRY  USERS  SUBSCRIPTIONS  CREATED\n"
            "(no organisations; create one with 'kmsemu portal org "
            "create')\n"
        )


def test_user_add_prints_the_token_once_and_users_lists_them(svc: BackgroundMak) -> None:
    org = f"Fabrikam {secrets.token_hex(3)}"
    ok(admin(svc, "org", "create", org, "--country", "GB", "--json"))
    alice = ok(admin(svc, "user", "add", org, "alice", "--role", "global-admin", "--json"))
    assert set(alice) == {"org", "user", "role", "token"}
    assert (alice["org"], alice["user"], alice["role"]) == (org, "alice", "global-admin")

    # a global admin adds users with their own token
    text = as_user(svc, alice["token"], "user", "add", org, "bob", "--role", "billing-admin")
    assert text.exit_code == 0, text.stderr
    prefix = f"User bob added to {org} as billing admin; token (shown only once, keep it): "
    assert text.stdout.startswith(prefix) and text.stdout.endswith("\n")
    bob_token = text.stdout[len(prefix) :].strip()
    assert bob_token and " " not in bob_token
    carol = ok(
        as_user(svc, alice["token"], "user", "add", org, "carol", "--role", "user", "--json")
    )

    # the tokens work: bob's for reading the organisation
    listed = ok(as_user(svc, bob_token, "users", org, "--json"))
    assert [(u["user"], u["role"], u["licences"]) for u in listed["users"]] == [
        ("alice", "global-admin", []),
        ("bob", "billing-admin", []),
        ("carol", "user", []),
    ]
    lines = as_user(svc, carol["token"], "users", org).stdout.splitlines()
    assert [line.split() for line in lines] == [
        ["USER", "ROLE", "LICENCES"],
        ["alice", "global-admin", "-"],
        ["bob", "billing-admin", "-"],
        ["carol", "user", "-"],
    ]
    # the admin token reads any organisation
    assert ok(admin(svc, "users", org, "--json"))["users"] == listed["users"]

    # who may not add users
    for token in (bob_token, carol["token"]):
        error = failed(
            as_user(svc, token, "user", "add", org, "dave", "--role", "user", "--json"),
            "admin_required",
        )
        assert error["message"] == "You must be a global admin to add users."
    refused(
        as_user(svc, alice["token"], "user", "add", org, "Bob", "--role", "user"),
        "A user with this name exists in the organisation.",
    )
    _, other_token = new_org(svc)
    failed(as_user(svc, other_token, "users", org, "--json"), "wrong_org")
    failed(
        as_user(svc, other_token, "user", "add", org, "eve", "--role", "user", "--json"),
        "wrong_org",
    )
    failed(as_user(svc, "kpt_nobody", "users", org, "--json"), "token_unknown")
    failed(portal("users", org, "--url", svc.url, "--json"), "login_required")  # no token
    failed(admin(svc, "users", "No such org", "--json"), "unknown_org")
    assert admin(svc, "user", "add", org, "x", "--role", "owner").exit_code == 2
    assert admin(svc, "user", "add", org, "x").exit_code == 2


def test_an_organisation_without_users(svc: BackgroundMak) -> None:
    org = f"Empty {secrets.token_hex(3)}"
    ok(admin(svc, "org", "create", org, "--country", "GB", "--json"))
    text = admin(svc, "users", org)
    assert text.stdout == (
        "USER  ROLE  LICENCES\n(no users; add one with 'kmsemu portal user add')\n"
    )


# -- tokens, URLs, usage -----------------------------------------------------------------------


def test_token_from_flag_environment_or_admin_token(svc: BackgroundMak, home: Path) -> None:
    org, token = new_org(svc)
    _, stranger = new_org(svc)
    url = ["--url", svc.url]
    assert ok(portal("users", org, *url, "--json", env={"KMSEMU_PORTAL_TOKEN": token}))
    # the flag wins over the environment
    assert ok(
        portal(
            "users", org, *url, "--token", token, "--json", env={"KMSEMU_PORTAL_TOKEN": stranger}
        )
    )
    failed(portal("users", org, *url, "--json", env={"KMSEMU_PORTAL_TOKEN": stranger}), "wrong_org")
    # no user token: the admin token, from the flag, the environment or the file
    assert ok(portal("users", org, *url, "--admin-token", svc.admin_token, "--json"))
    assert ok(portal("users", org, *url, "--json", env={"KMSEMU_ADMIN_TOKEN": svc.admin_token}))
    # an --admin-token typed on the command line wins over KMSEMU_PORTAL_TOKEN
    assert ok(
        portal(
            "users",
            org,
            *url,
            "--admin-token",
            svc.admin_token,
            "--json",
            env={"KMSEMU_PORTAL_TOKEN": stranger},
        )
    )
    # ... but not over a --token typed there too
    failed(
        portal("users", org, *url, "--admin-token", svc.admin_token, "--token", stranger, "--json"),
        "wrong_org",
    )
    token_file = home / "mak" / "admin-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(svc.admin_token + "\n")
    assert ok(portal("users", org, *url, "--json"))
    assert ok(portal("org", "list", *url, "--json"))
    # the URL from the environment
    assert ok(portal("offers", "--json", env={"KMSEMU_MAK_URL": svc.url}))["offers"]


def test_a_closed_port_is_unreachable() -> None:
    sock, url = closed_url()
    with sock:
        for command in (
            ["offers"],
            ["org", "list"],
            ["users", "x"],
            ["fault", "show"],
            ["redeem", NOT_A_KEY, "--org", "x"],
            ["redeem", NOT_A_KEY, "--org", "x", "--retry-for", "5m"],
            ["signup", NOT_A_KEY, "--org", "x", "--country", "GB", "--user", "u"],
            ["subscriptions", "--org", "x"],
        ):
            text = portal(*command, "--url", url)
            assert text.exit_code == 1, command
            assert text.stderr.startswith(
                "Error: 0x80072EFD A connection with the server could not be established."
            ), text.stderr
            assert url in text.stderr
            error = failed(portal(*command, "--url", url, "--json"), "unreachable")
            assert error["hresult"] == "0x80072EFD" and url in error["message"]


def test_usage_errors_exit_2(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    for command in (
        ["redeem", sub_key()],  # --org missing
        ["redeem", sub_key(), "--org", org, "--retry-for", "soon"],
        ["redeem", sub_key(), "--org", org, "--retry-for", "-1m"],
        ["signup", sub_key(), "--org", "x", "--country", "GB"],  # --user missing
        ["buy", "--org", org, "--offer", BASIC, "--licences", "0", "--billing", "monthly"],
        ["buy", "--org", org, "--offer", BASIC, "--licences", "1", "--billing", "weekly"],
        ["buy", "--org", org, "--offer", BASIC, "--licences", "1"],
        ["subscriptions"],
        ["assign", org, "--offer", BASIC],
        ["unassign", org, "admin"],
        ["expire", sub_key(), "--at", "someday"],
        ["fault", "set", "key_blocked"],
        ["fault", "set", "busy", "--times", "0"],
        ["fault"],
        ["org", "delete", org],
    ):
        result = (
            portal(*command, "--url", svc.url, "--token", token)
            if command[0] in ("redeem", "buy", "assign", "unassign", "subscriptions", "users")
            else admin(svc, *command)
        )
        assert result.exit_code == 2, (command, result.stdout, result.stderr)
    assert portal("users", org, "--url", "ftp://127.0.0.1:1").exit_code == 2
    # nothing was redeemed or bought by the refused commands
    assert ok(as_user(svc, token, "subscriptions", "--org", org, "--json"))["subscriptions"] == []


def test_help_lists_every_command() -> None:
    text = portal("--help")
    assert text.exit_code == 0
    for name in (
        "org",
        "user",
        "users",
        "offer",
        "offers",
        "redeem",
        "signup",
        "buy",
        "subscriptions",
        "assign",
        "unassign",
        "expire",
        "fault",
    ):
        assert f"  {name} " in text.stdout or f"  {name}\n" in text.stdout, name
    fault_help = portal("fault", "set", "--help").stdout
    for code in REDEMPTION_ERRORS:
        assert code in fault_help


# -- redeeming ---------------------------------------------------------------------------------


def test_redeem_text_and_json_and_subscriptions(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    key = sub_key(BASIC, 5)
    last5 = normalise(key)[-5:]
    text = as_user(svc, token, "redeem", key.lower(), "--org", org.upper())
    assert text.exit_code == 0, text.stderr
    assert re.fullmatch(
        f"Key …{last5} redeemed into {re.escape(org)}: subscription [0-9]+, "
        f"5 licences of {BASIC} \\(0 used, 5 free\\).\n",
        text.stdout,
    ), text.stdout
    assert normalise(key) not in normalise(text.stdout)

    # a billing admin redeems too, and the admin token acts as a global admin
    billing = api(svc, token).add_user(org, "bill", "billing-admin")["token"]
    second = ok(as_user(svc, billing, "redeem", sub_key(BASIC, 3), "--org", org, "--json"))
    assert set(second) == {
        "id",
        "org",
        "offer",
        "licences",
        "used",
        "free",
        "billing",
        "source",
        "last5",
        "created",
    }
    assert (
        second["offer"],
        second["licences"],
        second["used"],
        second["free"],
        second["source"],
        second["billing"],
    ) == (BASIC, 3, 0, 3, "key", None)
    third = ok(admin(svc, "redeem", sub_key(PREMIUM, 2), "--org", org, "--json"))

    listed = ok(as_user(svc, billing, "subscriptions", "--org", org, "--json"))
    assert (listed["org"], listed["country"]) == (org, "GB")
    assert [(s["offer"], s["licences"], s["last5"]) for s in listed["subscriptions"]] == [
        (BASIC, 5, last5),
        (BASIC, 3, second["last5"]),
        (PREMIUM, 2, third["last5"]),
    ]
    assert listed["offers"] == [
        {"offer": BASIC, "licences": 8, "used": 0, "free": 8},
        {"offer": PREMIUM, "licences": 2, "used": 0, "free": 2},
    ]

    lines = as_user(svc, token, "subscriptions", "--org", org).stdout.splitlines()
    assert lines[0] == f"{org} (GB)"
    assert lines[1].split() == [
        "ID",
        "OFFER",
        "LICENCES",
        "USED",
        "FREE",
        "BILLING",
        "SOURCE",
        "KEY",
        "CREATED",
    ]
    assert lines[2].split()[1:8] == [BASIC, "5", "0", "5", "-", "key", f"…{last5}"]
    assert lines[4].split()[1:8] == [PREMIUM, "2", "0", "2", "-", "key", f"…{third['last5']}"]
    assert lines[5:7] == ["", "Totals per offer:"]
    assert [line.split() for line in lines[7:]] == [
        ["OFFER", "LICENCES", "USED", "FREE"],
        [BASIC, "8", "0", "8"],
        [PREMIUM, "2", "0", "2"],
    ]


def test_subscriptions_of_an_organisation_without_any(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    assert ok(as_user(svc, token, "subscriptions", "--org", org, "--json")) == {
        "org": org,
        "country": "GB",
        "subscriptions": [],
        "offers": [],
    }
    text = as_user(svc, token, "subscriptions", "--org", org)
    assert text.stdout.splitlines()[0] == f"{org} (GB)"
    assert text.stdout.splitlines()[-1] == (
        "(no subscriptions; redeem a key with 'kmsemu "
        "portal redeem' or buy one with 'kmsemu portal "
        "buy')"
    )


def test_every_redemption_error_for_real(svc: BackgroundMak) -> None:
    org, token = new_org(svc, "IE")

    # invalid_key: not well formed (typo help), and a well-formed key that is not a
    # subscription key
    error = failed(as_user(svc, token, "redeem", NOT_A_KEY, "--org", org, "--json"), "invalid_key")
    assert error["message"] == ("The product key you entered isn't valid. Try entering it again.")
    assert error["problems"]
    good = sub_key(BASIC, 1)
    text = as_user(svc, token, "redeem", mistype_key(good), "--org", org)
    stderr = refused(text, "The product key you entered isn't valid. Try entering it again.")
    suggested = next(line for line in stderr.splitlines() if line.startswith("Did you mean: "))
    assert normalise(good) in [normalise(c) for c in suggested[14:].split(", ")]
    assert "the key's check does not match" in stderr  # the problem, in words
    foreign = good[:6] + "O" + good[7:]  # position 6 (the first of the second group)
    stderr = refused(
        as_user(svc, token, "redeem", foreign, "--org", org),
        "The product key you entered isn't valid.",
    )
    assert "position 6: keys never use 'O'" in stderr
    assert normalise(good) in normalise(stderr)  # among the candidates
    mak_key = str(mint(KeyType.MAK, 0, serial=next(_serials)))
    refused(
        as_user(svc, token, "redeem", mak_key, "--org", org),
        "This product key isn't valid. Please enter a different product key.",
    )

    # already_entered, already_used
    ok(as_user(svc, token, "redeem", good, "--org", org, "--json"))
    refused(
        as_user(svc, token, "redeem", good, "--org", org),
        "You have already entered this product key. Enter a different key.",
    )
    other, other_token = new_org(svc, "IE")
    failed(as_user(svc, other_token, "redeem", good, "--org", other, "--json"), "already_used")

    # a second organisation: the portal allows 10 attempts a minute per organisation
    org, token = new_org(svc, "IE")
    user = api(svc, token).add_user(org, "reader", "user")["token"]

    # expired: portal expire, then redeem
    late = sub_key(BASIC, 1)
    expired = ok(admin(svc, "expire", late, "--json"))
    assert (expired["fingerprint"], expired["last5"]) == (
        parse(late).fingerprint,
        normalise(late)[-5:],
    )
    refused(
        as_user(svc, token, "redeem", late, "--org", org),
        "The product key you entered has expired. Enter a different key.",
    )

    # not_available: not sold in the country, no offer for the product
    error = failed(
        as_user(svc, token, "redeem", sub_key(PREMIUM, 1), "--org", org, "--json"), "not_available"
    )
    assert error["reason"] == "not_in_country"
    stderr = refused(
        as_user(svc, token, "redeem", sub_key(UNSOLD, 1), "--org", org),
        "The requested subscription is not available.",
    )
    assert "Reason: offer_not_available (the key's product is not an offer)." in stderr

    # too_many_licences: BASIC allows 25
    error = failed(
        as_user(svc, token, "redeem", sub_key(BASIC, 26), "--org", org, "--json"),
        "too_many_licences",
    )
    assert error["maximum"] == 25
    assert "The maximum is 25 user licenses." in error["message"]

    # admin_required: a user's token
    error = failed(
        as_user(svc, user, "redeem", sub_key(BASIC, 1), "--org", org, "--json"), "admin_required"
    )
    assert error["message"] == ("You must be a global or billing admin to redeem a product key.")
    # nothing of the refused redemptions was stored
    listed = ok(as_user(svc, token, "subscriptions", "--org", org, "--json"))
    assert listed["subscriptions"] == []


def test_a_trial_is_redeemed_once(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    ok(as_user(svc, token, "redeem", sub_key(TRIAL, 2), "--org", org, "--json"))
    error = failed(
        as_user(svc, token, "redeem", sub_key(TRIAL, 2), "--org", org, "--json"), "not_available"
    )
    assert error["reason"] == "trial_used"
    text = as_user(svc, token, "redeem", sub_key(TRIAL, 2), "--org", org)
    assert "Reason: trial_used (the organisation had this trial before)." in text.stderr


def test_busy_for_real_when_an_organisation_redeems_too_often(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    client = api(svc, token)
    for _ in range(10):  # the default rate: 10 attempts a minute per organisation
        with pytest.raises(Exception, match="isn't valid"):
            client.redeem(org, NOT_A_KEY)
    error = failed(as_user(svc, token, "redeem", sub_key(), "--org", org, "--json"), "busy")
    assert 1 <= error["retry_after"] <= 60
    text = as_user(svc, token, "redeem", sub_key(), "--org", org)
    stderr = refused(
        text,
        "Sorry, we can't process your request right now. Please wait a few minutes and try again.",
    )
    assert "Try again in " in stderr
    assert "let 'kmsemu portal redeem --retry-for 15m' retry for you" in stderr
    # another organisation is not held up
    other, other_token = new_org(svc)
    ok(as_user(svc, other_token, "redeem", sub_key(), "--org", other, "--json"))


# -- forced errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", REDEMPTION_ERRORS)
def test_each_redemption_error_can_be_forced_once(svc: BackgroundMak, code: str) -> None:
    org, token = new_org(svc)
    fault = ok(admin(svc, "fault", "set", code, "--times", "1", "--json"))
    assert fault == {"fault": {"code": code, "remaining": 1}}
    assert ok(admin(svc, "fault", "show", "--json")) == fault
    key = sub_key(BASIC, 2)
    error = failed(as_user(svc, token, "redeem", key, "--org", org, "--json"), code)
    assert error["message"]
    # used up: the next redemption is answered normally, and the key was not redeemed
    assert ok(admin(svc, "fault", "show", "--json")) == {"fault": None}
    redeemed = ok(as_user(svc, token, "redeem", key, "--org", org, "--json"))
    assert redeemed["licences"] == 2


def test_fault_set_show_clear_text(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    assert admin(svc, "fault", "show").stdout == "No fault: redemptions are answered normally.\n"
    text = admin(svc, "fault", "set", "order_not_processed")
    assert (text.exit_code, text.stdout) == (
        0,
        "Fault: every redemption fails with order_not_processed until 'kmsemu portal "
        "fault clear'.\n",
    )
    assert ok(admin(svc, "fault", "show", "--json")) == {
        "fault": {"code": "order_not_processed", "remaining": None}
    }
    for _ in range(2):  # until cleared
        refused(
            as_user(svc, token, "redeem", sub_key(), "--org", org), "Your order can't be processed."
        )
    assert admin(svc, "fault", "set", "expired", "--times", "3").stdout == (
        "Fault: the next 3 redemptions fail with expired.\n"
    )
    assert admin(svc, "fault", "set", "expired", "--times", "1").stdout == (
        "Fault: the next redemption fails with expired.\n"
    )
    assert admin(svc, "fault", "show").stdout == "Fault: the next redemption fails with expired.\n"
    cleared = admin(svc, "fault", "clear")
    assert (cleared.exit_code, cleared.stdout) == (
        0,
        "No fault: redemptions are answered normally.\n",
    )
    assert ok(admin(svc, "fault", "clear", "--json")) == {"fault": None}
    ok(as_user(svc, token, "redeem", sub_key(), "--org", org, "--json"))
    # the administrator's only
    for command in (["fault", "show"], ["fault", "clear"], ["fault", "set", "busy"]):
        failed(portal(*command, "--url", svc.url, "--admin-token", token, "--json"), "forbidden")


# -- --retry-for -------------------------------------------------------------------------------


class FakeTime:
    """The retry loop's clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(portal_cli, "_clock", fake.clock)
    monkeypatch.setattr(portal_cli, "_sleep", fake.sleep)
    return fake


def test_retry_for_waits_as_retry_after_says_and_succeeds(
    svc: BackgroundMak, fake_time: FakeTime
) -> None:
    org, token = new_org(svc)
    ok(admin(svc, "fault", "set", "busy", "--times", "1", "--json"))
    text = as_user(svc, token, "redeem", sub_key(BASIC, 4), "--org", org, "--retry-for", "5m")
    assert text.exit_code == 0, text.stderr
    assert fake_time.sleeps == [60.0]  # a forced busy says Retry-After: 60
    assert text.stdout.startswith("Key …") and "4 licences of" in text.stdout
    assert "Busy (attempt 1); trying again in 1m, 5m of retrying left." in text.stderr

    ok(admin(svc, "fault", "set", "busy", "--times", "2", "--json"))
    redeemed = ok(
        as_user(
            svc, token, "redeem", sub_key(BASIC, 1), "--org", org, "--retry-for", "15m", "--json"
        )
    )
    assert redeemed["licences"] == 1 and fake_time.sleeps[1:] == [60.0, 60.0]


def test_retry_for_gives_up_with_advice_to_escalate(
    svc: BackgroundMak, fake_time: FakeTime
) -> None:
    org, token = new_org(svc)
    ok(admin(svc, "fault", "set", "busy", "--json"))
    # less than what Retry-After asks: the wait is cut to the time left, then a last try
    text = as_user(svc, token, "redeem", sub_key(), "--org", org, "--retry-for", "90s")
    assert (text.exit_code, text.stdout) == (1, "")
    assert fake_time.sleeps == [60.0, 30.0]
    assert text.stderr.splitlines() == [
        "Busy (attempt 1); trying again in 1m, 90s of retrying left.",
        "Busy (attempt 2); trying again in 30s, 30s of retrying left.",
        "Error: Sorry, we can't process your request right now. Please wait a few minutes "
        "and try again.",
        SERVICE_ERRORS["busy"].cli_hint,
        "Still busy after retrying for 90s (3 attempts). Escalate to support once it has been "
        "busy for 15 minutes ('--retry-for 15m' waits that long).",
    ]

    fake_time.sleeps.clear()
    result = as_user(svc, token, "redeem", sub_key(), "--org", org, "--retry-for", "15m", "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["error"]["code"] == "busy"
    assert sum(fake_time.sleeps) == 900 and max(fake_time.sleeps) <= 60
    assert fake_time.sleeps[0] == 60
    assert (body["retried_for"], body["attempts"]) == (900, len(fake_time.sleeps) + 1)
    assert body["advice"].startswith(
        f"Still busy after retrying for 15m ({body['attempts']} "
        "attempts). It has been busy for 15 minutes: escalate "
        "to support"
    )


def test_retry_for_does_not_retry_other_errors(svc: BackgroundMak, fake_time: FakeTime) -> None:
    org, token = new_org(svc)
    ok(admin(svc, "fault", "set", "order_not_processed", "--json"))
    failed(
        as_user(svc, token, "redeem", sub_key(), "--org", org, "--retry-for", "15m", "--json"),
        "order_not_processed",
    )
    assert fake_time.sleeps == []


def test_retry_after_header_forms() -> None:
    from datetime import UTC, datetime

    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("60") == 60.0
    assert retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds("Tue, 01 Jan 2030 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Tue, 01 Jan 2030 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


# -- signing up --------------------------------------------------------------------------------


def test_signup_creates_the_organisation_and_prints_the_admin_token(
    svc: BackgroundMak,
) -> None:
    org = f"Northwind {secrets.token_hex(3)}"
    key = sub_key(BASIC, 3)
    text = portal(
        "signup", key, "--org", org, "--country", "ie", "--user", "nancy", "--url", svc.url
    )  # no token anywhere
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"Organisation {org} (IE) created; nancy is its global admin."
    assert lines[1].startswith("Token (shown only once, keep it): ")
    token = lines[1].split(": ", 1)[1]
    assert lines[2].startswith(f"Key …{normalise(key)[-5:]} redeemed: subscription ")
    assert lines[2].endswith(f", 3 licences of {BASIC} (0 used, 3 free).")
    # the token is nancy's, a global admin of the new organisation
    users = ok(as_user(svc, token, "users", org, "--json"))["users"]
    assert [(u["user"], u["role"]) for u in users] == [("nancy", "global-admin")]

    other = ok(
        portal(
            "signup",
            sub_key(BASIC, 1),
            "--org",
            org + " 2",
            "--country",
            "GB",
            "--user",
            "olga",
            "--url",
            svc.url,
            "--json",
        )
    )
    assert {"org", "user", "role", "token", "subscription"} <= set(other)
    assert (other["org"], other["user"], other["role"]) == (org + " 2", "olga", "global-admin")
    assert other["subscription"]["licences"] == 1

    # a key that cannot be redeemed leaves no organisation behind
    failed(
        portal(
            "signup",
            key,
            "--org",
            org + " 3",
            "--country",
            "IE",
            "--user",
            "x",
            "--url",
            svc.url,
            "--json",
        ),
        "already_used",
    )
    failed(
        portal(
            "signup",
            sub_key(PREMIUM, 1),
            "--org",
            org + " 3",
            "--country",
            "IE",
            "--user",
            "x",
            "--url",
            svc.url,
            "--json",
        ),
        "not_available",
    )
    assert org + " 3" not in [o["org"] for o in api(svc).orgs()["orgs"]]
    failed(
        portal(
            "signup",
            sub_key(),
            "--org",
            org,
            "--country",
            "IE",
            "--user",
            "x",
            "--url",
            svc.url,
            "--json",
        ),
        "org_exists",
    )


@pytest.mark.parametrize("code", ["account_not_created", "order_not_processed"])
def test_signup_that_fails_after_the_account_prints_the_token(
    svc: BackgroundMak, code: str
) -> None:
    org = f"Tailspin {secrets.token_hex(3)}"
    key = sub_key(BASIC, 2)
    ok(admin(svc, "fault", "set", code, "--times", "1", "--json"))
    error = failed(
        portal(
            "signup",
            key,
            "--org",
            org,
            "--country",
            "GB",
            "--user",
            "tom",
            "--url",
            svc.url,
            "--json",
        ),
        code,
    )
    assert (error["org"], error["user"]) == (org, "tom")
    token = error["token"]
    # the organisation and its admin exist; the key was not redeemed: redeem it again
    assert ok(as_user(svc, token, "subscriptions", "--org", org, "--json"))["subscriptions"] == []
    ok(as_user(svc, token, "redeem", key, "--org", org, "--json"))

    ok(admin(svc, "fault", "set", code, "--times", "1", "--json"))
    text = portal(
        "signup",
        sub_key(),
        "--org",
        org + " B",
        "--country",
        "GB",
        "--user",
        "ann",
        "--url",
        svc.url,
    )
    stderr = refused(text, "")
    lines = stderr.splitlines()
    assert f"Organisation {org} B and its global admin ann were created." in lines
    token_line = next(line for line in lines if line.startswith("ann's token (shown only once): "))
    token = token_line.split(": ", 1)[1]
    assert (
        f"Redeem the key again: kmsemu portal redeem KEY --org '{org} B' --token {token}"
    ) in lines
    assert ok(as_user(svc, token, "users", org + " B", "--json"))["users"][0]["user"] == "ann"


# -- buying and assigning ----------------------------------------------------------------------


def test_buy_text_json_and_auto_assign(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    client = api(svc, token)
    client.add_user(org, "u1", "user")
    client.add_user(org, "u2", "user")
    text = as_user(
        svc,
        token,
        "buy",
        "--org",
        org,
        "--offer",
        BASIC,
        "--licences",
        "2",
        "--billing",
        "monthly",
        "--auto-assign",
    )
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"Bought for {org}, billed monthly: subscription ")
    assert lines[0].endswith(f", 2 licences of {BASIC} (2 used, 0 free).")
    assert lines[1] == "Assigned to admin, u1."  # oldest first, while licences last

    bought = ok(
        as_user(
            svc,
            token,
            "buy",
            "--org",
            org,
            "--offer",
            BASIC,
            "--licences",
            "3",
            "--billing",
            "yearly",
            "--auto-assign",
            "--json",
        )
    )
    assert (
        bought["offer"],
        bought["licences"],
        bought["used"],
        bought["free"],
        bought["billing"],
        bought["source"],
        bought["last5"],
        bought["assigned"],
    ) == (BASIC, 3, 1, 2, "yearly", "purchase", None, ["u2"])
    again = as_user(
        svc,
        token,
        "buy",
        "--org",
        org,
        "--offer",
        PREMIUM,
        "--licences",
        "1",
        "--billing",
        "yearly",
        "--auto-assign",
    )
    assert again.stdout.splitlines()[1] == "Assigned to nobody (every user has a licence)."
    plain = as_user(
        svc,
        token,
        "buy",
        "--org",
        org,
        "--offer",
        PREMIUM,
        "--licences",
        "1",
        "--billing",
        "monthly",
    )
    assert len(plain.stdout.splitlines()) == 1

    users = {
        u["user"]: u["licences"] for u in ok(as_user(svc, token, "users", org, "--json"))["users"]
    }
    assert users == {"admin": [BASIC], "u1": [BASIC], "u2": [BASIC]}
    totals = ok(as_user(svc, token, "subscriptions", "--org", org, "--json"))["offers"]
    assert totals == [
        {"offer": BASIC, "licences": 5, "used": 3, "free": 2},
        {"offer": PREMIUM, "licences": 2, "used": 0, "free": 2},
    ]


def test_buy_obeys_the_offer_and_the_role(svc: BackgroundMak) -> None:
    org, token = new_org(svc, "IE")
    user = api(svc, token).add_user(org, "reader", "user")["token"]
    buy = ["buy", "--org", org, "--billing", "monthly", "--licences"]
    error = failed(as_user(svc, token, *buy, "1", "--offer", PREMIUM, "--json"), "not_available")
    assert error["reason"] == "not_in_country"
    error = failed(as_user(svc, token, *buy, "26", "--offer", BASIC, "--json"), "too_many_licences")
    assert error["maximum"] == 25
    refused(
        as_user(svc, user, *buy, "1", "--offer", BASIC),
        "You must be a global or billing admin to buy subscriptions.",
    )
    failed(as_user(svc, token, *buy, "1", "--offer", "no-such-offer", "--json"), "unknown_offer")
    assert ok(as_user(svc, token, "subscriptions", "--org", org, "--json"))["subscriptions"] == []


def test_assign_and_unassign(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    client = api(svc, token)
    client.add_user(org, "ann", "user")
    client.add_user(org, "ben", "user")
    first = ok(as_user(svc, token, "redeem", sub_key(BASIC, 1), "--org", org, "--json"))

    text = as_user(svc, token, "assign", org, "ann", "--offer", BASIC)
    assert (text.exit_code, text.stdout) == (
        0,
        f"ann now has a licence of {BASIC} (from subscription {first['id']}).\n",
    )
    stderr = refused(
        as_user(svc, token, "assign", org, "ben", "--offer", BASIC), "There are no free licences"
    )
    assert "kmsemu portal buy" in stderr  # the hint
    failed(
        as_user(svc, token, "assign", org, "ann", "--offer", BASIC, "--json"), "already_assigned"
    )
    failed(as_user(svc, token, "assign", org, "nobody", "--offer", BASIC, "--json"), "unknown_user")
    failed(as_user(svc, token, "unassign", org, "ben", "--offer", BASIC, "--json"), "not_assigned")
    reader = client.add_user(org, "reader", "user")["token"]
    error = failed(
        as_user(svc, reader, "unassign", org, "ann", "--offer", BASIC, "--json"), "admin_required"
    )
    assert "remove licences" in error["message"]

    removed = ok(as_user(svc, token, "unassign", org, "ann", "--offer", BASIC, "--json"))
    assert (removed["org"], removed["user"], removed["offer"]) == (org, "ann", BASIC)
    assert removed["subscription"]["id"] == first["id"]
    assert removed["subscription"]["free"] == 1
    # names are case-insensitive; the answer spells them as stored
    assigned = ok(admin(svc, "assign", org.upper(), "BEN", "--offer", BASIC, "--json"))
    assert (assigned["org"], assigned["user"], assigned["subscription"]["used"]) == (org, "ben", 1)
    text = as_user(svc, token, "unassign", org, "ben", "--offer", BASIC)
    assert (text.exit_code, text.stdout) == (
        0,
        f"ben's licence of {BASIC} is free again (in subscription {first['id']}).\n",
    )


# -- expire ------------------------------------------------------------------------------------


def test_expire_now_or_at_a_time(svc: BackgroundMak) -> None:
    org, token = new_org(svc)
    later = sub_key()
    record = ok(admin(svc, "expire", later, "--at", "2099-01-01T00:00:00Z", "--json"))
    assert record == {
        "fingerprint": parse(later).fingerprint,
        "last5": normalise(later)[-5:],
        "expires": "2099-01-01T00:00:00+00:00",
    }
    ok(as_user(svc, token, "redeem", later, "--org", org, "--json"))  # not yet expired

    soon = sub_key()
    text = admin(svc, "expire", soon, "--at", "+30d")
    assert text.exit_code == 0
    assert text.stdout.startswith(
        f"Key {parse(soon).fingerprint} (…{normalise(soon)[-5:]}) expires 20"
    )
    past = sub_key()
    ok(admin(svc, "expire", past, "--at", "2001-01-01", "--json"))
    failed(as_user(svc, token, "redeem", past, "--org", org, "--json"), "expired")
    failed(admin(svc, "expire", NOT_A_KEY, "--json"), "invalid_key")
    failed(
        portal("expire", sub_key(), "--url", svc.url, "--admin-token", token, "--json"), "forbidden"
    )


# -- real processes ----------------------------------------------------------------------------


def run_process(
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m kmsemu portal ...`` with none of the caller's kmsemu settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KMSEMU_")}
    return subprocess.run(
        kmsemu_command("portal", *args),
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_process_redeem_retries_a_busy_answer_and_succeeds(
    svc: BackgroundMak, tmp_path: Path
) -> None:
    org, token = new_org(svc)
    ok(admin(svc, "fault", "set", "busy", "--times", "1", "--json"))
    started = time.monotonic()
    done = run_process(
        "redeem",
        sub_key(BASIC, 2),
        "--org",
        org,
        "--retry-for",
        "1s",
        "--json",
        env={"KMSEMU_MAK_URL": svc.url, "KMSEMU_PORTAL_TOKEN": token, "KMSEMU_HOME": str(tmp_path)},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["licences"] == 2
    assert "Busy (attempt 1); trying again in " in done.stderr
    assert elapsed >= 1.0  # Retry-After (60 s) cut to what --retry-for left


def test_process_redeem_gives_up_after_retry_for(svc: BackgroundMak, tmp_path: Path) -> None:
    org, token = new_org(svc)
    ok(admin(svc, "fault", "set", "busy", "--json"))
    env = {"KMSEMU_MAK_URL": svc.url, "KMSEMU_PORTAL_TOKEN": token, "KMSEMU_HOME": str(tmp_path)}
    done = run_process("redeem", sub_key(), "--org", org, "--retry-for", "0.5s", env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0].startswith("Busy (attempt 1); trying again in ")
    assert lines[1].startswith("Error: Sorry, we can't process your request right now.")
    assert "Still busy after retrying for 0.5s (2 attempts)." in done.stderr
    assert "support" in done.stderr
    as_json = run_process(
        "redeem", sub_key(), "--org", org, "--retry-for", "0.5s", "--json", env=env
    )
    body = json.loads(as_json.stdout)
    assert (as_json.returncode, body["error"]["code"], body["attempts"]) == (1, "busy", 2)


def test_process_walk_through_with_environment(svc: BackgroundMak, tmp_path: Path) -> None:
    """Administrator, then a global admin, as a script would run them."""
    env = {
        "KMSEMU_MAK_URL": svc.url,
        "KMSEMU_ADMIN_TOKEN": svc.admin_token,
        "KMSEMU_HOME": str(tmp_path),
    }
    org = f"Process {secrets.token_hex(3)}"
    created = run_process("org", "create", org, "--country", "GB", env=env)
    assert created.returncode == 0, created.stderr
    added = run_process("user", "add", org, "gina", "--role", "global-admin", "--json", env=env)
    token = json.loads(added.stdout)["token"]
    user_env = {
        "KMSEMU_MAK_URL": svc.url,
        "KMSEMU_PORTAL_TOKEN": token,
        "KMSEMU_HOME": str(tmp_path),
    }
    redeemed = run_process("redeem", sub_key(BASIC, 2), "--org", org, env=user_env)
    assert redeemed.returncode == 0 and "2 licences of" in redeemed.stdout
    refused_ = run_process("redeem", NOT_A_KEY, "--org", org, "--json", env=user_env)
    assert refused_.returncode == 1
    assert json.loads(refused_.stdout)["error"]["code"] == "invalid_key"
    usage = run_process("fault", "set", "nonsense", env=env)
    assert usage.returncode == 2


@pytest.mark.slow
def test_with_a_real_serve_and_its_token_file(tmp_path: Path) -> None:
    """`kmsemu mak serve` without --admin-token keeps one in $KMSEMU_HOME/mak/admin-token;
    the portal commands find it there."""
    home = tmp_path / "home"
    ensure_token(home / "mak")
    service = start_mak_process(home)
    try:
        env = {"KMSEMU_HOME": str(home), "KMSEMU_MAK_URL": service.url}
        steps = [
            ["offer", "add", BASIC, "--max-licences", "10", "--countries", "GB"],
            ["org", "create", "Real", "--country", "GB"],
            ["redeem", sub_key(BASIC, 3), "--org", "Real"],  # the admin token
            ["subscriptions", "--org", "Real"],
        ]
        for step in steps:
            done = run_process(*step, env=env)
            assert done.returncode == 0, (step, done.stderr)
        assert "Totals per offer:" in done.stdout
        assert done.stdout.splitlines()[-1].split() == [BASIC, "3", "0", "3"]
    finally:
        service.stop()
