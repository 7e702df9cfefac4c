"""Group commit: every pending state change goes into one transaction.

Connections :meth:`Writer.submit` operations and await the result. A drain job
on the store's writing thread takes everything pending (up to ``max_batch``),
has the store apply it in one transaction (one fsync for the lot), hands the
results to the event loop, and takes the next batch at once, for as long as
anything is pending. On the event loop, batch by batch in commit order, the
committed events go to the :class:`~chatd.feed.Feed`, and the callers' futures
are resolved once the feed has published them (see :mod:`chatd.feed` for why).

While a commit is in flight new submissions queue up; they form the next batch.
So under load batches grow by themselves and at low load a lone send commits at
once, with no timer.

Why the loop runs on the writing thread and not as a task: a task would take
each next batch only when the event loop got round to it, after the previous
batch's replies; under load the writer then sat idle for about as long as it
committed. Here the writer goes straight from one commit to the next, and the
event loop is woken once per batch (``call_soon_threadsafe``). The pending list
is shared by the two threads under a lock held for a few list operations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .exceptions import Unavailable
from .feed import Feed
from .ops import Op, Published, Result
from .store import Store

log = logging.getLogger("chatd.writer")

_Pending = list[tuple[Op, "asyncio.Future[Any]"]]


class Writer:
    def __init__(
        self,
        store: Store,
        feed: Feed,
        *,
        max_batch: int = 512,
        max_pending: int = 20_000,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._store = store
        self._feed = feed
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._clock = clock
        self._on_batch = on_batch
        self._pending: _Pending = []
        self._lock = threading.Lock()
        #: a drain job is queued or running on the writing thread (under _lock).
        self._draining = False
        #: the task awaiting the newest drain job.
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def submit(self, op: Op) -> Any:
        """Apply ``op`` in the next batch; returns its result or raises its error.

        If the caller is cancelled the operation is still committed: what was
        submitted may already be in the transaction, and a client that retries
        with the same nonce gets the first result.
        """
        loop = self._loop
        assert loop is not None, "Writer.start() first"
        if self._closing:
            raise Unavailable("the server is shutting down")
        if len(self._pending) >= self._max_pending:
            # Storage cannot keep up: refuse rather than queue without bound.
            raise Unavailable("the server is overloaded; retry shortly")
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append((op, fut))
            idle = not self._draining
            self._draining = True
        if idle:
            self._task = loop.create_task(self._run_job())
        return await fut

    async def close(self) -> None:
        """Refuse new operations, commit the pending ones, stop."""
        self._closing = True
        # The newest job's task ends after every batch's _done has run: the
        # executor's result reaches the loop through the same queue, after them.
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run_job(self) -> None:
        try:
            await self._store.run_on_writer(self._drain)
        except Exception:  # pragma: no cover - _drain catches what apply raises
            log.exception("the writer's drain job failed")
            with self._lock:
                batch, self._pending = self._pending, []
                self._draining = False
            self._failed(batch)

    def _drain(self) -> None:
        """On the writing thread: commit batches until nothing is pending."""
        loop = self._loop
        assert loop is not None
        while True:
            with self._lock:
                if not self._pending:
                    self._draining = False
                    return
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
            started = time.perf_counter()
            try:
                results, events = self._store.apply_here(
                    [op for op, _ in batch], int(self._clock() * 1000)
                )
            except Unavailable as exc:
                log.warning("commit of %d operations failed: %s", len(batch), exc.message)
                loop.call_soon_threadsafe(self._failed, batch, exc)
                continue
            except Exception:
                log.exception("commit of %d operations failed", len(batch))
                loop.call_soon_threadsafe(self._failed, batch)
                continue
            loop.call_soon_threadsafe(
                self._done, batch, results, events, time.perf_counter() - started
            )

    def _done(
        self, batch: _Pending, results: list[Result], events: list[Published], seconds: float
    ) -> None:
        if events:
            self._feed.committed(events, lambda: self._resolve(batch, results))
        else:
            self._resolve(batch, results)
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)

    @staticmethod
    def _resolve(batch: _Pending, results: list[Result]) -> None:
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    @staticmethod
    def _failed(batch: _Pending, error: Unavailable | None = None) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(error or Unavailable("storage failure; try again"))
