"""The fuzz targets: one function per parser that meets untrusted bytes or text.

Each target takes the fuzzer's bytes and returns None. It raises when it finds a bug:
an exception outside the errors the code under test documents, or a broken invariant
(``FuzzFinding``). Nothing here catches a broad ``Exception``: each target catches
exactly the documented error classes of the code it calls, so anything else reaches
libFuzzer (atheris reports it as a crash with the input saved as ``crash-*``).

Hangs are caught by libFuzzer's ``-timeout`` and unbounded memory by ``-rss_limit_mb``
(``scripts/fuzz`` sets both); the RPC target also bounds its own event loop.

Targets (``TARGETS``): rpc, klp, dns, keys, http, lab_config, scenario, profile.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "FuzzFinding"]


class FuzzFinding(AssertionError):
    """An invariant a target checks did not hold (not an exception of the code itself)."""


def _scratch() -> Path:
    """A per-process scratch directory (on tmpfs when there is one) for file targets,
    removed at exit; or ``$KMSEMU_FUZZ_SCRATCH`` (scripts/fuzz: libFuzzer's exit skips
    atexit, so it names a fixed one and empties it at the start)."""
    global _SCRATCH
    if _SCRATCH is None and os.environ.get("KMSEMU_FUZZ_SCRATCH"):
        _SCRATCH = Path(os.environ["KMSEMU_FUZZ_SCRATCH"])
        _SCRATCH.mkdir(parents=True, exist_ok=True)
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _SCRATCH = Path(tempfile.mkdtemp(prefix="kmsemu-fuzz-", dir=base))
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
    return _SCRATCH


_SCRATCH: Path | None = None


# -- 1. RPC: the PDU decoder, ServerConnection and the lean path ---------------------------


def _chunks(data: bytes) -> tuple[list[bytes], bool, int]:
    """The input's layout: byte 0 flags (bit 0: the stream ends with end-of-stream, bit 1:
    the host's fragment limit is 1024 rather than 5840), byte 1 the number of cuts (0-8),
    one byte per cut (a chunk of 1-256 bytes), then the byte stream (the rest is one more
    chunk). Seeds are easy to write by hand: ``b"\\0\\0" + stream`` is the stream whole."""
    if len(data) < 2:
        return [], False, 5840
    flags, count = data[0], data[1] % 9
    cuts, stream = [c + 1 for c in data[2 : 2 + count]], data[2 + count :]
    chunks, at = [], 0
    for cut in cuts:
        if at >= len(stream):
            break
        chunks.append(stream[at : at + cut])
        at += cut
    if at < len(stream):
        chunks.append(stream[at:])
    return chunks, bool(flags & 1), 1024 if flags & 2 else 5840


def _drive(conn: Any, chunks: list[bytes], eof: bool, *, lean: bool) -> list[Any]:
    """Feed ``chunks`` as the host's protocol does (``take`` first when ``lean``, else the
    general path) and answer every Call; what came out, with the state after each chunk."""
    from kmsemu.rpc.connection import NEED_DATA, Call, Closed

    out: list[Any] = []

    def note(event: Any) -> bool:
        if isinstance(event, Call):
            out.append(("call", event, conn.respond(event, b"\x01\x02\x03\x04" * 9)))
        else:
            out.append(event)
        return not isinstance(event, Closed)

    for chunk in [*chunks, *([b""] if eof else [])]:
        taken = conn.take(chunk) if lean and chunk else None
        if taken is None:
            conn.receive_data(chunk)
            for _ in range(10_000):  # every event consumes input or closes
                event = conn.next_event()
                if event is NEED_DATA or not note(event):
                    break
            else:
                raise FuzzFinding("the machine never asked for more data")
        else:
            after = conn.next_event()  # once closed, every call says Closed again
            if after is not NEED_DATA and not (
                isinstance(taken, Closed) and isinstance(after, Closed)
            ):
                raise FuzzFinding(f"take left an event behind: {after}")
            note(taken)
        out.append(
            (
                conn.state,
                frozenset(conn.contexts),
                conn.recv_limit,
                conn.xmit_limit,
                conn.buffering,
                conn._assoc_group_id,
            )
        )
    return out


def rpc(data: bytes) -> None:
    """A DCE/RPC byte stream, split where the input says, fed to a ``ServerConnection``
    (the reference) and to a ``LeanConnection`` (``take``, falling back to the general
    path). The connection machine answers every malformed input itself (BIND_NAK, FAULT
    or Closed): crash = any exception, a machine that never asks for more data, or the
    lean path giving other events, bytes or state than the reference (its documented
    promise, kmsemu/rpc/lean.py)."""
    from kmsemu.rpc.connection import ServerConnection
    from kmsemu.rpc.lean import LeanConnection

    chunks, eof, max_frag = _chunks(data)
    kw = {"port": 1688, "assoc_group_id": 0x12345, "max_frag": max_frag}
    reference = _drive(ServerConnection(**kw), chunks, eof, lean=False)
    fast = _drive(LeanConnection(**kw), chunks, eof, lean=True)
    # twice: the second lean run answers from the BIND_ACK templates the first one cached
    again = _drive(LeanConnection(**kw), chunks, eof, lean=True)
    if fast != reference or again != reference:
        raise FuzzFinding(f"lean path differs from the reference:\n{reference}\n{fast}\n{again}")


# -- 2. KLP/1: envelope, messages, the host's handling ---------------------------------------

_KLP: dict[str, Any] = {}
_NOW = 134_000_000_000_000_000  # a FILETIME in 2025


def _klp_setup() -> dict[str, Any]:
    if not _KLP:
        from kmsemu.catalog import default_catalog
        from kmsemu.host.rules import CountCache, HostIdentity, HostRules, HostSettings
        from kmsemu.host.service import KmsHost
        from kmsemu.klp import DEFAULT_SECRET
        from kmsemu.klp._fastcore import CORE
        from kmsemu.klp.envelope import Keyring, LabKey

        identity = HostIdentity(b"HOSTID!!", "06401-00206-123-456789-03-1033-9600.0000-0012026")

        def host(core: Any) -> Any:
            rules = HostRules(default_catalog(), HostSettings(), identity, CountCache())
            nonces = itertools.count(1)
            return KmsHost(
                rules, Keyring([DEFAULT_SECRET, "second lab secret"]), lambda: _NOW,
                lambda n: next(nonces).to_bytes(n, "little"), core=core,
            )  # fmt: skip

        _KLP["key"] = LabKey.derive(DEFAULT_SECRET)
        _KLP["pure"] = host(None)
        _KLP["core"] = host(CORE) if CORE is not None else None
    return _KLP


def klp(data: bytes) -> None:
    """The KLP/1 envelope and plaintexts, alone and through ``KmsHost.handle``.

    The first byte chooses what the rest is:

    - 0: a REQUEST stub (NDR) for ``KmsHost.handle``; ``NdrError`` is documented (FAULT
      nca_s_fault_ndr), anything else is a crash. With the compiled core in use, the
      pure host and the core host must give the same outcome (stub, log, reason).
    - 1: an envelope for ``Keyring.open_request`` and ``open_response``: only
      ``EnvelopeError``; and authentication must fail, unless the bytes are exactly what
      sealing the opened plaintext under that key and nonce gives (a genuine envelope).
    - 2: a plaintext, sealed with the lab key and handed to the host: it must answer
      (``rules.answer`` turns a ``MessageError`` into 0x8007000D), never raise; and to
      ``parse_request``, ``ActivationRequest.from_bytes``, ``ActivationResponse.from_bytes``:
      only ``MessageError``.
    """
    from kmsemu.klp.envelope import EnvelopeError, open_response, seal_request
    from kmsemu.klp.messages import (
        ActivationRequest,
        ActivationResponse,
        MessageError,
        parse_request,
    )
    from kmsemu.rpc.ndr import NdrError, encode_request_stub

    setup = _klp_setup()
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 1:
        try:
            opened = setup["pure"].keyring.open_request(rest)
        except EnvelopeError:
            pass
        else:
            genuine = seal_request(opened.key, opened.plaintext, opened.nonce,
                                   minor=opened.version_minor)  # fmt: skip
            if genuine != rest:
                raise FuzzFinding("an envelope that was never sealed opened")
        with contextlib.suppress(EnvelopeError):
            open_response(setup["key"], rest)
        return
    if mode == 2:
        for parse in (parse_request, ActivationRequest.from_bytes, ActivationResponse.from_bytes):
            with contextlib.suppress(MessageError):
                parse(rest)
        stub = encode_request_stub(seal_request(setup["key"], rest, bytes(12)))
    else:
        stub = rest
    outcomes = []
    for host in (setup["pure"], setup["core"]):
        if host is None:
            continue
        try:
            outcomes.append(host.handle(stub))
        except NdrError as exc:
            outcomes.append(("NdrError", str(exc)))
    if len(outcomes) == 2 and outcomes[0] != outcomes[1]:
        raise FuzzFinding(f"compiled core and pure path differ: {outcomes}")


# -- 3. DNS: queries and RFC 2136 updates through Authority -----------------------------------


def _lab_authority() -> Any:
    """A fresh Authority over a zone like the lab's (``kmsemu lab``: SRV for kms, an A
    record, a second host on IPv6)."""
    from kmsemu.dns.authority import Authority
    from kmsemu.dns.zone import SrvTarget, Zone

    zone = Zone.build(
        "lab.test",
        srv=[SrvTarget("kms", 1688, 0, 100), SrvTarget("kms2.lab.test.", 1689, 10, 0)],
        addresses=[("kms", "192.0.2.10"), ("kms2", "::1")],
    )
    return Authority([zone])


def dns(data: bytes) -> None:
    """DNS messages (queries and RFC 2136 UPDATEs) to ``Authority.answer`` over a fresh
    lab-like zone. Layout: byte 0 the number of messages (1-4), then per message a flags
    byte (bit 0 ``udp``, bit 1 ``trusted``), a 2-byte big-endian length (not for the last,
    which takes the rest) and the message; updates change the zone later queries see.
    ``answer`` documents no exception (garbage gets silence: None): crash = any exception,
    a cached answer differing from ``answer_uncached``, or a UDP reply to a query over
    1232 bytes (the EDNS cap)."""
    from kmsemu.dns.authority import EDNS_CAP

    authority = _lab_authority()
    at, count = 1, (data[0] % 4 + 1) if data else 0
    for n in range(count):
        if at >= len(data):
            break
        flags = data[at]
        udp, trusted = bool(flags & 1), bool(flags & 2)
        if n + 1 < count and at + 3 <= len(data):
            size = int.from_bytes(data[at + 1 : at + 3], "big")
            message, at = data[at + 3 : at + 3 + size], at + 3 + size
        else:
            message, at = data[at + 1 :], len(data)
        update = len(message) >= 4 and (message[2] >> 3) & 0xF == 5
        reply = authority.answer(message, udp=udp, trusted=trusted)
        if update or reply is None:
            continue
        again = authority.answer(message, udp=udp, trusted=trusted)  # from the cache now
        fresh = authority.answer_uncached(message, udp=udp, trusted=trusted)
        if again != fresh:
            raise FuzzFinding(f"cached reply {again!r} differs from {fresh!r}")
        if udp and len(reply) > EDNS_CAP:
            raise FuzzFinding(f"UDP reply of {len(reply)} bytes")


# -- 4. Keys: product keys, installation ids, confirmation ids --------------------------------


def keys(data: bytes) -> None:
    """Typed product keys, installation ids and confirmation ids (text, as a user types).
    Layout: byte 0 the encoding of the rest (even: UTF-8, odd: UTF-16-LE, both decoded
    with replacement), whose first line is a key or IID and the second a CID.

    - ``check(text)`` documents no exception (it diagnoses); ``parse`` raises ValueError;
      a key ``check`` accepts must check again as the same key from its own text.
    - ``parse_installation_id`` and ``iid_digits`` raise ``IdError`` only (the first
      checks the fields too, so what it takes the second takes); an IID that parses must
      give the same IID back from its fields; one whose check digits hold must get a
      confirmation id: ``confirmation_id`` and ``verify_confirmation_id(iid, cid, secret)``
      judge any CID (``CidCheck``) and take the genuine one.
    """
    from kmsemu.keys.activation_ids import (
        IdError,
        confirmation_id,
        iid_digits,
        installation_id,
        parse_installation_id,
        verify_confirmation_id,
    )
    from kmsemu.keys.product_key import check, fingerprint, parse

    if not data:
        return
    text = data[1:].decode("utf-16-le" if data[0] & 1 else "utf-8", "replace")
    first, _, second = text.partition("\n")

    diagnosis = check(first)
    if diagnosis.key is not None:
        if check(str(diagnosis.key)).key != diagnosis.key:
            raise FuzzFinding(f"{first!r} does not round-trip")
        fingerprint(first)
    with contextlib.suppress(ValueError):
        parse(first)

    try:
        fields = parse_installation_id(first)
    except IdError:
        fields = None
    try:
        digits = iid_digits(first)
    except IdError:
        digits = None
    if fields is not None and digits is None:
        raise FuzzFinding(f"parse_installation_id takes {first!r}, iid_digits does not")
    if digits is None:
        return
    if fields is not None:
        again = installation_id(fields.key_type, fields.fingerprint, fields.hardware_id)
        if iid_digits(again) != digits:
            raise FuzzFinding(f"{first!r} does not round-trip: {again}")
    cid = confirmation_id(first, "fuzz secret")
    if not verify_confirmation_id(first, cid, "fuzz secret").valid:
        raise FuzzFinding(f"the genuine CID of {first!r} does not verify")
    verify_confirmation_id(first, second, "fuzz secret")


# -- 5. HTTP: the MAK service, the portal and the lab API, in process -------------------------

_HTTP: dict[str, Any] = {}
_TOKEN = "fuzz-admin-token"


class _View:
    """The dashboard's view of a lab, enough for the lab API (no host behind it)."""

    stopping = False

    def __init__(self) -> None:
        self.offset, self.changes = 0.0, 0

    def version(self) -> int:
        return self.changes

    def bump(self) -> None:
        self.changes += 1

    def state(self, read_only: bool) -> dict[str, Any]:
        return {"read_only": read_only, "clock_offset": self.offset}

    def travel(self, seconds: float | None) -> None:
        self.offset = 0.0 if seconds is None else self.offset + seconds

    def readiness(self) -> dict[str, bool]:
        return {"kms": True}

    def problems(self) -> dict[str, str]:
        return {"kms": ""}


def _asgi(app: Any, method: str, path: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    """One request through the ASGI app on the target's loop: status and body."""
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8688),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a disconnect only when the response is done
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    _HTTP["loop"].run_until_complete(app(scope, receive, send))
    return status, b"".join(chunks)


def _http_setup() -> dict[str, Any]:
    if _HTTP:
        return _HTTP
    import logging

    from kmsemu.catalog import default_catalog
    from kmsemu.clock import FakeClock
    from kmsemu.host.faults import FaultStore
    from kmsemu.keys.product_key import KeyType, fingerprint, mint
    from kmsemu.lab.fault_api import HostFaults
    from kmsemu.lab.metrics import LabGauges, LabMetrics
    from kmsemu.lab.web import create_lab_app
    from kmsemu.run.mak import MakConfig, open_mak
    from mak.api import ENDPOINTS

    home = _scratch() / "http"
    home.mkdir(exist_ok=True)
    opened = open_mak(MakConfig(home=home, secret="fuzz secret", clock=FakeClock(),
                                catalog=default_catalog(), admin_token=_TOKEN))  # fmt: skip
    metrics = LabMetrics({}, lambda: LabGauges(counts={}, connections=0, mak_keys=[],
                                               clock_offset=0.0, dns_queries={}))  # fmt: skip
    fault_store = FaultStore(home / "lab.faults.json")
    faults = HostFaults(fault_store, default_catalog(), lambda: 1_800_000_000.0,
                        lambda: None, lambda: {})  # fmt: skip
    app = create_lab_app(_View(), opened.app, metrics, admin_token=_TOKEN, open_reads=True,
                         faults=faults)  # fmt: skip
    _HTTP.update(loop=asyncio.new_event_loop(), app=app, opened=opened, faults=fault_store)
    # filled last: a setup that failed half-way is run again by the next input
    # an internal error is logged as well as answered 500: the status is what we check
    # (only under the fuzzer: inside the test suite the logger is other tests' to read)
    if "pytest" not in sys.modules:
        logging.getLogger("kmsemu.mak").disabled = True

    key = str(mint(KeyType.MAK, 1, 7))
    _asgi(app, "POST", "/v1/keys", json.dumps({"key": key, "limit": 5}).encode(), _TOKEN)
    _asgi(app, "POST", "/v1/portal/orgs", b'{"name": "Fuzz", "country": "US"}', _TOKEN)
    _asgi(app, "POST", "/v1/portal/orgs/Fuzz/users", b'{"name": "ada", "role": "admin"}', _TOKEN)
    _, offers = _asgi(app, "GET", "/v1/portal/offers", b"", _TOKEN)
    offer = (json.loads(offers).get("offers") or [{"offer": "fuzz-offer"}])[0]["offer"]
    params = {"fingerprint": fingerprint(key), "org": "Fuzz", "user": "ada", "offer": offer}
    routes = [(e.method, e.path) for e in ENDPOINTS if e.method in ("POST", "PUT", "PATCH")]
    routes += [("POST", "/lab/api/clock"), ("POST", "/api/host/faults")]
    _HTTP["routes"] = [(m, p.format(**params)) for m, p in routes]
    _HTTP["calls"] = 0
    return _HTTP


def http(data: bytes) -> None:
    """A JSON body POSTed (or PUT) to one of the lab's routes: every POST/PUT/PATCH of the
    MAK service and licensing portal (``mak.api.ENDPOINTS``) and of the lab API
    (``/lab/api/clock``, ``/api/host/faults``), through the lab's ASGI app in process
    over a real SQLite store. Byte 0 chooses the route, byte 1 the token (admin, a wrong
    one, none), the rest is the body. Every wrong body has its 4xx in the error registry:
    crash = a 5xx (the app's handler turns an unexpected exception into 500 internal) or
    an exception out of the app, or an answer that is not a JSON object."""
    setup = _http_setup()
    if len(data) < 2:
        return
    method, path = setup["routes"][data[0] % len(setup["routes"])]
    token = (_TOKEN, "wrong-token", None)[data[1] % 3]
    status, body = _asgi(setup["app"], method, path, data[2:], token)
    if status >= 500:
        raise FuzzFinding(f"{method} {path} answered {status}: {body[:500]!r}")
    if not isinstance(json.loads(body), dict):
        raise FuzzFinding(f"{method} {path} answered {body[:200]!r}")
    setup["calls"] += 1
    if setup["calls"] % 500 == 0:  # keep the faults file (and the time to read it) bounded
        setup["faults"].clear()


# -- 6. TOML: the lab's configuration file and scenario files ---------------------------------


def _file(name: str, data: bytes) -> Path:
    path = _scratch() / name
    path.write_bytes(data)
    return path


def lab_config(data: bytes) -> None:
    """Bytes as ``~/.kmsemu/lab.toml`` for ``read_config`` (and its table for
    ``plan_reload`` against the defaults): only ``ConfigError`` (kmsemu/lab/config.py);
    a table it accepts must be accepted again by ``check_config``."""
    from kmsemu.errors import ConfigError
    from kmsemu.lab.config import check_config, plan_reload, read_config

    try:
        values = read_config(_file("lab.toml", data))
    except ConfigError:
        return
    if check_config({"lab": values}, "again") != values:
        raise FuzzFinding(f"check_config does not accept its own result {values!r}")
    plan_reload({}, values, {"min_count": 0}, {"quiet"}).summary()


def scenario(data: bytes) -> None:
    """Bytes as a scenario file for ``load_scenario``: only ``ConfigError`` (code
    scenario_invalid or the catalog's), never another exception (kmsemu/sim/scenario.py)."""
    from kmsemu.errors import ConfigError
    from kmsemu.sim.scenario import load_scenario

    try:
        loaded = load_scenario(_file("scenario.toml", data))
    except ConfigError:
        return
    loaded.clients  # noqa: B018  (a property that sums the groups)


# -- 7. Client profile files --------------------------------------------------------------------


def profile(data: bytes) -> None:
    """Bytes as a client profile file for ``ProfileStore.load``: only ``ProfileError``
    (kmsemu/client/profile.py: "a damaged file"); a profile that loads must survive its
    own ``to_json`` / ``from_json`` unchanged."""
    from kmsemu.client.profile import Profile, ProfileError, ProfileStore

    _file("fuzz.json", data)
    try:
        loaded = ProfileStore(_scratch()).load("fuzz")
    except ProfileError:
        return
    again = Profile.from_json(json.loads(json.dumps(loaded.to_json())))
    if again != loaded:
        raise FuzzFinding("a loaded profile changes through to_json/from_json")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "rpc": rpc,
    "klp": klp,
    "dns": dns,
    "keys": keys,
    "http": http,
    "lab_config": lab_config,
    "scenario": scenario,
    "profile": profile,
}
