"""A KMS client machine: a profile, its licence state machine, and its KMS host.

``Machine`` turns the slmgr-style verbs into licence events. Its collaborators
are passed in: the real clock, the KLP/1 exchange (so tests can use any
host), and the source of new CMIDs.

Time: the profile's clock (real time plus ``clock_offset``, moved with
``kmsemu client clock``) drives the licence timers: grace, validity, when the
next renewal or retry is due. Requests carry the real time, so moving a
client a year ahead does not make the host refuse it for clock skew; a host
whose clock is off (``kmsemu host serve --clock-offset 5h``) shows that.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kmsemu.addresses import AddressError, format_address, parse_address
from kmsemu.catalog import Catalog, Product
from kmsemu.client import discovery
from kmsemu.client.discovery import DiscoveryError
from kmsemu.client.exchange import Exchange, request_activation
from kmsemu.client.licence import (
    Activated,
    ActivationFailed,
    Event,
    HardwareChanged,
    KeyInstalled,
    KeyUninstalled,
    Licence,
    Policy,
    Rearmed,
    TimePassed,
    apply,
)
from kmsemu.client.profile import Profile
from kmsemu.errors import ActivationError, HResult
from kmsemu.keys.activation_ids import hardware_id, same_machine
from kmsemu.keys.product_key import KeyType, ProductKey, check
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import FLAG_VIRTUAL_MACHINE, ActivationRequest, LicenseStatus
from kmsemu.wire import filetime_from_unix

KMS_PORT = 1688
MAX_TICK_ATTEMPTS = 20_000
#: Host statuses a KMS client shows as they are; anything else it shows as 0xC004F074.
_SHOWN_AS_IS = frozenset({HResult.PRODUCT_NOT_SERVED})

Exchanger = Callable[[tuple[str, int], ActivationRequest, LabKey], Exchange]
Discoverer = Callable[[list[str], list[str], random.Random], list[discovery.Candidate]]


class Result(NamedTuple):
    """What a verb reports: 0 for success, else the HRESULT slmgr would print."""

    hresult: int = 0
    detail: str = ""


class Machine:
    def __init__(
        self,
        profile: Profile,
        catalog: Catalog,
        *,
        real_now: Callable[[], float],
        secret: str,
        exchange: Exchanger | None = None,
        new_cmid: Callable[[], str] = lambda: str(uuid.uuid4()),
        discover: Discoverer = discovery.discover,
        rng: random.Random | None = None,
    ) -> None:
        self.profile = profile
        self.catalog = catalog
        self._real_now = real_now
        self._key = LabKey.derive(secret)
        self._exchange = exchange or (lambda a, r, k: request_activation(a, r, k, timeout=5.0))
        self._new_cmid = new_cmid
        self._discover = discover
        self._rng = rng or random.SystemRandom()

    # -- time ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The profile's clock: real time plus its offset."""
        return self._real_now() + self.profile.clock_offset

    def set_clock(self, *, shift: float | None = None, at: float | None = None) -> None:
        if at is not None:
            self.profile.clock_offset = at - self._real_now()
        if shift is not None:
            self.profile.clock_offset += shift

    # -- the product ---------------------------------------------------------------------

    @property
    def product(self) -> Product | None:
        return self.catalog.find(self.profile.product) if self.profile.product else None

    @property
    def licence(self) -> Licence:
        return self.profile.licence

    def _apply(self, event: Event) -> tuple[int | None, bool]:
        step = apply(self.profile.licence, event)
        self.profile.licence = step.licence
        if step.new_cmid:
            self.profile.previous_cmid = self.profile.cmid
            self.profile.cmid = self._new_cmid()
        return step.error, step.new_cmid

    # -- verbs ----------------------------------------------------------------------------

    def install_key(self, text: str) -> Result:
        diagnosis = check(text)
        if diagnosis.key is None:
            hint = f"; did you mean {diagnosis.candidates[0]}?" if diagnosis.candidates else ""
            return Result(HResult.PRODUCT_KEY_INVALID, diagnosis.problems[0].message + hint)
        key: ProductKey = diagnosis.key
        if key.product >= len(self.catalog):
            return Result(HResult.PRODUCT_KEY_INVALID, f"no product #{key.product} in the catalog")
        product = self.catalog.products[key.product]
        self.profile.product_key = key.symbols
        self.profile.product = product.key
        self._apply(TimePassed(self.now))
        self._apply(KeyInstalled(self.now, Policy.for_family(product.family)))
        return Result()

    def uninstall_key(self) -> Result:
        if not self.profile.product_key:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        self.profile.product_key = None
        self.profile.product = None
        self._apply(KeyUninstalled(self.now))
        return Result()

    def rearm(self) -> Result:
        self._apply(TimePassed(self.now))
        error, _ = self._apply(Rearmed(self.now))
        return Result(error or 0)

    def current(self) -> Licence:
        """The licence as the profile's clock shows it now (a view: nothing is stored, so
        a later ``tick`` can still replay the renewals that fell due in between)."""
        return apply(self.profile.licence, TimePassed(self.now)).licence

    def activate(self) -> Result:
        """One activation attempt now (slmgr /ato)."""
        self._apply(TimePassed(self.now))
        return self._attempt(self.now)

    def tick(self) -> list[Result]:
        """Run every renewal and retry that fell due up to the profile's clock."""
        results: list[Result] = []
        target = self.now
        for _ in range(MAX_TICK_ATTEMPTS):
            due = self.licence.next_attempt
            if due is None or due > target or not self.licence.key_installed:
                break
            self._apply(TimePassed(due))
            results.append(self._attempt(due))
        self._apply(TimePassed(target))
        return results

    # -- one attempt ------------------------------------------------------------------------

    def _attempt(self, when: float) -> Result:
        product = self.product
        key = self.profile.product_key
        if product is None or key is None:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        parsed = check(key).key
        if parsed is None or parsed.type is not KeyType.KMS_CLIENT:
            return Result(HResult.PRODUCT_KEY_INVALID,
                          "only KMS client setup keys activate against a KMS host")
        request = self._request(product)
        sent = {"id": 12288, "time": _iso(when), "cmid": self.profile.cmid,
                "client_time": _iso(self._real_now()), "vm": self.profile.vm,
                "license_status": int(self.licence.status),
                "minutes_to_expiration": self.licence.minutes_remaining(when)}
        detail = "no KMS host could be contacted"
        for candidate in self._candidates():
            if isinstance(candidate, DiscoveryError):
                self.profile.add_event({**sent, "hresult": f"0x{candidate.hresult:08X}",
                                        "server": None})
                detail = candidate.detail
                continue
            address, name, source = candidate
            server = format_address(*address)
            try:
                exchange = self._exchange(address, request, self._key)
            except ActivationError as exc:
                cause = exc.cause if exc.cause is not None else exc.hresult
                self.profile.add_event({**sent, "hresult": f"0x{cause:08X}", "server": server})
                if self.profile.cached_host == server:
                    self.profile.cached_host = None
                detail = exc.detail
                continue
            return self._answered(when, product, exchange, sent, server, name, source)
        return self._failed(when, HResult.NO_KMS_HOST, detail)

    def _answered(self, when: float, product: Product, exchange: Exchange,
                  sent: dict[str, Any], server: str, name: str, source: str) -> Result:
        response = exchange.response
        self.profile.add_event({**sent, "hresult": f"0x{response.status:08X}", "server": server})
        activated = response.status == 0 and response.current_count >= product.threshold
        self.profile.add_event({
            "id": 12289, "time": _iso(when), "hresult": f"0x{response.status:08X}",
            "activated": activated, "current_count": response.current_count,
            "activation_interval": response.activation_interval,
            "renewal_interval": response.renewal_interval})
        self.profile.last_kms = {"host": server, "name": name, "source": source,
                                 "epid": response.host_epid, "ip": exchange.address[0],
                                 "host_id": response.host_id.hex()}
        if response.status != 0:
            shown = response.status if response.status in _SHOWN_AS_IS else HResult.NO_KMS_HOST
            return self._failed(when, shown, f"the host answered 0x{response.status:08X}",
                                response.activation_interval, response.renewal_interval)
        if not activated:
            return self._failed(when, HResult.COUNT_INSUFFICIENT,
                                f"count {response.current_count} of {product.threshold}",
                                response.activation_interval, response.renewal_interval)
        if self.profile.host_caching and source != "registered":
            self.profile.cached_host = server
            self.profile.cached_name = name
        self.profile.activation_hardware = list(self.profile.hardware)
        self._apply(Activated(when, response.activation_interval, response.renewal_interval))
        return Result()

    def _candidates(self) -> Iterator[tuple[tuple[str, int], str, str] | DiscoveryError]:
        """Hosts to try, in order: skms alone; else the cached host, then DNS discovery."""
        profile = self.profile
        if profile.kms_host:
            yield parse_address(profile.kms_host, KMS_PORT), profile.kms_host, "registered"
            return
        tried = set()
        if profile.host_caching and profile.cached_host:
            try:
                address = parse_address(profile.cached_host, KMS_PORT)
            except AddressError:
                address = None
            if address is not None:
                tried.add(address)
                yield address, profile.cached_name or profile.cached_host, "dns"
        domains = [profile.kms_domain] if profile.kms_domain else profile.dns_suffixes
        try:
            found = self._discover(domains, profile.dns_servers, self._rng)
        except DiscoveryError as exc:
            yield exc
            return
        for candidate in found:
            if candidate.address not in tried:
                yield candidate.address, candidate.display, "dns"

    def _failed(self, when: float, hresult: int, detail: str, act: int | None = None,
                renew: int | None = None) -> Result:
        self._apply(ActivationFailed(when, hresult, act, renew))
        return Result(hresult, detail)

    def _request(self, product: Product) -> ActivationRequest:
        previous = self.profile.previous_cmid
        return ActivationRequest(
            application_id=product.application_id,
            sku_id=product.sku_id,
            kms_count_id=product.kms_count_id,
            client_machine_id=uuid.UUID(self.profile.cmid),
            request_time=filetime_from_unix(self._real_now()),
            required_client_count=product.threshold,
            license_status=int(self.licence.status),
            grace_minutes_remaining=min(self.licence.minutes_remaining(self.now), 2**32 - 1),
            workstation_name=self.profile.machine_name[:63],
            previous_client_machine_id=uuid.UUID(previous) if previous else uuid.UUID(int=0),
            flags=FLAG_VIRTUAL_MACHINE if self.profile.vm else 0,
        )

    def change_hardware(self, changes: dict[int, str]) -> Result:
        """Replace components (0-based slots); a significant change since the last
        activation puts a licensed machine out of tolerance (0xC004F00F)."""
        for slot, value in changes.items():
            if not 0 <= slot < len(self.profile.hardware):
                raise ValueError(f"slot {slot + 1} is not 1-{len(self.profile.hardware)}")
            self.profile.hardware[slot] = value
        before = self.profile.activation_hardware
        if before is None or same_machine(hardware_id(before), hardware_id(self.profile.hardware)):
            return Result()
        self._apply(TimePassed(self.now))
        self._apply(HardwareChanged(self.now))
        if self.licence.status is LicenseStatus.OUT_OF_TOLERANCE_GRACE:
            return Result(HResult.HARDWARE_OUT_OF_TOLERANCE, "significant hardware change")
        return Result()

    # -- settings verbs -----------------------------------------------------------------------

    def set_kms_host(self, text: str | None) -> None:
        if text is not None:
            host, port = parse_address(text, KMS_PORT)
            text = format_address(host, port)
        self.profile.kms_host = text

    def summary(self) -> dict[str, Any]:
        """The profile as ``--json`` prints it (cli.md's client fields)."""
        lic = self.current()
        expires = lic.valid_until if lic.valid_until is not None else lic.grace_ends
        return {
            "profile": self.profile.name,
            "license_status": {"value": int(lic.status), "name": lic.status.text},
            "cmid": self.profile.cmid,
            "product": self.profile.product,
            "partial_product_key": (self.profile.product_key or "")[-5:] or None,
            "expires_at": _iso(expires) if expires is not None else None,
            "minutes_remaining": lic.minutes_remaining(self.now),
            "next_attempt": _iso(lic.next_attempt) if lic.next_attempt is not None else None,
            "kms_host": self.profile.kms_host or self.profile.cached_name
            or self.profile.cached_host,
            "dns_servers": self.profile.dns_servers,
            "dns_suffixes": self.profile.dns_suffixes,
            "activation_interval": lic.activation_interval,
            "renewal_interval": lic.renewal_interval,
            "rearms_left": lic.rearms_left,
            "last_hresult": f"0x{lic.last_hresult:08X}",
            "reason": f"0x{lic.reason:08X}" if lic.reason else None,
            "clock": _iso(self.now),
            "vm": self.profile.vm,
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")

