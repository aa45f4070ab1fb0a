"""The MAK service over HTTP/1.1: ``POST /v1/activate`` and ``/v1/phone``.

Two drivers: a closed loop of N keep-alive connections with pre-built requests in a forked
process (bench-mak: ``generator_main``), and an open loop on a pool of connections whose
answers are checked for double counts (the soak: ``MakTraffic``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import os
import re
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from benchkit.procs import own_cpu, run_loop, worker_body
from benchkit.traffic.streams import KeptAlive, http_request, read_http
from kmsemu.keys.activation_ids import installation_id
from kmsemu.keys.product_key import KeyType, ProductKey, mint

if TYPE_CHECKING:
    from benchkit.traffic.mixed import Mix

KEY_LIMIT = 10_000_000
#: Machines activated before the warm-up of mode ``known``, shared out among the clients.
KNOWN_MACHINES = 1024
#: Requests pre-built per second of load (warm-up + window + 1 s) and the cap.
POOL_RATE = {"new": 6000, "phone": 2500}
POOL_MAX = 150_000
#: How long after the window the generator waits for answers still outstanding.
DRAIN_SECONDS = 15.0
#: What a good answer's body contains, per mode (the answer must also be 200).
EXPECTED = {
    "new": (b'"counted":true',),
    "phone": (b'"counted":true', b'"confirmation_id":"'),
    "known": (b'"counted":false', b'"verdict":"same"'),
}


def bench_keys(count: int) -> list[ProductKey]:
    return [mint(KeyType.MAK, 0, serial=1000 + n) for n in range(count)]


def activate_request(host: str, key: str, hardware_id: bytes, number: int, path: str = "") -> bytes:
    body = b'{"key":"%s","hardware_id":"%s","machine_name":"bench-%08d"}' % (
        key.encode(),
        hardware_id.hex().encode(),
        number % 100_000_000,
    )
    return http_request(f"POST {path}/v1/activate HTTP/1.1", host, body)


def phone_request(host: str, key: ProductKey, hardware_id: bytes, number: int) -> bytes:
    iid = installation_id(KeyType.MAK, key.fingerprint, hardware_id)
    body = b'{"installation_id":"%s","machine_name":"bench-%08d"}' % (
        iid.encode(),
        number % 100_000_000,
    )
    return http_request("POST /v1/phone HTTP/1.1", host, body)


class RequestSource:
    """The requests of one run: a pre-built pool (new, phone) or per-client cycles (known)."""

    def __init__(
        self, mode: str, host: str, keys: list[ProductKey], clients: int, seconds: float
    ) -> None:
        self.mode = mode
        self.host = host
        self.keys = keys
        self.texts = [str(k) for k in keys]
        self.built = 0
        self.live = 0
        self.pool: list[bytes] = []
        self.cycles: list[list[bytes]] = []
        self.registrations: list[list[bytes]] = []
        if mode == "known":
            per = max(1, KNOWN_MACHINES // clients)
            for c in range(clients):
                requests = [self._build(c * per + j) for j in range(per)]
                self.registrations.append(requests)
                self.cycles.append(requests)
            self.positions = [0] * clients
        else:
            count = min(POOL_MAX, math.ceil(seconds * POOL_RATE[mode]))
            self.pool = [self._build(n) for n in range(count)]
            self.pool.reverse()  # pop() from the end in build order

    def _build(self, number: int) -> bytes:
        self.built += 1
        hardware_id = os.urandom(10)
        key = number % len(self.keys)
        if self.mode == "phone":
            return phone_request(self.host, self.keys[key], hardware_id, number)
        return activate_request(self.host, self.texts[key], hardware_id, number)

    def next(self, client: int) -> bytes:
        if self.mode == "known":
            cycle = self.cycles[client]
            position = self.positions[client]
            self.positions[client] = position + 1
            return cycle[position % len(cycle)]
        if self.pool:
            return self.pool.pop()
        self.live += 1
        return self._build(self.built)


# -- the closed loop (bench-mak) -----------------------------------------------------------


def _content_length(buf: bytes, head_end: int) -> int:
    at = buf.find(b"content-length:", 0, head_end)
    if at < 0:
        at = buf[:head_end].lower().find(b"content-length:")
        if at < 0:
            return 0
    end = buf.find(b"\r\n", at, head_end + 2)
    return int(buf[at + 15 : end])


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self, generator: _ClosedLoop, index: int) -> None:
        self.generator = generator
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_at = 0
        self.outstanding = False
        self.finished = False
        self.registering: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.outstanding = True
        self.sent_at = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            total = head_end + 4 + _content_length(buf, head_end)
            if len(buf) < total:
                break
            now = time.perf_counter_ns()
            status, body = buf[9:12], buf[head_end + 4 : total]
            buf = buf[total:]
            self.outstanding = False
            self.generator.answered(self, status, body, now)
        self.buffer = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self, exc)


class _ClosedLoop:
    """The closed loop: every answer checked, timed, and followed by the next request."""

    def __init__(self, source: RequestSource, clients: int) -> None:
        self.source = source
        self.expected = EXPECTED[source.mode]
        self.connections: list[_Connection] = []
        self.clients = clients
        self.start_ns = self.end_ns = 0
        self.phase = "connect"
        self.latencies: list[int] = []
        self.failures = 0
        self.warm_failures = 0
        self.warm_done = 0
        self.after_done = 0
        self.counted = 0
        self.failure_sample = ""
        self.connection_errors: list[str] = []
        self.waiter: asyncio.Future[None] | None = None
        self.pending = 0

    def _good(self, status: bytes, body: bytes) -> bool:
        return status == b"200" and all(e in body for e in self.expected)

    def _fail(self, status: bytes, body: bytes) -> None:
        if not self.failure_sample:
            self.failure_sample = (
                f"HTTP {status.decode(errors='replace')}: {body[:300].decode(errors='replace')}"
            )

    def _one_done(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def answered(self, conn: _Connection, status: bytes, body: bytes, now: int) -> None:
        if self.phase == "register":
            good = status == b"200" and b'"counted":true' in body
        else:
            good = self._good(status, body)
        if good and b'"counted":true' in body:
            self.counted += 1
        if self.phase == "register":
            if not good:
                self.failures += 1
                self._fail(status, body)
            if conn.registering:
                conn.send(conn.registering.pop())
            else:
                self._one_done()
            return
        if now < self.start_ns:
            self.warm_done += 1
            if not good:
                self.warm_failures += 1
                self._fail(status, body)
        elif now < self.end_ns:
            if good:
                self.latencies.append(now - conn.sent_at)
            else:
                self.failures += 1
                self._fail(status, body)
        else:
            self.after_done += 1
            if not good:
                self._fail(status, body)
            conn.finished = True
            self._one_done()
            return
        conn.send(self.source.next(conn.index))

    def lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn.finished and self.phase == "closing":
            return
        self.connection_errors.append(f"connection {conn.index} lost: {exc!r}")
        if conn.outstanding or not conn.finished:
            conn.finished = True
            conn.outstanding = False
            self._one_done()

    def arm(self, phase: str) -> None:
        self.phase = phase
        self.waiter = asyncio.get_running_loop().create_future()
        self.pending = self.clients

    async def wait(self, timeout: float) -> bool:
        assert self.waiter is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.waiter), timeout)
        except TimeoutError:
            return False
        return True


async def _generate(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = cfg["address"]
    clients = cfg["clients"]
    source = RequestSource(
        cfg["mode"],
        f"{host}:{port}",
        bench_keys(cfg["keys"]),
        clients,
        cfg["warmup"] + cfg["duration"] + 1,
    )
    gen = _ClosedLoop(source, clients)
    for index in range(clients):
        _, conn = await loop.create_connection(partial(_Connection, gen, index), host, port)
        gen.connections.append(conn)
    registered = 0
    if source.registrations:
        gen.arm("register")
        for conn, requests in zip(gen.connections, source.registrations, strict=True):
            conn.registering = list(reversed(requests))
            conn.send(conn.registering.pop())
            registered += len(requests)
        if not await gen.wait(120):
            raise RuntimeError("registering the known machines did not finish")
        if gen.failures:
            raise RuntimeError(f"registering the known machines failed: {gen.failure_sample}")
    pipe.send("ready")
    if not pipe.poll(300):
        raise RuntimeError("no go from the parent")
    go, start, end = pipe.recv()
    offset = time.perf_counter_ns() - time.monotonic_ns()
    gen.start_ns = int(start * 1e9) + offset
    gen.end_ns = int(end * 1e9) + offset
    gen.arm("load")
    counted_before = gen.counted
    cpu: dict[str, os.times_result] = {}
    loop.call_at(
        loop.time() + (start - time.monotonic()), lambda: cpu.setdefault("start", os.times())
    )
    loop.call_at(loop.time() + (end - time.monotonic()), lambda: cpu.setdefault("end", os.times()))
    await asyncio.sleep(max(0.0, go - time.monotonic()))
    for conn in gen.connections:
        conn.send(source.next(conn.index))
    drained = await gen.wait(max(0.0, end - time.monotonic()) + DRAIN_SECONDS)
    gen.phase = "closing"
    cpu.setdefault("end", os.times())
    for conn in gen.connections:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0.05)
    return {
        "latencies": gen.latencies,
        "failures": gen.failures,
        "warm_failures": gen.warm_failures,
        "warm_done": gen.warm_done,
        "after_done": gen.after_done,
        "counted_total": gen.counted,
        "counted_load": gen.counted - counted_before,
        "registered": registered,
        "failure_sample": gen.failure_sample,
        "connection_errors": gen.connection_errors[:5],
        "drained": drained,
        "cpu_seconds": own_cpu(cpu["start"], cpu["end"]) if "start" in cpu else 0.0,
        "built": source.built,
        "live": source.live,
    }


def generator_main(pipe: Any, cfg: dict[str, Any]) -> None:
    """The load generator process: connect, (register), report ready, load, report."""

    def body() -> dict[str, Any]:
        result, loop_name = run_loop(lambda: _generate(pipe, cfg))
        result["loop"] = loop_name
        return result

    worker_body(pipe, cfg["cpus"], body)


# -- the open loop, answers checked (the soak) -------------------------------------------------


class MakTraffic:
    """POST /v1/activate on a pool of kept-alive HTTP/1.1 connections: 70 % new machines
    (each must be counted once), 30 % re-activations (must not be counted again)."""

    #: How long a kept-alive connection may idle before it is renewed (uvicorn's
    #: keep-alive is 5 s).
    POOL_IDLE = 3.0

    def __init__(self, gen: Mix, address: tuple[str, int], base_path: str, key: str) -> None:
        self.gen = gen
        self.rec = gen.rec
        self.address = address
        self.host_header = f"{address[0]}:{address[1]}"
        self.path = f"{base_path}/v1/activate"
        self.key = key
        self.known: list[bytes] = []
        self.counted_ids: set[bytes] = set()
        self.counted = 0
        self.verdicts: collections.Counter[str] = collections.Counter()
        self.number = itertools.count(1)
        self.queue: asyncio.Queue[float | None] = asyncio.Queue()

    def build(self) -> tuple[bytes, bytes, bool]:
        rng = self.gen.rng
        renewal = bool(self.known) and rng.random() < 0.3
        hardware_id = rng.choice(self.known) if renewal else os.urandom(10)
        body = json.dumps(
            {
                "key": self.key,
                "hardware_id": hardware_id.hex(),
                "machine_name": f"soak-{next(self.number):08d}",
            }
        ).encode()
        return (
            http_request(f"POST {self.path} HTTP/1.1", self.host_header, body),
            hardware_id,
            renewal,
        )

    def judge(
        self, due: float, status: int, body: bytes, hardware_id: bytes, renewal: bool
    ) -> None:
        kind = "mak"
        if status != 200:
            self.rec.error(kind, due, f"HTTP {status}", body[:200].decode(errors="replace"))
            return
        try:
            answer = json.loads(body)
            counted, verdict = bool(answer["counted"]), str(answer.get("verdict"))
        except (ValueError, KeyError, TypeError) as exc:
            self.rec.error(kind, due, "bad JSON answer", repr(exc))
            return
        self.verdicts[
            f"{'known' if renewal else 'new'} machine: {verdict}{' counted' if counted else ''}"
        ] += 1
        if counted:
            self.counted += 1
            if hardware_id in self.counted_ids:
                self.rec.error(kind, due, "machine counted twice", hardware_id.hex())
                return
            self.counted_ids.add(hardware_id)
            if len(self.known) < 20_000:
                self.known.append(hardware_id)
            else:
                self.known[self.gen.rng.randrange(len(self.known))] = hardware_id
        if renewal and verdict != "same":
            self.rec.error(kind, due, f"re-activation answered {verdict!r}")
            return
        if not renewal and not counted:
            # A random new machine judged the same as one already counted: not lost (the
            # key's count stays consistent), but worth knowing.
            self.rec.counters["MAK new machines judged known"] += 1
        self.rec.ok(kind, due)

    async def _talk(self, conn: KeptAlive) -> tuple[int, bytes, bytes, bool]:
        request, hardware_id, renewal = self.build()
        reader, writer = await conn.streams()
        writer.write(request)
        status, head, body = await read_http(reader)
        if re.search(rb"(?i)\r\nconnection:\s*close", head):
            conn.drop()
        return status, body, hardware_id, renewal

    async def pooled_worker(self) -> None:
        conn = KeptAlive(
            self.rec, "MAK", self.POOL_IDLE, lambda: asyncio.open_connection(*self.address)
        )
        await conn.serve(self.queue, "mak", self._talk, lambda due, out: self.judge(due, *out))
