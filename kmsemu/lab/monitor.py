"""What the lab's dashboard shows about the KMS host, kept in memory (pure).

The host hands every answered request to ``Monitor.observe``; the monitor
keeps one row per client machine (by CMID), the newest requests, and totals,
and ``snapshot`` turns them into the dashboard's JSON at a given lab time.

The licence column is the host's view of each client: a request the host
answered with success and a count at or above the client's threshold
activates it for 180 days (behaviour.md); without a renewal in that time the
licence lapses. A request answered below the threshold leaves the client
unactivated with 0xC004F038, as the client itself decides. A CMID sent by
more than one workstation name is a cloned image: ``duplicate``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from kmsemu.catalog import Catalog
from kmsemu.errors import HResult, format_hresult, hresult_name
from kmsemu.host.rules import client_hresult
from kmsemu.host.store import LoggedRequest
from kmsemu.klp.messages import LicenseStatus
from kmsemu.wire import NIL_GUID, guid_text, unix_from_filetime

DAY: Final = 86_400.0
VALIDITY: Final = 180 * DAY
MAX_CLIENTS: Final = 10_000
MAX_REQUESTS: Final = 100
MAX_NAMES: Final = 8
_NIL: Final = NIL_GUID.bytes_le


@dataclass(slots=True)
class Request:
    """One row of the request log, as the dashboard shows it."""

    id: int
    time: float
    status: int  # what the host answered
    hresult: int  # what the client ends with: the status, or 0xC004F038 below its threshold
    client: str | None
    cmid: bytes
    product: str | None
    count: int
    peer: str
    reason: str


@dataclass(slots=True)
class Client:
    """One client machine as the host has seen it, by CMID: names, product, last answer."""

    cmid: bytes
    names: list[str] = field(default_factory=list)
    product: str | None = None
    peer: str = ""
    last_request: float = 0.0
    hresult: int = 0
    reason: str = ""
    reported_status: int | None = None
    vm: bool = False
    requests: int = 0
    activated_at: float | None = None


class Monitor:
    """The dashboard's clients, request log and totals, bounded in size."""

    def __init__(
        self, catalog: Catalog, *, max_clients: int = MAX_CLIENTS, max_requests: int = MAX_REQUESTS
    ) -> None:
        self._products = {p.sku_id.bytes_le: p.key for p in catalog}
        self.clients: OrderedDict[bytes, Client] = OrderedDict()
        self.requests: deque[Request] = deque(maxlen=max_requests)
        self.max_clients = max_clients
        self.total = 0
        self.failed = 0  # refused by the host (slmgr /dlv's "failed requests")
        self.below = 0  # answered, but under the client's threshold
        self.version = 0
        self._next_id = 1

    def bump(self) -> None:
        """Something the dashboard shows changed (a request, the clock, a MAK key)."""
        self.version += 1

    def observe(self, logged: LoggedRequest, elapsed: float = 0.0) -> None:
        """A request the host answered (``KmsServer.observers``)."""
        record, q = logged.record, logged.record.request
        if q is None:
            self.add(
                record.time,
                record.status,
                None,
                record.client_machine_id,
                False,
                None,
                None,
                0,
                record.current_count,
                logged.peer,
                logged.reason,
            )
        else:
            self.add(
                record.time,
                record.status,
                q.workstation_name,
                record.client_machine_id,
                bool(q.flags & 1),
                q.license_status,
                q.sku_id,
                q.required_client_count,
                record.current_count,
                logged.peer,
                logged.reason,
            )

    def load(
        self, rows: Iterable[tuple[Any, ...]], total: int, failed: int, below: int = 0
    ) -> None:
        """Start from the stored log (``HostStore.recent_requests``, oldest first) and the
        stored totals, so that a restarted lab shows what happened before."""
        for (
            row_id,
            filetime,
            status,
            name,
            cmid,
            vm,
            license_status,
            sku_id,
            required,
            count,
            peer,
            reason,
        ) in rows:
            self._next_id = row_id
            self.add(
                filetime,
                status,
                name,
                cmid,
                bool(vm),
                license_status,
                sku_id,
                required or 0,
                count,
                peer,
                reason,
                counted=False,
            )
        self.total, self.failed, self.below = total, failed, below

    def add(
        self,
        filetime: int,
        status: int,
        name: str | None,
        cmid: bytes,
        vm: bool,
        license_status: int | None,
        sku_id: bytes | None,
        required: int,
        count: int,
        peer: str,
        reason: str,
        *,
        counted: bool = True,
    ) -> None:
        """Record one request (``counted`` False: replayed from the log, totals untouched)."""
        when = unix_from_filetime(filetime)
        product = self._products.get(sku_id) if sku_id else None
        hresult = client_hresult(status, count, required)
        self.requests.appendleft(
            Request(self._next_id, when, status, hresult, name, cmid, product, count, peer, reason)
        )
        self._next_id += 1
        if counted:
            self.total += 1
            self.failed += status != 0
            self.below += hresult == HResult.COUNT_INSUFFICIENT
        if name is not None and cmid != _NIL:
            self._client(cmid, name, product, peer, when, hresult, reason, license_status, vm)
        self.bump()

    def _client(
        self,
        cmid: bytes,
        name: str,
        product: str | None,
        peer: str,
        when: float,
        hresult: int,
        reason: str,
        license_status: int | None,
        vm: bool,
    ) -> None:
        client = self.clients.pop(cmid, None)
        if client is None:
            client = Client(cmid)
            while len(self.clients) >= self.max_clients:  # forget the longest silent
                self.clients.popitem(last=False)
        self.clients[cmid] = client
        if name not in client.names:
            client.names.append(name)
            del client.names[:-MAX_NAMES]
        client.product = product or client.product
        client.peer, client.last_request = peer, when
        client.hresult, client.reason = hresult, reason
        client.reported_status, client.vm = license_status, vm
        client.requests += 1
        if hresult == 0:
            client.activated_at = when

    def snapshot(self, now: float) -> dict[str, Any]:
        """Clients (most recent first), the request log and totals at lab time ``now``."""
        return {
            "clients": [self._client_json(c, now) for c in reversed(self.clients.values())],
            "requests": [_request_json(r) for r in self.requests],
            "totals": {
                "requests": self.total,
                "failed": self.failed,
                "below_threshold": self.below,
            },
        }

    @staticmethod
    def _client_json(client: Client, now: float) -> dict[str, Any]:
        return {
            "cmid": guid_text(client.cmid),
            "name": client.names[-1] if client.names else "",
            "names": list(client.names),
            "product": client.product,
            "peer": client.peer,
            "last_request": iso(client.last_request),
            "hresult": format_hresult(client.hresult),
            "error": _error(client.hresult, client.reason),
            "licence": licence(client, now),
            "reported_status": _status_name(client.reported_status),
            "vm": client.vm,
            "requests": client.requests,
            "duplicate": len(client.names) > 1,
        }


def licence(client: Client, now: float) -> dict[str, Any]:
    """The host's view of a client's licence at ``now``: licensed, lapsed or not activated."""
    if client.activated_at is None:
        why = _error(client.hresult, client.reason) or "no successful request"
        return {
            "state": "not_activated",
            "expires": None,
            "text": f"Not activated: {why} ({format_hresult(client.hresult)})",
        }
    expires = client.activated_at + VALIDITY
    if now < expires:
        days = int((expires - now) // DAY)
        return {
            "state": "licensed",
            "expires": iso(expires),
            "text": f"Licensed, {days} day{'s' * (days != 1)} left",
        }
    days = int((now - expires) // DAY)
    return {
        "state": "lapsed",
        "expires": iso(expires),
        "text": f"Lapsed {days} day{'s' * (days != 1)} ago: no renewal in 180 days",
    }


def iso(seconds: float) -> str:
    """POSIX seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _request_json(r: Request) -> dict[str, Any]:
    return {
        "id": r.id,
        "time": iso(r.time),
        "client": r.client,
        "cmid": guid_text(r.cmid),
        "product": r.product,
        "hresult": format_hresult(r.hresult),
        "error": _error(r.hresult, r.reason),
        "count": r.count,
        "peer": r.peer,
        "reason": r.reason,
    }


def _error(hresult: int, reason: str) -> str | None:
    if hresult == 0:
        return None
    if hresult == HResult.COUNT_INSUFFICIENT:
        return "count below the client's threshold"
    return reason or hresult_name(hresult).lower().replace("_", " ")


def _status_name(value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return LicenseStatus(value).name.lower()
    except ValueError:
        return str(value)
