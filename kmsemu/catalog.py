"""The product catalog: what a host serves and what a client can be.

Loaded from ``kmsemu/data/catalog.toml`` (or a file a lab names) and
validated as a whole when loaded: a bad entry is refused with a message
naming it, never skipped. A product's position is its product number in
lab keys, so entries are only ever appended.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from kmsemu.errors import ConfigError

FAMILIES: Final = frozenset({"windows-client", "windows-server", "office", "subscription"})
CHANNELS: Final = frozenset({"volume", "subscription"})
_FIELDS: Final = {
    "key": str,
    "name": str,
    "description": str,
    "family": str,
    "channel": str,
    "threshold": int,
    "application_id": str,
    "sku_id": str,
    "kms_count_id": str,
    "kms_count_group": str,
}
_UUID_FIELDS: Final = ("application_id", "sku_id", "kms_count_id")


@dataclass(frozen=True, slots=True)
class Product:
    """One catalog entry: a product's ids, family, channel and activation threshold."""

    number: int
    key: str
    name: str
    description: str
    family: str
    channel: str
    threshold: int
    application_id: uuid.UUID
    sku_id: uuid.UUID
    kms_count_id: uuid.UUID
    kms_count_group: str
    application: str

    def to_json(self) -> dict[str, Any]:
        """The entry as ``kmsemu catalog --json`` prints it (ids as strings)."""
        return {
            "number": self.number,
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "channel": self.channel,
            "threshold": self.threshold,
            "application": self.application,
            "application_id": str(self.application_id),
            "sku_id": str(self.sku_id),
            "kms_count_id": str(self.kms_count_id),
        }


class Catalog:
    """An ordered, validated list of products with the lookups hosts and clients need."""

    def __init__(
        self, products: tuple[Product, ...], applications: Mapping[uuid.UUID, str]
    ) -> None:
        self.products = products
        self.applications = dict(applications)
        # subscription offers (the licensing portal's) are never activated by a KMS host
        self._served = frozenset(
            (p.application_id.bytes_le, p.kms_count_id.bytes_le)
            for p in products
            if p.channel == "volume"
        )

    @property
    def volume(self) -> tuple[Product, ...]:
        """The products KMS hosts serve (channel ``volume``): no subscription offers."""
        return tuple(p for p in self.products if p.channel == "volume")

    @property
    def kms_applications(self) -> dict[uuid.UUID, str]:
        """The applications a KMS host counts: those of its volume products."""
        used = {p.application_id for p in self.volume}
        return {a: name for a, name in self.applications.items() if a in used}

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __len__(self) -> int:
        return len(self.products)

    def serves(self, application_id: bytes, kms_count_id: bytes) -> bool:
        """Whether some entry has both ids (``bytes_le`` form, the host's hot path)."""
        return (application_id, kms_count_id) in self._served

    def application_name(self, application_id: uuid.UUID) -> str:
        """The application's display name; its id as text when the catalog has none."""
        return self.applications.get(application_id, str(application_id))

    def find(self, name: str) -> Product:
        """A product by key (``windows-11-pro``), name or SKU id, case-insensitively."""
        wanted = name.strip().casefold()
        for product in self.products:
            if wanted in (product.key, product.name.casefold(), str(product.sku_id)):
                return product
        close = self.close_matches(name)
        also = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"no product {name!r}{also}", code="unknown_product")

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """The product keys most like ``name`` (a key or a name mistyped), best first."""
        wanted = name.strip().casefold()
        by_name = {p.name.casefold(): p.key for p in self.products}
        keys = [p.key for p in self.products]
        import difflib  # only a mistyped name needs it

        found = difflib.get_close_matches(wanted, [*keys, *by_name], n=n, cutoff=0.6)
        return list(dict.fromkeys(by_name.get(f, f) for f in found))[:n]


def _entry_error(where: str, message: str) -> ConfigError:
    return ConfigError(f"catalog {where}: {message}", code="bad_catalog")


def _parse_uuid(where: str, field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _entry_error(where, f"{field} {value!r} is not a GUID") from None


def parse_catalog(data: Mapping[str, Any], source: str = "catalog") -> Catalog:
    """Validate a decoded catalog document; raises ConfigError naming the bad entry."""
    raw_apps = data.get("applications")
    if not isinstance(raw_apps, dict) or not raw_apps:
        raise _entry_error(source, "an [applications] table mapping ids to names is required")
    applications = {_parse_uuid(source, "application", k): str(v) for k, v in raw_apps.items()}
    raw_products = data.get("products")
    if not isinstance(raw_products, list) or not raw_products:
        raise _entry_error(source, "at least one [[products]] entry is required")
    products: list[Product] = []
    seen: dict[str, set[Any]] = {"key": set(), "name": set(), "sku_id": set()}
    for number, entry in enumerate(raw_products):
        where = f"{source} product #{number}"
        if not isinstance(entry, dict):
            raise _entry_error(where, "is not a table")
        if isinstance(entry.get("key"), str):
            where += f" ({entry['key']})"
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise _entry_error(where, f"unknown field(s) {', '.join(sorted(unknown))}")
        for field, kind in _FIELDS.items():
            if field not in entry:
                raise _entry_error(where, f"missing field {field}")
            if not isinstance(entry[field], kind) or isinstance(entry[field], bool):
                raise _entry_error(where, f"{field} must be a {kind.__name__}")
        ids = {f: _parse_uuid(where, f, entry[f]) for f in _UUID_FIELDS}
        if entry["family"] not in FAMILIES:
            raise _entry_error(
                where, f"family {entry['family']!r} is not one of {sorted(FAMILIES)}"
            )
        if entry["channel"] not in CHANNELS:
            raise _entry_error(
                where, f"channel {entry['channel']!r} is not one of {sorted(CHANNELS)}"
            )
        if not 1 <= entry["threshold"] <= 1000:
            raise _entry_error(where, f"threshold {entry['threshold']} is outside 1..1000")
        if ids["application_id"] not in applications:
            raise _entry_error(where, "application_id is not in [applications]")
        if entry["key"] != entry["key"].strip().casefold() or not entry["key"]:
            raise _entry_error(where, "key must be non-empty lower case")
        for field in seen:
            value = ids.get(field, entry[field])
            value = value.casefold() if isinstance(value, str) else value
            if value in seen[field]:
                raise _entry_error(where, f"duplicate {field} {entry[field]}")
            seen[field].add(value)
        products.append(
            Product(
                number=number,
                key=entry["key"],
                name=entry["name"],
                description=entry["description"],
                family=entry["family"],
                channel=entry["channel"],
                threshold=entry["threshold"],
                application_id=ids["application_id"],
                sku_id=ids["sku_id"],
                kms_count_id=ids["kms_count_id"],
                kms_count_group=entry["kms_count_group"],
                application=applications[ids["application_id"]],
            )
        )
    return Catalog(tuple(products), applications)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The shipped catalog, or the TOML file at ``path``."""
    if path is None:
        return default_catalog()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read catalog {path}: {exc.strerror or exc}", code="bad_catalog"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"catalog {path} is not UTF-8 text", code="bad_catalog") from exc
    return _parse_text(text, str(path))


def _parse_text(text: str, source: str) -> Catalog:
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer past 4,300 digits
        raise ConfigError(f"catalog {source}: {exc}", code="bad_catalog") from exc
    except RecursionError:  # tomllib nests by recursion
        raise ConfigError(f"catalog {source}: nested too deeply", code="bad_catalog") from None
    return parse_catalog(data, source)


@cache
def default_catalog() -> Catalog:
    """The catalog shipped in ``kmsemu/data/catalog.toml``, read once."""
    # a plain path, not importlib.resources: the package ships as files, and the resources
    # machinery (zipfile and friends) would add 3 MiB to every process that reads this
    text = (Path(__file__).parent / "data" / "catalog.toml").read_text(encoding="utf-8")
    return _parse_text(text, "kmsemu/data/catalog.toml")
