"""Write the seed corpus, ``fuzz/corpus/TARGET/``: ``.venv/bin/python -m fuzz.make_corpus``.

Seeds follow each target's input layout (``fuzz/targets.py``) and come from the golden
vectors (tests/vectors/), the lab's own exchange (BIND then REQUEST, as
``kmsemu client activate`` sends them), DNS queries and updates for the lab zone, the KMS
client setup keys, the profiles of tests/data/profiles-v1/, the example ``lab.toml`` of
docs/lab.md and the built-in scenarios. Files are named by content, so running it again
changes nothing unless the sources did.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"


def _write(target: str, seeds: list[bytes]) -> None:
    folder = CORPUS / target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


def rpc_streams() -> list[bytes]:
    """BIND + REQUEST streams: the vectors', the client emulator's, fragmented ones."""
    from kmsemu.rpc.pdu import KLP_INTERFACE, NDR20, Bind, ContextElement, encode_request

    vectors = json.loads((ROOT / "tests/vectors/klp-v1.json").read_text())
    bind = bytes.fromhex(vectors["bind"]["pdu"])
    ours = Bind(1, (ContextElement(0, KLP_INTERFACE, (NDR20,)),), 5840, 5840, 0).to_bytes()
    alter = bytearray(ours)
    alter[2] = 14  # ALTER_CONTEXT
    streams = [bind, ours]
    for exchange in vectors["exchanges"]:
        request = bytes.fromhex(exchange["request"]["pdu_call_id_2_ctx_0"])
        stub = bytes.fromhex(exchange["request"]["stub"])
        streams += [
            bind + request,
            ours + request + bytes(alter) + request,
            ours + encode_request(2, 0, 0, stub, 96),  # fragmented
            ours + encode_request(3, 0, 1, stub, 5840),  # unknown opnum
            bind + bind + request,
        ]
    return streams


def rpc() -> list[bytes]:
    seeds = []
    for stream in rpc_streams():
        seeds += [b"\0\0" + stream, b"\x01\x03\x0f\x1b\x2f" + stream, b"\x02\x01\x47" + stream]
    return seeds


def klp() -> list[bytes]:
    vectors = json.loads((ROOT / "tests/vectors/klp-v1.json").read_text())
    seeds = [b"\0" + bytes.fromhex(vectors["stub_status_only"]["stub"])]
    for exchange in vectors["exchanges"]:
        request, response = exchange["request"], exchange["response"]
        seeds += [
            b"\0" + bytes.fromhex(request["stub"]),
            b"\x01" + bytes.fromhex(request["envelope"]),
            b"\x01" + bytes.fromhex(response["envelope"]),
            b"\x02" + bytes.fromhex(request["plaintext"]),
            b"\x02" + bytes.fromhex(response["plaintext"]),
        ]
    return seeds


def dns() -> list[bytes]:
    import dns.name
    import dns.rdatatype
    import dns.update
    from dnslib import EDNS0, DNSRecord

    queries = []
    for name, qtype in [
        ("_vlmcs._tcp.lab.test", "SRV"), ("kms.lab.test", "A"), ("kms2.lab.test", "AAAA"),
        ("lab.test", "SOA"), ("lab.test", "NS"), ("LAB.test", "ANY"), ("nope.lab.test", "A"),
        ("example.com", "A"), ("_tcp.lab.test", "TXT"),
    ]:  # fmt: skip
        queries.append(DNSRecord.question(name, qtype).pack())
    edns = DNSRecord.question("_vlmcs._tcp.lab.test", "SRV")
    edns.add_ar(EDNS0(udp_len=4096))
    queries.append(edns.pack())

    add = dns.update.UpdateMessage("lab.test")
    add.add("_vlmcs._tcp", 600, "SRV", "0 0 1688 kms3.lab.test.")
    add.add("kms3", 600, "A", "192.0.2.33")
    delete = dns.update.UpdateMessage("lab.test")
    delete.delete("_vlmcs._tcp", "SRV", "0 100 1688 kms.lab.test.")
    delete.delete("kms2")
    outside = dns.update.UpdateMessage("lab.test")
    outside.add("host.example.com.", 60, "A", "192.0.2.1")
    updates = [m.to_wire() for m in (add, delete, outside)]

    seeds = [b"\0\x01" + q for q in queries] + [b"\0\0" + q for q in queries[:3]]
    srv = queries[0]
    for update in updates:
        seeds.append(b"\x01\x02" + len(update).to_bytes(2, "big") + update + b"\x01" + srv)
        seeds.append(b"\0\x00" + update)
    return seeds


def keys() -> list[bytes]:
    vectors = json.loads((ROOT / "tests/vectors/keys-v1.json").read_text())
    texts = [k["key"] for k in vectors["setup_keys"][:6]] + [k["key"] for k in vectors["keys"][:6]]
    texts += [m["input"] for m in vectors["malformed"][:6]]
    iid = vectors["installation_id"]["iid"]
    texts += [iid, vectors["corrupted_iid"]["iid"]]
    for cid in vectors["confirmation_ids"][:2]:
        texts.append(f"{cid['iid']}\n{cid['cid']}")
    corrupted = vectors["corrupted_cid"]
    texts.append(f"{corrupted['iid']}\n{corrupted['cid']}")
    seeds = [b"\0" + t.encode() for t in texts]
    seeds += [b"\x01" + t.encode("utf-16-le") for t in [*texts[:2], iid]]
    return seeds


def http() -> list[bytes]:
    from fuzz.targets import _http_setup
    from kmsemu.keys.product_key import KeyType, mint

    mak, retail = str(mint(KeyType.MAK, 1, 7)), str(mint(KeyType.RETAIL, 2, 9))
    vectors = json.loads((ROOT / "tests/vectors/keys-v1.json").read_text())
    iid = vectors["installation_id"]["iid"]
    hw = "c21548e31d7b1fdc1528"
    bodies = {
        ("POST", "/v1/activate"): {"key": mak, "hardware_id": hw, "machine_name": "PC1",
                                   "request_id": "r-1"},
        ("POST", "/v1/phone"): {"installation_id": iid, "machine_name": "PC1", "request_id": "p"},
        ("POST", "/v1/proxy-activate"): {"installation_ids": [iid, iid]},
        ("POST", "/v1/count"): {"key": mak},
        ("POST", "/v1/keys"): {"key": retail, "limit": 3, "reactivations": 1,
                               "expires": "2030-01-01T00:00:00Z"},
        ("POST", "/increase"): {"by": 5, "reason": "more seats"},
        ("POST", "/expire"): {"at": "2030-01-01T00:00:00Z"},
        ("POST", "/v1/import"): {"format": "kmsemu-mak-export", "version": 1,
                                 "machine_names": [], "keys": [], "activations": []},
        ("PUT", "/v1/portal/offers/"): {"max_licences": 10, "countries": ["US"], "trial": False},
        ("POST", "/v1/portal/orgs"): {"name": "Contoso", "country": "GB"},
        ("POST", "/v1/portal/signup"): {"key": mak, "org": "Fabrikam", "country": "US",
                                        "user": "bob"},
        ("POST", "/users"): {"name": "eve", "role": "user"},
        ("POST", "/redeem"): {"key": mak},
        ("POST", "/subscriptions"): {"offer": "fuzz-offer", "licences": 2, "billing": "monthly",
                                     "auto_assign": True},
        ("POST", "/licences"): {"offer": "fuzz-offer"},
        ("POST", "/v1/portal/keys/expire"): {"key": mak, "at": "2030-01-01T00:00:00Z"},
        ("PUT", "/v1/portal/fault"): {"code": "key_blocked", "times": 1},
        ("POST", "/lab/api/clock"): {"advance": "7d"},
        ("POST", "/api/host/faults"): {"kind": "hresult", "hresult": "0xC004F042", "times": 1},
    }  # fmt: skip
    routes = _http_setup()["routes"]
    seeds = []
    for index, (method, path) in enumerate(routes):
        body = next(
            (b for (m, p), b in bodies.items() if (m == method and path.endswith(p.rstrip("/")))
             or (p.endswith("/") and m == method and p in path)),
            {},
        )  # fmt: skip
        seeds.append(bytes([index, 0]) + json.dumps(body).encode())
        seeds.append(bytes([index, 2]) + b"{}")
    return seeds


def lab_config() -> list[bytes]:
    text = (ROOT / "docs/lab.md").read_text()
    example = text[text.index("[lab]\n") : text.index("```", text.index("[lab]\n"))]
    return [
        example.encode(),
        b'[lab]\nkms_listen = "0.0.0.0:1688"\nmin_count = 25\nquiet = true\n',
        b'[lab]\nredeem_rate = 0\nsecret = "s"\nadmin_token = "t"\n',
        b"",
    ]


def scenario() -> list[bytes]:
    folder = resources.files("kmsemu") / "data" / "scenarios"
    return [item.read_bytes() for item in folder.iterdir() if item.name.endswith(".toml")]


def profile() -> list[bytes]:
    import random

    from kmsemu.client.profile import Profile

    seeds = [p.read_bytes() for p in sorted((ROOT / "tests/data/profiles-v1").glob("*.json"))]
    seeds.append(json.dumps(Profile.new("pc9", random.Random(9)).to_json(), indent=1).encode())
    return seeds


def main() -> None:
    for target in ("rpc", "klp", "dns", "keys", "http", "lab_config", "scenario", "profile"):
        seeds = globals()[target]()
        _write(target, seeds)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
