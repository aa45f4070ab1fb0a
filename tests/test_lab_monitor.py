"""The dashboard's view of the host (kmsemu.lab.monitor), fed records directly."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from kmsemu.catalog import default_catalog
from kmsemu.host.rules import LogRecord
from kmsemu.host.store import LoggedRequest
from kmsemu.klp.messages import RequestFields
from kmsemu.lab.monitor import DAY, Monitor
from kmsemu.wire import filetime_from_unix

CATALOG = default_catalog()
WIN11 = CATALOG.find("windows-11-pro")
T0 = 1_800_000_000.0


def logged(
    name: str,
    cmid: bytes,
    *,
    at: float = T0,
    status: int = 0,
    count: int = 25,
    required: int = 25,
    reason: str = "",
) -> LoggedRequest:
    request = RequestFields(
        0,
        2,
        43_200,
        WIN11.application_id.bytes_le,
        WIN11.sku_id.bytes_le,
        WIN11.kms_count_id.bytes_le,
        cmid,
        required,
        filetime_from_unix(at),
        bytes(16),
        name,
    )
    record = LogRecord(filetime_from_unix(at), status, count, request, cmid, filetime_from_unix(at))
    return LoggedRequest(record, "127.0.0.1:5000", reason)


def cmid() -> bytes:
    return uuid.uuid4().bytes_le


def test_a_success_at_the_threshold_licenses_for_180_days_then_lapses() -> None:
    monitor = Monitor(CATALOG)
    monitor.observe(logged("PC-1", cmid()))
    (client,) = monitor.snapshot(T0 + DAY)["clients"]
    assert client["licence"] == {
        "state": "licensed",
        "expires": "2027-07-14T08:00:00Z",
        "text": "Licensed, 179 days left",
    }
    (client,) = monitor.snapshot(T0 + 181 * DAY)["clients"]
    assert client["licence"]["state"] == "lapsed"
    assert client["licence"]["text"] == "Lapsed 1 day ago: no renewal in 180 days"


def test_below_the_threshold_the_client_ends_with_count_insufficient() -> None:
    monitor = Monitor(CATALOG)
    monitor.observe(logged("PC-1", cmid(), count=3))
    snap = monitor.snapshot(T0)
    (client,) = snap["clients"]
    assert client["hresult"] == "0xC004F038"
    assert client["licence"]["state"] == "not_activated"
    assert "0xC004F038" in client["licence"]["text"]
    assert snap["requests"][0]["hresult"] == "0xC004F038"
    # the host answered; the client refuses itself
    assert snap["totals"] == {"requests": 1, "failed": 0, "below_threshold": 1}


def test_a_failed_renewal_keeps_the_licence_until_it_expires() -> None:
    monitor = Monitor(CATALOG)
    machine = cmid()
    monitor.observe(logged("PC-1", machine))
    monitor.observe(
        logged(
            "PC-1", machine, at=T0 + 7 * DAY, status=0xC004F06C, reason="client clock +5.0 h off"
        )
    )
    (client,) = monitor.snapshot(T0 + 8 * DAY)["clients"]
    assert client["licence"]["state"] == "licensed"
    assert client["error"] == "client clock +5.0 h off"
    assert monitor.snapshot(T0)["totals"] == {"requests": 2, "failed": 1, "below_threshold": 0}


def test_one_cmid_under_two_names_is_a_duplicate() -> None:
    monitor = Monitor(CATALOG)
    shared = cmid()
    monitor.observe(logged("GOLD-1", shared))
    monitor.observe(logged("OTHER", cmid()))
    monitor.observe(logged("GOLD-2", shared))
    clients = monitor.snapshot(T0)["clients"]
    assert [(c["name"], c["duplicate"]) for c in clients] == [("GOLD-2", True), ("OTHER", False)]
    assert clients[0]["names"] == ["GOLD-1", "GOLD-2"] and clients[0]["requests"] == 2


def test_an_unreadable_request_is_logged_but_is_no_client() -> None:
    monitor = Monitor(CATALOG)
    monitor.observe(
        LoggedRequest(
            LogRecord.bare(filetime_from_unix(T0), 0x80070005), "127.0.0.1:1", "no key with that id"
        )
    )
    snap = monitor.snapshot(T0)
    assert snap["clients"] == []
    assert snap["requests"][0]["error"] == "no key with that id"
    assert snap["requests"][0]["product"] is None


def test_bounded_memory_forgets_the_longest_silent_clients() -> None:
    monitor = Monitor(CATALOG, max_clients=3, max_requests=4)
    machines = [cmid() for _ in range(5)]
    for i, machine in enumerate(machines):
        monitor.observe(logged(f"PC-{i}", machine))
    monitor.observe(logged("PC-2", machines[2]))
    snap = monitor.snapshot(T0)
    assert [c["name"] for c in snap["clients"]] == ["PC-2", "PC-4", "PC-3"]
    assert [r["client"] for r in snap["requests"]] == ["PC-2", "PC-4", "PC-3", "PC-2"]
    assert snap["totals"]["requests"] == 6


def test_load_rebuilds_from_stored_rows_without_counting_them_twice() -> None:
    machine = cmid()
    rows = [
        (
            7,
            filetime_from_unix(T0),
            0,
            "PC-1",
            machine,
            1,
            2,
            WIN11.sku_id.bytes_le,
            25,
            25,
            "127.0.0.1:9",
            "",
        )
    ]
    monitor = Monitor(CATALOG)
    monitor.load(rows, total=40, failed=2, below=3)
    monitor.observe(logged("PC-1", machine, at=T0 + DAY))
    snap = monitor.snapshot(T0 + DAY)
    assert snap["totals"] == {"requests": 41, "failed": 2, "below_threshold": 3}
    assert [r["id"] for r in snap["requests"]] == [8, 7]
    (client,) = snap["clients"]
    assert client["vm"] is False and client["requests"] == 2 and client["product"] == WIN11.key


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from([0, 0, 0xC004F06C]),
            st.integers(0, 30),
        ),
        max_size=60,
    )
)
def test_totals_and_bounds_hold_for_any_sequence(events: list[tuple[int, str, int, int]]) -> None:
    monitor = Monitor(CATALOG, max_clients=4, max_requests=10)
    machines = [uuid.UUID(int=i + 1).bytes_le for i in range(6)]
    for i, (which, name, status, count) in enumerate(events):
        monitor.observe(logged(name, machines[which], at=T0 + i, status=status, count=count))
    snap = monitor.snapshot(T0 + len(events))
    assert snap["totals"]["requests"] == len(events)
    assert snap["totals"]["failed"] == sum(1 for e in events if e[2])
    assert snap["totals"]["below_threshold"] == sum(1 for e in events if not e[2] and e[3] < 25)
    assert len(snap["clients"]) <= 4 and len(snap["requests"]) == min(10, len(events))
    assert monitor.version == len(events)
    for client in snap["clients"]:
        assert client["duplicate"] == (len(client["names"]) > 1)
        activated = client["licence"]["state"] != "not_activated"
        assert activated or client["hresult"] != "0x00000000"
