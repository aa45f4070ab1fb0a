"""The package's layers and its start-up weight: import graph and ``sys.modules`` checks.

Every import of a kmsemu or mak module, at module level, inside a function or under
TYPE_CHECKING, is read from the source with ``ast``. A module may import its own
layer or one below; no module may import a layer above it, and the graph has no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kmsemu", "mak")

#: Lowest first. A module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    # 0: values every part shares
    (
        "kmsemu",
        "kmsemu.__init__",
        "kmsemu.errors",
        "kmsemu.wire",
        "kmsemu.clock",
        "kmsemu.addresses",
        "kmsemu.durations",
    ),
    # 1: codecs and the catalog, pure
    ("kmsemu.rpc", "kmsemu.klp", "kmsemu.keys", "kmsemu.catalog"),
    # 2: the parts: host, DNS, client, MAK service (rules pure, servers and stores I/O)
    ("kmsemu.host", "kmsemu.dns", "kmsemu.client", "mak"),
    # 3: the runtime layer: assembling and starting servers
    ("kmsemu.run",),
    # 4: what is built from running parts
    ("kmsemu.lab", "kmsemu.sim", "kmsemu.testing"),
    # 5: the command line
    ("kmsemu.cli", "kmsemu.__main__"),
]

#: Modules ``import kmsemu.cli`` and loading a command group must not load: servers, the
#: event loop, the cipher, dnspython, web frameworks, metrics, charts, PostgreSQL.
HEAVY = (
    "asyncio",
    "cryptography",
    "dns",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus_client",
    "matplotlib",
    "numpy",
    "psycopg",
    "kmsemu.host.server",
    "kmsemu.dns.server",
    "kmsemu.run",
    "kmsemu.lab.runner",
    "kmsemu.lab.web",
    "kmsemu.lab.metrics",
    "kmsemu.sim.engine",
    "kmsemu.sim.network",
    "kmsemu.sim.charts",
    "mak.api",
    "mak.server",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from a import b`` counts ``a.b`` when that
    is a module, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{name} is in no layer: add it to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def test_the_checker_reads_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import kmsemu.wire\nfrom kmsemu import clock\n"
        "def f():\n    from kmsemu.host.rules import HostRules\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from mak.service import MakService\n"
    )
    known = {
        "kmsemu",
        "kmsemu.wire",
        "kmsemu.clock",
        "kmsemu.host",
        "kmsemu.host.rules",
        "mak",
        "mak.service",
    }
    assert imports("x", source, known) == {
        "kmsemu.wire",
        "kmsemu.clock",
        "kmsemu.host.rules",
        "mak.service",
    }


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    )
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_servers_are_started_only_by_the_runtime_layer() -> None:
    """lab, sim and mak never reach into the CLI or the test helpers."""
    edges = graph()
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in edges.items()
        if name.startswith(("kmsemu.lab", "kmsemu.sim", "mak"))
        for target in targets
        if target.split(".")[:2] in (["kmsemu", "cli"], ["kmsemu", "testing"])
    )
    assert offenders == []


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(json.loads(out))


def _heavy(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_loads_no_heavy_module() -> None:
    assert _heavy(_loaded_after("import kmsemu.cli")) == []


@pytest.mark.parametrize(
    "group", ["catalog", "keys", "client", "host", "dns", "mak", "portal", "lab", "sim"]
)
def test_loading_a_command_group_loads_no_server(group: str) -> None:
    """A group's module is light: servers and frameworks load inside the commands."""
    statement = f"import kmsemu.cli; kmsemu.cli.main.get_command(None, {group!r})"
    assert _heavy(_loaded_after(statement)) == []


def test_the_root_help_lines_are_the_commands_own() -> None:
    from kmsemu.cli import COMMANDS, main

    for name, (_, _, line) in COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert command is not None and command.help is not None
        listed = click.Command(name, help=line).get_short_help_str(200)
        assert command.get_short_help_str(200) == listed
