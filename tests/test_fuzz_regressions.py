"""Bugs found by fuzzing (issue 17, ``scripts/fuzz``), one minimal test each.

Each test states the documented contract the fuzzer found broken (all fixed; while a bug
waits for its fix its test is ``xfail(strict=True)``). The inputs are the fuzzer's,
minimised by hand; the siblings at the end were found by reading the code each fix
touched.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSLabel

from kmsemu.addresses import AddressError, parse_address
from kmsemu.catalog import load_catalog
from kmsemu.client.profile import Profile, ProfileError, ProfileStore
from kmsemu.dns.authority import Authority
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.errors import ConfigError
from kmsemu.keys.activation_ids import (
    IdError,
    confirmation_id,
    iid_digits,
    parse_installation_id,
    verify_confirmation_id,
)
from kmsemu.lab.config import read_config
from kmsemu.sim.scenario import parse_scenario

FORMERR, REFUSED, NOTAUTH = 1, 5, 9  # RFC 1035 / RFC 2136 rcodes
#: keys-v1.json's installation id
IID = "0003776-3099666-4774426-8790306-4660232-5841735-9887224-5633616-5380484"
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def lab_authority() -> Authority:
    zone = Zone.build(
        "lab.test",
        srv=[SrvTarget("kms", 1688, 0, 100)],
        addresses=[("kms", "192.0.2.10")],
    )
    return Authority([zone])


# -- DNS: RFC 2136 updates from a trusted peer ---------------------------------------------

#: UPDATE lab.test, header and zone section: id 0x4b92, opcode 5, one zone, two updates
_UPDATE_HEAD = bytes.fromhex("4b9228000001000000020000036c616204746573740000060001")
_ADD_SRV = bytes.fromhex(  # _vlmcs._tcp.lab.test 600 IN SRV 0 0 1688 kms3.lab.test.
    "065f766c6d6373045f746370c00c00210001000002580015000000000698046b6d7333036c6162047465737400"
)


def test_an_update_record_of_another_class_is_refused_not_raised() -> None:
    """kms3.lab.test 600 CLASS146 A 192.0.2.33: dnspython gives its rdata in the generic
    form (``\\# 4 c0000221``) and dnslib's ``RR.fromZone`` raises ValueError
    (invalid literal for int() with base 10: '\\\\#') out of ``Authority.answer``."""
    other_class = bytes.fromhex("046b6d7333c00c00010092000002580004c0000221")
    authority = lab_authority()
    zone = authority.zones[0]
    before = sorted(str(rr) for rr in zone.records)
    reply = authority.answer(_UPDATE_HEAD + _ADD_SRV + other_class, udp=True, trusted=True)
    assert reply is not None and reply[:2] == b"\x4b\x92" and reply[3] & 0xF == FORMERR
    # all or nothing (RFC 2136 3.4.1.2): the SRV record before the bad one is not added
    assert sorted(str(rr) for rr in zone.records) == before


def test_an_update_for_a_non_ascii_name_is_refused_not_raised() -> None:
    r"""_vlm\128s._tcp.lab.test SRV: ``DNSLabel(rrset.name.to_text())`` raises UnicodeError
    ("encoding with 'idna' codec failed") out of ``Authority.answer``."""
    add_srv = bytearray(_ADD_SRV)
    add_srv[5] = 0x80  # _vlmcs -> _vlm\x80s
    add_a = bytes.fromhex("046b6d7333c00c00010001000002580004c0000221")
    reply = lab_authority().answer(_UPDATE_HEAD + bytes(add_srv) + add_a, udp=True, trusted=True)
    assert reply is not None and reply[3] & 0xF == FORMERR


def test_an_update_record_of_type_0_is_refused_not_raised() -> None:
    """kms2.lab.test CLASS65280 TYPE0 with empty rdata (``\\# 0``): dnslib raises
    binascii.Error ("Odd-length string") out of ``Authority.answer``."""
    delete_srv = bytes.fromhex(  # _vlmcs._tcp.lab.test NONE SRV 0 100 1688 kms.lab.test.
        "065f766c6d6373045f746370c00c002100fe000000000014000000640698036b6d73036c6162047465737400"
    )
    type0 = bytes.fromhex("046b6d7332c00c0000ff00ff0000000000")
    authority = lab_authority()
    reply = authority.answer(_UPDATE_HEAD + delete_srv + type0, udp=True, trusted=True)
    assert reply is not None and reply[3] & 0xF == FORMERR
    srv, _ = authority.zones[0].lookup(DNSLabel("_vlmcs._tcp.lab.test"), QTYPE.SRV)
    assert [str(rr.rdata) for rr in srv] == ["0 100 1688 kms.lab.test."]  # not deleted


# -- Installation and confirmation ids: digits that are not ASCII --------------------------


def test_a_superscript_digit_in_an_iid_is_an_id_error() -> None:
    """``str.isdigit`` takes '²', ``int('²')`` does not: ValueError("invalid literal for
    int() with base 10: '²'") from ``_ungroup`` instead of IdError."""
    typed = IID[:-1] + "²"
    for parse in (parse_installation_id, iid_digits):
        with pytest.raises(IdError):
            parse(typed)


def test_a_superscript_digit_in_a_cid_is_judged_not_raised() -> None:
    """``verify_confirmation_id`` judges any typed CID (a ``CidCheck``); with '²' as the
    last digit it raises ValueError from ``int(g[5])``."""
    cid = confirmation_id(IID, "kmsemu-lab")
    check = verify_confirmation_id(IID, cid[:-1] + "²", "kmsemu-lab")
    assert not check.valid


def test_an_iid_in_other_digits_is_refused_or_gets_a_cid() -> None:
    """'٠١٢...' pass ``isdigit`` and ``int``: ``parse_installation_id`` accepts the IID,
    then ``confirmation_id`` raises UnicodeEncodeError (``.encode("ascii")`` of the digits)."""
    typed = IID.translate(ARABIC_INDIC)
    try:
        parse_installation_id(typed)
    except IdError:
        return  # refused: fine
    assert confirmation_id(typed, "kmsemu-lab") == confirmation_id(IID, "kmsemu-lab")


# -- TOML readers: nesting -------------------------------------------------------------------

DEEP_TOML = "a = " + "[" * 2000 + "]" * 2000 + "\n"


def test_a_deeply_nested_lab_toml_is_a_config_error(tmp_path: Path) -> None:
    """tomllib (Python 3.11) recurses once per nested array: RecursionError out of
    ``read_config``, which documents ConfigError for a file that does not parse."""
    path = tmp_path / "lab.toml"
    path.write_text(DEEP_TOML)
    with pytest.raises(ConfigError):
        read_config(path)


def test_a_deeply_nested_scenario_is_a_config_error() -> None:
    """The same through ``parse_scenario`` (and ``load_scenario``)."""
    with pytest.raises(ConfigError):
        parse_scenario(DEEP_TOML, "deep.toml")


# -- Client profiles -------------------------------------------------------------------------


def _store_with(tmp_path: Path, text: str) -> ProfileStore:
    (tmp_path / "pc.json").write_text(text, encoding="utf-8")
    return ProfileStore(tmp_path)


def test_a_deeply_nested_profile_is_a_profile_error(tmp_path: Path) -> None:
    """``json.loads`` raises RecursionError for 100 000 nested arrays; ``load`` lets it
    out instead of "profile ... is damaged"."""
    store = _store_with(tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProfileError):
        store.load("pc")


def test_a_huge_integer_clock_offset_is_a_profile_error(tmp_path: Path) -> None:
    """``clock_offset`` 10**400 (JSON allows it; the float kind takes an int): the
    ``math.isfinite`` check raises OverflowError (int too large to convert to float)."""
    data = Profile.new("pc", random.Random(1)).to_json()
    data["clock_offset"] = 10**400
    store = _store_with(tmp_path, json.dumps(data))
    with pytest.raises(ProfileError):
        store.load("pc")


# -- HTTP: the same digits through the MAK service --------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/phone", {"installation_id": IID[:-1] + "²", "machine_name": "PC", "request_id": "r"}),
        ("/v1/proxy-activate", {"installation_ids": [IID[:-1] + "²"]}),
    ],
)
def test_a_superscript_digit_in_an_iid_is_a_4xx_over_http(
    path: str, body: dict[str, object]
) -> None:
    """Through the MAK service (the lab's app, in process): ``parse_installation_id``'s
    ValueError becomes 500 internal (and leaves the app) instead of a 4xx."""
    pytest.importorskip("atheris", reason="the app is built by fuzz.targets")
    from fuzz.targets import _TOKEN, _asgi, _http_setup

    app = _http_setup()["app"]
    status, _ = _asgi(app, "POST", path, json.dumps(body).encode(), _TOKEN)
    assert status < 500


def test_a_huge_integer_in_a_scenario_is_a_config_error() -> None:
    """TOML integers have no size limit in tomllib; ``_Reader.value`` range-checks through
    ``float(value)``: OverflowError (int too large to convert to float), not ConfigError."""
    text = f'[scenario]\nname = "x"\ndays = {"9" * 400}\n[[hosts]]\nname = "kms1"\n'
    with pytest.raises(ConfigError):
        parse_scenario(text, "huge.toml")


def test_a_query_for_a_name_past_255_bytes_is_formerr() -> None:
    """Found by the suite's short fuzz run once the 64-byte label was fixed: five labels of
    60 bytes (306 bytes of name) parse, and packing the echoed question raised
    ``DNSLabelError: Domain label too long``."""
    name = b"".join(b"\x3c" + b"a" * 60 for _ in range(5)) + b"\x03lab\x04test\x00"
    query = bytes.fromhex("704001000001000000000000") + name + b"\x00\x01\x00\x01"
    assert lab_authority().answer(query, udp=True) == bytes.fromhex("704081010000000000000000")


@pytest.mark.parametrize("udp", [True, False])
def test_a_query_with_a_64_byte_label_gets_an_answer_not_an_exception(udp: bool) -> None:
    """Any peer, no trust needed: a plain QUERY whose name has a 64-byte label. dnslib's
    ``DNSRecord.parse`` takes it, but packing the reply (the question is echoed) raises
    ``DNSLabelError: Label component too long`` out of ``Authority.answer`` (the server's
    guard turns it into silence and an error log line instead of FORMERR)."""
    query = (
        bytes.fromhex("704001000001000000000000") + b"\x40" + b"9" * 64 + b"\x00\x00\x01\x00\x01"
    )
    reply = lab_authority().answer(query, udp=udp)
    # FORMERR, header alone (the question cannot be echoed): id 0x7040, QR, rcode 1
    assert reply == bytes.fromhex("704081010000000000000000")


@pytest.mark.parametrize("trusted", [False, True])
def test_an_update_for_a_non_ascii_zone_is_refused_not_raised(trusted: bool) -> None:
    """Any peer, trusted or not: an UPDATE whose zone section names ``\\128.test``.
    ``apply_update`` looks the zone up (``DNSLabel(...to_text())``: UnicodeError, idna)
    before it checks ``trusted``, so even an untrusted peer gets an exception out of
    ``Authority.answer`` instead of REFUSED."""
    update = (
        bytes.fromhex("cbc328000001000000000000") + b"\x01\x80\x04test\x00" + b"\x00\x06\x00\x01"
    )
    reply = lab_authority().answer(update, udp=True, trusted=trusted)
    assert reply is not None and reply[3] & 0xF == (NOTAUTH if trusted else REFUSED)


# -- siblings, found by reading the code the fixes touched ------------------------------------


def test_a_superscript_digit_in_a_port_is_an_address_error() -> None:
    """``parse_address`` checked the port with ``isdigit``: "kms:1²" raised ValueError."""
    with pytest.raises(AddressError):
        parse_address("kms.lab.test:1²", 1688)


def test_a_superscript_content_length_is_refused_not_a_500() -> None:
    """Starlette decodes headers as Latin-1, so a Content-Length of '²' (0xB2) reached
    ``int`` through ``isdigit``: a 500 instead of 413 body_too_large."""
    pytest.importorskip("atheris", reason="the app is built by fuzz.targets")
    from fuzz.targets import _http_setup
    from tests.test_lab_web import call

    headers = {"content-length": "²", "content-type": "application/json"}  # byte 0xB2
    assert call(_http_setup()["app"], "POST", "/v1/phone", b"{}", headers)[0] == 413


@pytest.mark.parametrize(
    "text",
    [f"a = {'9' * 5000}\n", "a = " + "{ b = " * 2000 + "1" + " }" * 2000 + "\n"],
    ids=["5000-digit integer", "2000 nested tables"],
)
def test_every_toml_reader_turns_any_failure_into_a_config_error(tmp_path: Path, text: str) -> None:
    """tomllib raises ValueError (not TOMLDecodeError) for an integer past Python's 4,300
    digits and RecursionError for deep nesting: the lab, scenario and catalog readers all
    answer ConfigError with their own code."""
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as lab:
        read_config(path)
    with pytest.raises(ConfigError) as scenario:
        parse_scenario(text, "x.toml")
    with pytest.raises(ConfigError) as catalog:
        load_catalog(path)
    assert (lab.value.code, scenario.value.code, catalog.value.code) == (
        "config_invalid", "scenario_invalid", "bad_catalog"
    )  # fmt: skip


def test_a_nan_in_a_scenario_is_a_config_error() -> None:
    """TOML has ``nan``; it passed every range check (each comparison is false)."""
    text = (
        '[scenario]\nname = "x"\ndays = 40\n[[hosts]]\nname = "kms1"\n'
        '[[clients]]\nname = "pc"\ncount = 5\nproduct = "windows-11-pro"\nvm_share = nan\n'
    )
    with pytest.raises(ConfigError, match="finite"):
        parse_scenario(text, "nan.toml")


def test_dns_records_that_are_no_list_are_a_config_error() -> None:
    """Found by the long run (scenario target, 2026-12-02): ``[dns] records = 7`` raised
    TypeError ('int' object is not iterable) out of ``parse_scenario``."""
    text = (
        '[scenario]\nname = "x"\ndays = 40\n[[hosts]]\nname = "kms1"\n'
        '[dns]\ndomain = "lab.test"\nrecords = 7\n'
        '[[clients]]\nname = "pc"\ncount = 5\nproduct = "windows-11-pro"\n'
    )
    with pytest.raises(ConfigError, match=r"dns\.records: use \[\[dns\.records\]\] tables"):
        parse_scenario(text, "records.toml")
