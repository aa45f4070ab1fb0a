"""Lab keys, hardware ids, IIDs and CIDs against shared/spec/vectors/keys-v1.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.keys.activation_ids import (
    IdError,
    cid_key,
    confirmation_id,
    equal_bytes,
    hardware_id,
    installation_id,
    parse_installation_id,
    same_machine,
    verify_confirmation_id,
)
from kmsemu.keys.product_key import (
    ALPHABET,
    KeyType,
    check,
    fingerprint,
    mint,
    parse,
    setup_key,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "keys-v1.json").read_text())
SHARED = Path(__file__).resolve().parents[2] / "shared" / "spec" / "vectors" / "keys-v1.json"


def test_copy_matches_shared_spec() -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not beside the repository")
    assert json.loads(SHARED.read_text()) == VECTORS


@pytest.mark.parametrize("vector", VECTORS["keys"], ids=lambda v: v["key"])
def test_minted_keys(vector: dict[str, Any]) -> None:
    key = mint(KeyType(vector["type"]), vector["product"], vector["serial"], vector["quantity"])
    assert str(key) == vector["key"]
    assert f"{key.value:028x}" == vector["value_hex"]
    assert key.check == vector["check"]
    assert (key.fingerprint, key.last5) == (vector["fingerprint"], vector["last5"])
    assert parse(vector["key"].lower().replace("-", " ")) == key
    assert key.type.label == vector["type_name"]


def test_setup_keys() -> None:
    for vector in VECTORS["setup_keys"]:
        assert str(setup_key(vector["product"])) == vector["key"]


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=lambda v: v["note"][:40])
def test_malformed_keys_get_the_typo_help(vector: dict[str, Any]) -> None:
    diagnosis = check(vector["input"])
    assert not diagnosis.well_formed
    assert diagnosis.normalised == vector["normalised"]
    assert [p.code for p in diagnosis.problems] == vector["problems"]
    positions = [p.position for p in diagnosis.problems if p.code == "invalid_character"]
    assert positions == vector["invalid_positions"]
    assert list(diagnosis.candidates) == vector["candidates"]
    assert diagnosis.candidates_total == vector["candidates_total"]


def test_fingerprints() -> None:
    for vector in VECTORS["fingerprints"]:
        assert fingerprint(vector["input"]) == vector["fingerprint"]


def test_hardware_ids_and_same_machine() -> None:
    ids = {h["name"]: hardware_id(h["components"]) for h in VECTORS["hardware_ids"]}
    for h in VECTORS["hardware_ids"]:
        assert ids[h["name"]].hex() == h["hardware_id"]
    for pair in VECTORS["same_machine"]:
        a, b = ids[pair["a"]], ids[pair["b"]]
        assert equal_bytes(a, b) == pair["equal_bytes"]
        assert same_machine(a, b) is pair["same_machine"]
    with pytest.raises(ValueError):
        hardware_id(["only one"])


def test_installation_id_round_trip_and_corruption() -> None:
    v = VECTORS["installation_id"]
    iid = installation_id(KeyType(v["key_type"]), v["fingerprint"], bytes.fromhex(v["hardware_id"]))
    assert iid == v["iid"]
    parsed = parse_installation_id(iid.replace("-", " "))
    assert (parsed.key_type, parsed.fingerprint, parsed.hardware_id.hex()) == (
        v["key_type"],
        v["fingerprint"],
        v["hardware_id"],
    )
    with pytest.raises(IdError) as info:
        parse_installation_id(VECTORS["corrupted_iid"]["iid"])
    assert list(info.value.failed_groups) == VECTORS["corrupted_iid"]["failed_groups"]
    with pytest.raises(IdError):
        parse_installation_id(iid[:-1])


@pytest.mark.parametrize("vector", VECTORS["confirmation_ids"], ids=lambda v: v["secret"])
def test_confirmation_ids(vector: dict[str, Any]) -> None:
    assert cid_key(vector["secret"]).hex() == vector["hkdf_key_hex"]
    cid = confirmation_id(vector["iid"], vector["secret"])
    assert cid == vector["cid"]
    assert verify_confirmation_id(vector["iid"], cid, vector["secret"]).valid


def test_corrupted_and_foreign_confirmation_ids() -> None:
    v = VECTORS["corrupted_cid"]
    result = verify_confirmation_id(v["iid"], v["cid"], v["secret"])
    assert not result.valid and list(result.failed_groups) == v["failed_groups"]
    assert result.mismatched_groups == (3,)
    other = verify_confirmation_id(v["iid"], v["correct_cid"], "another secret")
    assert not other.valid and not other.failed_groups and other.mismatched_groups


keys = st.builds(
    mint,
    st.sampled_from(list(KeyType)),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**40 - 1),
)


@settings(max_examples=200, deadline=None)
@given(keys)
def test_every_minted_key_parses_back(key: Any) -> None:
    text = str(key)
    assert len(text) == 29 and text.count("-") == 4 and set(text) - {"-"} <= set(ALPHABET)
    assert check(text).key == key


@settings(max_examples=60, deadline=None)
@given(keys, st.integers(0, 24), st.sampled_from(ALPHABET))
def test_one_substitution_is_caught_and_its_key_offered(key: Any, i: int, symbol: str) -> None:
    symbols = key.symbols
    if symbols[i] == symbol:
        return
    typed = symbols[:i] + symbol + symbols[i + 1 :]
    diagnosis = check(typed)
    if diagnosis.well_formed:  # a 1-in-2^32 collision: another valid key
        return
    # the intended key is among the candidates unless more than five were found before it
    assert str(key) in diagnosis.candidates or diagnosis.candidates_total > 5
