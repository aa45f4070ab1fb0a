"""The loop's combiner: a key's items that arrive while its call is out go in its next
call, in order; other keys never wait; a failing call fails only its own requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from mak.web.combine import LoopCombiner


class Recorder:
    """``run`` for the combiner: records each call's key and items, and holds a call until
    the test lets it go (so that the test decides what waits)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.started = threading.Semaphore(0)
        self.release: dict[str, threading.Event] = {}
        self.fail: set[int] = set()

    def gate(self, key: str) -> threading.Event:
        return self.release.setdefault(key, threading.Event())

    def __call__(self, key: str, items: list[int]) -> Sequence[str]:
        self.calls.append((key, list(items)))
        self.started.release()
        assert self.gate(key).wait(10), "the test never let the call go"
        if self.fail & set(items):
            raise ValueError("a bug in run")
        return [f"{key}:{item}" for item in items]


async def started(recorder: Recorder) -> None:
    """Until the next call has begun in its thread (bounded)."""
    assert await asyncio.to_thread(recorder.started.acquire, True, 10)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def test_items_arriving_during_a_call_go_in_the_next_one_in_order(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        combiner: LoopCombiner[str, int, str] = LoopCombiner(recorder, pool)
        first = asyncio.create_task(combiner.submit("k", 1))
        await started(recorder)
        rest = [asyncio.create_task(combiner.submit("k", n)) for n in (2, 3, 4)]
        await asyncio.sleep(0)  # every one of them has submitted
        recorder.gate("k").set()
        assert await first == "k:1"
        assert [await t for t in rest] == ["k:2", "k:3", "k:4"]
        assert recorder.calls == [("k", [1]), ("k", [2, 3, 4])]
        assert combiner._waiting == {}  # nothing left behind for the key

    asyncio.run(scenario())


def test_another_key_does_not_wait(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        combiner: LoopCombiner[str, int, str] = LoopCombiner(recorder, pool)
        held = asyncio.create_task(combiner.submit("a", 1))
        await started(recorder)
        other = asyncio.create_task(combiner.submit("b", 2))
        await started(recorder)  # b's call began while a's is still out
        recorder.gate("b").set()
        assert await other == "b:2"
        assert not held.done()
        recorder.gate("a").set()
        assert await held == "a:1"

    asyncio.run(scenario())


def test_a_failing_call_fails_its_requests_and_the_next_call_still_runs(
    pool: ThreadPoolExecutor,
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.fail = {1, 2}
        combiner: LoopCombiner[str, int, str] = LoopCombiner(recorder, pool)
        first = asyncio.create_task(combiner.submit("k", 1))
        await started(recorder)
        second = asyncio.create_task(combiner.submit("k", 2))
        third = asyncio.create_task(combiner.submit("k", 3))
        await asyncio.sleep(0)
        recorder.fail = {1}
        recorder.gate("k").set()
        with pytest.raises(RuntimeError, match="combined call failed") as caught:
            await first
        assert isinstance(caught.value.__cause__, ValueError)
        assert [await second, await third] == ["k:2", "k:3"]  # their call was not the bad one

    asyncio.run(scenario())


def test_a_cancelled_request_does_not_stop_the_others(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        combiner: LoopCombiner[str, int, str] = LoopCombiner(recorder, pool)
        first = asyncio.create_task(combiner.submit("k", 1))
        await started(recorder)
        leaving = asyncio.create_task(combiner.submit("k", 2))
        staying = asyncio.create_task(combiner.submit("k", 3))
        await asyncio.sleep(0)
        leaving.cancel()  # its client went away; its item is still in the next call
        recorder.gate("k").set()
        assert await first == "k:1"
        assert await staying == "k:3"
        assert leaving.cancelled()
        assert recorder.calls == [("k", [1]), ("k", [2, 3])]

    asyncio.run(scenario())


def test_a_wrong_number_of_results_is_an_error_for_every_request(
    pool: ThreadPoolExecutor,
) -> None:
    async def scenario() -> None:
        combiner: LoopCombiner[str, int, str] = LoopCombiner(lambda key, items: ["one"], pool)
        results = await asyncio.gather(
            combiner.submit("k", 1), combiner.submit("k", 2), return_exceptions=True
        )
        # the first call has one item and one result; the second has one item too
        assert list(results) == ["one", "one"]
        lone = LoopCombiner[str, int, str](lambda key, items: [], pool)
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            await lone.submit("k", 1)

    asyncio.run(scenario())


def test_a_pool_that_has_shut_down_fails_the_request_and_leaves_the_key_free() -> None:
    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        pool.shutdown()
        combiner: LoopCombiner[str, int, str] = LoopCombiner(lambda key, items: ["x"], pool)
        with pytest.raises(RuntimeError, match="combined call failed"):
            await combiner.submit("k", 1)
        assert combiner._waiting == {}  # a later request starts a call of its own

    asyncio.run(scenario())
