"""The KMS client emulator: licence state machine, profiles, verbs, exchange, discovery.

``DEFAULT_TIMEOUT`` lives here so that the command line can show it without loading
the exchange (the cipher)."""

from typing import Final

#: Seconds one KLP/1 exchange may take.
DEFAULT_TIMEOUT: Final = 5.0
