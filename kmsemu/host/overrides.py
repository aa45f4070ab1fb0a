"""Host settings changed after it started, as slmgr /sai, /sri, /sprt, /cdns and /sdns
change a Windows KMS host: kept in a small file beside the database, so that a running
host takes them (the intervals in its next response, DNS publishing at its next turn) and
its next start keeps them (the port too).

``Overrides`` is pure: values in, settings out. ``OverridesStore`` reads and replaces the
file (atomically) and tells a running host when it changed (one ``os.stat``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kmsemu.errors import ConfigError
from kmsemu.host.rules import INTERVAL_RANGE, HostSettings
from kmsemu.host.watch import FileWatch

#: What the file may hold, and each value's range.
RANGES: Final[dict[str, tuple[int, int]]] = {
    "activation_interval": INTERVAL_RANGE,
    "renewal_interval": INTERVAL_RANGE,
    "port": (1, 65535),
}


@dataclass(frozen=True, slots=True)
class Overrides:
    """The settings set since the host started (None: as the host was started)."""

    activation_interval: int | None = None
    renewal_interval: int | None = None
    port: int | None = None
    #: slmgr /cdns (False) and /sdns (True): whether the host publishes itself in DNS.
    dns_publish: bool | None = None

    def __post_init__(self) -> None:
        if self.dns_publish is not None and not isinstance(self.dns_publish, bool):
            raise ConfigError(f"dns_publish {self.dns_publish!r}: true or false")
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high
            ):
                raise ConfigError(f"{name} {value!r}: an integer from {low} to {high}")

    def applied(self, settings: HostSettings) -> HostSettings:
        """``settings`` with the intervals set here."""
        return dataclasses.replace(
            settings,
            activation_interval=self.activation_interval or settings.activation_interval,
            renewal_interval=self.renewal_interval or settings.renewal_interval,
        )

    def merged(self, later: Overrides) -> Overrides:
        """These overrides with ``later``'s values on top."""
        return Overrides(
            later.activation_interval or self.activation_interval,
            later.renewal_interval or self.renewal_interval,
            later.port or self.port,
            self.dns_publish if later.dns_publish is None else later.dns_publish,
        )

    def to_bytes(self) -> bytes:
        """The file's content: the values set, as JSON."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return json.dumps(values, indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Overrides:
        """The overrides of a file's content; ConfigError when it is not such a file."""
        try:
            values: Any = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"the host settings file is not JSON: {exc}") from None
        known = [*RANGES, "dns_publish"]
        if not isinstance(values, dict) or set(values) - set(known):
            raise ConfigError(f"the host settings file holds {sorted(values)}, not {known}")
        return cls(**values)


def overrides_path(database: Path) -> Path:
    """Beside the host's SQLite file: ``host.settings.json`` (``lab.settings.json``)."""
    return database.with_name(database.stem + ".settings.json")


class OverridesStore:
    """The settings file: read, replaced atomically, watched."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._watch = FileWatch(path)

    def load(self) -> Overrides:
        """What the file holds (nothing set when there is none)."""
        try:
            return Overrides.from_bytes(self.path.read_bytes())
        except FileNotFoundError:
            return Overrides()

    def save(self, overrides: Overrides) -> None:
        """Replace the file with ``overrides`` (a reader sees the old file or the new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_bytes(overrides.to_bytes())
        os.replace(temp, self.path)

    def changed(self) -> bool:
        """Whether the file changed since the last call (one ``os.stat``); the first call
        says True."""
        return self._watch.changed()
