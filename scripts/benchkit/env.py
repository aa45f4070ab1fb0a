"""The repository, its venv and the tools a bench needs (standard library only)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def ensure_venv(script: str) -> None:
    """Re-exec ``script`` with the repository's venv interpreter unless already in it."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() != VENV.resolve() and python.exists():
        os.execv(str(python), [str(python), str(script), *sys.argv[1:]])


def kmsemu_argv(command: str | None = None) -> list[str]:
    """``command`` split like a shell would, else the venv's kmsemu (or ``python -m``)."""
    if command:
        return shlex.split(command)
    exe = Path(sys.prefix) / "bin" / "kmsemu"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kmsemu"]


def tool(name: str) -> str:
    """A command on PATH, else the venv's (py-spy)."""
    return shutil.which(name) or str(Path(sys.prefix) / "bin" / name)


def apt_install(package: str, what: str) -> bool:
    """``apt-get update && apt-get install -y PACKAGE`` (as root, non-interactive).

    False when it cannot be tried here (no apt-get, not root).
    """
    if not (shutil.which("apt-get") and os.geteuid() == 0):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(
        f"... {what} missing: apt-get update && apt-get install -y {package}",
        file=sys.stderr,
        flush=True,
    )
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr,
                check=False,
                timeout=900,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"    {' '.join(command)}: {exc}", file=sys.stderr)
            break
    return True


def ensure_tool(find: Callable[[], str | None], package: str, what: str, hint: str) -> str:
    """The tool ``find`` locates; installs Debian's ``package`` with apt-get (as root) when
    it is missing, else exits naming ``what`` and how to install it (``hint``)."""
    found = find()
    if not found and apt_install(package, what):
        found = find()
    if not found:
        sys.exit(
            f"bench: {what} is not installed and could not be installed here (needs apt-get "
            f"and root). Install it ({hint}) and run again."
        )
    return found


def tool_version(path: str, flag: str, pattern: str) -> str:
    """The version ``path flag`` prints, the first group of ``pattern`` ('?' if none)."""
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else "?"
