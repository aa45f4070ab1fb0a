"""What a host server is tuned with: its port, connection limits and timers.

Kept apart from ``kmsemu.host.server`` so that the command line can show the
defaults without loading the server (asyncio, the cipher)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_PORT: Final = 1688
DEFAULT_MAX_CONNECTIONS: Final = 4096
DEFAULT_IDLE_TIMEOUT: Final = 30.0
#: Where the host sends its RFC 2136 updates when --dns-server does not say (kmsemu dns serve).
DEFAULT_DNS_SERVER: Final = "127.0.0.1:5300"
#: Seconds between two publications of the host's DNS records (Windows: every 24 hours).
DEFAULT_DNS_REFRESH: Final = 24 * 3600.0


@dataclass
class ServerOptions:
    """At ``max_connections`` open, a new one closes the oldest; one silent for
    ``idle_timeout`` seconds is closed; state is written every ``flush_interval``;
    ``durable``: an answer leaves only once its request is in the journal."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    flush_interval: float = 0.25
    durable: bool = True
