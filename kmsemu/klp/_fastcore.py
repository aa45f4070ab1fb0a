"""Whether the optional compiled core (``kmsemu._core``, ``scripts/build-core``) is in use.

The pure-Python package is the default and the reference; the core is built only on
request. ``KMSEMU_CORE`` chooses, once, when this module is first imported:

- ``auto`` (or unset): the core when it imports, else the pure path;
- ``off``: the pure path, even with the core built (to compare the two);
- ``on``: the core, or ``ConfigError`` (a benchmark that asked for it must not measure
  the pure path by mistake); another value is a ``ConfigError`` too (the command that
  loads the host reports it as ``Error: ...``, exit 1).

With the core, AES-GCM goes through the system libcrypto and ``cryptography`` is not
imported at all (its own OpenSSL is most of the host's idle memory above the
interpreter and the event loop).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final

from kmsemu.errors import ConfigError

ENV: Final = "KMSEMU_CORE"
CHOICES: Final = ("auto", "on", "off")


def load(choice: str | None = None) -> ModuleType | None:
    """The core module as ``choice`` (default: ``$KMSEMU_CORE``) asks, or None."""
    choice = (os.environ.get(ENV, "auto") if choice is None else choice).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "off":
        return None
    try:
        from kmsemu import _core
    except ImportError:
        if choice == "on":
            missing = f"{ENV}=on but kmsemu._core is not built (scripts/build-core)"
            raise ConfigError(missing) from None
        return None
    return _core


#: The core in use by this process (None: the pure-Python path).
CORE: Final = load()
