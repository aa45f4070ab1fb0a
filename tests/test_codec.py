"""KLP/1 plaintexts, envelope and NDR stubs: round trips (Hypothesis) and the rejection rules."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.errors import HResult
from kmsemu.klp.envelope import (
    EnvelopeError,
    Keyring,
    LabKey,
    open_response,
    seal_request,
    seal_response,
)
from kmsemu.klp.messages import (
    REQUEST_SIZE,
    ActivationRequest,
    ActivationResponse,
    MessageError,
)
from kmsemu.rpc.ndr import (
    NdrError,
    decode_request_stub,
    decode_response_stub,
    encode_request_stub,
    encode_response_stub,
)
from kmsemu.wire import (
    datetime_from_filetime,
    decode_utf16_field,
    filetime_from_datetime,
    filetime_from_unix,
    unix_from_filetime,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
guids = st.builds(uuid.UUID, int=st.integers(0, 2**128 - 1))
names = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
).filter(lambda s: len(s.encode("utf-16-le")) <= 126)

requests = st.builds(
    ActivationRequest,
    application_id=guids,
    sku_id=guids,
    kms_count_id=guids,
    client_machine_id=guids.filter(lambda g: g.int != 0),
    request_time=u64,
    required_client_count=u32,
    license_status=st.integers(0, 6),
    grace_minutes_remaining=u32,
    workstation_name=names,
    previous_client_machine_id=guids,
    flags=u32,
)
responses = st.builds(
    ActivationResponse,
    status=u32,
    request_nonce=st.binary(min_size=12, max_size=12),
    client_machine_id=guids,
    request_time=u64,
    response_time=u64,
    current_count=u32,
    activation_interval=u32,
    renewal_interval=u32,
    host_id=st.binary(min_size=8, max_size=8),
    host_epid=names,
)


@settings(max_examples=200, deadline=None)
@given(requests, st.binary(max_size=40))
def test_request_round_trip_ignores_trailing_bytes(req: ActivationRequest, extra: bytes) -> None:
    data = req.to_bytes()
    assert len(data) == REQUEST_SIZE
    assert ActivationRequest.from_bytes(data + extra) == req


@settings(max_examples=200, deadline=None)
@given(responses)
def test_response_round_trip(resp: ActivationResponse) -> None:
    assert ActivationResponse.from_bytes(resp.to_bytes()) == resp


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_request_parser_raises_only_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        ActivationRequest.from_bytes(data)


def _valid_request() -> ActivationRequest:
    return ActivationRequest(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1, 25, workstation_name="pc"
    )


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda b: b[:231], "short"),
        (lambda b: struct.pack("<I", 7).join([b[:4], b[8:]]), "status 7"),
        (lambda b: b[:60] + bytes(16) + b[76:], "nil cmid"),
        (lambda b: b[:104] + b"a\x00" * 64, "no NUL"),
        (lambda b: b[:104] + b"\x00\xd8\x00\x00" + b[108:], "lone surrogate"),
    ],
)
def test_invalid_plaintexts(mutate, why: str) -> None:
    with pytest.raises(MessageError):
        ActivationRequest.from_bytes(mutate(_valid_request().to_bytes()))


def test_name_of_63_code_units_fits_and_64_does_not() -> None:
    ActivationRequest(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1, 1, workstation_name="x" * 63
    )
    with pytest.raises(MessageError):
        ActivationRequest(
            uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1, 1, workstation_name="x" * 64
        )


def test_bytes_after_the_name_nul_are_ignored() -> None:
    assert decode_utf16_field(b"a\x00\x00\x00junk") == "a"


# -- envelope ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.binary(max_size=300), st.binary(min_size=12, max_size=12))
def test_envelope_round_trip(secret: str, plaintext: bytes, nonce: bytes) -> None:
    key = LabKey.derive(secret)
    opened = Keyring([secret]).open_request(seal_request(key, plaintext, nonce))
    assert (opened.plaintext, opened.nonce, opened.key.key_id) == (plaintext, nonce, key.key_id)
    assert open_response(key, seal_response(key, plaintext, nonce)).plaintext == plaintext


def test_request_cannot_be_opened_as_response_and_vice_versa() -> None:
    key = LabKey.derive("s")
    with pytest.raises(EnvelopeError):
        open_response(key, seal_request(key, b"x", bytes(12)))
    with pytest.raises(EnvelopeError):
        Keyring(["s"]).open_request(seal_response(key, b"x", bytes(12)))


def _envelope() -> bytes:
    return seal_request(LabKey.derive("kmsemu-lab"), b"p" * 232, bytes(12))


@pytest.mark.parametrize(
    "mutate, status",
    [
        (lambda e: e[:39], HResult.INVALID_DATA),
        (lambda e: b"KLP2" + e[4:], HResult.INVALID_DATA),
        (lambda e: e[:4] + b"\x02\x00" + e[6:], HResult.INVALID_DATA),
        (lambda e: e[:8] + b"\0\0\0\0" + e[12:], HResult.ACCESS_DENIED),
        (lambda e: e[:-1] + bytes([e[-1] ^ 1]), HResult.ACCESS_DENIED),
        (lambda e: e[:30] + bytes([e[30] ^ 1]) + e[31:], HResult.ACCESS_DENIED),
        (lambda e: e[:6] + b"\x01\x00" + e[8:], HResult.ACCESS_DENIED),  # minor is authenticated
    ],
)
def test_envelope_checks(mutate, status: HResult) -> None:
    with pytest.raises(EnvelopeError) as info:
        Keyring(["kmsemu-lab"]).open_request(mutate(_envelope()))
    assert info.value.status == status


def test_newer_minor_version_is_accepted() -> None:
    key = LabKey.derive("kmsemu-lab")
    opened = Keyring(["kmsemu-lab"]).open_request(seal_request(key, b"x", bytes(12), minor=3))
    assert opened.version_minor == 3


def test_keyring_with_several_secrets_picks_by_key_id() -> None:
    ring = Keyring(["one", "two"])
    env = seal_request(LabKey.derive("two"), b"hello", bytes(12))
    assert ring.open_request(env).key.secret == "two"


def test_keyring_tries_every_secret_sharing_a_key_id() -> None:
    first, second = "collide-49555", "collide-62680"  # found by search: same 4-byte key id
    assert LabKey.derive(first).key_id == LabKey.derive(second).key_id
    ring = Keyring([first, second])
    assert (
        ring.open_request(seal_request(LabKey.derive(second), b"x", bytes(12))).key.secret == second
    )
    with pytest.raises(EnvelopeError) as info:
        ring.open_request(
            seal_request(LabKey.derive("third"), b"x", bytes(12))[:8]
            + LabKey.derive(first).key_id
            + bytes(12)
            + bytes(17)
        )
    assert info.value.status == HResult.ACCESS_DENIED


# -- NDR --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 3))
def test_request_stub_round_trip_with_trailing_zeros(envelope: bytes, pad: int) -> None:
    assert decode_request_stub(encode_request_stub(envelope) + bytes(pad)) == envelope


@pytest.mark.parametrize(
    "stub",
    [
        b"\x01\x00\x00\x00",
        struct.pack("<II", 4, 5) + b"abcd",
        struct.pack("<II", 4, 4) + b"abc",
        struct.pack("<II", 4, 4) + b"abcd" + bytes(4),
        struct.pack("<II", 4, 4) + b"abcd\x00\x01",
    ],
)
def test_request_stub_errors(stub: bytes) -> None:
    with pytest.raises(NdrError):
        decode_request_stub(stub)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_response_stub_round_trip(envelope: bytes) -> None:
    stub = encode_response_stub(envelope, 0)
    assert len(stub) % 4 == 0
    assert decode_response_stub(stub) == (envelope, 0)


def test_response_stub_null_pointer_variants() -> None:
    assert decode_response_stub(struct.pack("<III", 0, 0, 5)) == (b"", 5)
    # M = 0 with a non-null pointer and max_count 0 is accepted
    assert decode_response_stub(struct.pack("<IIII", 0, 0x1234, 0, 5)) == (b"", 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_stub_decoders_raise_only_ndr_error(data: bytes) -> None:
    for decode in (decode_request_stub, decode_response_stub):
        with contextlib.suppress(NdrError):
            decode(data)


# -- time -------------------------------------------------------------------------------


def test_filetime_conversions() -> None:
    assert filetime_from_unix(0) == 116_444_736_000_000_000
    assert unix_from_filetime(filetime_from_unix(1_790_000_000.5)) == 1_790_000_000.5
    when = datetime_from_filetime(134129520000000000)
    assert filetime_from_datetime(when) == 134129520000000000
    assert filetime_from_unix(-1e12) == 0


def test_nonce_pool_gives_distinct_nonces_across_refills_and_forks() -> None:
    import os

    from kmsemu.klp.envelope import NoncePool

    pool = NoncePool(batch=40)
    nonces = [pool(12) for _ in range(100)]
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == 100
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not reuse the parent's pooled bytes
        os.write(write, pool(12))
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 12) != pool(12)
