"""Activations of one key gathered on the event loop while the key's previous call is out.

Why: on PostgreSQL a key's activations run one call at a time (the call holds
the key's row, ``mak.store.pg_activate``), and every activation that arrives
meanwhile can ride on the next call. Gathered in worker threads, each of them
would hold a thread, wake with the others when a call ends, and cross between
the loop and a thread twice. Gathered here, a call of N activations is one
trip to a worker thread and back, and the waiting costs a future each.

``LoopCombiner.submit(key, item)`` is awaited by each request. With no call
out for ``key`` it starts one with that item; otherwise the item waits for the
next call, which starts, with everything that waited, as soon as the current
one ends. Different keys never wait for each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

_Batch = list[tuple[T, "asyncio.Future[R]"]]


class LoopCombiner(Generic[K, T, R]):
    """``run(key, items)`` in ``executor``, for the items of a key that gathered meanwhile.

    ``run`` returns one result per item, in order, and returns expected failures
    as results; should it raise, every request of that call gets a RuntimeError
    naming it (one exception object is never raised in several tasks).
    """

    def __init__(self, run: Callable[[K, list[T]], Sequence[R]], executor: Executor | None) -> None:
        self._run = run
        self._executor = executor
        #: A key is here while a call for it is out; its list is what waits for the next call.
        self._waiting: dict[K, _Batch[T, R]] = {}

    async def submit(self, key: K, item: T) -> R:
        """``item``'s result, from the call of ``key`` that took it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append((item, future))
        else:
            self._waiting[key] = []
            self._start(loop, key, [(item, future)])
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop, key: K, batch: _Batch[T, R]) -> None:
        items = [item for item, _ in batch]
        try:
            call = loop.run_in_executor(self._executor, self._run, key, items)
        except RuntimeError as exc:  # the pool has shut down: the service is stopping
            del self._waiting[key]  # no call is out for the key now
            _fail(batch, exc)
            return
        call.add_done_callback(partial(self._ended, loop, key, batch))

    def _ended(
        self,
        loop: asyncio.AbstractEventLoop,
        key: K,
        batch: _Batch[T, R],
        call: asyncio.Future[Sequence[R]],
    ) -> None:
        try:
            results = call.result()
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
        except Exception as exc:  # a bug in ``run``: every waiting request learns of it
            _fail(batch, exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a request cancelled meanwhile (its client left)
                    future.set_result(result)
        waiting = self._waiting[key]
        if waiting:
            self._waiting[key] = []
            self._start(loop, key, waiting)
        else:
            del self._waiting[key]


def _fail(batch: _Batch[T, R], exc: Exception) -> None:
    """Every request of ``batch`` still waiting gets its own RuntimeError caused by ``exc``."""
    for _, future in batch:
        if not future.done():
            failure = RuntimeError(f"the combined call failed: {exc!r}")
            failure.__cause__ = exc  # the service's log shows the traceback
            future.set_exception(failure)
