"""A KMS client machine: a profile, its licence state machine, and its KMS host.

``Machine`` turns the slmgr-style verbs into licence events. Its collaborators
are passed in: the real clock, the KLP/1 exchange (so tests can use any
host), and the source of new CMIDs.

Time: the profile's clock (real time plus ``clock_offset``, moved with
``kmsemu client clock``) drives the licence timers: grace, validity, when the
next renewal or retry is due. Requests carry the real time, so moving a
client a year ahead does not make the host refuse it for clock skew; a host
whose clock is off (``kmsemu host serve --clock-offset 5h``) shows that.

MAK, retail and KMS host keys activate against the MAK service instead
(``mak.client.MakClient``, at the profile's ``mak_url``): online with the
machine's hardware ID (``ato``), or by phone: ``dti`` shows the installation
ID, the activation centre (``kmsemu mak phone``) answers with a confirmation
ID, and ``atp`` verifies it locally with the lab secret. Either way the
licence becomes permanent; the CID is kept for a later local reactivation.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kmsemu.addresses import AddressError, format_address, parse_address
from kmsemu.catalog import Catalog, Product
from kmsemu.client.licence import (
    ActivationFailed,
    Event,
    HardwareChanged,
    KeyInstalled,
    KeyUninstalled,
    Licence,
    PermanentlyActivated,
    Policy,
    Rearmed,
    TimePassed,
    apply,
    kms_answer,
)
from kmsemu.client.profile import WINDOWS, Install, Profile, ProfileError, application_of
from kmsemu.errors import ActivationError, ConfigError, HResult, LocalError, describe
from kmsemu.keys.activation_ids import (
    CidCheck,
    hardware_id,
    installation_id,
    same_machine,
    verify_confirmation_id,
)
from kmsemu.keys.product_key import KeyType, ProductKey, check
from kmsemu.klp.messages import FLAG_VIRTUAL_MACHINE, ActivationRequest, LicenseStatus
from kmsemu.wire import filetime_from_unix
from mak.defaults import DEFAULT_URL as DEFAULT_MAK_URL

if TYPE_CHECKING:  # the network parts load when a verb reaches the network
    from kmsemu.client.discovery import Candidate, DiscoveryError
    from kmsemu.client.exchange import Exchange
    from kmsemu.klp.envelope import LabKey
    from mak.client import MakClient

KMS_PORT = 1688
MAX_TICK_ATTEMPTS = 20_000
#: Keys the MAK service activates (online or by phone); the rest of the emulator calls them
#: "MAK-type" keys. KMS client setup keys activate against KMS; subscription keys are not
#: installed on machines at all.
MAK_TYPES = frozenset({KeyType.MAK, KeyType.RETAIL, KeyType.KMS_HOST})
CID_INVALID = HResult.IID_CID_INVALID
#: MAK service errors without an HRESULT that mean "no activation service there".
_NO_SERVICE_CODES = frozenset({"unavailable", "not_found", "method_not_allowed", "bad_response"})
_SEPARATORS = re.compile(r"[-\s]")
CID_GROUPS = 8
#: Where a profile's clock may be (UTC seconds): 1970 to 2999, so that every date a licence
#: computes from it (grace ends, renewals, 180-day validity) stays a date.
CLOCK_RANGE = (0.0, datetime(3000, 1, 1, tzinfo=UTC).timestamp())

Exchanger = Callable[[tuple[str, int], ActivationRequest, "LabKey"], "Exchange"]
Discoverer = Callable[[list[str], list[str], random.Random], list["Candidate"]]
#: (name, DNS servers) -> the name's addresses; raises ``UnresolvedHost``.
HostResolver = Callable[[str, list[str]], list[str]]
MakConnector = Callable[[str], "MakClient"]


def _exchange(address: tuple[str, int], request: ActivationRequest, key: LabKey) -> Exchange:
    """One KLP/1 exchange over TCP (``kmsemu.client.exchange``), 5 s at most."""
    from kmsemu.client.exchange import request_activation

    return request_activation(address, request, key, timeout=5.0)


def _discover(domains: list[str], servers: list[str], rng: random.Random) -> list[Candidate]:
    """DNS discovery (``kmsemu.client.discovery``; dnspython loads on the first lookup)."""
    from kmsemu.client.discovery import discover

    return discover(domains, servers, rng)


def _resolve_host(name: str, servers: list[str]) -> list[str]:
    """An skms name's A/AAAA through the machine's DNS servers (dnspython, as discovery)."""
    from kmsemu.client.discovery import resolve_host

    return resolve_host(name, servers)


def _mak_client(url: str) -> MakClient:
    from mak.client import MakClient

    return MakClient(url)


class Result(NamedTuple):
    """What a verb reports: 0 for success, else the HRESULT slmgr would print."""

    hresult: int = 0
    detail: str = ""
    #: A stable error code for JSON output (the MAK service's, e.g. ``mak_limit_exceeded``);
    #: empty: the verb's default.
    code: str = ""
    hint: str = ""
    #: What the verb adds to its output (``--json``): the MAK service's answer, the IID...
    data: dict[str, Any] | None = None


class Machine:
    """A client machine driven like slmgr: its verbs read and change one profile."""

    def __init__(
        self,
        profile: Profile,
        catalog: Catalog,
        *,
        real_now: Callable[[], float],
        secret: str,
        exchange: Exchanger | None = None,
        new_cmid: Callable[[], str] = lambda: str(uuid.uuid4()),
        discover: Discoverer = _discover,
        resolve: HostResolver = _resolve_host,
        rng: random.Random | None = None,
        mak: MakConnector = _mak_client,
        mak_url: str = DEFAULT_MAK_URL,
    ) -> None:
        """``mak`` connects to a MAK service URL; ``mak_url`` is the service used when the
        profile names none (the CLI passes ``KMSEMU_MAK_URL`` when set)."""
        self.profile = profile
        self.catalog = catalog
        self._real_now = real_now
        self._exchange = exchange or _exchange
        self._new_cmid = new_cmid
        self._discover = discover
        self._resolve = resolve
        self._rng = rng or random.SystemRandom()
        self._mak = mak
        self._mak_url = mak_url
        self._secret = secret
        self._chosen: Install | None = None
        if not _clock_in_range(self.now):
            raise ProfileError(
                f"profile {profile.name}: its clock is "
                f"{profile.clock_offset!r} seconds off real time"
            )

    # -- time ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The profile's clock: real time plus its offset."""
        return self._real_now() + self.profile.clock_offset

    def set_clock(self, *, shift: float | None = None, at: float | None = None) -> None:
        """Move the clock by ``shift`` seconds or set it to ``at``; a clock that would leave
        ``CLOCK_RANGE`` is refused (``clock_out_of_range``) and nothing changes."""
        offset = self.profile.clock_offset
        if at is not None:
            offset = at - self._real_now()
        if shift is not None:
            offset += shift
        if not _clock_in_range(self._real_now() + offset):
            years = (offset - self.profile.clock_offset) / (365.25 * 86_400)
            raise LocalError(
                "clock_out_of_range",
                f"a move of {years:+,.0f} years from {_iso(self.now)}"
                if math.isfinite(years)
                else "",
            )
        self.profile.clock_offset = offset

    # -- the products ------------------------------------------------------------------

    def select(self, spec: str | None) -> Install | None:
        """Make the verbs act on the installed product ``spec`` names: its Activation ID,
        catalog key or name, case-insensitively (None: the default, as slmgr's: the Windows
        licence when Windows has a key, else the first product that has one).
        ``product_not_found`` when no installed product is that one."""
        self._chosen = None if spec is None else self.find(spec)
        return self.install

    def select_install(self, install: Install | None) -> None:
        """Make the verbs act on ``install`` (one of the profile's; None: the default)."""
        self._chosen = install

    @property
    def chosen(self) -> Install | None:
        """The install selected by name (None: the verbs act on the default one)."""
        return self._chosen

    def find(self, spec: str) -> Install:
        """The installed product ``spec`` names (see ``select``)."""
        wanted = spec.strip().casefold()
        for install in self.profile.installs:
            product = self._product_of(install)
            if (
                product is not None
                and install.product_key is not None
                and wanted
                in (
                    product.key,
                    product.name.casefold(),
                    str(product.sku_id),
                )
            ):
                return install
        raise LocalError("product_not_found", f"no licence {spec}")

    @property
    def install(self) -> Install | None:
        """The install the verbs act on: the selected one, else the default."""
        if self._chosen is not None:
            return self._chosen
        keyed = [i for i in self.profile.installs if i.product_key is not None]
        windows = [i for i in keyed if i.application == WINDOWS]
        if windows or keyed:
            return (windows or keyed)[0]
        return next((i for i in self.profile.installs if i.application == WINDOWS), None)

    def installs(self, application: str | None = None) -> list[Install]:
        """The installs that hold a key (of ``application`` only, when given), Windows
        first, then in the order they were installed (``dlv all``)."""
        keyed = [
            i
            for i in self.profile.installs
            if i.product_key is not None and application in (None, i.application)
        ]
        return sorted(keyed, key=lambda i: i.application != WINDOWS)

    def _product_of(self, install: Install | None) -> Product | None:
        if install is None or install.product is None:
            return None
        try:
            return self.catalog.find(install.product)
        except ConfigError:  # a product the catalog no longer has
            return None

    @property
    def product(self) -> Product | None:
        """The catalog entry of the selected install's key (None: no key installed)."""
        install = self.install
        return self._product_of(install) if install and install.product_key else None

    @property
    def licence(self) -> Licence:
        """The selected licence as last stored (``current`` brings it up to date)."""
        install = self.install
        return install.licence if install is not None else Licence()

    @property
    def key(self) -> ProductKey | None:
        """The selected install's key fields (None: no key, or one that no longer checks)."""
        install = self.install
        text = install.product_key if install is not None else None
        return check(text).key if text else None

    @property
    def cmid(self) -> str:
        """The CMID the selected install's requests carry (its application's)."""
        install = self.install
        return self.cmid_of(install.application if install is not None else WINDOWS)

    def cmid_of(self, application: str) -> str:
        """An application's CMID, made when the machine first needs one (Office's when its
        first key is installed)."""
        cmids = self.profile.cmids
        if application not in cmids:
            cmids[application] = self._new_cmid()
        return cmids[application]

    @property
    def mak_url(self) -> str:
        """The MAK service this machine activates with: the profile's, else the default."""
        return self.profile.mak_url or self._mak_url

    def _apply(
        self, install: Install, event: Event, *, renew_cmid: bool = True
    ) -> tuple[int | None, bool]:
        step = apply(install.licence, event)
        install.licence = step.licence
        if step.new_cmid and renew_cmid:  # a rearm: the whole application's, as Windows does
            self._renew_cmid(install.application)
        return step.error, step.new_cmid

    def _renew_cmid(self, application: str) -> None:
        """A new CMID for ``application``; the one it replaces is kept as the previous."""
        self.profile.previous_cmids[application] = self.cmid_of(application)
        self.profile.cmids[application] = self._new_cmid()

    def _selected_or_windows(self) -> Install:
        """The selected install; with none at all, the Windows licence (made now: a machine
        without a key still has its grace and its rearms)."""
        install = self.install
        if install is None:
            install = Install(WINDOWS)
            self.profile.installs.append(install)
        return install

    # -- verbs ----------------------------------------------------------------------------

    def install_key(self, text: str) -> Result:
        """slmgr /ipk: a key that checks and names a catalog product (no subscription key).
        A Windows key replaces the Windows edition; an Office key installs (or replaces the
        key of) its own product beside everything else. The install is then selected."""
        diagnosis = check(text)
        if diagnosis.key is None:
            hint = f"; did you mean {diagnosis.candidates[0]}?" if diagnosis.candidates else ""
            return Result(HResult.PRODUCT_KEY_INVALID, diagnosis.problems[0].message + hint)
        key: ProductKey = diagnosis.key
        if key.type is KeyType.SUBSCRIPTION:
            return Result(
                HResult.PRODUCT_KEY_INVALID,
                "a subscription key is redeemed in the portal, not installed",
            )
        if key.product >= len(self.catalog):
            return Result(HResult.PRODUCT_KEY_INVALID, f"no product #{key.product} in the catalog")
        product = self.catalog.products[key.product]
        application = application_of(product.family)
        install = next(
            (
                i
                for i in self.profile.installs
                if i.application == application
                and (application == WINDOWS or i.product == product.key)
            ),
            None,
        )
        if install is None:
            install = Install(application)
            self.profile.installs.append(install)
        self.cmid_of(application)
        install.product_key = key.symbols
        install.product = product.key
        self._chosen = install
        self._apply(install, TimePassed(self.now))
        self._apply(
            install,
            KeyInstalled(
                self.now,
                Policy.for_family(product.family),
                kms_client=key.type is KeyType.KMS_CLIENT,
            ),
        )
        return Result()

    def uninstall_key(self) -> Result:
        """slmgr /upk: remove the selected product's key; it is unlicensed again."""
        install = self.install
        if install is None or not install.product_key:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        install.product_key = None
        self._apply(install, KeyUninstalled(self.now))
        return Result()

    def rearm(self) -> Result:
        """slmgr /rearm: a fresh grace period and a new CMID while rearms are left."""
        install = self._selected_or_windows()
        self._apply(install, TimePassed(self.now))
        error, _ = self._apply(install, Rearmed(self.now))
        return Result(error or 0)

    def rearm_application(self, application: str) -> list[tuple[Install, Result]]:
        """ospp /rearm: every install of ``application`` that holds a key rearmed at once,
        with one new CMID for them all; each install's result, in ``installs`` order."""
        results: list[tuple[Install, Result]] = []
        renewed = False
        for install in self.installs(application):
            self._apply(install, TimePassed(self.now))
            error, new_cmid = self._apply(install, Rearmed(self.now), renew_cmid=False)
            renewed = renewed or new_cmid
            results.append((install, Result(error or 0)))
        if renewed:
            self._renew_cmid(application)
        return results

    def current(self) -> Licence:
        """The selected licence as the profile's clock shows it now (a view: nothing is
        stored, so a later ``tick`` can still replay the renewals that fell due)."""
        return apply(self.licence, TimePassed(self.now)).licence

    def activate(self) -> Result:
        """One activation attempt now (slmgr /ato): against KMS for a KMS client setup key,
        online against the MAK service for a MAK, retail or KMS host key."""
        install = self.install
        if install is None or not install.product_key:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        self._apply(install, TimePassed(self.now))
        key = self.key
        if key is not None and key.type in MAK_TYPES and self.product is not None:
            return self._activate_online(install, self.now, key)
        return self._attempt(install, self.now)

    def tick(self) -> list[Result]:
        """Run every renewal and retry that fell due up to the profile's clock, of every
        installed product, in the order they fell due."""
        results: list[Result] = []
        target = self.now
        for _ in range(MAX_TICK_ATTEMPTS):
            due = [
                (i.licence.next_attempt, n, i)
                for n, i in enumerate(self.profile.installs)
                if i.licence.key_installed and i.licence.next_attempt is not None
            ]  # MAK-type keys schedule nothing: next_attempt is None
            when, _, install = min(due, default=(None, 0, None), key=lambda d: (d[0], d[1]))
            if install is None or when is None or when > target:
                break
            self._apply(install, TimePassed(when))
            results.append(self._attempt(install, when))
        for install in self.profile.installs:
            self._apply(install, TimePassed(target))
        return results

    # -- one attempt ------------------------------------------------------------------------

    def _attempt(self, install: Install, when: float) -> Result:
        product = self._product_of(install)
        key = install.product_key
        if product is None or key is None:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        parsed = check(key).key
        if parsed is None or parsed.type is not KeyType.KMS_CLIENT:
            return Result(
                HResult.PRODUCT_KEY_INVALID,
                "only KMS client setup keys activate against a KMS host; MAK, "
                "retail and KMS host keys against the MAK service",
            )
        request = self._request(install, product)
        sent = {
            "id": 12288,
            "time": _iso(when),
            "cmid": self.cmid_of(install.application),
            "client_time": _iso(self._real_now()),
            "vm": self.profile.vm,
            "license_status": int(install.licence.status),
            "minutes_to_expiration": install.licence.minutes_remaining(when),
        }
        detail = "no KMS host could be contacted"
        # slmgr shows the DNS code when discovery found no host to try; 0xC004F074 when
        # hosts were found (or set with skms) and none answered
        shown: int = HResult.NO_KMS_HOST
        from kmsemu.client.discovery import DiscoveryError, UnresolvedHost
        from kmsemu.klp.envelope import LabKey

        lab_key = LabKey.derive(self._secret)
        registered = install.kms_host or self.profile.kms_host
        for candidate in self._candidates(registered):
            if isinstance(candidate, DiscoveryError):
                unresolved = isinstance(candidate, UnresolvedHost)
                install.add_event(
                    {
                        **sent,
                        "hresult": f"0x{candidate.hresult:08X}",
                        "server": registered if unresolved else None,
                    }
                )
                detail = candidate.detail
                if not unresolved:
                    shown = candidate.hresult
                continue
            address, name, source = candidate
            server = format_address(*address)
            try:
                exchange = self._exchange(address, request, lab_key)
            except ActivationError as exc:
                cause = exc.cause if exc.cause is not None else exc.hresult
                install.add_event({**sent, "hresult": f"0x{cause:08X}", "server": server})
                if self.profile.cached_host == server:
                    self.profile.cached_host = None
                detail = exc.detail
                continue
            return self._answered(install, when, product, exchange, sent, server, name, source)
        return self._failed(install, when, shown, detail)

    def _answered(
        self,
        install: Install,
        when: float,
        product: Product,
        exchange: Exchange,
        sent: dict[str, Any],
        server: str,
        name: str,
        source: str,
    ) -> Result:
        response = exchange.response
        install.add_event({**sent, "hresult": f"0x{response.status:08X}", "server": server})
        activated = response.status == 0 and response.current_count >= product.threshold
        install.add_event(
            {
                "id": 12289,
                "time": _iso(when),
                "hresult": f"0x{response.status:08X}",
                "activated": activated,
                "current_count": response.current_count,
                "activation_interval": response.activation_interval,
                "renewal_interval": response.renewal_interval,
            }
        )
        install.last_kms = {
            "host": server,
            "name": name,
            "source": source,
            "epid": response.host_epid,
            "ip": exchange.address[0],
            "host_id": response.host_id.hex(),
        }
        event = kms_answer(
            when,
            response.status,
            response.current_count,
            product.threshold,
            response.activation_interval,
            response.renewal_interval,
        )
        if isinstance(event, ActivationFailed):
            detail = (
                f"the host answered 0x{response.status:08X}"
                if response.status
                else f"count {response.current_count} of {product.threshold}"
            )
            self._apply(install, event)
            return Result(event.hresult, detail)
        if self.profile.host_caching and source != "registered":
            self.profile.cached_host = server
            self.profile.cached_name = name
        install.activation_hardware = list(self.profile.hardware)
        self._apply(install, event)
        return Result()

    # -- MAK: online and by phone -----------------------------------------------------------------

    def _activate_online(self, install: Install, when: float, key: ProductKey) -> Result:
        """One online activation against the MAK service: permanent on success."""
        url = self.mak_url
        hw_id = hardware_id(self.profile.hardware).hex()
        event: dict[str, Any] = {
            "id": "mak-online",
            "time": _iso(when),
            "url": url,
            "fingerprint": key.fingerprint,
            "hardware_id": hw_id,
            "machine_name": self.profile.machine_name,
        }
        try:
            client = self._mak(url)
        except ValueError as exc:  # not an http:// URL (KMSEMU_MAK_URL is not checked early)
            return self._mak_failed(
                install, when, event, HResult.CANNOT_CONNECT, str(exc), code="unreachable"
            )
        from mak.client import RemoteError

        try:
            answer = client.activate(
                str(key),
                hw_id,
                machine_name=self.profile.machine_name,
                request_id=str(uuid.uuid4()),
            )
        except RemoteError as exc:
            hresult = (
                exc.hresult
                if exc.hresult is not None
                else (
                    HResult.CANNOT_CONNECT
                    if exc.code in _NO_SERVICE_CODES
                    else HResult.INVALID_DATA
                )
            )
            return self._mak_failed(
                install,
                when,
                event,
                hresult,
                _service_detail(hresult, exc.text),
                code=exc.code,
                hint=exc.hint,
            )
        finally:
            client.close()
        fields = {
            name: answer.get(name) for name in ("verdict", "counted", "used", "limit", "remaining")
        }
        install.add_event({**event, "hresult": "0x00000000", **fields})
        install.activation_hardware = list(self.profile.hardware)
        self._apply(install, PermanentlyActivated(when))
        return Result(data={"mak": {"url": url, **fields}})

    def _mak_failed(
        self,
        install: Install,
        when: float,
        event: dict[str, Any],
        hresult: int,
        detail: str,
        *,
        code: str,
        hint: str = "",
    ) -> Result:
        install.add_event({**event, "hresult": f"0x{hresult:08X}", "code": code})
        self._apply(install, ActivationFailed(when, hresult))
        return Result(hresult, detail, code=code, hint=hint)

    def installation_id(self) -> Result:
        """slmgr /dti: the IID of the installed MAK-type key on the current hardware
        (``data["installation_id"]``), or why there is none."""
        key = self.key
        if key is None or self.product is None:
            return Result(HResult.PRODUCT_KEY_INVALID, "no product key is installed")
        if key.type not in MAK_TYPES:
            return Result(
                HResult.PRODUCT_KEY_INVALID,
                f"a {key.type.label} key has no phone activation; install a MAK, "
                "retail or KMS host key",
            )
        iid = installation_id(key.type, key.fingerprint, hardware_id(self.profile.hardware))
        return Result(data={"installation_id": iid})

    def deposit_confirmation_id(self, typed: str | None) -> Result:
        """slmgr /atp: verify a confirmation ID against this machine's IID with the lab
        secret; valid: permanently licensed, and the CID is kept. ``None`` reapplies the
        CID kept for the current IID (VAMT's local reactivation: no count, no network)."""
        found = self.installation_id()
        install = self.install
        if found.hresult or found.data is None or install is None:
            return found
        iid = found.data["installation_id"]
        stored = typed is None
        if typed is None:
            typed = self.profile.confirmation_ids.get(iid)
            if typed is None:
                return Result(
                    CID_INVALID,
                    "no confirmation ID given, and none is stored for this installation ID",
                    code="no_confirmation_id",
                )
        self._apply(install, TimePassed(self.now))
        event: dict[str, Any] = {
            "id": "mak-phone",
            "time": _iso(self.now),
            "installation_id": iid,
            "stored": stored,
        }
        digits = _SEPARATORS.sub("", typed)
        if not (digits.isascii() and digits.isdigit()) or len(digits) != CID_GROUPS * 6:
            verdict = CidCheck(False, (), ())
            detail = "a confirmation ID is 48 digits: eight groups of six"
        else:
            verdict = verify_confirmation_id(iid, digits, self._secret)
            detail = _cid_problem(verdict)
        if not verdict.valid:
            install.add_event(
                {
                    **event,
                    "hresult": f"0x{CID_INVALID:08X}",
                    "failed_groups": list(verdict.failed_groups),
                    "mismatched_groups": list(verdict.mismatched_groups),
                }
            )
            self._apply(install, ActivationFailed(self.now, CID_INVALID))
            return Result(
                CID_INVALID,
                detail,
                code="confirmation_id_invalid",
                data={
                    "failed_groups": list(verdict.failed_groups),
                    "mismatched_groups": list(verdict.mismatched_groups),
                },
            )
        cid = "-".join(digits[i : i + 6] for i in range(0, CID_GROUPS * 6, 6))
        self.profile.store_confirmation_id(iid, cid)
        install.add_event({**event, "hresult": "0x00000000"})
        install.activation_hardware = list(self.profile.hardware)
        self._apply(install, PermanentlyActivated(self.now))
        return Result(data={"installation_id": iid, "confirmation_id": cid})

    # -- KMS host discovery ---------------------------------------------------------------------

    def _candidates(
        self, registered: str | None
    ) -> Iterator[tuple[tuple[str, int], str, str] | DiscoveryError]:
        """Hosts to try, in order: the registered host alone (the product's own, else the
        machine's skms; a name resolved through the profile's DNS servers when it has
        some, else by the operating system); else the cached host, then DNS discovery."""
        profile = self.profile
        if registered:
            host, port = parse_address(registered, KMS_PORT)
            if not profile.dns_servers or _is_ip(host):
                yield (host, port), registered, "registered"
                return
            from kmsemu.client.discovery import UnresolvedHost

            try:
                addresses = self._resolve(host, profile.dns_servers)
            except UnresolvedHost as exc:
                yield exc
                return
            for ip in addresses:
                yield (ip, port), registered, "registered"
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
        from kmsemu.client.discovery import DiscoveryError

        try:
            found = self._discover(domains, profile.dns_servers, self._rng)
        except DiscoveryError as exc:
            yield exc
            return
        for candidate in found:
            if candidate.address not in tried:
                yield candidate.address, candidate.display, "dns"

    def _failed(self, install: Install, when: float, hresult: int, detail: str) -> Result:
        self._apply(install, ActivationFailed(when, hresult))
        return Result(hresult, detail)

    def _request(self, install: Install, product: Product) -> ActivationRequest:
        previous = self.profile.previous_cmids.get(install.application)
        return ActivationRequest(
            application_id=product.application_id,
            sku_id=product.sku_id,
            kms_count_id=product.kms_count_id,
            client_machine_id=uuid.UUID(self.cmid_of(install.application)),
            request_time=filetime_from_unix(self._real_now()),
            required_client_count=product.threshold,
            license_status=int(install.licence.status),
            grace_minutes_remaining=min(install.licence.minutes_remaining(self.now), 2**32 - 1),
            workstation_name=self.profile.machine_name[:63],
            previous_client_machine_id=uuid.UUID(previous) if previous else uuid.UUID(int=0),
            flags=FLAG_VIRTUAL_MACHINE if self.profile.vm else 0,
        )

    def change_hardware(self, changes: dict[int, str]) -> Result:
        """Replace components (0-based slots); a significant change since a product's last
        activation puts that licensed product out of tolerance (0xC004F00F, reported when
        the selected one, or any, went out of tolerance)."""
        for slot, value in changes.items():
            if not 0 <= slot < len(self.profile.hardware):
                raise ValueError(f"slot {slot + 1} is not 1-{len(self.profile.hardware)}")
            self.profile.hardware[slot] = value
        now_id = hardware_id(self.profile.hardware)
        moved = False
        for install in self.profile.installs:
            before = install.activation_hardware
            if before is None or same_machine(hardware_id(before), now_id):
                continue
            self._apply(install, TimePassed(self.now))
            self._apply(install, HardwareChanged(self.now))
            moved |= install.licence.status is LicenseStatus.OUT_OF_TOLERANCE_GRACE
        if moved:
            return Result(HResult.HARDWARE_OUT_OF_TOLERANCE, "significant hardware change")
        return Result()

    # -- settings verbs -----------------------------------------------------------------------

    def set_kms_host(self, text: str | None, *, product: Install | None = None) -> str | None:
        """slmgr /skms (None: /ckms): the host to use instead of DNS, as ``HOST:PORT``;
        the machine's, or with ``product`` that product's own (slmgr /skms HOST ActID,
        ospp /sethst). Returns the address as stored."""
        if text is not None:
            host, port = parse_address(text, KMS_PORT)
            text = format_address(host, port)
        if product is not None:
            product.kms_host = text
        else:
            self.profile.kms_host = text
        return text

    def registered_host(self, install: Install | None) -> str | None:
        """The KMS host a product uses instead of DNS: its own, else the machine's."""
        own = install.kms_host if install is not None else None
        return own or self.profile.kms_host

    def summary(self) -> dict[str, Any]:
        """The profile as ``--json`` prints it (cli.md's client fields): the selected
        product's licence, and every installed product's under ``products``."""
        return {
            "profile": self.profile.name,
            **self._product_summary(self.install),
            "dns_servers": self.profile.dns_servers,
            "dns_suffixes": self.profile.dns_suffixes,
            "clock": _iso(self.now),
            "vm": self.profile.vm,
            "mak_url": self.mak_url,
            "products": [self._product_summary(i) for i in self.installs()],
        }

    def _product_summary(self, install: Install | None) -> dict[str, Any]:
        lic = apply(install.licence if install else Licence(), TimePassed(self.now)).licence
        expires = lic.valid_until if lic.valid_until is not None else lic.grace_ends
        text = install.product_key if install is not None else None
        key = check(text).key if text else None
        product = self._product_of(install) if text else None
        return {
            "license_status": {"value": int(lic.status), "name": lic.status.text},
            "permanent": lic.permanent,
            "key_type": key.type.label if key is not None else None,
            "cmid": self.profile.cmids.get(install.application if install else WINDOWS),
            "product": product.key if product is not None else None,
            "activation_id": str(product.sku_id) if product is not None else None,
            "partial_product_key": text[-5:] if text else None,
            "expires_at": _iso(expires) if expires is not None else None,
            "minutes_remaining": lic.minutes_remaining(self.now),
            "next_attempt": _iso(lic.next_attempt) if lic.next_attempt is not None else None,
            "kms_host": self.registered_host(install)
            or self.profile.cached_name
            or self.profile.cached_host,
            "activation_interval": lic.activation_interval,
            "renewal_interval": lic.renewal_interval,
            "rearms_left": lic.rearms_left,
            "last_hresult": f"0x{lic.last_hresult:08X}",
            "reason": f"0x{lic.reason:08X}" if lic.reason else None,
        }


def _groups(numbers: tuple[int, ...]) -> str:
    """``group 3``, ``groups 3 and 5``, ``groups 1, 2 and 7``."""
    if len(numbers) == 1:
        return f"group {numbers[0]}"
    return f"groups {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"


def _cid_problem(verdict: CidCheck) -> str:
    """What is wrong with a CID of the right length: typing errors (check digits) first,
    then the groups that differ from the CID this machine expects."""
    failed = verdict.failed_groups
    others = tuple(n for n in verdict.mismatched_groups if n not in failed)
    parts = []
    if failed:
        parts.append(
            f"{_groups(failed)} "
            + ("has a typing error" if len(failed) == 1 else "have typing errors")
        )
    if len(others) == CID_GROUPS:
        parts.append(
            "no group matches this installation ID: a confirmation ID for another "
            "installation ID, or made with another lab secret"
        )
    elif others:
        verb = "does" if len(others) == 1 else "do"
        parts.append(
            f"{_groups(others)} {verb} not match this installation ID"
            + (
                ""
                if failed
                else " (read it again: a check digit misses a digit changed by 7 and some swaps)"
            )
        )
    return "; ".join(parts)


def _service_detail(hresult: int, message: str) -> str:
    """The MAK service's message without the HRESULT's own wording, which it repeats."""
    base = describe(hresult).message
    if not message.startswith(base):
        return message
    rest = message[len(base) :].strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _clock_in_range(seconds: float) -> bool:
    return math.isfinite(seconds) and CLOCK_RANGE[0] <= seconds < CLOCK_RANGE[1]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
