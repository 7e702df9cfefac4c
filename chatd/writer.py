"""Group commit: one task turns every pending state change into one transaction.

Connections :meth:`Writer.submit` operations and await the result. The writer
task takes everything pending (up to ``max_batch``), has the store apply it in
one transaction (one fsync for the lot), then, on the event loop and in this
order, publishes the committed events in seq order and resolves the callers'
futures. Publishing before acknowledging keeps the fanout's ``last_seq`` at least
as new as any seq a client has been told about.

While a commit is in flight new submissions queue up; they form the next batch.
So under load batches grow by themselves and at low load a lone send commits at
once, with no timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .exceptions import Unavailable
from .store import Operation, Published, Store

log = logging.getLogger("chatd.writer")


class Writer:
    def __init__(
        self,
        store: Store,
        publish: Callable[[list[Published]], None],
        *,
        max_batch: int = 512,
        max_pending: int = 20_000,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._clock = clock
        self._on_batch = on_batch
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatd-writer")

    async def submit(self, op: Operation) -> Any:
        """Apply ``op`` in the next batch; returns its result or raises its error.

        If the caller is cancelled the operation is still committed: what was
        submitted may already be in the transaction, and a client that retries
        with the same nonce gets the first result.
        """
        if self._closing:
            raise Unavailable("the server is shutting down")
        if len(self._pending) >= self._max_pending:
            # Storage cannot keep up: refuse rather than queue without bound.
            raise Unavailable("the server is overloaded; retry shortly")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Refuse new operations, commit the pending ones, stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            results, events = await self._store.apply(
                [op for op, _ in batch], int(self._clock() * 1000)
            )
        except Exception:
            log.exception("commit of %d operations failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(Unavailable("storage failure; try again"))
            return
        if events:
            self._publish(events)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
