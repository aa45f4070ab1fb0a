"""The error registry: every code the code base raises is in it, and what a user reads
for an error is the registry's message and hint (kmsemu/errors.py, docs/errors.md)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.cli.common import KmsemuGroup, json_option
from kmsemu.errors import (
    LOCAL_ERRORS,
    SERVICE_ERRORS,
    ActivationError,
    HResult,
    KmsemuError,
    LocalError,
    ServiceError,
    all_codes,
    format_hresult,
    lookup,
)

ROOT = Path(__file__).resolve().parents[1]
#: Calls whose first argument is a code (``refuse``: the MAK rules' refusals).
CODE_FIRST = {"ServiceError", "LocalError", "RemoteError", "Problem", "refuse"}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in ("kmsemu", "mak"):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.Set | ast.List):
        return [s for element in node.elts for s in _strings(element)]
    return []


def codes_in_source() -> dict[str, list[str]]:
    """Every code string literal, with where it is: ``code=`` arguments, the first argument
    of ServiceError/LocalError/RemoteError/Problem (and of their subclasses' ``__init__``
    calls), ``{"code": ...}`` literals, ``code = ...`` class attributes and comparisons
    with an ``.code``."""
    found: dict[str, list[str]] = {}

    def add(values: list[str], path: Path, node: ast.AST) -> None:
        for value in values:
            found.setdefault(value, []).append(
                f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            )

    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        add(_strings(keyword.value), path, node)
                if _name(node.func) in CODE_FIRST and node.args:
                    add(_strings(node.args[0]), path, node)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if key is not None and _strings(key) == ["code"]:
                        add(_strings(value), path, node)
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and len(statement.targets) == 1
                        and isinstance(statement.targets[0], ast.Name)
                        and statement.targets[0].id == "code"
                    ):
                        add(_strings(statement.value), path, statement)
                if CODE_FIRST & {_name(base) for base in node.bases}:
                    for call in ast.walk(node):  # super().__init__(CODE, ...)
                        if (
                            isinstance(call, ast.Call)
                            and _name(call.func) == "__init__"
                            and call.args
                        ):
                            add(_strings(call.args[0]), path, call)
            elif (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Attribute)
                and node.left.attr == "code"
            ):
                for comparator in node.comparators:
                    add(_strings(comparator), path, node)
    return found


def test_the_scan_finds_codes_of_every_kind() -> None:
    found = codes_in_source()
    for code in (
        "bad_catalog",
        "no_confirmation_id",
        "unreachable",
        "busy",
        "invalid_key",
        "zone_invalid",
        "check_failed",
        "bad_profile",
        "key_blocked",
    ):
        assert code in found, code


def test_every_code_raised_anywhere_is_in_the_registry() -> None:
    unknown = {code: where for code, where in codes_in_source().items() if lookup(code) is None}
    assert unknown == {}, "add these to kmsemu/errors.py (LOCAL_ERRORS or SERVICE_ERRORS)"


def test_service_errors_name_service_codes_and_registry_variants() -> None:
    problems = []
    for path, tree in sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _name(node.func) == "ServiceError"):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            code = _strings(node.args[0]) if node.args else []
            if code and code[0] not in SERVICE_ERRORS:
                problems.append(f"{where}: {code[0]} is no service code")
            for keyword in node.keywords:
                if keyword.arg == "message":
                    problems.append(f"{where}: message= rewords the registry")
                if keyword.arg == "variant" and code:
                    for variant in _strings(keyword.value):
                        if variant not in SERVICE_ERRORS[code[0]].variants:
                            problems.append(f"{where}: no variant {variant!r} of {code[0]}")
    assert problems == []


def test_a_code_in_two_tables_means_the_same() -> None:
    names = {h.name.lower(): h for h in HResult if h}
    for code in set(SERVICE_ERRORS) & set(names):
        assert SERVICE_ERRORS[code].hresult == names[code], code
    assert not set(LOCAL_ERRORS) & set(SERVICE_ERRORS)
    assert not set(LOCAL_ERRORS) & set(names)
    for code, info in LOCAL_ERRORS.items():
        assert info.message.endswith(".") and info.hint, code


def test_every_user_facing_exception_is_a_kmsemu_error_or_drawn_as_internal() -> None:
    """Exception classes outside the KmsemuError tree must appear in the tree that
    kmsemu/errors.py's docstring draws (as internal ones)."""
    import kmsemu.errors

    tree_text = kmsemu.errors.__doc__ or ""
    bases_of: dict[str, list[str]] = {}
    for _, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases_of[node.name] = [_name(b) for b in node.bases]

    def is_kmsemu(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name == "KmsemuError":
            return True
        return any(is_kmsemu(b, seen | {name}) for b in bases_of.get(name, ()) if b not in seen)

    def is_exception(name: str) -> bool:
        bases = bases_of.get(name, [])
        return any(
            b.endswith(("Error", "Exception")) or is_exception(b) for b in bases if b != name
        )

    outside = sorted(
        n
        for n in bases_of
        if is_exception(n) and not is_kmsemu(n) and n not in ("ErrorInfo", "ServiceErrorInfo")
    )
    undrawn = [n for n in outside if not re.search(rf"\b{re.escape(n)}\b", tree_text)]
    assert undrawn == [], "draw these in the exception tree of kmsemu/errors.py"
    for name in (
        "ActivationError",
        "ServiceError",
        "ConfigError",
        "LocalError",
        "RemoteError",
        "DiscoveryError",
        "ZoneError",
        "ProfileError",
    ):
        assert is_kmsemu(name) and name in tree_text, name


# -- what a user reads ---------------------------------------------------------------------------


def _error_for(code: str) -> KmsemuError:
    if code in SERVICE_ERRORS:
        return ServiceError(code)
    if code in LOCAL_ERRORS:
        return LocalError(code)
    return ActivationError(HResult[code.upper()])


def _raising(error: KmsemuError) -> click.Group:
    @click.group(cls=KmsemuGroup)
    def root() -> None:
        pass

    @root.command()
    @json_option
    def fail(as_json: bool) -> None:
        raise error

    return root


@pytest.mark.parametrize("code", all_codes())
def test_the_text_and_json_of_an_error_are_the_registry_s(code: str) -> None:
    info = lookup(code)
    assert info is not None
    error = _error_for(code)
    message = error.message  # a service message's {field}s filled (here: <field>)
    assert message == info.message.format_map(
        {k: f"<{k}>" for k in ("maximum", "offer", "licences")}
    )
    prefix = f"{format_hresult(info.hresult)} " if info.hresult is not None else ""

    text = CliRunner().invoke(_raising(error), ["fail"])
    assert (text.exit_code, text.stdout) == (1, "")
    lines = text.stderr.splitlines()
    assert lines[0] == f"Error: {prefix}{message}"
    assert lines[1:] == ([info.hint] if info.hint else [])

    as_json = CliRunner().invoke(_raising(error), ["fail", "--json"])
    assert (as_json.exit_code, as_json.stderr) == (1, "")
    body = json.loads(as_json.stdout)["error"]
    assert (body["code"], body["message"], body["hint"]) == (code, message, info.hint)
    assert body.get("hresult") == (
        format_hresult(info.hresult) if info.hresult is not None else None
    )


def test_detail_follows_the_message_and_fields_join_the_json() -> None:
    error = LocalError(
        "write_failed",
        "/nowhere: Permission denied",
        output={"out": "/x"},
        notes=["one more line"],
        path="/nowhere",
    )
    text = CliRunner().invoke(_raising(error), ["fail"])
    assert text.stderr.splitlines() == [
        "Error: Cannot write there. (/nowhere: Permission denied)",
        LOCAL_ERRORS["write_failed"].hint,
        "one more line",
    ]
    body = json.loads(CliRunner().invoke(_raising(error), ["fail", "--json"]).stdout)
    assert body["out"] == "/x" and body["error"]["path"] == "/nowhere"
    assert body["error"]["message"] == "Cannot write there. (/nowhere: Permission denied)"


def test_http_answers_keep_their_hint_and_the_cli_speaks_cli() -> None:
    http_words = re.compile(
        r"openapi|Authorization|Retry-After|Content-Type|"
        r"'(field|problems|candidates|reason|failed_groups|org|user|token)'"
    )
    for code in all_codes():
        info = lookup(code)
        assert info is not None
        assert not http_words.search(info.hint), (code, info.hint)
    for code, entry in SERVICE_ERRORS.items():
        assert ServiceError(code).to_json()["error"]["hint"] == entry.hint
        assert ServiceError(code).to_json(http=False)["error"]["hint"] == (
            entry.cli_hint or entry.hint
        )


def test_registry_wordings_fill_their_fields() -> None:
    too_many = ServiceError("too_many_licences", maximum=25, requested=30)
    assert too_many.message.endswith("The maximum is 25 user licenses.")
    assert too_many.to_json()["error"]["maximum"] == 25
    add = ServiceError("admin_required", variant="add_user", role="user")
    assert add.message == "You must be a global admin to add users."
    none = ServiceError("no_free_licences", variant="none_bought", offer="basic", licences=0)
    assert none.message == "The organisation has no basic subscription."


def test_the_root_group_renders_errors() -> None:
    assert isinstance(main, KmsemuGroup)
