"""Fanout of committed events to subscribers, with the replay-to-live handover.

Every event is encoded once, by the store, when it is committed. The hub wraps
it in its WebSocket frame once (a server's frames are unmasked and chatd runs
without extensions, so the frame is the same bytes for every connection) and
writes one buffer per subscriber per commit batch straight to the transport:
subscribers without a filter share one joined buffer, so a batch costs one
write call per subscriber whatever its size. Like ``websockets.broadcast``,
this applies no backpressure and ignores the write limit, so the hub looks at
each connection's transport buffer itself: a subscriber with more than
``buffer_limit`` bytes unsent stops being written to ("lagging") and is later
caught up from the store, never from a queue in memory.
Memory per subscriber is therefore bounded by ``buffer_limit`` plus one replay
page, however slow it reads. Connections are reached only through their
:class:`~chatd.sink.Sink`. If its buffer does not drain below the low-water
mark for ``slow_timeout`` seconds, it is closed with 4000.

The handover (PROTOCOL.md guarantee 3, and issue 2's race):

* ``Hub.last_seq`` is the newest event published. The feed (:mod:`chatd.feed`)
  publishes every committed event once, in seq order, after its commit, so every
  event with seq <= last_seq is in the store (or was deleted from it, which
  replay honours), and every event with seq > last_seq will still pass through
  :meth:`Hub.publish`.
* A subscription has a ``cursor``: every event <= cursor has been written to it
  or was deliberately not (filtered out, or deleted before it was read).
* Catching up, it reads events > cursor from one store snapshot, writes them and
  moves the cursor. A short read means the snapshot had nothing more: the cursor
  moves to the snapshot's position ``upto``, which may be ahead of last_seq
  (committed, not yet published). Then, with no ``await`` between the test and
  the switch, if cursor >= last_seq the subscription joins the live set: no
  event can be published between the test and the switch, the events
  <= last_seq are all behind the cursor, and every later one will be published
  to it. Otherwise it reads again.
* Live, an event is written only if its seq > cursor, so an event that the
  last store read already delivered (seq in (last_seq, upto]) is not sent twice.

A lagging subscriber leaves the live set with its cursor at the last event
written and goes through the same catch-up, so lagging and resuming share one
path.

Who receives what (PROTOCOL.md "Who sees what"): each published event carries
its audience, decided when it was committed (:class:`~chatd.ops.Published`):
None for a public channel's event, otherwise the user ids that may see it. The
hub keeps its live subscriptions indexed by user too. A batch of public events
costs what it always did; a batch whose events all have audiences touches only
the subscriptions of those users, so an event of a private channel of 10
members costs the same however many other connections there are. A mixed batch
walks every subscription once, as a public one does, and filters only for the
users named in an audience. Catch-up reads apply the same rule from the stored
membership intervals (:mod:`chatd.visibility`).

Ephemeral frames (typing, presence: :meth:`Hub.ephemeral`) are not events: no
seq, no cursor, never read back from the store. They go to the subscriptions
made with ``ephemeral`` (live or catching up, since they cannot disturb the seq
order), each framed once, gathered for a few milliseconds and written with one
write per subscription; a subscription that is lagging, or has more than half
its buffer limit unsent, simply misses them, so they are never held for a slow
reader and never push one into lagging. The hub
keeps those subscriptions by user id, so a frame with an audience (the users
who may see its channel) costs a lookup per audience member, not a scan of
every connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from .ops import EventPage, Published
from .sink import Sink, text_frame

log = logging.getLogger("chatd.fanout")

#: (after, channels, limit, user id) -> the page of events that user may see
ReadEvents = Callable[[int, frozenset[str] | None, int, str], Awaitable[EventPage]]

CLOSE_TOO_SLOW = 4000


class Subscription:
    __slots__ = ("_task", "channels", "closed", "cursor", "ephemeral", "hub", "lagging", "live",
                 "sink", "user_id")

    def __init__(
        self, hub: Hub, sink: Sink, channels: frozenset[str] | None, cursor: int,
        user_id: str | None = None, ephemeral: bool = False,
    ) -> None:
        self.hub = hub
        self.sink = sink
        self.channels = channels
        self.cursor = cursor
        #: whose connection it is: events and ephemeral frames with an audience
        #: reach it only when this user is in it
        self.user_id = user_id
        self.ephemeral = ephemeral
        self.live = False
        #: caught up from the store because it read too slowly (not a plain replay).
        self.lagging = False
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    def catch_up(self) -> None:
        self.live = False
        self._task = asyncio.create_task(self._catch_up())

    def cancel(self) -> None:
        self.closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _catch_up(self) -> None:
        hub = self.hub
        try:
            while not self.closed:
                if not await self._wait_for_room():
                    return
                # No user (tests' bare hubs): public events only.
                page = await hub.read_events(
                    self.cursor, self.channels, hub.page_size, self.user_id or "")
                if self.closed:
                    return
                if page.horizon > self.cursor:
                    # Expiry dropped events this subscriber has not seen: it must resync.
                    self._close_slow("fell behind the retained history")
                    return
                if page.events:
                    self.sink.write(b"".join(text_frame(f) for _, f in page.events))
                    self.cursor = page.events[-1][0]
                if page.more:
                    # Cut at the read limit: the events it read and left out (not this
                    # user's to see) are behind the cursor too.
                    self.cursor = max(self.cursor, page.scanned)
                else:
                    self.cursor = max(self.cursor, page.upto)
                    if self.cursor >= hub.last_seq:  # no await from here to the switch
                        hub.go_live(self)
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("catch-up failed")
            self._close_slow("internal error during catch-up", code=1011)

    async def _wait_for_room(self) -> bool:
        hub = self.hub
        low = hub.buffer_limit // 2
        if self.sink.buffered() <= low:
            return True
        deadline = time.monotonic() + hub.slow_timeout
        while self.sink.buffered() > low:
            if self.closed or not self.sink.open:
                return False
            if time.monotonic() > deadline:
                self._close_slow("read too slowly")
                return False
            await asyncio.sleep(hub.poll_interval)
        return True

    def _close_slow(self, reason: str, code: int = CLOSE_TOO_SLOW) -> None:
        self.hub.unsubscribe(self)
        if code == CLOSE_TOO_SLOW:
            self.hub.on_slow_close()
        self.hub.close_later(self.sink, code, reason)


class Hub:
    """The live subscriber set and the event fanout; see the module docstring."""

    def __init__(
        self,
        last_seq: int,
        read_events: ReadEvents,
        *,
        buffer_limit: int = 256 * 1024,
        slow_timeout: float = 30.0,
        page_size: int = 1000,
        poll_interval: float = 0.02,
        on_slow_close: Callable[[], None] = lambda: None,
        ephemeral_delay: float = 0.0,
    ) -> None:
        self.last_seq = last_seq
        self.read_events = read_events
        self.buffer_limit = buffer_limit
        self.slow_timeout = slow_timeout
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.on_slow_close = on_slow_close
        self._live: dict[Subscription, None] = {}
        #: the live subscriptions by user id, for events with an audience
        self._by_user: dict[str, dict[Subscription, None]] = {}
        #: user id -> that user's subscriptions made with ``ephemeral``
        self._ephemeral: dict[str, dict[Subscription, None]] = {}
        self.ephemeral_delay = ephemeral_delay
        self._pending: list[tuple[bytes, frozenset[str] | None, str | None, Sink | None]] = []
        self._flush: asyncio.TimerHandle | None = None
        #: ephemeral frames written so far (each counted once per connection)
        self.ephemeral_frames = 0
        self._closing: set[asyncio.Task[None]] = set()
        self.subscribers = 0
        self.lagging = 0

    def subscribe(
        self, sink: Sink, channels: frozenset[str] | None, since: int | None,
        user_id: str | None = None, ephemeral: bool = False,
    ) -> Subscription:
        """Start a subscription; the caller has already written the ``ok``.

        Without ``since`` it is live from ``last_seq`` at once; with it, it
        catches up from the store first. With ``ephemeral`` (and a user id) it
        also gets the ephemeral frames.
        """
        self.subscribers += 1
        sub = Subscription(self, sink, channels, self.last_seq if since is None else since,
                           user_id, ephemeral and user_id is not None)
        if sub.ephemeral:
            assert user_id is not None
            self._ephemeral.setdefault(user_id, {})[sub] = None
        if since is None:
            self.go_live(sub)
        else:
            sub.catch_up()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        if sub.ephemeral:
            _unindex(self._ephemeral, sub)
        self._leave_live(sub)
        self._set_lagging(sub, False)
        self.subscribers -= 1
        sub.cancel()

    def close_later(self, sink: Sink, code: int, reason: str) -> None:
        task = asyncio.create_task(sink.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def go_live(self, sub: Subscription) -> None:
        self._set_lagging(sub, False)
        sub.live = True
        self._live[sub] = None
        if sub.user_id is not None:
            self._by_user.setdefault(sub.user_id, {})[sub] = None

    def _leave_live(self, sub: Subscription) -> None:
        self._live.pop(sub, None)
        sub.live = False
        _unindex(self._by_user, sub)

    def _set_lagging(self, sub: Subscription, lagging: bool) -> None:
        if sub.lagging != lagging:
            sub.lagging = lagging
            self.lagging += 1 if lagging else -1

    def publish(self, events: list[Published]) -> None:
        """Write one commit's events, in seq order, to every live subscriber."""
        if not events:
            return
        first, last = events[0].seq, events[-1].seq
        self.last_seq = last
        frames = [text_frame(e.frame) for e in events]
        # The users some event of the batch is restricted to; everyone else gets
        # the batch's public events, the same bytes for all.
        named: set[str] = set()
        any_public = False
        for e in events:
            if e.audience is None:
                any_public = True
            else:
                named.update(e.audience)
        # Without a public event only the named users can receive anything:
        # never walk the others.
        subs: Iterable[Subscription] = (
            self._live if any_public
            else [s for u in named for s in self._by_user.get(u, ())])
        shared: bytes | None = None
        limit = self.buffer_limit
        lagging: list[Subscription] = []
        for sub in subs:
            if sub.cursor >= last:
                continue
            if sub.sink.buffered() > limit:
                lagging.append(sub)
                continue
            if sub.channels is None and sub.cursor < first and (
                    sub.user_id is None or sub.user_id not in named):
                if shared is None:
                    shared = b"".join(
                        f for e, f in zip(events, frames, strict=True) if e.audience is None)
                data = shared
            else:
                user_id = sub.user_id
                data = b"".join(
                    f for e, f in zip(events, frames, strict=True)
                    if e.seq > sub.cursor
                    and (sub.channels is None or e.channel_id in sub.channels)
                    and (e.audience is None or user_id in e.audience)
                )
            # Every event of the batch was written or filtered out: all are behind.
            sub.cursor = last
            if data:
                sub.sink.write(data)
        for sub in lagging:
            self._leave_live(sub)
            self._set_lagging(sub, True)
            sub.catch_up()

    def ephemeral(
        self,
        frame: bytes,
        audience: frozenset[str] | None,
        channel_id: str | None = None,
        exclude: Sink | None = None,
    ) -> None:
        """Send an encoded ephemeral frame to the ephemeral subscriptions of the
        users in ``audience`` (None: of every user), but not to ``exclude`` (the
        connection it came from) and not to a subscription whose ``channels``
        filter leaves out ``channel_id``. Best effort (see the module docstring).

        Frames are gathered for ``ephemeral_delay`` seconds and then written with
        one write per subscription: a typing storm costs a write per subscriber
        per flush rather than per frame (a notice shown for seconds does not
        mind 50 ms). The audience is looked up at the flush, so a subscription
        that ended meanwhile is not written to. With no delay, now.
        """
        self._pending.append((text_frame(frame), audience, channel_id, exclude))
        if self.ephemeral_delay <= 0:
            self.flush_ephemeral()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(
                self.ephemeral_delay, self.flush_ephemeral)

    def flush_ephemeral(self) -> None:
        """Write the ephemeral frames gathered so far."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        pending, self._pending = self._pending, []
        index = self._ephemeral
        out: dict[Subscription, list[bytes]] = {}
        for data, audience, channel_id, exclude in pending:
            if audience is None:
                groups = list(index.values())
            else:
                groups = [index[u] for u in audience if u in index]
            for subs in groups:
                for sub in subs:
                    if sub.sink is exclude:
                        continue
                    if channel_id is not None and sub.channels is not None \
                            and channel_id not in sub.channels:
                        continue
                    frames = out.get(sub)
                    if frames is None:
                        out[sub] = [data]
                    else:
                        frames.append(data)
        room = self.buffer_limit // 2
        written = 0
        for sub, frames in out.items():
            # Events first: a subscription being caught up, or short of room,
            # goes without.
            if sub.lagging or sub.sink.buffered() > room:
                continue
            sub.sink.write(frames[0] if len(frames) == 1 else b"".join(frames))
            written += len(frames)
        self.ephemeral_frames += written


def _unindex(index: dict[str, dict[Subscription, None]], sub: Subscription) -> None:
    """Take ``sub`` out of a by-user index, and its user once it has none left."""
    if sub.user_id is None:
        return
    subs = index.get(sub.user_id)
    if subs is not None:
        subs.pop(sub, None)
        if not subs:
            del index[sub.user_id]
