"""KLP/1, the lab protocol: the envelope (``envelope``) and the plaintexts (``messages``).

``DEFAULT_SECRET`` lives here, not in ``envelope``, so that a command can name the
default secret without loading the cipher."""

from typing import Final

#: The lab secret when neither --secret nor KMSEMU_SECRET gives one (klp-v1.md).
DEFAULT_SECRET: Final = "kmsemu-lab"
