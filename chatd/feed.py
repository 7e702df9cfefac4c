"""The stream of committed events that feeds the fanout.

Fanout must see every committed event exactly once and in seq order, whichever
process committed it. A :class:`Feed` is where those events come from:

* :class:`LocalFeed` (sqlite): the daemon is the only process that commits
  events to its file, so the writer's own commits, handed over in commit order,
  are the whole stream. Publishing them as they commit costs nothing extra.
* A tail of the events table (PostgreSQL, several nodes): each node reads events
  by seq as they commit, from any node, and publishes them; a commit of its own
  only wakes the tail. It plugs in behind the same two calls.

The writer calls :meth:`Feed.committed` after each commit and replies to the
commands of that batch only in ``then``: once the batch's events, and every
event before them, have been published. So a client is never told about a seq
(an ``ok`` carrying it) that this node's subscribers have not been sent yet, and
``Hub.last_seq`` is at least as new as any seq a client has seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol

from .ops import Published, TailPage

log = logging.getLogger("chatd.feed")


class Feed(Protocol):
    def committed(self, events: list[Published], then: Callable[[], None]) -> None:
        """This process committed ``events`` (seq order, not empty); call ``then``
        once they and every earlier event are published."""
        ...


class LocalFeed:
    """The writer's commits are the stream: publish them at once, then reply."""

    __slots__ = ("_publish",)

    def __init__(self, publish: Callable[[list[Published]], None]) -> None:
        self._publish = publish

    def committed(self, events: list[Published], then: Callable[[], None]) -> None:
        self._publish(events)
        then()


class TailFeed:
    """Every node's view of one shared database: read the events table by seq.

    A task reads committed events after ``cursor`` (one store snapshot a page),
    publishes them in seq order and moves the cursor to the snapshot's position.
    It reads when woken: by :meth:`wake` (a notification that another node
    committed: PostgreSQL's ``NOTIFY``, no payload), by a commit of this node
    that it has not seen yet, and at the latest every ``poll_interval`` seconds,
    so a lost notification costs at most that much latency, never an event.

    A commit of this node usually needs no read at all: a batch's events are
    numbered on from the counter as it was when the batch's transaction took
    it, so when the cursor is exactly one below the batch's first seq nothing
    else committed in between, and the batch is published as it is. Otherwise
    the batch waits for the tail to read past it; either way its ``then`` runs
    once every event up to it is published, in commit order.

    Trade-off: a read that fails (the database is unreachable) is retried after
    ``poll_interval`` from the same cursor, so nothing is skipped; meanwhile
    ``healthy`` is False, and this node's commits fail too (``unavailable``).
    """

    def __init__(
        self,
        read_events: Callable[[int, int], Awaitable[TailPage]],
        publish: Callable[[list[Published]], None],
        *,
        cursor: int,
        poll_interval: float = 0.5,
        page_size: int = 1000,
        on_health: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self._read = read_events
        self._publish = publish
        #: every committed event <= cursor has been published (or was deleted unread).
        self.cursor = cursor
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.healthy = True
        self._on_health = on_health
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def committed(self, events: list[Published], then: Callable[[], None]) -> None:
        if self.cursor == events[0].seq - 1 and not self._waiters:
            self._emit(events)
            then()
            return
        self._waiters.append((events[-1].seq, then))
        self._wake.set()

    def _emit(self, events: list[Published]) -> None:
        fresh = [e for e in events if e.seq > self.cursor]
        if fresh:
            self.cursor = fresh[-1].seq
            self._publish(fresh)

    def _release(self) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.cursor:
            _, then = waiters.pop(0)
            then()

    def _health(self, ok: bool) -> None:
        if ok != self.healthy:
            self.healthy = ok
            self._on_health(ok)

    async def _run(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: retry from the same cursor
                if self.healthy:
                    log.warning("event tail: read failed (%s); retrying", exc)
                self._health(False)
                continue
            self._health(True)

    async def catch_up(self) -> None:
        """Read and publish until a snapshot has nothing more."""
        while True:
            page = await self._read(self.cursor, self.page_size)
            self._emit(page.events)
            if not page.more:
                self.cursor = max(self.cursor, page.upto)
                self._release()
                return
            self._release()

