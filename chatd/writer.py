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

A lone operation at low load is committed on the event loop's own thread
instead (``inline``, sqlite only): when the writer is idle and, once every
command already read in this round of the event loop has been submitted, only
that one is pending, handing it to the writing thread and its result back would
cost two thread switches, which on one core are a good part of a lone send's
ack. The trade-off: the event loop waits for that commit's fsync, which is why
it is done only for a batch of one, never while a batch is on the writing
thread, and not right after a batch of several (under load the next batch forms
on the writing thread while the event loop answers the last one; committing
the first lone arrival inline would stall both). A backend whose commit is a
network round trip (PostgreSQL) never commits inline.

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
        inline: bool = True,
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
        self._inline = inline and store.commits_inline
        #: a decision between inline and the writing thread is scheduled (also
        #: without inline commits: the writing thread then starts with every
        #: command read in this round of the event loop).
        self._kicked = False
        #: the size of the last batch committed: more than one means load, and
        #: under load the next lone operation goes to the writing thread too.
        self._last_batch = 1

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def submit(self, op: Op) -> Any:
        """Apply ``op`` in the next batch; returns its result or raises its error.

        If the caller is cancelled the operation is still committed: what was
        submitted may already be in the transaction, and a client that retries
        with the same nonce gets the first result.
        """
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> asyncio.Future[Any]:
        """:meth:`submit` without the coroutine: the future of ``op``'s result.
        Raises Unavailable at once when shutting down or overloaded."""
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
            kick = not self._draining and not self._kicked
            self._kicked = self._kicked or kick
        if kick:
            # Decide after the commands read in this round have been submitted.
            loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        """Commit a lone pending operation here, or start the writing thread."""
        loop = self._loop
        assert loop is not None
        with self._lock:
            self._kicked = False
            if self._draining or not self._pending:
                return
            self._draining = True
            # The writing thread's last batch is already published: it queued its
            # _done (call_soon_threadsafe) before it let go of _draining, and
            # this _kick was queued after that; the loop runs callbacks in the
            # order they were queued. So an inline commit never overtakes it.
            lone = (self._inline and len(self._pending) == 1 and self._last_batch == 1
                    and not self._closing)
            if lone:
                batch, self._pending = self._pending, []
        if not lone:
            self._task = loop.create_task(self._run_job())
            return
        started = time.perf_counter()
        try:
            # Nothing is submitted meanwhile: the loop is busy here.
            outcome = self._commit(batch)
        finally:
            with self._lock:
                self._draining = False
        if outcome is None or isinstance(outcome, Unavailable):
            self._failed(batch, outcome)
        else:
            self._done(batch, *outcome, time.perf_counter() - started)

    def _commit(
        self, batch: _Pending
    ) -> tuple[list[Result], list[Published]] | Unavailable | None:
        """Apply one batch in one transaction: its results and events, or the
        Unavailable it raised, or None for any other failure (logged)."""
        try:
            return self._store.apply_here([op for op, _ in batch], int(self._clock() * 1000))
        except Unavailable as exc:
            log.warning("commit of %d operations failed: %s", len(batch), exc.message)
            return exc
        except Exception:
            log.exception("commit of %d operations failed", len(batch))
            return None

    async def close(self) -> None:
        """Refuse new operations, commit the pending ones, stop."""
        self._closing = True
        # The newest job's task ends after every batch's _done has run: the
        # executor's result reaches the loop through the same queue, after them.
        # A scheduled _kick may still start one (it commits nothing inline now).
        while self._kicked or (self._task is not None and not self._task.done()):
            if self._task is not None and not self._task.done():
                await asyncio.shield(self._task)
            else:
                await asyncio.sleep(0)

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
            outcome = self._commit(batch)
            if outcome is None or isinstance(outcome, Unavailable):
                loop.call_soon_threadsafe(self._failed, batch, outcome)
                continue
            loop.call_soon_threadsafe(
                self._done, batch, *outcome, time.perf_counter() - started
            )

    def _done(
        self, batch: _Pending, results: list[Result], events: list[Published], seconds: float
    ) -> None:
        self._last_batch = len(batch)
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
