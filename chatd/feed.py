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

from collections.abc import Callable
from typing import Protocol

from .ops import Published


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
