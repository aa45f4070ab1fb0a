"""The MAK service's defaults: where it listens, where it keeps its database and token.

Light on purpose: the command line shows these without loading the service."""

from __future__ import annotations

from pathlib import Path
from typing import Final

DEFAULT_PORT: Final = 8688
DEFAULT_URL: Final = f"http://127.0.0.1:{DEFAULT_PORT}"
DB_NAME: Final = "mak.sqlite3"
TOKEN_NAME: Final = "admin-token"
#: Portal redemptions per organisation per minute before ``busy``.
DEFAULT_REDEEM_RATE: Final = 10


def token_file(home: Path) -> Path:
    """Where a service started without ``--admin-token`` keeps its token."""
    return home / TOKEN_NAME
