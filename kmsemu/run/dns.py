"""The lab DNS server: serve zones until a signal, or from a background thread."""

from __future__ import annotations

from collections.abc import Callable

from kmsemu.addresses import format_address
from kmsemu.dns.server import DnsServer
from kmsemu.errors import LocalError
from kmsemu.run.background import ServerThread
from kmsemu.run.signals import until_signal


async def serve_dns(
    server: DnsServer, host: str, port: int, announce: Callable[[tuple[str, int]], None]
) -> None:
    """``kmsemu dns serve``: bind, announce the address, answer until SIGTERM/SIGINT; an
    address that cannot be bound is ``listen_failed``."""
    try:
        bound = await server.start(host, port)
    except OSError as exc:
        wanted = format_address(host, port)
        raise LocalError("listen_failed", f"{wanted}: {exc.strerror or exc}") from exc
    try:
        with until_signal() as stopper:
            announce(bound)
            await stopper.wait()
    finally:
        await server.close()


class DnsThread(ServerThread):
    """``server`` on 127.0.0.1 (a free port) from a background thread."""

    name = "kmsemu-dns"

    def __init__(self, server: DnsServer) -> None:
        super().__init__()
        self.server = server
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def serve(self, ready: Callable[[], None]) -> None:
        """Bind, report ready, answer until stopped."""
        self.address = await self.server.start("127.0.0.1", 0)
        try:
            ready()
            await self.stopping.wait()
        finally:
            await self.server.close()
