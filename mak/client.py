"""A small HTTP client for the MAK service, for the CLI and the client emulator.

Standard library only (``http.client``), one connection per client object,
reopened when the server closed it. A refusal arrives as ``RemoteError``
carrying the service's ``{"error": {...}}`` fields; a service that cannot
be reached is ``RemoteError`` with code ``unreachable`` and 0x80072EFD, what
Windows shows when the activation server cannot be contacted.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

from kmsemu.errors import KmsemuError, lookup
from mak.defaults import DEFAULT_URL


class RemoteError(KmsemuError):
    """The service refused: ``body`` is its error object, whose message (the registry's,
    with the detail) is kept as it came; or it could not be reached or read (``unreachable``,
    ``bad_response``: no body, the registry's message and ``detail``). The hint is the
    registry's CLI wording when the code is known here, else the service's."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.body: dict[str, Any] = body or {}
        super().__init__(detail, code=code)
        self.fields = {
            k: v for k, v in self.body.items() if k not in ("code", "message", "hint", "hresult")
        }

    @classmethod
    def from_body(cls, status: int, body: Any) -> RemoteError:
        """The error an HTTP error answer carries; ``bad_response`` when it has no error object."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return cls("bad_response", f"HTTP {status} without an error object", status=status)
        return cls(error["code"], status=status, body=error)

    @property
    def message(self) -> str:
        """The service's message as it came (the registry's when there was no answer)."""
        return str(self.body.get("message", "")) if self.body else super().message

    @property
    def text(self) -> str:
        """What the CLI prints after ``Error:``: the service's message, detail included."""
        return self.message if self.body else super().text

    @property
    def hint(self) -> str:
        """The registry's CLI hint for a known code, else the service's hint."""
        known = lookup(self.code)
        return known.hint if known is not None else str(self.body.get("hint", ""))

    @property
    def hresult(self) -> int | None:
        """The HRESULT the service named (hex text), if any; the registry's without an answer."""
        if not self.body:
            return super().hresult
        value = self.body.get("hresult")
        try:
            return int(value, 16) if isinstance(value, str) else None
        except ValueError:
            return None


class MakClient:
    """The MAK service's HTTP JSON API as methods, on one kept-alive connection."""

    def __init__(
        self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 10.0
    ) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// URL")
        try:
            parts.port  # noqa: B018  (a port outside 0-65535 raises)
            parts.hostname.encode("idna")
            parts.path.encode("ascii")
        except (ValueError, UnicodeError):
            raise ValueError(f"{url!r} is not an http:// URL with a valid host and port") from None
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        #: The status and headers of the last answer (None until one arrives).
        self.last_status: int | None = None
        self.last_headers: http.client.HTTPMessage | None = None

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=self._timeout)
            conn.connect()
            # headers and body may leave in two writes: without this, Nagle and delayed ACKs
            # cost 40 ms per request on a kept-alive connection
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def request(self, method: str, path: str, body: Any = None, *, admin: bool = False) -> Any:
        """One JSON call; the decoded answer, or RemoteError (refused, unreachable, unreadable)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if admin and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self.last_status = self.last_headers = None
        while True:
            # a kept-alive connection the server has closed is retried once, on a new one;
            # a new connection that fails is an answer that never came
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                self.last_status, self.last_headers = response.status, response.headers
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise self._unreachable("the connection was closed") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(
                    getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                ) from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = None
        if response.status >= 400:
            raise RemoteError.from_body(response.status, payload)
        if payload is None:
            raise RemoteError(
                "bad_response", f"HTTP {response.status}: not JSON", status=response.status
            )
        return payload

    def _unreachable(self, why: str) -> RemoteError:
        return RemoteError("unreachable", f"{self.url}: {why}")

    # -- activation (public) ---------------------------------------------------------------------

    def activate(
        self,
        key: str,
        hardware_id: str,
        *,
        machine_name: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Online activation of a key on a hardware ID (``POST /v1/activate``)."""
        return dict(
            self.request(
                "POST",
                "/v1/activate",
                _drop_none(
                    key=key,
                    hardware_id=hardware_id,
                    machine_name=machine_name,
                    request_id=request_id,
                ),
            )
        )

    def phone(
        self,
        installation_id: str,
        *,
        machine_name: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Phone activation: a confirmation ID for an installation ID (``POST /v1/phone``)."""
        return dict(
            self.request(
                "POST",
                "/v1/phone",
                _drop_none(
                    installation_id=installation_id,
                    machine_name=machine_name,
                    request_id=request_id,
                ),
            )
        )

    def proxy_activate(self, items: list[Any]) -> dict[str, Any]:
        """VAMT proxy activation of many installation IDs in one call."""
        return dict(self.request("POST", "/v1/proxy-activate", {"installation_ids": items}))

    def count(self, key: str) -> dict[str, Any]:
        """What a key has left (VAMT's remaining count), for whoever holds the key."""
        return dict(self.request("POST", "/v1/count", {"key": key}))

    # -- administration ---------------------------------------------------------------------

    def keys(self) -> list[dict[str, Any]]:
        """Every registered key (admin)."""
        return list(self.request("GET", "/v1/keys", admin=True)["keys"])

    def add_key(
        self,
        key: str,
        *,
        limit: int | None = None,
        expires: str | None = None,
        reactivations: int | None = None,
    ) -> dict[str, Any]:
        """Register a key, with its limit, expiry and reactivations if given (admin)."""
        return dict(
            self.request(
                "POST",
                "/v1/keys",
                _drop_none(key=key, limit=limit, expires=expires, reactivations=reactivations),
                admin=True,
            )
        )

    def key(self, fingerprint: str) -> dict[str, Any]:
        """One registered key by fingerprint, with its increases and machines (admin)."""
        return dict(self.request("GET", f"/v1/keys/{fingerprint}", admin=True))

    def increase(self, fingerprint: str, by: int, reason: str | None = None) -> dict[str, Any]:
        """Grant a key ``by`` more activations, with a reason for the record (admin)."""
        return dict(
            self.request(
                "POST",
                f"/v1/keys/{fingerprint}/increase",
                _drop_none(by=by, reason=reason),
                admin=True,
            )
        )

    def change(
        self,
        fingerprint: str,
        action: str,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``block``, ``unblock`` or ``expire`` (body ``{"at": ISO}`` optional)."""
        return dict(
            self.request("POST", f"/v1/keys/{fingerprint}/{action}", body or {}, admin=True)
        )

    def export(
        self, *, keys: bool = True, activations: bool = True, machine_names: bool = True
    ) -> dict[str, Any]:
        """The service's keys and activations as one document, parts optional (admin)."""
        query = urllib.parse.urlencode(
            {
                "keys": str(keys).lower(),
                "activations": str(activations).lower(),
                "machine_names": str(machine_names).lower(),
            }
        )
        return dict(self.request("GET", f"/v1/export?{query}", admin=True))

    def import_(self, document: dict[str, Any]) -> dict[str, Any]:
        """Load a document ``export`` wrote (admin)."""
        return dict(self.request("POST", "/v1/import", document, admin=True))


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}
