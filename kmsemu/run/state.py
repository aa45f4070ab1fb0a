"""State made for a server that never started is taken away again.

A ``kmsemu host serve`` that cannot bind its port must not leave a new, empty
``$KMSEMU_HOME/host/`` behind: ``kmsemu host status`` would then show that empty
host instead of the lab's. Files and directories that did not exist before the
start are removed when the start fails; what existed is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

#: SQLite's companions of a database file, and the KMS host's journal of answers.
_SIDECARS: Final = ("", "-wal", "-shm", "-journal", ".answered")


def _missing_dirs(path: Path) -> list[Path]:
    """``path``'s directories that do not exist yet, deepest first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def discarded_on_failure(*files: Path) -> Iterator[None]:
    """Remove ``files`` (SQLite databases or plain files) and the directories made for
    them if the block raises and they did not exist when it began."""
    new = [(f, _missing_dirs(f)) for f in files if not f.exists()]
    try:
        yield
    except BaseException:
        for file, dirs in new:
            for suffix in _SIDECARS:
                with contextlib.suppress(OSError):
                    Path(f"{file}{suffix}").unlink()
            for directory in dirs:
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    directory.rmdir()
        raise
