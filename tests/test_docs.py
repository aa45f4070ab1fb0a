"""The documents as a new user meets them: their examples run, their paths exist.

Which examples run (README.md and docs/*.md), decided by the block's info string and an
optional marker, an HTML comment on the line above the opening fence:

- ```` ```toml ````: a scenario (top-level ``[scenario]``) is read with the simulator's
  reader and run for real in fast mode with ``kmsemu sim run FILE --out DIR``; a ``[lab]``
  table is checked with the lab's configuration reader. Any other TOML needs a
  ``<!-- not run: REASON -->`` marker.
- ```` ```sh ```` (or ``bash``, ``shell``): run, command after command, in one bash in a
  fresh ``KMSEMU_HOME`` (and ``HOME``), where ``kmsemu`` and ``.venv/bin/kmsemu`` are this
  checkout's CLI and ``/tmp/`` is a directory of the test's own. Every command must exit 0
  and print no traceback, except that a command whose comment says ``Error:`` must fail;
  a command's comment is the one on its lines, indented comment-only lines right below it,
  or unindented comment-only lines right above it. A command ending in ``&`` is a server:
  the next command runs once it has printed a ``ready ...`` line, and after the block it is
  stopped with SIGTERM and must exit 0. All blocks run in one private network namespace
  (``unshare -rn``), one after the other, so that they use the documented default ports
  (1688, 5300, 8688) without meeting anything else on the machine; a fork server
  (tests/docrun.py) saves each ``kmsemu`` command its imports.
- ``<!-- run with the lab -->`` above a shell block: it needs ``kmsemu lab`` running with
  its defaults. All such blocks of one document run in order in one shell (variables set
  in one are used by the next), against one lab the test starts.
- ``<!-- not run: REASON -->`` above any block: not run (it needs Docker, root, a long
  run...).
- ```` ```python ````: must compile. ```` ```console ````, untyped fences and the other
  info strings of ``ILLUSTRATIONS`` are output or illustration and are not run.

A new example is therefore run unless someone says why not.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.lab.config import read_config
from kmsemu.sim.scenario import parse_scenario
from tests import docrun

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCRUN = Path(__file__).resolve().parent / "docrun.py"

SHELL = frozenset({"sh", "bash", "shell"})
#: output, transcripts and text in other languages: never run
ILLUSTRATIONS = frozenset({"", "console", "text", "json", "yaml", "ini"})
NOT_RUN = "not run:"
WITH_LAB = "run with the lab"
MARKER = re.compile(r"^<!--\s*((?:not run|run)\b.*?)\s*-->$")
SCENARIO_KEYS = frozenset({"scenario", "hosts", "dns", "clients", "mak"})
#: programs other than kmsemu that examples call; a session that needs a missing one skips
TOOLS = ("dig", "nslookup", "jq", "python3", "curl")
RUN_TIMEOUT = 240.0  # every shell session together
#: (document, how a block starts) -> marker, for blocks of documents others maintain that
#: should carry the marker but do not yet (move it into the document)
# -- reading the documents ------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the opening fence, 1-based
    info: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def skipped(self) -> bool:
        return self.marker is not None and self.marker.startswith(NOT_RUN)


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    n = 0
    while n < len(lines):
        opening = re.match(r"^(```+|~~~+)(.*)$", lines[n])
        if not opening:
            n += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip().split(" ")[0]
        end = next((k for k in range(n + 1, len(lines)) if lines[k].startswith(fence)), len(lines))
        above = next((lines[k].strip() for k in range(n - 1, -1, -1) if lines[k].strip()), "")
        marked = MARKER.match(above)
        text = "\n".join(lines[n + 1 : end])
        marker = marked.group(1) if marked else None
        blocks.append(Block(path, n + 1, info, text, marker))
        n = end + 1
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in read_blocks(doc)]


def toml_kind(block: Block) -> str:
    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError:
        return "invalid"
    if "scenario" in data and set(data) <= SCENARIO_KEYS:
        return "scenario"
    if set(data) == {"lab"}:
        return "lab"
    return "other"


def blocks_of(info: set[str] | frozenset[str]) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.info in info and not b.skipped]


def test_every_example_is_classified() -> None:
    """Each block is of a known kind, and each marker is one the runner understands."""
    problems = []
    for block in ALL_BLOCKS:
        if block.marker is not None:
            if block.marker.startswith(NOT_RUN):
                if not block.marker[len(NOT_RUN) :].strip():
                    problems.append(f"{block.where}: say why it is not run")
            elif block.marker == WITH_LAB:
                if block.info not in SHELL:
                    problems.append(f"{block.where}: '{WITH_LAB}' is for shell blocks")
            else:
                problems.append(
                    f"{block.where}: unknown marker {block.marker!r} "
                    f"(use '<!-- {NOT_RUN} REASON -->' or '<!-- {WITH_LAB} -->')"
                )
            continue
        if block.info in SHELL or block.info in ILLUSTRATIONS or block.info == "python":
            continue
        if block.info == "toml":
            kind = toml_kind(block)
            if kind == "invalid":
                problems.append(f"{block.where}: the TOML does not parse")
            elif kind == "other":
                problems.append(
                    f"{block.where}: TOML that is neither a scenario nor a [lab] "
                    f"table: mark it '<!-- {NOT_RUN} REASON -->'"
                )
            continue
        problems.append(
            f"{block.where}: info string {block.info!r}: add it to the runner, "
            f"or mark the block '<!-- {NOT_RUN} REASON -->'"
        )
    assert not problems, "\n".join(problems)


# -- TOML and Python -------------------------------------------------------------------------


def toml_blocks(kind: str) -> list[Block]:
    return [b for b in blocks_of({"toml"}) if toml_kind(b) == kind]


@pytest.mark.parametrize("block", toml_blocks("scenario"), ids=lambda b: b.where)
def test_scenario_example_runs(block: Block, tmp_path: Path) -> None:
    scenario = parse_scenario(block.text, block.where)
    source = tmp_path / "scenario.toml"
    source.write_text(block.text, encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["sim", "run", str(source), "--out", str(tmp_path / "out"), "--no-report"],
        env={"KMSEMU_HOME": str(tmp_path / "home")},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, f"{block.where}: {result.output}"
    assert (tmp_path / "out" / "timeline.json").is_file()  # the report: docs/sim.md's sh block
    assert scenario.name.lower() in result.output.lower()


@pytest.mark.parametrize("block", toml_blocks("lab"), ids=lambda b: b.where)
def test_lab_configuration_example_reads(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(block.text, encoding="utf-8")
    values = read_config(path)
    assert values, f"{block.where}: an empty [lab] table"


@pytest.mark.parametrize("block", blocks_of({"python"}), ids=lambda b: b.where)
def test_python_example_compiles(block: Block) -> None:
    compile(block.text, block.where, "exec")


# -- shell -----------------------------------------------------------------------------------


@dataclass
class Command:
    block: Block
    line: int  # its first line in the document
    text: str
    comments: list[str]
    background: bool
    last: int = 0  # its last line (or attached comment line) in the block, 0-based

    @property
    def where(self) -> str:
        return f"{self.block.path.relative_to(ROOT)}:{self.line}"

    @property
    def must_fail(self) -> bool:
        return any("Error:" in comment for comment in self.comments)


def split_comment(line: str) -> tuple[str, str]:
    """``line`` as (code, comment): a ``#`` at the start or after a blank, outside quotes."""
    quote = ""
    for n, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (n == 0 or line[n - 1].isspace()):
            return line[:n], line[n + 1 :]
    return line, ""


OPENERS = frozenset({"for", "while", "until", "if", "case"})
CLOSERS = frozenset({"done", "fi", "esac"})


def split_commands(block: Block) -> list[Command]:
    """The block's commands: continued lines (``\\``) and compound commands (``for ...
    done``) are one. A command's comments: those on its lines, indented comment-only lines
    right below it, and unindented comment-only lines right above it."""
    commands: list[Command] = []
    lines: list[str] = []
    comments: list[str] = []
    depth = first = 0
    for n, line in enumerate(block.text.splitlines()):
        code, comment = split_comment(line)
        if not lines and not code.strip():
            if not comment:
                comments = []
            elif line[:1].isspace() and commands and commands[-1].last == n - 1:
                commands[-1].comments.append(comment)
                commands[-1].last = n
            else:
                comments.append(comment)
            continue
        if not lines:
            first = n
        lines.append(line)
        comments.append(comment)
        words = re.findall(r"[\w-]+", code)
        depth += sum(w in OPENERS for w in words) - sum(w in CLOSERS for w in words)
        if code.rstrip().endswith("\\") or depth > 0:
            continue
        ending = code.rstrip()
        commands.append(
            Command(
                block,
                block.line + 1 + first,
                "\n".join(lines),
                comments,
                ending.endswith("&") and not ending.endswith("&&"),
                n,
            )
        )
        lines, comments = [], []
    assert not lines, f"{block.where}: the block ends inside a command"
    return commands


@dataclass(frozen=True)
class Session:
    """Shell blocks run in one bash: one block, or every lab block of a document."""

    name: str
    blocks: tuple[Block, ...]
    with_lab: bool

    @property
    def commands(self) -> list[Command]:
        return [c for b in self.blocks for c in split_commands(b)]


def sessions() -> list[Session]:
    found: list[Session] = []
    for doc in DOCS:
        shell = [b for b in ALL_BLOCKS if b.path == doc and b.info in SHELL and not b.skipped]
        lab = tuple(b for b in shell if b.marker == WITH_LAB)
        if lab:
            found.append(Session(f"{doc.relative_to(ROOT)}:lab", lab, True))
        found.extend(Session(b.where, (b,), False) for b in shell if b.marker != WITH_LAB)
    return found


@cache
def namespace_problem() -> str | None:
    """Why the examples cannot run in a private network namespace, or None."""
    if not shutil.which("unshare") or not ip_command():
        return "unshare or ip is missing"
    probe = subprocess.run(
        ["unshare", "-rn", ip_command(), "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode:
        return f"unshare -rn is not allowed here: {probe.stderr.strip()}"
    return None


@cache
def ip_command() -> str:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), ""
    )


def sandbox_tmp(text: str) -> str:
    """``/tmp/...`` in an example becomes the session's own directory."""
    return re.sub(r"(?<![\w/.-])/tmp/", "$DOCS_TMP/", text)


def quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def session_script(session: Session, home: Path) -> str:
    """One session as a bash subshell: its own directory, ``KMSEMU_HOME`` and variables."""
    results = home / "results"
    out = [
        f"# {session.name}",
        "(",
        f"R={quoted(results)}",
        f"export HOME={quoted(home / 'user')} KMSEMU_HOME={quoted(home / 'user/.kmsemu')}",
        f'export DOCS_TMP={quoted(home / "tmp")} PATH={quoted(home / "work/.venv/bin")}:"$PATH"',
        f"cd {quoted(home / 'work')} || exit",
        "servers=()",
    ]
    if session.with_lab:
        out += [
            'kmsemu lab >"$R/lab.out" 2>"$R/lab.err" </dev/null &',
            "lab=$!",
            "wait_ready \"$R/lab.err\" $lab '^ready lab ' || echo 'not ready' >>\"$R/lab.err\"",
        ]
    for n, command in enumerate(session.commands):
        out += ["{", sandbox_tmp(command.text), f'}} >"$R/{n}.out" 2>"$R/{n}.err" </dev/null']
        if command.background:
            out += ["servers+=($!)", f"wait_ready \"$R/{n}.err\" $! '^ready '"]
        out += [f'echo "{n} $? $EPOCHREALTIME" >>"$R/rc"']
    out += [
        'for pid in "${servers[@]}"; do kill -TERM "$pid"; done',
        'for pid in "${servers[@]}"; do',
        '  wait "$pid"; echo "$pid $?" >>"$R/servers.rc"',
        "done",
    ]
    if session.with_lab:
        out += ['kill -TERM $lab; wait $lab; echo $? >"$R/lab.rc"']
    return "\n".join([*out, ")", ""])


def tools_missing(session: Session) -> list[str]:
    text = "\n".join(split_comment(line)[0] for b in session.blocks for line in b.text.splitlines())
    return [t for t in TOOLS if re.search(rf"(?<![\w.-]){t}\b", text) and not shutil.which(t)]


@pytest.fixture(scope="module")
def shell_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every session that can run, one after the other in one private network namespace
    with one fork server; the directory of each session's results, by name."""
    problem = namespace_problem()
    if problem:
        pytest.skip(f"the shell examples run in a private network namespace: {problem}")
    base = tmp_path_factory.mktemp("docs")
    homes: dict[str, Path] = {}
    script = [
        "# generated by tests/test_docs.py",
        f"{quoted(Path(ip_command()))} link set lo up || exit 90",
        f'{quoted(Path(sys.executable))} {quoted(DOCRUN)} "$KMSEMU_DOCS_SERVER" '
        f"2>{quoted(base / 'server.err')} &",
        "server=$!",
        'for _ in $(seq 600); do [ -S "$KMSEMU_DOCS_SERVER" ] && break; sleep 0.05; done',
        "wait_ready() {  # FILE PID PATTERN: wait until FILE has a line matching PATTERN",
        "  for _ in $(seq 400); do",
        '    grep -q "$3" "$1" 2>/dev/null && return 0',
        '    kill -0 "$2" 2>/dev/null || return 1; sleep 0.05',
        "  done; return 1",
        "}",
    ]
    for n, session in enumerate(sessions()):
        if tools_missing(session):
            continue
        home = homes[session.name] = base / f"session{n}"
        for folder in ("results", "work/.venv/bin", "tmp", "user"):
            (home / folder).mkdir(parents=True)
        shim = home / "work/.venv/bin/kmsemu"
        shim.write_text(docrun.shim(sys.executable))
        shim.chmod(0o755)
        script.append(session_script(session, home))
    script += ["kill -TERM $server; wait $server 2>/dev/null", "exit 0"]
    (base / "run.sh").write_text("\n".join(script) + "\n")
    socket_dir = Path(tempfile.mkdtemp(prefix="kmsemu-docs-"))  # AF_UNIX paths are short
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSEMU_")}
    env.update(KMSEMU_DOCS_SERVER=str(socket_dir / "s"), PYTHONIOENCODING="utf-8")
    try:
        proc = subprocess.Popen(
            ["unshare", "-rn", "bash", str(base / "run.sh")],
            cwd=base,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
    (base / "run.out").write_text(output)
    return homes


def tail(path: Path, limit: int = 1500) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if len(text) <= limit else "..." + text[-limit:]


@pytest.mark.parametrize("session", sessions(), ids=lambda s: s.name)
def test_shell_example_runs(session: Session, shell_runs: dict[str, Path]) -> None:
    if session.name not in shell_runs:
        pytest.skip(f"{session.name} uses {', '.join(tools_missing(session))}, not installed")
    results = shell_runs[session.name] / "results"
    # each line: command number, exit status, the time it ended (for reading slow runs)
    codes = dict(line.split()[:2] for line in tail(results / "rc", 10**7).splitlines())
    failures = []
    if session.with_lab and not (results / "lab.rc").exists():
        failures.append(f"the lab did not start or stop:\n{tail(results / 'lab.err')}")
    for n, command in enumerate(session.commands):
        code, err = codes.get(str(n)), tail(results / f"{n}.err")
        expected = "non-zero (its comment says Error:)" if command.must_fail else "0"
        wrong = code is None or (code == "0") == command.must_fail
        if "Traceback (most recent call last)" in err:
            wrong, expected = True, "no traceback"
        if wrong:
            failures.append(
                f"{command.where}: exit {code}, expected {expected}\n"
                f"$ {command.text}\n{tail(results / f'{n}.out')}{err}"
            )
    for line in tail(results / "servers.rc", 10**6).splitlines():
        if line.split()[1] != "0":
            failures.append(f"a server the example started exited {line.split()[1]} on SIGTERM")
    if session.with_lab and tail(results / "lab.rc").strip() not in ("", "0"):
        failures.append(
            f"the lab exited {tail(results / 'lab.rc').strip()} on SIGTERM:\n"
            f"{tail(results / 'lab.err')}"
        )
    if failures:
        run_out = tail(results.parent.parent / "run.out")
        pytest.fail(f"{session.name}\n\n" + "\n\n".join(failures) + f"\n\n{run_out}", pytrace=False)


# -- links and paths -------------------------------------------------------------------------

#: the top-level folders of the repository a document may name
REPO_DIRS = ("kmsemu", "mak", "scripts", "docs", "tests")
REPO_PATH = re.compile(rf"(?<![\w/.$~-])(?:\./)?((?:{'|'.join(REPO_DIRS)})/[\w./-]*)")
MODULE = re.compile(r"`((?:kmsemu|mak)(?:\.[A-Za-z_]\w*)+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
#: file names the documents mention that are not modules (``mak.png``)
FILE_SUFFIXES = frozenset({"png", "json", "csv", "html", "toml", "sqlite3", "py", "md"})
#: paths the documents name that are not in the repository, and why
ALLOWED = {
    "shared/": "the specs (shared/spec/...), kept beside the repository, not in it",
    "mak/admin-token": "the admin token the lab makes at run time in $KMSEMU_HOME",
}


def referenced_paths(doc: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for match in REPO_PATH.finditer(line):
            yield number, match.group(1).rstrip(".,:;")
        for span in CODE_SPAN.findall(line):
            if re.fullmatch(r"(?:Dockerfile|pyproject\.toml|README\.md|shared/[\w./-]*)", span):
                yield number, span


def module_problem(dotted: str) -> str | None:
    """None when ``kmsemu.a.b[.Name]`` names a module of the repository (and a top-level
    name in it), else what is missing."""
    parts = dotted.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return None
    for size in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:size])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            break
    else:
        return f"no module {'.'.join(parts[:2])}"
    rest = parts[size:]
    if not rest:
        return None
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if rest[0] in names:
        return None
    return f"{source.relative_to(ROOT)} defines no {rest[0]}"


def heading_anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of ``doc``."""
    anchors: set[str] = set()
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_docs_point_at_files_that_exist(doc: Path) -> None:
    problems = []
    text = doc.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:...
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists():
                problems.append(f"{doc.name}:{number}: link to {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
                problems.append(f"{doc.name}:{number}: link to {target}: no such heading")
        for dotted in MODULE.findall(line):
            problem = module_problem(dotted)
            if problem:
                problems.append(f"{doc.name}:{number}: `{dotted}`: {problem}")
    for number, name in referenced_paths(doc):
        if name in ALLOWED or any(name.startswith(p) for p in ALLOWED if p.endswith("/")):
            continue
        if not (ROOT / name).exists():
            problems.append(f"{doc.name}:{number}: {name}: not in the repository")
    assert not problems, "\n".join(problems)
