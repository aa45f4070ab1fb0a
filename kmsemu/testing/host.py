"""A real KMS host on 127.0.0.1 (port 0), served from a background thread."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog, default_catalog
from kmsemu.clock import Clock, OffsetClock, SystemClock
from kmsemu.host.faults import Fault, FaultStore, faults_path, new_fault, parse_kind
from kmsemu.host.options import ServerOptions
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import KmsServer
from kmsemu.host.store import database_path
from kmsemu.klp import DEFAULT_SECRET
from kmsemu.run.host import HostConfig, HostThread


class _Lines:
    """A stream that keeps what the host logs, line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        pass


class BackgroundHost(HostThread):
    """Start with ``start()`` or ``with BackgroundHost(dir) as host:``; stop with ``stop()``.

    ``address`` is ``(host, port)``; ``set_min_count`` and ``set_clock_offset``
    change the running host; ``fail`` and ``clear_faults`` make it fail on demand (as
    ``kmsemu host fault`` does); ``log_lines`` holds what it logged (after ``flush``).
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        secrets: tuple[str, ...] | list[str] = (DEFAULT_SECRET,),
        settings: HostSettings | None = None,
        clock: Clock | None = None,
        clock_offset: float = 0.0,
        options: ServerOptions | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.secrets = tuple(secrets)
        self.clock = OffsetClock(clock or SystemClock(), clock_offset)
        self._sink = _Lines()
        super().__init__(
            HostConfig(
                self.state_dir,
                catalog or default_catalog(),
                settings or HostSettings(),
                list(self.secrets),
                self.clock,
                [("127.0.0.1", 0)],
                options or ServerOptions(),
                log_stream=self._sink,
            )
        )

    @property
    def server(self) -> KmsServer | None:
        """The running ``KmsServer`` (None before ``start``)."""
        return self.running_host.server if self.running_host is not None else None

    @property
    def port(self) -> int:
        """The port the host listens on."""
        return self.address[1]

    @property
    def secret(self) -> str:
        """The first lab secret the host accepts."""
        return self.secrets[0]

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``, as ``kmsemu client activate --host`` and ``slmgr /skms`` take it."""
        return format_address(*self.address)

    @property
    def log_lines(self) -> list[str]:
        """What the host logged so far (after ``flush``)."""
        return self._sink.lines

    def set_min_count(self, count: int) -> None:
        """Report at least ``count`` from now on (0: the real count)."""

        def change() -> None:
            rules = self._server().host.rules
            rules.settings = dataclasses.replace(rules.settings, min_count=count)

        self.call(change)

    def set_clock_offset(self, seconds: float) -> None:
        """Run the host clock ``seconds`` off real time (5 * 3600: a host five hours ahead)."""
        self.clock.offset = seconds

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        product: str | None = None,
        client: str | None = None,
        duration: float | None = None,
        delay: float | None = None,
    ) -> Fault:
        """Make the host fail with ``kind`` (an HRESULT such as ``0xC004F042`` or its name,
        or ``refuse``, ``close-after-bind``, ``stall``, ``reset``, ``garbage``, ``slow``
        with ``delay`` seconds): ``times`` times, for ``product`` (catalog key, name or
        SKU id) or ``client`` (CMID) only, for ``duration`` seconds of the host's clock.
        The running host obeys at once; the fault is kept in the state directory, so a
        restart obeys it too. ConfigError for a kind or value that is not one."""
        found = self.config.catalog.find(product) if product is not None else None
        fault = new_fault(
            kind,
            now=self.clock.now(),
            times=times,
            product=(found.key, str(found.sku_id)) if found is not None else None,
            client=client,
            duration=duration,
            delay=delay,
        )
        stored = self._fault_store().add(fault)
        self._reload_faults()
        return stored

    def clear_faults(self, kind: str | None = None) -> int:
        """Clear the faults of ``kind`` (default: all); how many went."""
        removed = self._fault_store().clear(parse_kind(kind)[0] if kind is not None else None)
        self._reload_faults()
        return removed

    @property
    def faults_fired(self) -> dict[str, int]:
        """How many faults fired since the start, by kind."""
        return dict(self.server.fault_counts) if self.server is not None else {}

    def _fault_store(self) -> FaultStore:
        return FaultStore(faults_path(database_path(self.state_dir)))

    def _reload_faults(self) -> None:
        if self.server is not None and self.running:
            self.call(lambda: self._server().reload_faults())

    def flush(self) -> None:
        """Write pending state and log lines now."""
        self.call(lambda: self._server().flush())

    def _server(self) -> KmsServer:
        if self.server is None:
            raise RuntimeError("the host is not running")
        return self.server
