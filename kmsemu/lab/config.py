"""The lab's configuration file (TOML) and what a reload may change (pure).

The file has one table, ``[lab]``, whose keys are ``kmsemu lab``'s long
options with underscores (``http_listen = "127.0.0.1:8688"``). The command
line wins over the environment, which wins over the file (click's
``default_map`` carries the file). SIGHUP reads the file again: the keys in
``RELOADABLE`` take effect at once, unless the command line or the
environment set them; the others need a restart, and the reload says so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kmsemu.errors import ConfigError
from kmsemu.host.rules import INTERVAL_RANGE, HostSettings
from kmsemu.klp import DEFAULT_SECRET
from mak.defaults import DEFAULT_REDEEM_RATE

#: key -> the TOML types it accepts
KEYS: Final[dict[str, tuple[type, ...]]] = {
    "kms_listen": (list, str),
    "kms_address": (str,),
    "dns_listen": (str,),
    "http_listen": (str,),
    "zone": (str,),
    "min_count": (int,),
    "activation_interval": (int,),
    "renewal_interval": (int,),
    "admin_token": (str,),
    "secret": (str,),
    "log_format": (str,),
    "quiet": (bool,),
    "redeem_rate": (int,),
}
#: key -> the (lowest, highest) an int key takes (None: no bound), at start and on reload
RANGES: Final[dict[str, tuple[int, int | None]]] = {
    "min_count": (0, 1000),
    "activation_interval": INTERVAL_RANGE,
    "renewal_interval": INTERVAL_RANGE,
    "redeem_rate": (0, None),
}
RELOADABLE: Final = frozenset({"min_count", "activation_interval", "renewal_interval", "quiet"})
FILE_NAME: Final = "lab.toml"


def read_config(path: Path) -> dict[str, Any]:
    """The ``[lab]`` table of ``path``, checked: unknown keys and wrong types are errors."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", code="config_invalid"
        ) from exc
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer past 4,300 digits
        raise ConfigError(f"{path}: {exc}", code="config_invalid") from exc
    except RecursionError:  # tomllib nests by recursion
        raise ConfigError(f"{path}: nested too deeply", code="config_invalid") from None
    return check_config(data, str(path))


def check_config(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``[lab]`` values of a parsed file, type- and range-checked; ConfigError names the key."""
    extra = sorted(set(data) - {"lab"})
    if extra:
        raise ConfigError(
            f"{source}: unknown table or key {extra[0]!r}; put settings in [lab]",
            code="config_invalid",
        )
    table = data.get("lab", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: lab must be a table", code="config_invalid")
    values: dict[str, Any] = {}
    for key, value in table.items():
        kinds = KEYS.get(key)
        if kinds is None:
            known = ", ".join(KEYS)
            raise ConfigError(
                f"{source}: unknown key lab.{key} (known: {known})", code="config_invalid"
            )
        # bool is an int in Python; TOML keeps them apart and so do we
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("array" if k is list else k.__name__ for k in kinds)
            raise ConfigError(
                f"{source}: lab.{key} must be {names}, not {value!r}", code="config_invalid"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{source}: lab.{key} must be a list of strings", code="config_invalid"
            )
        low, high = RANGES.get(key, (None, None))
        if (
            low is not None
            and isinstance(value, int)
            and not (low <= value and (high is None or value <= high))
        ):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ConfigError(
                f"{source}: lab.{key} must be {bounds}, not {value!r}", code="config_invalid"
            )
        values[key] = [value] if key == "kms_listen" and isinstance(value, str) else value
    return values


@dataclass(frozen=True)
class Reload:
    """What a reload does: values to apply now, and keys it must leave alone."""

    apply: dict[str, Any]
    restart: list[str]  # changed in the file, but only a restart takes them
    overridden: list[str]  # changed in the file, but the command line or environment set them

    def summary(self) -> str:
        """One line for the log: what was applied, what needs a restart, what was kept."""
        parts = [f"applied {', '.join(f'{k}={v}' for k, v in self.apply.items()) or 'nothing'}"]
        if self.restart:
            parts.append(f"restart needed for {', '.join(self.restart)}")
        if self.overridden:
            parts.append(f"kept from the command line or environment: {', '.join(self.overridden)}")
        return "; ".join(parts)


def plan_reload(
    old_file: Mapping[str, Any],
    new_file: Mapping[str, Any],
    current: Mapping[str, Any],
    fixed: set[str],
) -> Reload:
    """Compare the file as it was with the file as it is.

    ``current`` holds the values in effect; ``fixed`` the keys the command line or
    the environment set (they keep precedence over the file). A key removed from
    the file goes back to ``current``'s value: nothing changes for it.
    """
    apply: dict[str, Any] = {}
    restart: list[str] = []
    overridden: list[str] = []
    for key in sorted(set(old_file) | set(new_file)):
        if key not in new_file or new_file[key] == old_file.get(key):
            continue
        if key in fixed:
            overridden.append(key)
        elif key not in RELOADABLE:
            restart.append(key)
        elif new_file[key] != current.get(key):
            apply[key] = new_file[key]
    return Reload(apply, restart, overridden)


@dataclass
class LabSettings:
    """The lab's settings in effect: the command line, environment and file, merged."""

    kms_listen: list[tuple[str, int]]
    dns_listen: tuple[str, int]
    http_listen: tuple[str, int]
    zone: str = "lab.test"
    kms_address: str | None = None  # published as kms.ZONE (default: the listen address)
    min_count: int = 0
    activation_interval: int = HostSettings().activation_interval
    renewal_interval: int = HostSettings().renewal_interval
    admin_token: str | None = None
    secret: str = DEFAULT_SECRET
    log_format: str = "text"
    quiet: bool = False
    redeem_rate: int = DEFAULT_REDEEM_RATE


@dataclass
class Reloading:
    """Where SIGHUP reads from: the file, what it said at start, and the keys the command
    line or the environment set (they keep precedence)."""

    path: Path | None
    file_values: dict[str, Any] = field(default_factory=dict)
    fixed: set[str] = field(default_factory=set)
