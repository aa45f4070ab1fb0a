"""The machine and code a figure was measured on: the header of every report."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchkit.env import REPO


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def git_state(repo: Path = REPO) -> str:
    """HEAD, and whether anything in the working tree differs from it (any folder: the
    code measured, the scripts measuring it, their data)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=repo,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head or '?'}{' + uncommitted changes' if dirty else ''}"


def machine_info(*packages: str, **extra: Any) -> dict[str, Any]:
    """Date, CPUs, kernel, Python, the versions of ``packages``, ``extra`` and the git state."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        **{name: package_version(name) for name in packages},
        **extra,
        "git": git_state(),
    }


def machine_line(machine: dict[str, Any], *parts: str) -> str:
    """``date: ...; nproc N; CPU ...; kernel ...; CPython 3.x; PARTS...; kmsemu at REV``."""
    return "; ".join(
        [
            f"date: {machine['date']}",
            f"nproc {machine['nproc']}",
            f"CPU {machine['cpu_model']}",
            f"kernel {machine['kernel']}",
            f"{machine.get('implementation', 'CPython')} {machine['python']}",
            *parts,
            f"kmsemu at {machine['git']}",
        ]
    )


def mark_end(machine: dict[str, Any]) -> None:
    """Record the git state at the end of a run (``changed_note`` compares)."""
    machine["git_after"] = git_state()


def changed_note(machine: dict[str, Any], prefix: str = "") -> list[str]:
    """A note (with ``prefix``) when the tree changed between the start and the end of the
    run; none when it did not."""
    after = machine.get("git_after", machine["git"])
    if after == machine["git"]:
        return []
    return [f"{prefix}the code changed during the run: {machine['git']} -> {after}"]
