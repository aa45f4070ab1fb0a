"""A short run of every fuzz target (issue 17) inside the test suite.

Each target of ``fuzz/targets.py`` runs over its seed corpus (``fuzz/corpus/TARGET/``)
and a few thousand inputs mutated from it (a fixed ``random.Random`` seed, so the run is
the same every time: byte flips, insertions, deletions, splices and a dictionary of
tokens that have found bugs: non-ASCII digits, deep nesting, huge numbers). The long,
coverage-guided runs are ``scripts/fuzz`` (docs/quality.md, "Fuzzing (issue 17)");
one very short one runs here too, to keep the wrapper working.

A crash is any exception out of a target. Crashes already recorded as xfail tests in
tests/test_fuzz_regressions.py are recognised by ``KNOWN`` (the exception type and the
function that raised it) and only reported as a warning, so this test catches new bugs
while the recorded ones wait for their fix; remove an entry once its bug is fixed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install -e '.[test]')")

from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"
#: Mutated inputs per target (the HTTP target goes through Starlette and SQLite: fewer).
RUNS = {"http": 600}
DEFAULT_RUNS = 3000
TOKENS = [
    b"\xc2\xb2", b"\xd9\xa3", b"\xef\xbc\x91", b"[" * 64, b"{" * 64, b"9" * 30, b"1e400",
    b"9" * 400, b"\x00", b"\xff\xff\xff\xff", b"\x80", b"-", b"\n", b'"', b"null", b"true",
    b"[]", b"{}",
    b"\x05\x00\x0b\x03\x10\x00\x00\x00", b"\x05\x00\x00\x03\x10\x00\x00\x00",
]  # fmt: skip
#: (exception type, module file, function) of the bugs in tests/test_fuzz_regressions.py:
#: the function is the innermost frame in kmsemu/ (the exception may come from deeper, in
#: dnslib or tomllib).
KNOWN: set[tuple[str, str, str]] = set()  # none waits for its fix


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """One to four libFuzzer-like mutations of ``data`` (``other``: for splices)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(6), rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes([rng.randrange(256)])
        elif op == 2 and out:
            del out[at : at + rng.randint(1, 8)]
        elif op == 3:
            out[at:at] = rng.choice(TOKENS)
        elif op == 4 and out:
            out[at % len(out)] = rng.choice(b"0123456789-\x00\xff")
        else:
            start = rng.randrange(len(other) + 1)
            out[at:] = other[start:]
    return bytes(out)


def where(exc: BaseException) -> tuple[str, str, str]:
    """The exception's type, and the file and function of its innermost frame in kmsemu/."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/kmsemu/" in f.filename]
    if not frames:
        return type(exc).__name__, "", ""
    frame = frames[-1]
    return type(exc).__name__, "kmsemu/" + frame.filename.rsplit("/kmsemu/", 1)[1], frame.name


def known(exc: BaseException) -> bool:
    return where(exc) in KNOWN


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_survives_its_seeds_and_mutations(name: str) -> None:
    target = TARGETS[name]
    seeds = [path.read_bytes() for path in sorted((CORPUS / name).iterdir())]
    assert seeds, f"no seeds in fuzz/corpus/{name}"
    rng = random.Random(f"kmsemu fuzz {name}")
    runs = RUNS.get(name, DEFAULT_RUNS)
    inputs = seeds + [mutate(rng, rng.choice(seeds), rng.choice(seeds)) for _ in range(runs)]
    seen: dict[tuple[str, str, str], bytes] = {}
    for data in inputs:
        try:
            target(data)
        except RecursionError as exc:  # pytest's frames come first: judged like the rest
            if not known(exc):
                raise
            seen.setdefault(where(exc), data)
        except Exception as exc:  # a test collecting crashes, not a harness hiding them
            if not known(exc):
                raise AssertionError(f"{name} crashed on {data!r}") from exc
            seen.setdefault(where(exc), data)
    for spot, data in seen.items():
        warnings.warn(f"{name}: known bug {spot} still there (e.g. {data[:60]!r})", stacklevel=1)


def test_the_wrapper_runs_a_target_under_libfuzzer(tmp_path: Path) -> None:
    """``scripts/fuzz rpc --runs 300``: atheris instruments, runs the seeds and mutates."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz"), "rpc", "--runs", "300", "-seed=1",
         "--corpus", str(tmp_path / "corpus"), f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stat::number_of_executed_units: 300" in proc.stderr


def test_list_names_every_target() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz"), "--list"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(TARGETS)
