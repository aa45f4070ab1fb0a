"""Every module, public class and public function of the package says what it is.

Read from the source with ``ast``: every module under ``kmsemu/`` and ``mak/`` has a
module docstring that is more than its own path; every public module-level class and
function (click commands included: their docstring is their help text), and every
public method or property of a public class, has a docstring whose first line is not
blank. Public means a name not starting with ``_`` (so dunder methods are skipped);
``@overload`` stubs, property setters and deleters are skipped, closures are not API.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kmsemu", "mak")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def module_paths() -> list[Path]:
    """Every module of the package, in a stable order."""
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def placeholders(path: Path) -> set[str]:
    """What a module docstring that only names its module would say."""
    relative = path.relative_to(ROOT)
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    names = {"/".join(parts), ".".join(parts), parts[-1], relative.as_posix(), ""}
    return {name.lower() for name in names}


def first_line(node: ast.Module | Definition) -> str | None:
    """The docstring's first line, stripped; None when there is no docstring."""
    doc = ast.get_docstring(node, clean=False)
    if doc is None:
        return None
    return doc.split("\n", 1)[0].strip()


def decorator_names(node: Definition) -> set[str]:
    """Each decorator as written, without its call: ``overload``, ``name.setter``..."""
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.add(ast.unparse(target))
    return names


def skipped(node: Definition) -> bool:
    """Private names, ``@overload`` stubs, and property setters and deleters."""
    if node.name.startswith("_"):
        return True
    for name in decorator_names(node):
        if name in {"overload", "typing.overload"}:
            return True
        if re.fullmatch(rf"{re.escape(node.name)}\.(setter|deleter)", name):
            return True
    return False


def top_level(body: list[ast.stmt]) -> Iterator[Definition]:
    """Definitions at this level, including those under ``if``, ``try`` and ``with``."""
    for statement in body:
        if isinstance(statement, Definition):
            yield statement
        elif isinstance(statement, ast.If):
            yield from top_level(statement.body)
            yield from top_level(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from top_level(block)
            for handler in statement.handlers:
                yield from top_level(handler.body)
        elif isinstance(statement, ast.With):
            yield from top_level(statement.body)


def public(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, Definition]]:
    """Public definitions with their dotted names; a public class's members recursively."""
    for node in top_level(body):
        if skipped(node):
            continue
        name = prefix + node.name
        yield name, node
        if isinstance(node, ast.ClassDef):
            yield from public(node.body, name + ".")


def offenders() -> list[str]:
    """``path:line name`` for every module or definition without a docstring."""
    found = []
    for path in module_paths():
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        line = first_line(tree)
        if line is None or line.rstrip(".").lower() in placeholders(path):
            found.append(f"{relative}:1 (module docstring)")
        for name, node in public(tree.body):
            if not first_line(node):
                found.append(f"{relative}:{node.lineno} {name}")
    return found


def test_every_public_definition_has_a_docstring() -> None:
    missing = offenders()
    assert not missing, f"{len(missing)} without a docstring:\n" + "\n".join(missing)


def test_the_check_sees_what_it_should() -> None:
    source = '''
"""kmsemu/example"""
from typing import overload

def documented():
    """Does a thing."""

def bare(): pass

def _private(): pass

class Thing:
    """A thing."""

    def __init__(self): pass

    @property
    def size(self): return 1

    @size.setter
    def size(self, value): pass

    @overload
    def get(self, key: int) -> int: ...

    def get(self, key):
        """
        First line blank."""

    class Inner:
        def method(self): pass

class _Hidden:
    def method(self): pass

if True:
    async def conditional(): pass
'''
    tree = ast.parse(source)
    missing = [name for name, node in public(tree.body) if not first_line(node)]
    assert missing == [
        "bare",
        "Thing.size",
        "Thing.get",
        "Thing.Inner",
        "Thing.Inner.method",
        "conditional",
    ]
    assert first_line(tree) in placeholders(ROOT / "kmsemu" / "example" / "__init__.py")
