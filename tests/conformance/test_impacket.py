"""impacket's DCE/RPC client against a real host process (klp-v1.md section 8).

impacket binds, calls opnum 0 with the NDR classes of implementation-notes.md and
reports FAULTs as ``DCERPCException`` carrying the nca name. The envelope inside the
stub is kmsemu's own (sealed and opened with ``kmsemu.klp``): what is under test here
is the DCE/RPC and NDR layer as a third-party client sees it.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("impacket", reason="impacket is a test dependency (pip install .[test])")

from impacket.dcerpc.v5.dtypes import DWORD, ULONG
from impacket.dcerpc.v5.ndr import NDRCALL, NDRPOINTER, NDRUniConformantArray
from impacket.dcerpc.v5.rpcrt import DCERPC_v5, DCERPCException
from impacket.dcerpc.v5.transport import DCERPCTransportFactory
from impacket.uuid import uuidtup_to_bin

from kmsemu.catalog import default_catalog
from kmsemu.klp.envelope import LabKey, open_response, seal_request
from kmsemu.klp.messages import ActivationRequest, ActivationResponse
from kmsemu.wire import filetime_from_unix
from tests.conformance.raw import read_pdu
from tests.conftest import RunningHost, start_host_process, stop_host_process

KLP_INTERFACE = ("6e8f4bef-ca86-4ca5-981e-95096d715f4b", "1.0")
KEY = LabKey.derive("kmsemu-lab")
ACCESS_DENIED = 0x80070005


class BYTES(NDRUniConformantArray):
    item = "c"


class PBYTES(NDRPOINTER):
    referent = (("Data", BYTES),)


class RequestActivation(NDRCALL):
    opnum = 0
    structure = (("RequestSize", DWORD), ("Request", BYTES))


class RequestActivationResponse(NDRCALL):
    structure = (("ResponseSize", DWORD), ("Response", PBYTES), ("ErrorCode", ULONG))


class OpnumOne(NDRCALL):
    """Opnum 1 with the opnum-0 layout: the host does not serve it."""

    opnum = 1
    structure = RequestActivation.structure


class OpnumOneResponse(NDRCALL):
    structure = RequestActivationResponse.structure


class DCERPCSessionError(DCERPCException):
    """What impacket raises for a stub status it does not know (the KLP/1 HRESULTs)."""

    def __str__(self) -> str:
        return f"KLP/1 stub status 0x{self.error_code or 0:08X}"


# -- helpers --------------------------------------------------------------------------------


def activation_request(cmid: uuid.UUID | None = None) -> ActivationRequest:
    p = default_catalog().find("windows-server-2022-standard")
    return ActivationRequest(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=p.kms_count_id,
        client_machine_id=cmid or uuid.uuid4(),
        request_time=filetime_from_unix(time.time()),
        required_client_count=p.threshold,
        workstation_name="impacket",
    )


def sealed(plaintext: bytes, key: LabKey = KEY) -> tuple[bytes, bytes]:
    nonce = os.urandom(12)
    return nonce, seal_request(key, plaintext, nonce)


def call(envelope: bytes, *, opnum_one: bool = False) -> NDRCALL:
    request = OpnumOne() if opnum_one else RequestActivation()
    request["RequestSize"] = len(envelope)
    request["Request"] = list(envelope)
    return request


def connect(address: tuple[str, int], *, bind: bool = True) -> DCERPC_v5:
    host, port = address
    transport = DCERPCTransportFactory(f"ncacn_ip_tcp:{host}[{port}]")
    transport.set_connect_timeout(5)
    dce = transport.get_dce_rpc()
    dce.connect()
    transport.get_socket().settimeout(5)
    if bind:
        dce.bind(uuidtup_to_bin(KLP_INTERFACE))
    return dce


def response_envelope(response: NDRCALL) -> bytes:
    assert response["ErrorCode"] == 0
    assert response.fields["Response"]["ReferentID"] == 0x00020000
    data = b"".join(response["Response"])  # impacket hands the array out as 1-byte items
    assert len(data) == response["ResponseSize"]
    return data


def opened(response: NDRCALL, nonce: bytes) -> ActivationResponse:
    result = open_response(KEY, response_envelope(response))
    answer = ActivationResponse.from_bytes(result.plaintext)
    assert answer.request_nonce == nonce
    return answer


@pytest.fixture(scope="module")
def shared_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    host = start_host_process(Path(tmp_path_factory.mktemp("impacket")), "--idle-timeout", "10")
    try:
        yield host
    finally:
        stop_host_process(host)


# -- tests ----------------------------------------------------------------------------------


def test_impacket_binds_and_activates(host_process: RunningHost) -> None:
    request = activation_request()
    nonce, envelope = sealed(request.to_bytes())
    dce = connect(host_process.address)
    try:
        answer = opened(dce.request(call(envelope)), nonce)
        assert answer.status == 0
        assert answer.current_count == 1
        assert answer.client_machine_id == request.client_machine_id
        assert answer.request_time == request.request_time
        # a second call on the same association (impacket's call ids go on from 1)
        nonce2, envelope2 = sealed(activation_request().to_bytes())
        assert opened(dce.request(call(envelope2)), nonce2).current_count == 2
    finally:
        dce.disconnect()


def test_impacket_opnum_1_is_op_rng_error(shared_host: RunningHost) -> None:
    _, envelope = sealed(activation_request().to_bytes())
    dce = connect(shared_host.address)
    try:
        with pytest.raises(DCERPCException, match="nca_s_op_rng_error"):
            dce.request(call(envelope, opnum_one=True))
        # the FAULT did not end the association
        nonce, envelope = sealed(activation_request().to_bytes())
        assert opened(dce.request(call(envelope)), nonce).status == 0
    finally:
        dce.disconnect()


def test_impacket_unknown_context_is_unk_if(shared_host: RunningHost) -> None:
    """impacket sends its REQUEST on context ``_ctx``: point it at a context never bound."""
    _, envelope = sealed(activation_request().to_bytes())
    dce = connect(shared_host.address)
    try:
        dce._ctx = 5
        with pytest.raises(DCERPCException, match="nca_s_unk_if"):
            dce.request(call(envelope))
    finally:
        dce.disconnect()


def test_impacket_bind_to_another_interface_is_rejected(shared_host: RunningHost) -> None:
    dce = connect(shared_host.address, bind=False)
    try:
        with pytest.raises(DCERPCException, match="abstract_syntax_not_supported"):
            dce.bind(uuidtup_to_bin(("12345678-1234-abcd-ef00-0123456789ab", "1.0")))
    finally:
        dce.disconnect()


def test_impacket_ndr64_only_is_rejected(shared_host: RunningHost) -> None:
    dce = connect(shared_host.address, bind=False)
    try:
        with pytest.raises(DCERPCException, match="proposed_transfer_syntaxes_not_supported"):
            dce.bind(
                uuidtup_to_bin(KLP_INTERFACE),
                transfer_syntax=("71710533-beba-4937-8319-b5dbef9ccc36", "1.0"),
            )
    finally:
        dce.disconnect()


def test_impacket_wrong_secret_is_access_denied(shared_host: RunningHost) -> None:
    _, envelope = sealed(activation_request().to_bytes(), LabKey.derive("another secret"))
    dce = connect(shared_host.address)
    try:
        response = dce.request(call(envelope), checkError=False)
        assert response["ResponseSize"] == 0
        assert response.fields["Response"]["ReferentID"] == 0  # a null pointer, no array
        assert response["ErrorCode"] == ACCESS_DENIED
        with pytest.raises(DCERPCSessionError) as info:
            dce.request(call(envelope))
        assert info.value.error_code == ACCESS_DENIED
    finally:
        dce.disconnect()


@pytest.mark.parametrize("max_frag", [0, 1000])
def test_impacket_fragments_a_large_request(shared_host: RunningHost, max_frag: int) -> None:
    """A ~5,000-byte envelope (extra plaintext bytes, ignored by KLP/1) in several fragments.

    With ``max_frag`` 0 impacket fragments to the host's ``max_recv_frag`` less 128
    (4,280 from its BIND, so 4,152 stub bytes a fragment); with 1000 it cuts 1,000.
    """
    request = activation_request()
    nonce, envelope = sealed(request.to_bytes() + os.urandom(5000 - 40 - 232))
    assert len(envelope) == 5000
    dce = connect(shared_host.address)
    sent: list[bytes] = []
    transport = dce.get_rpc_transport()
    original_send = transport.send

    def spy(data: bytes, *args: object, **kwargs: object) -> None:
        sent.append(bytes(data))
        original_send(data, *args, **kwargs)

    transport.send = spy
    try:
        if max_frag:
            dce.set_max_fragment_size(max_frag)
        answer = opened(dce.request(call(envelope)), nonce)
    finally:
        dce.disconnect()
    assert answer.status == 0
    assert answer.client_machine_id == request.client_machine_id
    requests = [pdu for pdu in sent if pdu[2] == 0]
    chunk = max_frag or 4280 - 128
    stub_size = 8 + len(envelope)
    assert len(requests) == -(-stub_size // chunk) > 1
    flags = [pdu[3] & 0x03 for pdu in requests]
    assert flags == [0x01] + [0x00] * (len(requests) - 2) + [0x02]
    assert sum(struct.unpack_from("<H", pdu, 8)[0] - 24 for pdu in requests) == stub_size


def test_hand_built_fragments_of_an_impacket_stub(shared_host: RunningHost) -> None:
    """The same large call, fragmented by hand over a raw socket with impacket's stub bytes."""
    nonce, envelope = sealed(activation_request().to_bytes() + bytes(5000 - 40 - 232))
    stub = call(envelope).getData()
    assert stub[:8] == struct.pack("<II", len(envelope), len(envelope))
    context = (
        struct.pack("<HBx", 0, 1)
        + uuidtup_to_bin(KLP_INTERFACE)
        + uuidtup_to_bin(("8a885d04-1ceb-11c9-9fe8-08002b104860", "2.0"))
    )
    body = struct.pack("<HHIB3x", 1432, 1432, 0, 1) + context
    bind = struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + len(body), 0, 1) + body
    chunk = 1432 - 24
    with socket.create_connection(shared_host.address, timeout=5) as sock:
        sock.sendall(bind)
        ack = read_pdu(sock)
        assert ack[2] == 12
        for start in range(0, len(stub), chunk):
            flags = (1 if start == 0 else 0) | (2 if start + chunk >= len(stub) else 0)
            piece = stub[start : start + chunk]
            header = struct.pack("<BBBB4sHHI", 5, 0, 0, flags, b"\x10\0\0\0", 24 + len(piece), 0, 2)
            sock.sendall(header + struct.pack("<IHH", len(stub) - start, 0, 0) + piece)
        pdu = read_pdu(sock)
    assert pdu[2] == 2 and pdu[3] == 3
    response = RequestActivationResponse(pdu[24:])
    assert opened(response, nonce).status == 0
