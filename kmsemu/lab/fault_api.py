"""The lab API's host faults (``/api/host/faults``): what a request body may say, checked
as ``kmsemu host fault set`` checks its flags, and the faults document the API answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kmsemu.catalog import Catalog
from kmsemu.durations import parse_duration
from kmsemu.errors import ConfigError, ServiceError
from kmsemu.host.faults import Fault, FaultStore, new_fault, parse_kind

FAULT_BODY: Final = 2048
#: What ``POST /api/host/faults`` takes (``duration_seconds`` or ``for``, not both).
FAULT_FIELDS: Final = ("kind", "times", "product", "client", "duration_seconds", "for", "delay")


@dataclass(frozen=True)
class HostFaults:
    """The lab host's faults as the API changes them: the file the CLI writes too, the
    host's clock (Unix seconds: what expiries are on), the catalog that names products,
    ``reload`` (the host reads the file again at once) and the counts fired by kind."""

    store: FaultStore
    catalog: Catalog
    now: Callable[[], float]
    reload: Callable[[], None]
    fired: Callable[[], dict[str, int]]

    def document(self, **extra: Any) -> dict[str, Any]:
        """``{"faults": [in force, oldest first], "fired": {kind: n}, "file"}`` and ``extra``
        (what ``kmsemu host fault show --json`` says, and the counts)."""
        try:
            live = self.store.load().live(self.now())
        except (ConfigError, OSError) as exc:
            raise ServiceError("internal", f"the faults file: {exc}") from exc
        return {
            **extra,
            "faults": [f.to_json() for f in live],
            "fired": self.fired(),
            "file": str(self.store.path),
        }


def _invalid(field: str, detail: str) -> ServiceError:
    return ServiceError("invalid_field", detail, field=field)


def _optional(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise _invalid(name, f"{name} is {what}")
    return value


def _seconds(body: dict[str, Any], name: str) -> float | None:
    """A number of seconds, or a duration text (``"10m"``, ``"2s"``)."""
    value = _optional(body, name, (int, float, str), 'a number of seconds or a duration ("10m")')
    if value is None:
        return None
    try:
        seconds = float(value) if not isinstance(value, str) else _duration_text(value)
    except ValueError as exc:
        raise _invalid(name, f"{name}: {exc}") from None
    if not math.isfinite(seconds):
        raise _invalid(name, f"{name} is a finite number of seconds")
    return seconds


def _duration_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return parse_duration(text)


def fault_request(body: dict[str, Any], faults: HostFaults) -> Fault:
    """The fault a ``POST /api/host/faults`` body asks for, checked as ``kmsemu host fault
    set`` checks it; ``invalid_field`` naming the field that is wrong."""
    for name in body:
        if name not in FAULT_FIELDS:
            raise _invalid(name, f"no field {name!r}; the fields are {', '.join(FAULT_FIELDS)}")
    kind = body.get("kind")
    if not isinstance(kind, str):
        raise _invalid("kind", "kind is a string: 0xC004F042, product_not_served, reset...")
    try:
        parse_kind(kind)
    except ConfigError as exc:
        raise _invalid("kind", exc.detail) from None
    times = _optional(body, "times", (int,), "an integer (1 to 1000000)")
    product_text = _optional(body, "product", (str,), "a product key, name or SKU id")
    client = _optional(body, "client", (str,), "a CMID (a GUID)")
    if "duration_seconds" in body and "for" in body:
        raise _invalid("for", "give duration_seconds or for, not both")
    duration_field = "for" if "for" in body else "duration_seconds"
    duration = _seconds(body, duration_field)
    delay = _seconds(body, "delay")
    product = None
    if product_text is not None:
        try:
            found = faults.catalog.find(product_text)
        except ConfigError as exc:
            raise _invalid("product", exc.detail) from None
        product = (found.key, str(found.sku_id))
    try:
        return new_fault(
            kind,
            now=faults.now(),
            times=times,
            product=product,
            client=client,
            duration=duration,
            delay=delay,
        )
    except ConfigError as exc:  # new_fault names the flag: "for" is this body's duration field
        field = exc.fields.get("field", "kind")
        raise _invalid(duration_field if field == "for" else field, exc.detail) from None
