"""The MAK service: the one place where store, rules, keys and clock meet.

Every method is synchronous and does no I/O of its own beyond the store; the
HTTP API (``mak.api``) and the tests call it. Whole keys come in (online
activation, registration, count queries) and are reduced to their
fingerprint here; nothing below sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kmsemu.catalog import Catalog
from kmsemu.errors import ServiceError
from kmsemu.keys.activation_ids import IdError, confirmation_id, parse_installation_id
from kmsemu.keys.product_key import KeyType, ProductKey, check
from mak import rules
from mak.rules import KeyRecord
from mak.store.base import Activation, Store

ROUTES: Final = ("online", "phone", "proxy", "import")
MAX_PROXY_IDS: Final = 1_000
_FINGERPRINT_CHARS: Final = frozenset("0123456789abcdef")
_HARDWARE_ID: Final = re.compile(r"[0-9a-fA-F]{20}")


@dataclass(frozen=True, slots=True)
class PhoneAnswer:
    """A phone activation: the IID, the confirmation ID for it and what was counted."""

    installation_id: str
    confirmation_id: str
    activation: Activation


def is_fingerprint(text: str) -> bool:
    """Whether the text is a key fingerprint: 16 lower-case hex digits."""
    return len(text) == 16 and set(text) <= _FINGERPRINT_CHARS


def parse_key(text: Any) -> ProductKey:
    """A well-formed lab key, or ``key_malformed`` with the typo help of keys.md."""
    if not isinstance(text, str):
        raise ServiceError("invalid_field", "'key' is a string", field="key")
    diagnosis = check(text)
    if diagnosis.key is None:
        first = diagnosis.problems[0].message if diagnosis.problems else "not well formed"
        raise ServiceError(
            "key_malformed",
            first,
            problems=[p.to_json() for p in diagnosis.problems],
            candidates=list(diagnosis.candidates),
        )
    return diagnosis.key


def parse_hardware_id(text: Any) -> bytes:
    """The 10 bytes of a hardware ID given as 20 hex digits, else ``invalid_field``."""
    if isinstance(text, str) and _HARDWARE_ID.fullmatch(text):
        return bytes.fromhex(text)
    raise ServiceError(
        "invalid_field", "'hardware_id' is 20 hex digits (10 bytes)", field="hardware_id"
    )


def activating_key(text: Any) -> ProductKey:
    """A well-formed key of a type that activates machines (a MAK), else the refusal."""
    key = parse_key(text)
    if key.type not in rules.ACTIVATING_TYPES:
        raise ServiceError("key_wrong_type", f"a {key.type.label} key")
    return key


class MakService:
    """The MAK service's operations: keys registered and activated under one store and clock."""

    def __init__(
        self, store: Store, *, now: Callable[[], float], secret: str, catalog: Catalog
    ) -> None:
        self.store = store
        self.now = now
        self.secret = secret
        self.catalog = catalog

    # -- administration ----------------------------------------------------------------------

    def register(
        self,
        text: Any,
        *,
        limit: int | None = None,
        expires: float | None = None,
        reactivations: int | None = None,
    ) -> KeyRecord:
        """Register a MAK, retail or KMS host key with its limit (the type's default if none)."""
        key = parse_key(text)
        if key.type not in rules.ACTIVATING_TYPES:
            raise ServiceError("key_wrong_type", f"a {key.type.label} key")
        if key.product >= len(self.catalog):
            raise ServiceError("key_malformed", f"no product #{key.product} in the catalog")
        limit = limit if limit is not None else rules.default_limit(key.type)
        if limit is None:
            raise ServiceError("invalid_field", "a MAK needs its activation limit", field="limit")
        if limit < 0 or (reactivations is not None and reactivations < 0):
            raise ServiceError("invalid_field", "limits are 0 or more", field="limit")
        record = KeyRecord(
            fingerprint=key.fingerprint,
            last5=key.last5,
            type=key.type,
            product=key.product,
            limit=limit,
            created=self.now(),
            expires=expires,
            reactivations=(
                reactivations
                if reactivations is not None
                else rules.default_reactivations(key.type)
            ),
        )
        return self.store.add_key(record)

    def fingerprint_of(self, text: str) -> str:
        """A key's fingerprint; admin commands also take the fingerprint itself."""
        text = text.strip()
        return text if is_fingerprint(text) else parse_key(text).fingerprint

    def key(self, fingerprint: str) -> KeyRecord:
        """A registered key by fingerprint, else ``key_unknown``."""
        record = self.store.key(fingerprint)
        if record is None:
            raise ServiceError("key_unknown", f"no key with fingerprint {fingerprint}")
        return record

    def increase(self, fingerprint: str, amount: int, reason: str = "") -> KeyRecord:
        """Grant a key ``amount`` more machines, recorded with a reason."""
        if amount < 1:
            raise ServiceError("invalid_field", "an increase is 1 or more", field="by")
        return self.store.increase(fingerprint, amount, self.now(), reason)

    def set_blocked(self, fingerprint: str, blocked: bool) -> KeyRecord:
        """Block a key (every activation refused) or unblock it."""
        return self.store.set_blocked(fingerprint, blocked)

    def expire(self, fingerprint: str, at: float | None = None) -> KeyRecord:
        """Make a key expire at ``at`` (None: now)."""
        return self.store.set_expires(fingerprint, self.now() if at is None else at)

    # -- activation ----------------------------------------------------------------------------

    def activate_online(
        self,
        text: Any,
        hardware_id: bytes,
        *,
        machine_name: str | None = None,
        request_id: str | None = None,
    ) -> Activation:
        """Online activation: count (or not) a key on a hardware ID."""
        key = activating_key(text)
        return self.store.activate(
            key.fingerprint,
            hardware_id,
            self.now(),
            route="online",
            machine_name=machine_name,
            request_id=request_id,
        )

    def activate_phone(
        self,
        iid: Any,
        *,
        machine_name: str | None = None,
        request_id: str | None = None,
        route: str = "phone",
    ) -> PhoneAnswer:
        """Phone activation: the key and hardware in an IID counted, and the CID that unlocks it."""
        if not isinstance(iid, str):
            raise ServiceError(
                "invalid_field", "'installation_id' is a string", field="installation_id"
            )
        try:
            installation = parse_installation_id(iid)
        except IdError as exc:
            raise ServiceError(
                "installation_id_invalid", str(exc), failed_groups=list(exc.failed_groups)
            ) from None
        if installation.key_type not in rules.ACTIVATING_TYPES:
            raise ServiceError("key_wrong_type", f"a {installation.key_type.label} key")
        record = self.store.key(installation.fingerprint)
        if record is not None and record.type is not installation.key_type:
            raise ServiceError(
                "key_unknown",
                f"no {installation.key_type.label} key with fingerprint {installation.fingerprint}",
            )
        activation = self.store.activate(
            installation.fingerprint,
            installation.hardware_id,
            self.now(),
            route=route,
            machine_name=machine_name,
            request_id=request_id,
        )
        return PhoneAnswer(iid, confirmation_id(iid, self.secret), activation)

    def proxy_activate(self, items: Any) -> list[dict[str, Any]]:
        """VAMT-style proxy activation: many installation IDs, one answer each."""
        if not isinstance(items, list):
            raise ServiceError(
                "invalid_field", "'installation_ids' is a list", field="installation_ids"
            )
        if len(items) > MAX_PROXY_IDS:
            raise ServiceError("body_too_large", f"{len(items)} IDs; at most {MAX_PROXY_IDS}")
        results: list[dict[str, Any]] = []
        for item in items:
            iid, name = (
                (item.get("installation_id"), item.get("machine_name"))
                if isinstance(item, dict)
                else (item, None)
            )
            try:
                if name is not None and (not isinstance(name, str) or len(name) > 63):
                    raise ServiceError(
                        "invalid_field",
                        "'machine_name' is a string of at most 63 characters",
                        field="machine_name",
                    )
                answer = self.activate_phone(iid, machine_name=name, route="proxy")
            except ServiceError as exc:
                results.append({"installation_id": iid, **exc.to_json()})
                continue
            results.append(
                {
                    "installation_id": iid,
                    "machine_name": name,
                    "confirmation_id": answer.confirmation_id,
                    **activation_json(answer.activation),
                }
            )
        return results

    def count(self, text: Any) -> KeyRecord:
        """What a key has left, for whoever holds the key (VAMT's remaining count)."""
        return self.key(parse_key(text).fingerprint)


def activation_json(activation: Activation) -> dict[str, Any]:
    """An activation as the API answers it: the verdict and what the key has left."""
    key = activation.key
    return {
        "activated": True,
        "counted": activation.counted,
        "verdict": activation.verdict.value,
        "replayed": activation.replayed,
        "fingerprint": key.fingerprint,
        "last5": key.last5,
        "used": key.used,
        "limit": key.total,
        "remaining": key.remaining,
    }


def key_label(record: KeyRecord) -> str:
    """A key as messages name it: fingerprint, last five symbols and type."""
    return f"{record.fingerprint} (…{record.last5}, {KeyType(record.type).label})"
