"""The event stream behind :meth:`Client.events`: where it stands, and the queue
between the connection that reads events and the consumer that takes them.

The reader never waits for the consumer: it puts events in a queue of at most
``max_queued_events``. At that bound the subscription stops taking events (the
ones after it are dropped on arrival) and, once the consumer has emptied the
queue, subscribes again from the last event queued. A slow consumer so costs
replays from the server's storage rather than memory here; the position makes
each event come out once however often the server sends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from .. import wire
from ..exceptions import ClientError, CommandTimeout, ResumeGap
from ._replies import BadEvent, Ephemeral

log = logging.getLogger("chatd.client")

T = TypeVar("T")


@dataclass
class StreamPosition:
    """Where an event stream stands: the epoch and the seq of the last event accepted.

    ``seq is None`` means "from whatever is current when the subscription starts".
    """

    epoch: str | None = None
    seq: int | None = None
    duplicates: int = 0

    def subscribe(
        self, channels: Sequence[str] | None = None, ephemeral: bool = False
    ) -> wire.Subscribe:
        """The command that continues the stream from here."""
        return wire.Subscribe(
            since=self.seq, epoch=self.epoch, channels=list(channels) if channels else None,
            ephemeral=ephemeral,
        )

    def subscribed(self, ok: wire.SubscribeOk) -> None:
        if self.seq is None:
            self.seq = ok.resume_point
        self.epoch = ok.epoch

    def accept(self, event: wire.Event) -> bool:
        """True if ``event`` is new; an event at or before the position is a repeat.

        Repeats are expected, not a server fault: when a subscription is replaced
        on the same connection, or written twice across a reconnect, the newer one
        replays what the older one already delivered.
        """
        if self.seq is not None and event.seq <= self.seq:
            self.duplicates += 1
            return False
        self.seq = event.seq
        return True

    def reset(self, boot: wire.BootOk) -> None:
        # Unconditional: a new epoch restarts the seq space, so the new resume
        # point may be lower than the old position.
        self.epoch = boot.epoch
        self.seq = boot.resume_point


@dataclass(frozen=True)
class Reset:
    """Yielded by :meth:`Client.events` when the server no longer has the events
    after our position (``resume_gap``): events were lost to expiry, or the
    database was replaced. ``boot`` is a fresh snapshot; the stream continues with
    the events after ``boot.resume_point``. Rebuild any state derived from events.
    """

    boot: wire.BootOk
    gap: ResumeGap


@dataclass(frozen=True)
class _Gap:
    error: ResumeGap


@dataclass(frozen=True)
class _Stop:
    error: BaseException


class _Overflow:
    pass


_OVERFLOW = _Overflow()
_Item = wire.Event | Ephemeral | _Gap | _Stop | _Overflow


@dataclass(eq=False)
class Subscription:
    """One ``events()`` stream: its position, its queue, and whether the current
    connection feeds it."""

    pos: StreamPosition
    channels: list[str] | None
    max_queued: int
    on_gap: Literal["reset", "raise"] = "reset"
    #: also yield typing and presence frames (``subscribe`` with ``ephemeral``)
    ephemeral: bool = False
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    # Established at least once and not waiting on the consumer (after a gap or an
    # overflow): a new connection must resubscribe before anything else.
    live: bool = False
    # Events arriving on the current connection belong to this subscription.
    active: bool = False
    # What the consumer's next step must do first: (re)subscribe (at the start,
    # after an overflow or a Reset), or handle a gap.
    _resubscribe: bool = True
    _gap: ResumeGap | None = None

    def command(self) -> wire.Subscribe:
        """The subscribe that continues the stream from its position."""
        return self.pos.subscribe(self.channels, self.ephemeral)

    def subscribed(self, ok: wire.SubscribeOk) -> None:
        self.pos.subscribed(ok)
        self.live = self.active = True

    def lost(self, gap: ResumeGap) -> None:
        """The server refused to resume from the position: the consumer must reset."""
        self.live = False
        self.queue.put_nowait(_Gap(gap))

    def take(self, frame: wire.Event | BadEvent, raw: str | bytes) -> None:
        """An event frame read on the connection while the subscription is active."""
        if isinstance(frame, BadEvent):
            # Skipping it would break "every event"; end the stream loudly instead.
            log.error("malformed event from server (%s): %r", frame.error, raw[:200])
            self.stop(ClientError(f"undecodable event from server: {frame.error}"))
            return
        if not self.pos.accept(frame):
            return
        self.queue.put_nowait(frame)
        if self.queue.qsize() >= self.max_queued:
            # Stop taking events until the consumer has caught up; it then
            # resubscribes from the last queued seq, replacing this subscription.
            self.live = self.active = False
            self.queue.put_nowait(_OVERFLOW)

    def take_ephemeral(self, frame: Ephemeral) -> None:
        """A typing or presence frame: queued unless the queue is full. Dropped
        then, never a reason to resubscribe: they are best effort and never
        replayed, so waiting for the consumer could not bring them back."""
        if self.queue.qsize() < self.max_queued:
            self.queue.put_nowait(frame)

    def stop(self, error: BaseException) -> None:
        """End the stream: the consumer gets ``error`` after the events queued."""
        self.end()
        self.queue.put_nowait(_Stop(error))

    def end(self) -> None:
        self.live = self.active = False

    async def next_item(
        self,
        subscribe: Callable[[], Awaitable[ResumeGap | None]],
        boot: Callable[[], Awaitable[wire.BootOk]],
    ) -> wire.Event | Ephemeral | Reset:
        """What the consumer gets next. ``subscribe`` (re)subscribes from the
        position and returns the gap if the server refused; ``boot`` is the
        snapshot a Reset carries."""
        while True:
            if self._resubscribe:
                self._resubscribe = False
                self._gap = await subscribe()
            if self._gap is not None:
                gap, self._gap = self._gap, None
                if self.on_gap == "raise":
                    raise gap
                snapshot = await boot()
                self.pos.reset(snapshot)
                # Resubscribed on the consumer's next step, from the snapshot's
                # resume point, as after an overflow.
                self._resubscribe = True
                return Reset(boot=snapshot, gap=gap)
            item = await self.queue.get()
            if isinstance(item, wire.Event | wire.EphemeralTyping | wire.EphemeralPresence):
                return item
            if isinstance(item, _Gap):
                self._gap = item.error
            elif isinstance(item, _Overflow):
                self._resubscribe = True
            else:
                raise item.error


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Repeat an idempotent call past ``CommandTimeout``: a stream has no
    deadline, only the reconnect policy decides when to give up."""
    while True:
        try:
            return await call()
        except CommandTimeout as exc:
            log.info("%s; trying again", exc)
