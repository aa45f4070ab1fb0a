"""``kmsemu mak ...`` (cli.md) through click's CliRunner against a real MAK service
(BackgroundMak), and ``kmsemu mak serve`` once as a real process.

Exit codes: 0 ok, 1 the operation failed (``{"error": {...}}`` on stdout with
--json), 2 a usage error. Administration takes --admin-token, else
KMSEMU_ADMIN_TOKEN, else the token file ``$KMSEMU_HOME/mak/admin-token``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import kmsemu_command, start_mak_process  # tests/ is on sys.path (rootdir)

from kmsemu.cli import main
from kmsemu.keys.activation_ids import installation_id, verify_confirmation_id
from kmsemu.keys.product_key import KeyType, mint, normalise, parse
from kmsemu.testing.mak import BackgroundMak
from mak.client import MakClient
from mak.defaults import token_file
from mak.server import ensure_token
from tests.conftest import closed_url, mistype_key

_serials = itertools.count(secrets.randbits(30) << 10)
KEY_FIELDS = {"fingerprint", "last5", "used", "limit", "remaining", "blocked", "expires"}


@pytest.fixture(scope="module")
def svc() -> Iterator[BackgroundMak]:
    with BackgroundMak() as service:
        yield service


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty KMSEMU_HOME, and none of the environment's kmsemu settings."""
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    for name in ("KMSEMU_ADMIN_TOKEN", "KMSEMU_MAK_URL", "KMSEMU_SECRET", "KMSEMU_MAK_DB"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def mak(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["mak", *args], env=env)


def admin(svc: BackgroundMak, *args: str) -> Result:
    """A `kmsemu mak` command with the service's URL and token."""
    return mak(*args, "--url", svc.url, "--admin-token", svc.admin_token)


def ok(result: Result) -> Any:
    """A --json command that succeeded: its one JSON object, nothing else on stdout."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def failed(result: Result, code: str) -> dict[str, Any]:
    """A --json command that failed (exit 1): its error object."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    body = json.loads(result.stdout)
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert {"code", "message", "hint"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


def fresh_key(key_type: KeyType = KeyType.MAK) -> str:
    return str(mint(key_type, 0, serial=next(_serials)))


def fp(key: str) -> str:
    return parse(key).fingerprint


def hw(n: int | str) -> bytes:
    return hashlib.sha256(f"cli machine {n}".encode()).digest()[:10]


def iid(key: str, hardware: bytes) -> str:
    return installation_id(parse(key).type, fp(key), hardware)


# -- add-key ---------------------------------------------------------------------------------


def test_add_key_text_and_json(svc: BackgroundMak) -> None:
    key = fresh_key()
    text = admin(svc, "add-key", key, "--limit", "5")
    assert text.exit_code == 0, text.stderr
    last5 = normalise(key)[-5:]
    assert text.stdout == (
        f"Key {fp(key)} (…{last5}) added.\nmak: 0 of 5 used, 5 remaining; expires never\n"
    )
    assert normalise(key) not in normalise(text.stdout)

    other = fresh_key()
    record = ok(admin(svc, "add-key", other, "--limit", "7", "--expires", "2031-02-03", "--json"))
    assert set(record) >= KEY_FIELDS
    assert (
        record["fingerprint"],
        record["last5"],
        record["used"],
        record["limit"],
        record["remaining"],
        record["blocked"],
        record["type"],
    ) == (fp(other), normalise(other)[-5:], 0, 7, 7, False, "mak")
    assert record["expires"] == "2031-02-03T00:00:00+00:00"
    relative = ok(admin(svc, "add-key", fresh_key(), "--limit", "1", "--expires", "+30d", "--json"))
    assert relative["expires"] is not None

    retail = ok(admin(svc, "add-key", fresh_key(KeyType.RETAIL), "--json"))
    host = ok(admin(svc, "add-key", fresh_key(KeyType.KMS_HOST), "--json"))
    assert (retail["type"], retail["limit"], host["type"], host["limit"]) == (
        "retail",
        1,
        "kms-host",
        6,
    )


def test_add_key_twice_is_key_exists(svc: BackgroundMak) -> None:
    key = fresh_key()
    assert admin(svc, "add-key", key, "--limit", "2").exit_code == 0
    failed(admin(svc, "add-key", key, "--limit", "2", "--json"), "key_exists")
    text = admin(svc, "add-key", key.lower(), "--limit", "9")
    assert text.exit_code == 1 and text.stdout == ""
    assert text.stderr.startswith("Error: This key is already registered.")
    assert "kmsemu mak increase" in text.stderr  # the hint


def test_add_key_of_a_mistyped_key_suggests_the_key(svc: BackgroundMak) -> None:
    key = fresh_key()
    text = admin(svc, "add-key", mistype_key(key), "--limit", "2")
    assert text.exit_code == 1
    assert text.stderr.startswith("Error: 0xC004C001 ")
    suggested = next(line for line in text.stderr.splitlines() if line.startswith("Did you mean: "))
    assert normalise(key) in [normalise(c) for c in suggested[14:].split(", ")]
    error = failed(
        admin(svc, "add-key", mistype_key(key), "--limit", "2", "--json"), "key_malformed"
    )
    assert error["hresult"] == "0xC004C001"
    assert error["problems"][0]["code"] == "check_failed"
    assert normalise(key) in [normalise(c) for c in error["candidates"]]
    # nothing was registered
    failed(mak("count", key, "--url", svc.url, "--json"), "key_unknown")


def test_a_mak_needs_its_limit(svc: BackgroundMak) -> None:
    key = fresh_key()
    error = failed(admin(svc, "add-key", key, "--json"), "invalid_field")
    assert error["field"] == "limit"
    text = admin(svc, "add-key", key)
    assert text.exit_code == 1 and "a MAK needs its activation limit" in text.stderr
    assert admin(svc, "add-key", key, "--limit", "-1").exit_code == 2  # click's range


# -- key administration ----------------------------------------------------------------------


@pytest.mark.parametrize("by", ["key", "fingerprint"])
def test_increase_block_unblock_expire(svc: BackgroundMak, by: str) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "2", "--json"))
    name = key if by == "key" else fp(key)
    last5 = normalise(key)[-5:]

    increased = ok(admin(svc, "increase", name, "--by", "3", "--reason", "new lab", "--json"))
    assert (increased["limit"], increased["base_limit"], increased["increased"]) == (5, 2, 3)
    text = admin(svc, "increase", name, "--by", "1")
    assert text.exit_code == 0
    assert text.stdout.splitlines() == [
        f"Key {fp(key)} (…{last5}) increased by 1.",
        "mak: 0 of 6 used, 6 remaining; expires never",
    ]

    assert ok(admin(svc, "block", name, "--json"))["blocked"] is True
    assert admin(svc, "block", name).stdout.splitlines() == [
        f"Key {fp(key)} (…{last5}) blocked.",
        "mak: 0 of 6 used, 6 remaining, blocked; expires never",
    ]
    refused = mak("phone", iid(key, hw(1)), "--url", svc.url)
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: 0xC004C003 ")
    assert ok(admin(svc, "unblock", name, "--json"))["blocked"] is False
    assert ok(mak("phone", iid(key, hw(1)), "--url", svc.url, "--json"))["counted"] is True

    later = ok(admin(svc, "expire", name, "--at", "2099-01-01T00:00:00Z", "--json"))
    assert later["expires"] == "2099-01-01T00:00:00+00:00"
    assert ok(admin(svc, "expire", name, "--at", "+30d", "--json"))["expires"] < "2099"
    assert ok(mak("phone", iid(key, hw(2)), "--url", svc.url, "--json"))["counted"] is True
    now = admin(svc, "expire", name)
    assert now.exit_code == 0 and now.stdout.startswith(f"Key {fp(key)} (…{last5}) expired.")
    expired = failed(mak("phone", iid(key, hw(3)), "--url", svc.url, "--json"), "key_expired")
    assert expired["hresult"] == "0xC004C031"

    shown = ok(admin(svc, "show", name, "--json"))
    assert (shown["used"], len(shown["machines"])) == (2, 2)
    assert [(i["amount"], i["reason"]) for i in shown["increases"]] == [(3, "new lab"), (1, "")]


def test_admin_commands_on_an_unknown_key(svc: BackgroundMak) -> None:
    for command in (["increase", "--by", "1"], ["block"], ["unblock"], ["expire"], ["show"]):
        error = failed(admin(svc, command[0], fresh_key(), *command[1:], "--json"), "key_unknown")
        assert error["hresult"] == "0xC004C001"
        text = admin(svc, command[0], "0123456789abcdef", *command[1:])
        assert text.exit_code == 1 and text.stderr.startswith("Error: 0xC004C001 ")


def test_admin_command_with_a_mistyped_key_fails_like_add_key(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "1", "--json"))
    failed(admin(svc, "block", mistype_key(key), "--json"), "key_malformed")


def test_admin_command_with_a_mistyped_key_suggests_it_as_typed(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "1", "--json"))
    result = admin(svc, "block", mistype_key(key))
    assert result.exit_code != 0
    assert key in result.stderr


def test_keys_listing_text_and_json(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "3", "--json"))
    MakClient(svc.url).activate(key, hw(1).hex())
    listed = ok(admin(svc, "keys", "--json"))
    assert set(listed) == {"keys"}
    for record in listed["keys"]:
        assert set(record) >= KEY_FIELDS
    mine = [r for r in listed["keys"] if r["fingerprint"] == fp(key)]
    assert [(r["used"], r["limit"], r["remaining"], r["blocked"], r["expires"]) for r in mine] == [
        (1, 3, 2, False, None)
    ]

    text = admin(svc, "keys")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        "FINGERPRINT",
        "LAST5",
        "TYPE",
        "USED",
        "LIMIT",
        "REMAINING",
        "BLOCKED",
        "EXPIRES",
    ]
    row = next(line for line in lines if line.startswith(fp(key)))
    assert row.split() == [fp(key), normalise(key)[-5:], "mak", "1", "3", "2", "False", "-"]
    assert len(lines) == 1 + len(listed["keys"])
    assert normalise(key) not in normalise(text.stdout)


def test_keys_listing_of_an_empty_service() -> None:
    with BackgroundMak() as empty:
        assert ok(admin(empty, "keys", "--json")) == {"keys": []}
        text = admin(empty, "keys")
        assert (text.exit_code, text.stdout) == (
            0,
            "FINGERPRINT  LAST5  TYPE  USED  LIMIT  REMAINING  BLOCKED  EXPIRES\n"
            "(no keys; add one with 'kmsemu mak add-key')\n",
        )


def test_show_text_and_json(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "3", "--json"))
    ok(admin(svc, "increase", key, "--by", "2", "--reason", "pilot", "--json"))
    MakClient(svc.url).activate(key, hw(1).hex(), machine_name="PC-1")
    MakClient(svc.url).phone(iid(key, hw(2)))
    shown = ok(admin(svc, "show", key, "--json"))
    assert set(shown) >= KEY_FIELDS
    assert [(m["hardware_id"], m["machine_name"], m["route"]) for m in shown["machines"]] == [
        (hw(1).hex(), "PC-1", "online"),
        (hw(2).hex(), None, "phone"),
    ]
    text = admin(svc, "show", fp(key))
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "mak: 2 of 5 used, 3 remaining; expires never"
    assert lines[1].startswith("increase +2 at ") and lines[1].endswith(" pilot")
    assert lines[2].startswith(f"machine {hw(1).hex()} PC-1 online first ")
    assert lines[3].startswith(f"machine {hw(2).hex()} - phone first ")


def test_count_needs_only_the_key(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "3", "--json"))
    MakClient(svc.url).activate(key, hw(1).hex())
    counted = ok(mak("count", key, "--url", svc.url, "--json"))  # no token anywhere
    assert (counted["used"], counted["limit"], counted["remaining"]) == (1, 3, 2)
    text = mak("count", key, "--url", svc.url)
    assert (text.exit_code, text.stdout) == (0, "mak: 1 of 3 used, 2 remaining; expires never\n")
    failed(mak("count", fresh_key(), "--url", svc.url, "--json"), "key_unknown")
    failed(mak("count", mistype_key(key), "--url", svc.url, "--json"), "key_malformed")


# -- phone and proxy activation ----------------------------------------------------------------


def test_phone_one_argument_or_nine_groups(svc: BackgroundMak) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "3", "--json"))
    installation = iid(key, hw(1))
    answer = ok(mak("phone", installation, "--machine-name", "DESK-1", "--url", svc.url, "--json"))
    assert verify_confirmation_id(installation, answer["confirmation_id"], svc.secret).valid
    assert (answer["counted"], answer["remaining"]) == (True, 2)

    groups = installation.split("-")
    assert len(groups) == 9
    text = mak("phone", *groups, "--url", svc.url)
    assert text.exit_code == 0
    assert text.stdout == (
        f"Confirmation ID: {answer['confirmation_id']}\nRemaining activations: 2\n"
    )
    shown = MakClient(svc.url, token=svc.admin_token).key(fp(key))
    assert [(m["machine_name"], m["route"]) for m in shown["machines"]] == [("DESK-1", "phone")]

    groups[4] = str((int(groups[4][0]) + 1) % 10) + groups[4][1:]
    error = failed(mak("phone", *groups, "--url", svc.url, "--json"), "installation_id_invalid")
    assert error["failed_groups"] == [5]
    text = mak("phone", "-".join(groups), "--url", svc.url)
    assert text.exit_code == 1 and text.stderr.startswith("Error: The installation ID")
    assert mak("phone", "--url", svc.url).exit_code == 2  # no IID: usage


def test_proxy_activate_file_formats(svc: BackgroundMak, tmp_path: Path) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "10", "--json"))
    ids = [iid(key, hw(n)) for n in range(3)]
    formats: dict[str, Any] = {
        "strings": ids,
        "objects": [{"installation_id": i, "machine_name": f"PX-{n}"} for n, i in enumerate(ids)],
        "wrapped": {"installation_ids": ids},
    }
    for name, content in formats.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        answer = ok(mak("proxy-activate", str(path), "--url", svc.url, "--json"))
        assert (answer["activated"], answer["failed"]) == (3, 0), name
        for result, installation in zip(answer["results"], ids, strict=True):
            assert verify_confirmation_id(installation, result["confirmation_id"], svc.secret).valid
    assert MakClient(svc.url).count(key)["used"] == 3  # the same three machines each time
    names = [
        m["machine_name"]
        for m in MakClient(svc.url, token=svc.admin_token).key(fp(key))["machines"]
    ]
    assert names == [None, None, None]  # first counted by the list of strings

    text = mak("proxy-activate", str(tmp_path / "strings.json"), "--url", svc.url)
    assert text.exit_code == 0
    assert text.stdout.splitlines() == [
        f"{i}  {r['confirmation_id']}" for i, r in zip(ids, answer["results"], strict=True)
    ]
    assert "3 confirmed, 0 refused" in text.stderr


def test_proxy_activate_exits_1_when_any_is_refused(svc: BackgroundMak, tmp_path: Path) -> None:
    key = fresh_key()
    ok(admin(svc, "add-key", key, "--limit", "1", "--json"))
    good = iid(key, hw(1))
    groups = iid(key, hw(2)).split("-")
    groups[0] = str((int(groups[0][0]) + 1) % 10) + groups[0][1:]
    bad = "-".join(groups)
    over = iid(key, hw(3))  # a second machine on a key of limit 1
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([good, bad, good, over]))
    out = tmp_path / "results.json"

    result = mak("proxy-activate", str(path), "--out", str(out), "--url", svc.url, "--json")
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer.pop("error")["code"] == "proxy_refused"  # beside the service's answer
    assert json.loads(out.read_text()) == answer
    assert (answer["activated"], answer["failed"]) == (2, 2)
    codes = [r.get("error", {}).get("code") for r in answer["results"]]
    assert codes == [None, "installation_id_invalid", None, "mak_limit_exceeded"]
    assert answer["results"][1]["error"]["failed_groups"] == [1]

    text = mak("proxy-activate", str(path), "--url", svc.url)
    assert text.exit_code == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith(good + "  ") and lines[2].startswith(good + "  ")
    assert lines[1].split()[:3] == [bad, "Error:", "The"]
    assert lines[3].split()[:3] == [over, "Error:", "0xC004C020"]
    assert text.stderr.startswith(
        "Error: The service refused some of the installation IDs. (2 confirmed, 2 refused)"
    )

    for content in ("not json", json.dumps({"ids": []}), json.dumps("x")):
        path.write_text(content)
        assert mak("proxy-activate", str(path), "--url", svc.url).exit_code == 2


# -- export and import ---------------------------------------------------------------------------


def _walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from _walk_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_keys(item)


def test_export_import_round_trip(tmp_path: Path) -> None:
    with BackgroundMak() as source, BackgroundMak() as target:
        keys = [fresh_key(), fresh_key(KeyType.RETAIL)]
        ok(admin(source, "add-key", keys[0], "--limit", "4", "--json"))
        ok(admin(source, "add-key", keys[1], "--json"))
        ok(admin(source, "increase", keys[0], "--by", "1", "--json"))
        MakClient(source.url).activate(keys[0], hw(1).hex(), machine_name="NAME-ONE")
        MakClient(source.url).phone(iid(keys[0], hw(2)), machine_name="NAME-TWO")
        MakClient(source.url).activate(keys[1], hw(3).hex())

        everything = tmp_path / "all.json"
        assert admin(source, "export", "--out", str(everything)).exit_code == 0
        document = json.loads(everything.read_text())
        assert (len(document["keys"]), len(document["activations"])) == (2, 3)
        stdout = admin(source, "export")
        assert stdout.exit_code == 0 and json.loads(stdout.stdout) == document

        keys_only = json.loads(admin(source, "export", "--mode", "keys").stdout)
        assert "activations" not in keys_only and len(keys_only["keys"]) == 2
        activations = json.loads(admin(source, "export", "--mode", "activations").stdout)
        assert "keys" not in activations and len(activations["activations"]) == 3
        anonymous = admin(source, "export", "--no-machine-names")
        assert "machine_name" not in set(_walk_keys(json.loads(anonymous.stdout)))
        assert "NAME-" not in anonymous.stdout
        assert "NAME-ONE" in everything.read_text()

        # activations alone cannot go first: their keys are unknown there
        only = tmp_path / "activations.json"
        only.write_text(json.dumps(activations))
        failed(admin(target, "import", str(only), "--json"), "invalid_field")

        report = ok(admin(target, "import", str(everything), "--json"))
        assert report == {
            "keys_added": 2,
            "keys_kept": 0,
            "activations_added": 3,
            "activations_kept": 0,
        }
        again = admin(target, "import", str(everything))
        assert (again.exit_code, again.stdout) == (
            0,
            "keys: 0 added, 2 kept; activations: 0 added, 3 kept\n",
        )

        def listing(service: BackgroundMak) -> list[dict[str, Any]]:
            return sorted(
                ok(admin(service, "keys", "--json"))["keys"], key=lambda k: k["fingerprint"]
            )

        assert listing(target) == listing(source)
        for key in keys:
            shown = ok(admin(target, "show", key, "--json"))
            assert shown == ok(admin(source, "show", key, "--json"))
        assert ok(admin(target, "import", str(only), "--json"))["activations_kept"] == 3


# -- tokens, URLs and usage -------------------------------------------------------------------


def test_admin_token_from_flag_environment_or_file(home: Path) -> None:
    token = ensure_token(home / "mak")  # what a local `serve` without --admin-token keeps
    path = token_file(home / "mak")
    assert path == home / "mak" / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(home / "mak") == token  # made once
    with BackgroundMak(admin_token=token) as service:
        url = ["--url", service.url]
        assert ok(mak("keys", *url, "--json")) == {"keys": []}  # the file
        assert ok(mak("keys", *url, "--json", "--admin-token", token)) == {"keys": []}
        assert ok(mak("keys", *url, "--json", env={"KMSEMU_ADMIN_TOKEN": token})) == {"keys": []}
        # the flag wins over the environment, which wins over the file
        assert ok(
            mak("keys", *url, "--json", "--admin-token", token, env={"KMSEMU_ADMIN_TOKEN": "wrong"})
        ) == {"keys": []}
        failed(mak("keys", *url, "--json", env={"KMSEMU_ADMIN_TOKEN": "wrong"}), "forbidden")
        failed(mak("keys", *url, "--json", "--admin-token", "wrong"), "forbidden")
        path.unlink()
        failed(mak("keys", *url, "--json"), "unauthorized")
        text = mak("add-key", fresh_key(), "--limit", "1", *url)
        assert text.exit_code == 1
        assert text.stderr.startswith("Error: An administrator token is required.")
        # the URL from the environment
        assert ok(
            mak("keys", "--json", env={"KMSEMU_MAK_URL": service.url, "KMSEMU_ADMIN_TOKEN": token})
        ) == {"keys": []}


def test_a_closed_port_is_0x80072EFD() -> None:
    sock, url = closed_url()
    with sock:
        key = fresh_key()
        for command in (
            ["keys"],
            ["add-key", key, "--limit", "1"],
            ["count", key],
            ["phone", "0" * 63],
            ["show", key],
            ["block", key],
            ["export"],
        ):
            text = mak(*command, "--url", url)
            assert text.exit_code == 1, command
            assert text.stderr.startswith(
                "Error: 0x80072EFD A connection with the server could not be established."
            ), text.stderr
            assert url in text.stderr
        error = failed(mak("keys", "--url", url, "--json"), "unreachable")
        assert url in error["message"]


def test_a_closed_port_is_0x80072EFD_in_json_too() -> None:
    sock, url = closed_url()
    with sock:
        error = failed(mak("keys", "--url", url, "--json"), "unreachable")
        assert error.get("hresult") == "0x80072EFD"


def test_usage_errors_exit_2(svc: BackgroundMak) -> None:
    key = fresh_key()
    assert mak("add-key").exit_code == 2
    assert admin(svc, "increase", key).exit_code == 2  # --by missing
    assert admin(svc, "increase", key, "--by", "0").exit_code == 2
    assert mak("keys", "--url", "ftp://127.0.0.1:1").exit_code == 2
    assert mak("import", "/nonexistent/file.json").exit_code == 2
    assert mak("export", "--mode", "everything").exit_code == 2


# -- a real `kmsemu mak serve` -------------------------------------------------------------------


@pytest.mark.slow
def test_serve_as_a_process_stops_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = f"sqlite:///{tmp_path / 'mak.sqlite3'}"
    key = fresh_key()
    service = start_mak_process(home, "--db", db, "--admin-token", "T0KEN")
    try:
        assert service.url.startswith("http://127.0.0.1:")
        assert not token_file(home / "mak").exists()  # a token was given: no file
        ok(
            mak(
                "add-key",
                key,
                "--limit",
                "3",
                "--url",
                service.url,
                "--admin-token",
                "T0KEN",
                "--json",
            )
        )
        answer = ok(mak("phone", iid(key, hw(1)), "--url", service.url, "--json"))
        assert answer["counted"] is True
        # the installed entry point, as a script would run it
        listed = subprocess.run(
            kmsemu_command("mak", "keys", "--json", "--url", service.url),
            env={**os.environ, "KMSEMU_HOME": str(home), "KMSEMU_ADMIN_TOKEN": "T0KEN"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        assert [k["used"] for k in json.loads(listed.stdout)["keys"]] == [1]
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(10) == 0
    finally:
        service.stop()

    # again on the same database, without a token: one is made and kept under KMSEMU_HOME
    service = start_mak_process(home, "--db", db)
    try:
        path = token_file(home / "mak")
        assert f"admin token in {path}" in service.stderr_lines
        env = {"KMSEMU_HOME": str(home)}
        listed = ok(mak("keys", "--url", service.url, "--json", env=env))  # the file's token
        assert [(k["fingerprint"], k["used"]) for k in listed["keys"]] == [(fp(key), 1)]
        assert ok(mak("count", key, "--url", service.url, "--json"))["remaining"] == 2
        service.process.send_signal(signal.SIGINT)
        assert service.process.wait(10) == 0
    finally:
        service.stop()
    assert not any("Traceback" in line for line in service.stderr_lines), service.stderr_lines


def test_serve_on_a_port_in_use_names_the_address_and_the_flag(tmp_path: Path) -> None:
    from tests.conftest import run_into_a_taken_port

    out, port = run_into_a_taken_port(lambda port: ["mak", "serve", "--port", str(port)], tmp_path)
    assert out.returncode == 1
    error = next(line for line in out.stderr.splitlines() if line.startswith("Error:"))
    assert error.startswith(f"Error: Cannot listen on the address. (127.0.0.1:{port}: ")
    assert "--listen or --port" in out.stderr  # the hint names the flags
    assert "Traceback" not in out.stderr
