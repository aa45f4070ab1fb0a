"""Whether a small state file changed since the last look, for a running host that
obeys files other processes write (faults, settings): one ``os.stat`` a look."""

from __future__ import annotations

import os
from pathlib import Path


class FileWatch:
    """``changed()``: whether ``path`` changed (inode, mtime or size) since the last call;
    the first call says True, and a file that is not there is a state of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        """Whether the file changed since the last call."""
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = (0, 0, 0)
        if signature == self._seen:
            return False
        self._seen = signature
        return True

    @property
    def seen_ns(self) -> int:
        """The modification time (ns) of the file as the last call saw it (0: none)."""
        return self._seen[1] if self._seen is not None else 0


def modified_ns(path: Path) -> int:
    """The file's modification time in nanoseconds (0 when it is not there)."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0
