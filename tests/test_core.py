"""The optional compiled core (``kmsemu._core``) against the pure-Python path.

The core is built only on request (``scripts/build-core``); these tests skip, saying so,
where it is not. The pure path stays the reference: Hypothesis feeds both the same
inputs and requires the same bytes out, the same log records and refusals, the same
count cache. AES-GCM against ``cryptography``'s; ``KmsHost.handle`` with the core
against ``handle_pure`` on stubs built to reach every check (and bytes flipped
anywhere); the host's protocol, whole streams split anywhere, with and without the
core; and what the core is for: a host using it never imports ``cryptography``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.catalog import default_catalog
from kmsemu.errors import ConfigError
from kmsemu.host.events import EventLog
from kmsemu.host.rules import CountCache, HostIdentity, HostRules, HostSettings, LogRecord
from kmsemu.host.service import KmsHost
from kmsemu.klp import _fastcore
from kmsemu.klp.envelope import Keyring, LabKey
from kmsemu.klp.messages import RequestFields
from kmsemu.rpc.ndr import NdrError, encode_request_stub
from tests import test_lean

try:
    from kmsemu import _core
except ImportError:  # pragma: no cover - depends on the build
    _core = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
needs_core = pytest.mark.skipif(
    _core is None, reason="kmsemu._core is not built (scripts/build-core builds it)"
)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)

CATALOG = default_catalog()
PRODUCTS = [p for p in CATALOG if p.key.startswith(("windows-server-2022", "office"))][:4]
NOW = 133_000_000_000_000_000
IDENTITY = HostIdentity(b"HOSTID!!", "06401-00206-123-456789-03-1033-9600.0000-0012026")
SECRETS = ["kmsemu-lab", "second lab"]


# -- AES-GCM ----------------------------------------------------------------------------


@needs_core
@SETTINGS
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12),
       st.binary(max_size=600), st.one_of(st.none(), st.binary(max_size=64)),
       st.integers(0, 10**6))  # fmt: skip
def test_aes_gcm_gives_cryptographys_bytes(
    key: bytes, nonce: bytes, data: bytes, aad: bytes | None, flip: int
) -> None:
    ours, theirs = _core.AesGcm(key), AESGCM(key)
    sealed = ours.encrypt(nonce, data, aad)
    assert sealed == theirs.encrypt(nonce, data, aad)
    assert ours.decrypt(nonce, sealed, aad) == data
    bad = bytearray(sealed)
    bad[flip % len(bad)] ^= 1 << (flip % 8)
    with pytest.raises(_core.InvalidTag):
        ours.decrypt(nonce, bytes(bad), aad)
    with pytest.raises(InvalidTag):
        theirs.decrypt(nonce, bytes(bad), aad)


@needs_core
def test_aes_gcm_refuses_what_cryptography_refuses() -> None:
    with pytest.raises(ValueError):
        _core.AesGcm(bytes(16))
    cipher = _core.AesGcm(bytes(32))
    with pytest.raises(ValueError):
        cipher.encrypt(bytes(8), b"x", None)
    with pytest.raises(_core.InvalidTag):
        cipher.decrypt(bytes(12), bytes(15), None)


# -- one request: KmsHost.handle with the core against handle_pure ----------------------


def keyring(shared_id: bool) -> Keyring:
    """Two secrets; with ``shared_id`` the second carries the first's key id (section 3:
    a host tries every secret sharing an id, in order)."""
    ring = Keyring(SECRETS)
    if shared_id:
        first, second = ring.keys
        ring.keys = (first, dataclasses.replace(second, key_id=first.key_id))
        ring._by_id = {first.key_id: list(ring.keys)}
    return ring


def host(ring: Keyring, core: Any, min_count: int = 0) -> KmsHost:
    rules = HostRules(CATALOG, HostSettings(min_count=min_count), IDENTITY, CountCache())
    nonces = iter(range(1, 10**6))
    return KmsHost(rules, ring, lambda: NOW, lambda n: next(nonces).to_bytes(n, "little"),
                   core=core)  # fmt: skip


guid = st.one_of(
    st.sampled_from([bytes(16), b"\x01" * 16]),
    st.binary(min_size=16, max_size=16),
    st.integers(1, 5).map(lambda n: uuid.UUID(int=n).bytes_le),
)
name_field = st.one_of(
    st.text(max_size=63).map(lambda t: t.encode("utf-16-le", "surrogatepass")[:126]),
    st.binary(max_size=128),  # lone surrogates, NUL pairs at odd offsets, no NUL at all
    st.just(b"\xd8\x00" + b"a\x00"),  # a lone high surrogate
    st.just(b"a" * 128),  # no terminating NUL
).map(lambda raw: (raw + bytes(128))[:128])


@st.composite
def plaintexts(draw: st.DrawFn) -> bytes:
    """Request plaintexts near section 4.1: served products or not, skewed clocks, every
    license status and beyond, nil CMIDs, odd names, short or long."""
    product = draw(st.sampled_from(PRODUCTS))
    app = product.application_id.bytes_le if draw(st.booleans()) else draw(guid)
    count_id = product.kms_count_id.bytes_le if draw(st.integers(0, 4)) else draw(guid)
    cmid = draw(st.one_of(guid, st.integers(1, 40).map(lambda n: uuid.UUID(int=n).bytes_le)))
    skew = draw(st.sampled_from([0, 0, 1, -1, 144_000_000_000, 144_000_000_001, -(10**13)]))
    fields = struct.pack(
        "<III16s16s16s16sIQ16s",
        draw(st.sampled_from([0, 1, 2**32 - 1])),
        draw(st.integers(0, 8)),
        draw(st.integers(0, 2**32 - 1)),
        app,
        product.sku_id.bytes_le,
        count_id,
        cmid,
        draw(st.sampled_from([0, 1, 5, 25, 1000, 1001, 2**32 - 1])),
        max(0, NOW + skew) if draw(st.integers(0, 9)) else draw(st.integers(0, 2**64 - 1)),
        draw(st.one_of(st.just(bytes(16)), guid)),
    )
    text = fields + draw(name_field) + draw(st.binary(max_size=20))
    cut = draw(st.one_of(st.none(), st.integers(0, len(text))))
    return text if cut is None else text[:cut]


@st.composite
def stubs(draw: st.DrawFn) -> bytes:
    """REQUEST stubs: sealed plaintexts under either secret or none, any minor version,
    NDR trailing bytes, and now and then one byte flipped anywhere or the stub cut."""
    ring = Keyring(SECRETS)
    key: LabKey = draw(st.sampled_from(ring.keys))
    head = b"KLP1" + struct.pack("<HH", 1, draw(st.sampled_from([0, 0, 1, 7])))
    nonce = draw(st.binary(min_size=12, max_size=12))
    aad = head + key.key_id + nonce
    body = AESGCM(key.request_key).encrypt(nonce, draw(plaintexts()), aad)
    stub = encode_request_stub(aad + body) + draw(st.sampled_from([b"", b"\0", b"\0\0\0"]))
    how = draw(st.integers(0, 9))
    if how == 0:
        at = draw(st.integers(0, len(stub) - 1))
        stub = stub[:at] + bytes([stub[at] ^ draw(st.integers(1, 255))]) + stub[at + 1 :]
    elif how == 1:
        stub = stub[: draw(st.integers(0, len(stub)))]
    elif how == 2:
        stub += draw(st.binary(min_size=1, max_size=5))
    return stub


def outcomes(h: KmsHost, stubs_: list[bytes], pure: bool) -> list[Any]:
    out: list[Any] = []
    for stub in stubs_:
        try:
            out.append(h.handle_pure(stub) if pure else h.handle(stub))
        except NdrError as exc:
            out.append(("NdrError", str(exc)))
    return out


def cache_of(h: KmsHost) -> tuple[Any, ...]:
    cache = h.rules.cache
    return ({a: list(e.items()) for a, e in cache.entries.items()}, cache.capacity, cache.dirty)


@needs_core
@SETTINGS
@given(st.lists(stubs(), min_size=1, max_size=12), st.booleans(), st.sampled_from([0, 0, 30]))
def test_a_host_answers_alike_with_and_without_the_core(
    stubs_: list[bytes], shared_id: bool, min_count: int
) -> None:
    ring = keyring(shared_id)
    reference, fast = host(ring, None, min_count), host(ring, _core, min_count)
    assert fast.core is not None and reference.core is None
    assert outcomes(fast, stubs_, pure=False) == outcomes(reference, stubs_, pure=True)
    assert cache_of(fast) == cache_of(reference)


@needs_core
def test_the_common_request_takes_the_core() -> None:
    """A valid request is opened by the core (not handed to the pure path), and a
    response it seals opens with ``cryptography`` to the pure path's plaintext."""
    ring = Keyring(SECRETS)
    fast = host(ring, _core)
    key, product = ring.keys[1], PRODUCTS[0]
    plain = struct.pack("<III16s16s16s16sIQ16s", 0, 2, 100, product.application_id.bytes_le,
                        product.sku_id.bytes_le, product.kms_count_id.bytes_le,
                        uuid.UUID(int=7).bytes_le, 25, NOW, bytes(16)) + "pc".encode(
        "utf-16-le") + bytes(124)  # fmt: skip
    aad = b"KLP1\x01\x00\x00\x00" + key.key_id + bytes(12)
    stub = encode_request_stub(aad + AESGCM(key.request_key).encrypt(bytes(12), plain, aad))
    assert fast.core is not None
    opened = fast.core.open(stub)
    assert opened is not None and opened[2] == 1 and opened[1] == bytes(12)
    with mock.patch.object(KmsHost, "handle_pure", side_effect=AssertionError("pure path")):
        outcome = fast.handle(stub)
    envelope = outcome.stub[12:-4]
    answer = AESGCM(key.response_key).decrypt(envelope[12:24], envelope[24:], envelope[:24])
    assert answer == fast.rules._pack(outcome.log, bytes(12))
    assert outcome.log.current_count == 1 and outcome.reason == ""


# -- the host's protocol with and without the core ------------------------------------------


@needs_core
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_the_hosts_protocol_is_alike_with_and_without_the_core(data: st.DataObject) -> None:
    streams = data.draw(test_lean.host_streams)
    cuts = data.draw(st.lists(st.integers(0, 3000), max_size=6))
    whole = data.draw(st.booleans())
    chunked = [s if whole else test_lean.splits(b"".join(s), cuts) for s in streams]
    seen = {}
    for name, core in (("pure", None), ("core", _core)):
        made = lambda *a, core=core, **k: KmsHost(*a, core=core, **k)  # noqa: E731
        log = lambda *a, core=core, **k: EventLog(*a, core=core, **k)  # noqa: E731
        with (
            mock.patch.object(test_lean, "KmsHost", made),
            mock.patch.object(test_lean, "EventLog", log),
        ):
            seen[name] = test_lean.serve(test_lean.LeanConnection, chunked)
    assert seen["core"] == seen["pure"]


# -- the event log's activation line ---------------------------------------------------------

_U32 = st.integers(0, 2**32 - 1)
_NAMES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.text(max_size=8),  # anything: spaces, quotes, '=', accents, lone surrogates
    st.sampled_from(["PC-1", "", " ", 'a"b', "a=b", "naïve", "\x1f", "x" * 63]),
)


@needs_core
@settings(max_examples=1000, deadline=None, derandomize=True)
@given(
    st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([NOW, 1, 116_444_736_000_000_000,
              2_650_467_743_999_999_999, 2**60 - 1, 2**60, 2**60 - 10**7 + 1])),
    st.one_of(_U32, st.sampled_from([0, 0xC004F042, 0xC004F06C])),
    st.sampled_from([*(p.sku_id.bytes_le for p in PRODUCTS), bytes(16), b"\x01" * 16]),
    st.one_of(st.integers(0, 5000), st.integers(-(2**70), 2**70)),
    _NAMES, st.binary(min_size=16, max_size=16), _U32, _U32, _U32, _U32,
    st.sampled_from(["127.0.0.1:50000", "[::1]:1688", "?", "é:1"]),
    st.sampled_from(["", "", "product not in the catalog"]),
)  # fmt: skip
def test_the_activation_line_is_alike_with_and_without_the_core(
    when: int, status: int, sku: bytes, count: int, name: str, cmid: bytes, flags: int,
    licence: int, minutes: int, required: int, peer: str, reason: str,
) -> None:  # fmt: skip
    """The C line (``activation_line``) and the f-string give the same text for any
    record, or the C one declines (None) and the f-string writes it."""
    from kmsemu.host.server import product_names

    request = RequestFields(flags, licence, minutes, PRODUCTS[0].application_id.bytes_le, sku,
                            bytes(16), cmid, required, when, bytes(16), name)  # fmt: skip
    record = LogRecord(when, status, count, request, cmid, when)
    lines = {}
    for build, core in (("pure", None), ("core", _core)):
        out = io.StringIO()
        log = EventLog(out, "text", product_names(CATALOG), core=core)
        log.activation(record, peer, reason)
        log.flush()
        lines[build] = out.getvalue()
    assert lines["core"] == lines["pure"]


@needs_core
def test_the_plain_activation_line_is_the_cores() -> None:
    """What the C line is for: a catalog product, a plain name, no reason. The text is
    written out here, not read back from the code."""
    product = PRODUCTS[0]
    cmid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    request = RequestFields(1, 2, 43200, product.application_id.bytes_le, product.sku_id.bytes_le,
                            product.kms_count_id.bytes_le, cmid.bytes_le, 5, NOW, bytes(16),
                            "PC-1")  # fmt: skip
    line = _core.activation_line(NOW, 0, product.name, str(product.sku_id), 7, "PC-1",
                                 cmid.bytes_le, 1, 2, 43200, 5, "127.0.0.1:50000")  # fmt: skip
    assert line == (
        f"2022-06-18T04:26:40.000Z activation status=0x00000000 product={product.name} "
        f"activation_id={product.sku_id} count=7 client=PC-1 "
        "cmid=12345678-9abc-def0-1234-56789abcdef0 vm=1 license_status=2 minutes=43200 "
        "required=5 peer=127.0.0.1:50000\n"
    )
    assert request.workstation_name == "PC-1"


# -- the journal's record -------------------------------------------------------------------

_FIELD = st.one_of(  # what a row holds, and what the core leaves to marshal (big, bool, é)
    st.none(), st.integers(-(2**70), 2**70), st.binary(max_size=20), st.text(max_size=12),
    st.binary(max_size=20).map(bytearray),  # a row's GUIDs (LoggedRequest.row)
    st.sampled_from([0, NOW, 0xC004F06C, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**45,
                     -(2**15), 2**63 - 1, -(2**63), 2**64, True, 1.5, "PC-1", "é"]),
)  # fmt: skip


@needs_core
@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.integers(1, 2**63), st.lists(_FIELD, min_size=14, max_size=14), _U32,
       st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
       st.integers(0, 300), st.integers(0, 40))  # fmt: skip
def test_the_journal_record_is_alike_with_and_without_the_core(
    seq: int, fields: list[Any], status: int, previous: bytes | None, at: int, slack: int
) -> None:
    """``journal_add`` writes ``journal.record``'s bytes at the offset it is given and
    nothing else, when the buffer has room for them and the 8 zero bytes that end them;
    with less it answers 0 and leaves the zeros past the last record zeros. (A row's
    status is a plain int by then.)"""
    from kmsemu.host import journal

    row = (fields[0], status, *fields[1:])
    expected = journal.record(seq, row, previous)
    room = bytearray(b"\xa5" * (at + len(expected) + 8 + slack))
    assert _core.journal_add(room, at, seq, row, previous) == at + len(expected)
    assert room == b"\xa5" * at + expected + b"\xa5" * (8 + slack)
    short = bytearray(b"\xa5" * at + bytes(len(expected) + 7))
    assert _core.journal_add(short, at, seq, row, previous) == 0
    assert short == b"\xa5" * at + bytes(len(expected) + 7)


@needs_core
def test_the_journal_file_is_alike_with_and_without_the_core(tmp_path: Path) -> None:
    """The host's ``Journal.add`` with the core gives the file the pure path gives, the map
    grown (the core declines: the pure path grows it) and emptied along the way."""
    from kmsemu.host import journal

    def fill(path: Path) -> bytes:
        j = journal.Journal(path)
        for seq in range(1, 700):  # past the first 64 KiB
            if seq == 400:
                j.empty()
            j.add(seq, (NOW + seq, 0, 5, f"PC-{seq}", bytes(16), NOW, 0, 2, 43200,
                        bytes(16), bytes(16), bytes(16), seq, "127.0.0.1:1", ""), None)  # fmt: skip
        j.close(remove=False)
        return path.read_bytes()

    with_core = fill(tmp_path / "core")
    with mock.patch.object(journal, "_core_add", None):
        pure = fill(tmp_path / "pure")
    assert with_core == pure
    assert [seq for seq, _, _ in journal.read(tmp_path / "core")] == list(range(400, 700))


# -- choosing the core, and what it is for ----------------------------------------------------


def test_the_choice_is_checked() -> None:
    assert _fastcore.load("off") is None
    with pytest.raises(ConfigError, match="KMSEMU_CORE"):
        _fastcore.load("fast")
    if _core is None:
        with pytest.raises(ConfigError, match="build-core"):
            _fastcore.load("on")
    else:
        assert _fastcore.load("on") is _core and _fastcore.load("auto") is _core


def test_the_default_install_builds_nothing() -> None:
    """pip's build of kmsemu is pure Python: no setup.py, no extension modules declared."""
    assert not (ROOT / "setup.py").exists()
    assert "ext-modules" not in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


PROBE = """
import sys
from kmsemu.host.server import build_host, KmsServer
from kmsemu.klp._fastcore import CORE
print(CORE is not None, "cryptography" in sys.modules)
"""


def probe(choice: str) -> str:
    env = {**os.environ, "KMSEMU_CORE": choice}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.strip()


@needs_core
def test_a_host_with_the_core_never_imports_cryptography() -> None:
    assert probe("on") == "True False"
    assert probe("auto") == "True False"


def test_a_host_without_the_core_uses_cryptography() -> None:
    assert probe("off") == "False True"


SERVED = """
import sys, uuid
from kmsemu.catalog import default_catalog
from kmsemu.errors import ConfigError
from kmsemu.client.exchange import request_activation
from kmsemu.clock import SystemClock
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import ActivationRequest
from kmsemu.testing.host import BackgroundHost
from kmsemu.wire import filetime_from_unix

p = default_catalog().find("windows-server-2022-standard")
with BackgroundHost(sys.argv[1]) as kms:
    request = ActivationRequest(p.application_id, p.sku_id, p.kms_count_id, uuid.uuid4(),
                                filetime_from_unix(SystemClock().now()), p.threshold)
    answer = request_activation(kms.address, request, LabKey.derive(kms.secret)).response
print(answer.status, answer.current_count, "cryptography" in sys.modules)
"""


@needs_core
@pytest.mark.parametrize("choice", ["on", "off"])
def test_a_served_host_activates_either_way(choice: str, tmp_path: Path) -> None:
    """A real host on loopback, with and without the core, answers a client; with the core,
    host and client in one process never load ``cryptography``."""
    env = {**os.environ, "KMSEMU_CORE": choice}
    done = subprocess.run([sys.executable, "-c", SERVED, str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", str(choice == "off")]


def test_a_core_choice_that_is_not_one_is_a_clear_error() -> None:
    """``KMSEMU_CORE=fast kmsemu host serve``: one ``Error:`` line, exit 1, no traceback."""
    env = {**os.environ, "KMSEMU_CORE": "fast"}
    done = subprocess.run(
        [sys.executable, "-m", "kmsemu", "host", "serve", "--listen", "127.0.0.1:0"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "KMSEMU_CORE='fast': use one of auto, on, off" in done.stderr
