"""Golden vectors from shared/spec/vectors/klp-v1.json, byte for byte."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from kmsemu.catalog import Catalog, Product
from kmsemu.host.rules import HostIdentity, HostRules, HostSettings
from kmsemu.host.service import KmsHost
from kmsemu.klp.envelope import Keyring, LabKey, key_id_for, open_response, seal_request
from kmsemu.klp.messages import ActivationRequest, ActivationResponse
from kmsemu.rpc.ndr import decode_request_stub, decode_response_stub, encode_request_stub
from kmsemu.rpc.pdu import Request, Response, encode_request, encode_response

SHARED = Path(__file__).resolve().parents[2] / "shared" / "spec" / "vectors" / "klp-v1.json"


def test_copy_matches_shared_spec(klp_vectors: dict[str, Any]) -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not beside the repository")
    import json

    assert json.loads(SHARED.read_text()) == klp_vectors


def _request(fields: dict[str, Any]) -> ActivationRequest:
    return ActivationRequest(
        flags=fields["flags"],
        license_status=fields["license_status"],
        grace_minutes_remaining=fields["grace_minutes_remaining"],
        required_client_count=fields["required_client_count"],
        application_id=uuid.UUID(fields["application_id"]),
        sku_id=uuid.UUID(fields["sku_id"]),
        kms_count_id=uuid.UUID(fields["kms_count_id"]),
        client_machine_id=uuid.UUID(fields["client_machine_id"]),
        request_time=fields["request_time"],
        workstation_name=fields["workstation_name"],
        previous_client_machine_id=uuid.UUID(fields["previous_client_machine_id"]),
    )


def exchanges(vectors: dict[str, Any]) -> list[dict[str, Any]]:
    return list(vectors["exchanges"])


@pytest.fixture(params=[0, 1], ids=["default-secret", "second-secret"])
def exchange(request: pytest.FixtureRequest, klp_vectors: dict[str, Any]) -> dict[str, Any]:
    return dict(klp_vectors["exchanges"][request.param])


def test_keys(exchange: dict[str, Any]) -> None:
    key = LabKey.derive(exchange["secret"])
    assert exchange["secret"].encode() == bytes.fromhex(exchange["secret_utf8"])
    assert key.key_id.hex() == exchange["key_id"] == key_id_for(exchange["secret"]).hex()
    assert key.request_key.hex() == exchange["request_key"]
    assert key.response_key.hex() == exchange["response_key"]


def test_request_bytes(exchange: dict[str, Any]) -> None:
    req = exchange["request"]
    plaintext = _request(req["fields"]).to_bytes()
    assert plaintext.hex() == req["plaintext"]
    assert ActivationRequest.from_bytes(plaintext) == _request(req["fields"])
    envelope = seal_request(
        LabKey.derive(exchange["secret"]), plaintext, bytes.fromhex(req["nonce"])
    )
    assert envelope.hex() == req["envelope"]
    parts = req["envelope_parts"]
    assert envelope.hex() == "".join(
        parts[k]
        for k in ("magic", "version_major", "version_minor", "key_id", "nonce", "ciphertext", "tag")
    )
    stub = encode_request_stub(envelope)
    assert stub.hex() == req["stub"]
    assert decode_request_stub(stub) == envelope
    pdu = encode_request(2, 0, 0, stub, 5840)
    assert pdu.hex() == req["pdu_call_id_2_ctx_0"]
    parsed = Request.from_bytes(pdu)
    assert (parsed.call_id, parsed.context_id, parsed.opnum, parsed.stub) == (2, 0, 0, stub)


def test_response_bytes(exchange: dict[str, Any]) -> None:
    resp = exchange["response"]
    fields = resp["fields"]
    response = ActivationResponse(
        status=fields["status"],
        request_nonce=bytes.fromhex(fields["request_nonce"]),
        client_machine_id=uuid.UUID(fields["client_machine_id"]),
        request_time=fields["request_time"],
        response_time=fields["response_time"],
        current_count=fields["current_count"],
        activation_interval=fields["activation_interval"],
        renewal_interval=fields["renewal_interval"],
        host_id=bytes.fromhex(fields["host_id"]),
        host_epid=fields["host_epid"],
    )
    assert response.to_bytes().hex() == resp["plaintext"]
    assert ActivationResponse.from_bytes(response.to_bytes()) == response
    key = LabKey.derive(exchange["secret"])
    opened = open_response(key, bytes.fromhex(resp["envelope"]))
    assert opened.plaintext.hex() == resp["plaintext"]
    assert decode_response_stub(bytes.fromhex(resp["stub"])) == (bytes.fromhex(resp["envelope"]), 0)
    pdu = bytes.fromhex(resp["pdu_call_id_2_ctx_0"])
    assert Response.from_bytes(pdu).stub.hex() == resp["stub"]
    assert encode_response(2, 0, bytes.fromhex(resp["stub"]), 5840) == pdu


def _vector_catalog(fields: dict[str, Any]) -> Catalog:
    app = uuid.UUID(fields["application_id"])
    product = Product(
        0,
        "vector",
        "Vector product",
        "",
        "windows-client",
        "volume",
        25,
        app,
        uuid.UUID(fields["sku_id"]),
        uuid.UUID(fields["kms_count_id"]),
        "vector",
        "Windows",
    )
    return Catalog((product,), {app: "Windows"})


def test_reference_host_exchange(exchange: dict[str, Any]) -> None:
    """Our host, given the vector's fixed state, clock and nonce, answers the vector's bytes."""
    req, resp = exchange["request"], exchange["response"]
    fields = resp["fields"]
    identity = HostIdentity(bytes.fromhex(fields["host_id"]), fields["host_epid"])
    rules = HostRules(_vector_catalog(req["fields"]), HostSettings(), identity)
    host = KmsHost(
        rules,
        Keyring([exchange["secret"]]),
        lambda: fields["response_time"],
        nonce=lambda n: bytes.fromhex(resp["nonce"]),
    )
    outcome = host.handle(bytes.fromhex(req["stub"]))
    assert outcome.stub.hex() == resp["stub"]
    assert encode_response(2, 0, outcome.stub, 5840).hex() == resp["pdu_call_id_2_ctx_0"]


def test_stub_status_only(klp_vectors: dict[str, Any]) -> None:
    vector = klp_vectors["stub_status_only"]
    from kmsemu.rpc.ndr import encode_response_stub

    assert encode_response_stub(None, vector["status"]).hex() == vector["stub"]
    assert decode_response_stub(bytes.fromhex(vector["stub"])) == (b"", vector["status"])


def test_wrong_secret_gives_access_denied_stub(klp_vectors: dict[str, Any]) -> None:
    exchange = klp_vectors["exchanges"][0]
    host = KmsHost(
        HostRules(
            _vector_catalog(exchange["request"]["fields"]),
            HostSettings(),
            HostIdentity(b"\1" * 8, exchange["response"]["fields"]["host_epid"]),
        ),
        Keyring(["another secret"]),
        lambda: 0,
    )
    outcome = host.handle(bytes.fromhex(exchange["request"]["stub"]))
    assert outcome.stub.hex() == klp_vectors["stub_status_only"]["stub"]


def test_epid_example_matches_both_patterns(klp_vectors: dict[str, Any]) -> None:
    from kmsemu.host.rules import EPID_PATTERN

    example = klp_vectors["epid_example"]
    assert re.match(example["regex"], example["epid"])
    assert EPID_PATTERN.match(example["epid"])


def test_guid_layout(klp_vectors: dict[str, Any]) -> None:
    layout = klp_vectors["guid_layout"]
    assert uuid.UUID(layout["text"]).bytes_le.hex() == layout["bytes_le"]


def test_generated_epids_match_the_vector_pattern_too(klp_vectors: dict[str, Any]) -> None:
    import random
    from datetime import UTC, datetime

    from kmsemu.host.rules import new_identity

    pattern = re.compile(klp_vectors["epid_example"]["regex"])
    for seed in range(50):
        when = datetime(2020 + seed % 10, 1 + seed % 12, 1 + seed % 28, tzinfo=UTC)
        assert pattern.match(new_identity(random.Random(seed), when).epid)
