"""The whole path through real sockets: the client library against in-process and real hosts."""

from __future__ import annotations

import uuid

import pytest

from kmsemu.catalog import default_catalog
from kmsemu.client.exchange import request_activation
from kmsemu.errors import ActivationError, HResult
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import ActivationRequest
from kmsemu.wire import filetime_from_unix
from tests.conftest import RunningHost, stop_host_process

KEY = LabKey.derive("kmsemu-lab")


def make_request(
    product: str = "windows-server-2022-standard",
    *,
    cmid: uuid.UUID | None = None,
    offset: float = 0.0,
) -> ActivationRequest:
    import time

    p = default_catalog().find(product)
    return ActivationRequest(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=p.kms_count_id,
        client_machine_id=cmid or uuid.uuid4(),
        request_time=filetime_from_unix(time.time() + offset),
        required_client_count=p.threshold,
        workstation_name="lab-pc",
    )


def test_counts_climb_and_renewal_does_not_add(inprocess_host: RunningHost) -> None:
    cmids = [uuid.uuid4() for _ in range(5)]
    counts = [
        request_activation(inprocess_host.address, make_request(cmid=c), KEY).response.current_count
        for c in cmids
    ]
    assert counts == [1, 2, 3, 4, 5]
    again = request_activation(inprocess_host.address, make_request(cmid=cmids[0]), KEY)
    assert again.response.current_count == 5


def test_wrong_secret_is_no_kms_host_with_access_denied(inprocess_host: RunningHost) -> None:
    with pytest.raises(ActivationError) as info:
        request_activation(inprocess_host.address, make_request(), LabKey.derive("other"))
    assert info.value.hresult == HResult.NO_KMS_HOST
    assert info.value.cause == HResult.ACCESS_DENIED


def test_nothing_listening_is_rpc_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ActivationError) as info:
        request_activation(("127.0.0.1", port), make_request(), KEY, timeout=2)
    assert info.value.cause == HResult.RPC_SERVER_UNAVAILABLE


def test_clock_skew_answered_with_c004f06c(inprocess_host: RunningHost) -> None:
    response = request_activation(inprocess_host.address, make_request(offset=5 * 3600), KEY)
    assert response.response.status == HResult.TIMESTAMP_INVALID
    assert response.response.current_count == 0


def test_real_process_keeps_counts_across_restart(host_process: RunningHost) -> None:
    from tests.conftest import start_host_process

    cmid = uuid.uuid4()
    first = request_activation(host_process.address, make_request(cmid=cmid), KEY).response
    assert first.current_count == 1
    assert stop_host_process(host_process) == 0
    again = start_host_process(host_process.state_dir)
    try:
        second = request_activation(again.address, make_request(), KEY).response
        assert second.current_count == 2
        assert second.host_id == first.host_id and second.host_epid == first.host_epid
    finally:
        assert stop_host_process(again) == 0


def test_each_refusal_is_logged_once(inprocess_host: RunningHost) -> None:
    """Bad input that keeps the connection open still leaves one log line each."""
    import socket

    from kmsemu.rpc.pdu import KLP_INTERFACE, NDR20, Bind, ContextElement, Request

    bind = Bind(1, (ContextElement(0, KLP_INTERFACE, (NDR20,)),)).to_bytes()
    with socket.create_connection(inprocess_host.address, timeout=5) as sock:
        sock.sendall(bind)
        sock.recv(4096)
        for pdu in (
            Request(2, 7, 0, b"").to_bytes(),  # context not accepted
            Request(3, 0, 5, b"").to_bytes(),  # opnum out of range
            Request(4, 0, 0, b"\x01\x00").to_bytes(),  # stub that does not parse
            bind,  # a second BIND
        ):
            sock.sendall(pdu)
            assert sock.recv(4096)  # answered, connection still open
    inprocess_host.flush()
    refused = [x for x in inprocess_host.stderr_lines if " refused " in x]
    assert [x.split("reason=", 1)[1].split(":")[0].strip('"') for x in refused] == [
        "nca_s_unk_if",
        "nca_s_op_rng_error",
        "nca_s_fault_ndr",
        "BIND_NAK",
    ]
