"""Every option and argument of every command, fed absurd values: a clear error with a
stable code (exit 1) or a usage error (exit 2), never a traceback, never a hang.

The commands come from click's own metadata (``list_commands``/``get_command`` from
``kmsemu.cli.main`` down), so a new command or flag is covered without touching this
file. Commands that start servers (``serve``, ``lab``) are walked too, with their event
loop and their sockets replaced by stand-ins: what is checked is that every value is
refused or accepted before anything would start. Everything that talks to a service is
pointed at a closed port on 127.0.0.1, and all state lives in ``tmp_path``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.keys.product_key import KeyType, mint, setup_key

#: Commands that start servers (walked with stand-ins for the loop and the sockets).
SERVERS = {("host", "serve"), ("dns", "serve"), ("mak", "serve"), ("lab",)}

#: A sample of what a careless hand or a hostile script types. "\udcff" is how Python
#: hands over a command-line byte that is not UTF-8.
ABSURD = [
    "",
    " ",
    "-1",
    "0",
    "99999999999999999999999999999",
    "1e309",
    "nan",
    "\x00",
    "bad\udcffbytes",
    "x" * 5000,
    "/proc/kmsemu/cannot/write/here",
    "-",
]
#: Durations: huge, negative, infinite.
ABSURD_DURATIONS = ["+99999999999999999999d", "-99999999999999999999d", "9" * 400 + "d", "-1s"]

SCENARIO = """\
[scenario]
name = "tiny"
days = 2
seed = 1

[[hosts]]
name = "kms1"

[[clients]]
name = "pc"
count = 1
product = "windows-11-pro"
"""


def commands() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for every leaf command under ``main``."""

    def walk(
        group: click.Group, path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            if command.hidden:
                continue
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name))
            else:
                yield (*path, name), command

    yield from walk(main, ())


class Sane:
    """Values that pass validation, for the parameters a case does not make absurd."""

    def __init__(self, tmp: Path, url: str, port: int) -> None:
        self.tmp, self.url, self.port = tmp, url, port
        self.ids = tmp / "ids.json"
        self.ids.write_text(json.dumps(["1" * 63]))
        self.scenario = tmp / "tiny.toml"
        self.scenario.write_text(SCENARIO)
        self.mak_key = str(mint(KeyType.MAK, 0, serial=1))

    def value(self, path: tuple[str, ...], param: click.Parameter) -> list[str]:
        """Arguments giving ``param`` a value that passes (empty: leave it out)."""
        name = param.name or ""
        kind = param.type
        if name in ("url", "mak_url"):
            return self._flag(param, self.url)
        if name == "address" and path[-1] == "activate":
            return self._flag(param, f"127.0.0.1:{self.port}")
        if name == "scenario":
            return [str(self.scenario)]
        if name == "out" and path == ("sim", "run"):
            return self._flag(param, str(self.tmp / "sim-out"))
        if not param.required:
            return []
        if isinstance(kind, click.Choice):
            return self._flag(param, str(kind.choices[0]))
        if isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
            low = getattr(kind, "min", None)
            return self._flag(param, str(max(1, low or 1)))
        if isinstance(kind, click.File):
            return self._flag(
                param, str(self.ids) if "r" in kind.mode else str(self.tmp / "written.json")
            )
        if isinstance(kind, click.Path):
            return self._flag(param, str(self.tmp / "path"))
        text = {
            "key": self.mak_key,
            "installation_id": "1" * 63,
            "product": "windows-11-pro",
            "country": "GB",
            "countries": "GB",
            "domain": "example.test",
            "cid": "1" * 48,
            "duration": "1h",
            "shift": "+1h",
        }.get(name, "name")
        if name == "key" and path[-2:-1] == ("client",):
            text = str(setup_key(0))
        return self._flag(param, text)

    @staticmethod
    def _flag(param: click.Parameter, value: str) -> list[str]:
        if isinstance(param, click.Argument):
            return [value]
        return [param.opts[0], value]


def cases(sane: Sane, *, servers: bool = False) -> Iterator[tuple[str, list[str]]]:
    """(label, arguments): each parameter of each command (``servers``: of the commands
    that start servers, else of the others) absurd in turn, the others sane; options as
    ``--name=VALUE``, then ``--`` and the arguments, so that a value that starts with '-'
    reaches the parameter."""
    for path, command in commands():
        if (path in SERVERS) != servers:
            continue
        params = [
            p
            for p in command.params
            if not (isinstance(p, click.Option) and (p.is_flag or p.count))
            and p.name not in ("help", "version")
        ]
        for target in params:
            absurd = ABSURD_DURATIONS + ([] if "DURATION" in target.type.name.upper() else ABSURD)
            for value in absurd:
                options: list[str] = []
                arguments: list[str] = []
                for param in params:
                    if param is target and isinstance(param, click.Argument):
                        arguments.append(value)
                    elif param is target:
                        options.append(f"{param.opts[0]}={value}")
                    elif isinstance(param, click.Argument):
                        arguments += sane.value(path, param)
                    else:
                        options += sane.value(path, param)
                if path == ("sim", "run"):
                    options.append("--no-report")
                yield (
                    f"{' '.join(path)} {target.name}={value[:20]!r}",
                    [*path, *options, "--", *arguments],
                )


@pytest.fixture
def closed() -> Iterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        sock.close()


def _explain(result: Result) -> str:
    """The output, or where the exception came from and what it said."""
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return result.output
    frames = traceback.extract_tb(result.exc_info[2])
    ours = [f for f in frames if "/kmsemu/" in f.filename or "/mak/" in f.filename]
    where = ours[-1] if ours else frames[-1]
    return (
        f"{type(result.exception).__name__}: {result.exception} "
        f"at {Path(where.filename).name}:{where.lineno}"
    )


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host names do not resolve (fast, and the same everywhere): absurd values that
    happen to be names ("nan") fail as an unknown name would, at once."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("no_dns")
def test_absurd_values_give_clear_errors(
    tmp_path: Path, closed: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an absurd value taken as a relative path lands here
    url, port = closed
    sane = Sane(tmp_path, url, port)
    env = _env(tmp_path, url)
    failures, count = _run_cases(cases(sane), env)
    assert count > 300, count  # the walk found the commands and their options
    assert failures == [], "\n\n".join(failures[:15]) + f"\n\n{len(failures)} in all"


def _env(tmp_path: Path, url: str) -> dict[str, Any]:
    return {
        "KMSEMU_HOME": str(tmp_path / "home"),
        "KMSEMU_MAK_URL": url,
        "KMSEMU_ADMIN_TOKEN": None,
        "KMSEMU_PORTAL_TOKEN": None,
        "KMSEMU_PROFILE": None,
        "KMSEMU_SECRET": None,
        "KMSEMU_MAK_DB": None,
        "KMSEMU_CONFIG": None,
    }


def _run_cases(
    found: Iterator[tuple[str, list[str]]], env: dict[str, Any]
) -> tuple[list[str], int]:
    """Run every case through CliRunner; the failures (a traceback, an exit other than 0, 1
    or 2) and how many cases ran."""
    runner = CliRunner()
    failures = []
    count = 0
    for label, args in found:
        count += 1
        result = runner.invoke(main, args, env=env)
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if result.exit_code not in (0, 1, 2) or crashed or "Traceback" in result.output:
            failures.append(f"{label}: exit {result.exit_code}: {_explain(result)[-600:]}")
    return failures, count


class _NoLoop:
    """``asyncio.Runner`` that runs nothing: the server's coroutine is closed unstarted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _NoLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, coroutine: Any) -> None:
        coroutine.close()


@pytest.mark.usefixtures("no_dns")
def test_absurd_values_for_server_commands_are_settled_before_anything_starts(
    tmp_path: Path, closed: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``host serve``, ``dns serve``, ``mak serve`` and ``lab``: every value is refused (a
    usage error, or a registered error) or taken, with no loop run and no port bound."""
    import asyncio

    import kmsemu.run.mak

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(asyncio, "Runner", _NoLoop)
    monkeypatch.setattr(asyncio, "run", lambda coroutine, **_: coroutine.close())
    monkeypatch.setattr(kmsemu.run.mak, "bind", lambda addresses: [])
    url, port = closed
    failures, count = _run_cases(
        cases(Sane(tmp_path, url, port), servers=True), _env(tmp_path, url)
    )
    assert count > 200, count
    assert failures == [], "\n\n".join(failures[:15]) + f"\n\n{len(failures)} in all"
