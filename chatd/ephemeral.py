"""Typing and presence: the live-only notices of PROTOCOL.md ("Ephemeral frames").

Nothing here is stored as an event or replayed; every frame is best effort.
:class:`Ephemeral` is one node's part and the only code that decides which
typing and presence frames go out; the :class:`~chatd.fanout.Hub` writes them.

**Typing.** Who may receive a typing frame is :meth:`chatd.store.Store.typing_audience`
(the channel as the wire shows it, and the user ids that may see it, or None for
everyone), so the rule lives in one place. A node forwards at most one typing
per (user, channel) per ``typing_interval``; the rest are answered ``ok`` and
dropped. With several nodes the node that got the command also sends it to the
others (``NOTIFY chatd_ephemeral``: its encoded frame, the channel and user
ids, well under PostgreSQL's 8000-byte payload limit); each of them looks the
audience up itself and applies the same limit before writing it to its own
subscribers. So a subscriber sees at most one typing per user and channel per
interval whichever nodes the user types on (two nodes each may forward one, and
each recipient's node lets only the first of them through).

**Presence.** A user is online while at least one of its connections is logged
in, on any node. Each node counts its own logged-in connections per user
(``connected``/``disconnected``); its own changes are announced at once. On
sqlite there is one node and that is all. On PostgreSQL (``shared`` backends)
each node also keeps, in two UNLOGGED tables (:mod:`chatd.postgres_store`), a
row per user it has online and a heartbeat row of its own, renewed every
``presence_heartbeat``. A node re-reads the other nodes' users (of nodes whose
heartbeat is younger than ``presence_expiry``) when another node notifies a
change, and at every heartbeat; it announces the differences to its
subscribers. A node that dies without a word (SIGKILL, a lost machine) stops
renewing its heartbeat, so within ``presence_expiry`` plus one heartbeat every
other node stops counting its users and announces the ones that are online
nowhere else as offline.

Trade-offs of that design: the database, not the nodes' clocks, times the
heartbeats (``now()``), so clock skew between machines does not matter; a
heartbeat is one small write per node per interval whatever the number of
users; a change costs one write and one notification, and each other node one
read of the online users (coalesced: changes that arrive during a read are
covered by the next one), which grows with the number of users online, not
with the rate of changes. The tables are runtime state only (UNLOGGED: not
WAL-logged, emptied by a crash of the database server, which the heartbeat
notices and answers by writing its rows again), so they need no migration.
A node cut off from the database keeps announcing its own users' changes, and
writes all of its rows again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol, cast

import msgspec

from . import crypto, wire
from .config import Config
from .exceptions import NotFound
from .fanout import Hub
from .sink import Sink
from .store import Store

log = logging.getLogger("chatd.ephemeral")

#: audience lookups kept at most (a cache, valid while no event was published)
_AUDIENCE_CACHE = 4096


class PresenceBackend(Protocol):
    """What a shared backend (PostgreSQL) offers for typing and presence across nodes."""

    async def presence_write(
        self, node_id: str, add: list[tuple[str, str]], remove: list[str], *, full: bool
    ) -> bool:
        """Renew the heartbeat of ``node_id`` and record its users: add (id, name)
        rows and remove ids, or with ``full`` replace all of its rows by ``add``;
        then notify the other nodes. True when the heartbeat row had to be made
        anew, as for :meth:`presence_beat`."""
        ...

    async def presence_beat(self, node_id: str, expiry: float) -> bool:
        """Renew the heartbeat, forget nodes silent for ``expiry`` seconds; True
        when this node's heartbeat row had to be made anew (its rows are gone)."""
        ...

    async def presence_read(self, node_id: str, expiry: float) -> list[tuple[str, str]]:
        """(id, name) of the users online on the other live nodes."""
        ...

    async def notify_ephemeral(self, payload: bytes) -> None:
        """Send ``payload`` to every node's ``listen(..., ephemeral=...)``."""
        ...

    async def presence_leave(self, node_id: str) -> None:
        """This node stops: drop its heartbeat and its rows at once."""
        ...


class Notice(msgspec.Struct, tag_field="k", omit_defaults=True):
    """A notification between nodes (``NOTIFY chatd_ephemeral``)."""

    node: str


class TypingNotice(Notice, tag="t"):
    channel: str
    user: str
    #: the encoded ephemeral frame, as the receiving nodes write it
    frame: msgspec.Raw


class PresenceNotice(Notice, tag="p"):
    pass


_notice_decoder = msgspec.json.Decoder(TypingNotice | PresenceNotice)
_encode = msgspec.json.Encoder().encode


class Ephemeral:
    """One node's typing and presence; see the module docstring."""

    def __init__(
        self, config: Config, store: Store, hub: Hub, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.clock = clock
        self.node_id = crypto.new_id("N")
        self._cluster: PresenceBackend | None = (
            cast(PresenceBackend, store.backend) if store.backend.shared else None)
        #: (user id, channel id) -> when its last typing was forwarded
        self._forwarded: dict[tuple[str, str], float] = {}
        self._audiences: dict[tuple[str, str],
                              tuple[int, wire.Channel, frozenset[str] | None]] = {}
        #: user id -> [the user, its logged-in connections on this node]
        self._local: dict[str, tuple[wire.User, int]] = {}
        #: users online on the other live nodes, as last read
        self._remote: dict[str, wire.User] = {}
        #: this node's changes not yet written for the other nodes: id -> online
        self._pending: dict[str, wire.User | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: typing notices from other nodes being looked at
        self.tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- typing

    async def typing(self, sink: Sink, user: wire.User, channel_id: str) -> None:
        """The ``typing`` command of ``user`` on the connection ``sink``: NotFound
        for a channel it cannot see; otherwise forwarded, unless rate limited."""
        channel, audience = await self._audience(channel_id, user.id)
        if not self._may_forward(user.id, channel_id):
            return
        frame = wire.encode(wire.EphemeralTyping(channel=channel, user=user))
        self.hub.ephemeral(frame, audience, channel_id, exclude=sink)
        if self._cluster is not None:
            notice = TypingNotice(self.node_id, channel_id, user.id, msgspec.Raw(frame))
            try:
                await self._cluster.notify_ephemeral(_encode(notice))
            except Exception as exc:  # best effort: this node's subscribers have it
                log.warning("typing not sent to the other nodes: %s", exc)

    async def _audience(
        self, channel_id: str, user_id: str
    ) -> tuple[wire.Channel, frozenset[str] | None]:
        """:meth:`Store.typing_audience`, cached while no event was published (every
        change to a channel or its members is an event)."""
        key = (channel_id, user_id)
        seq = self.hub.last_seq
        hit = self._audiences.get(key)
        if hit is not None and hit[0] == seq:
            return hit[1], hit[2]
        channel, audience = await self.store.typing_audience(channel_id, user_id)
        if len(self._audiences) >= _AUDIENCE_CACHE:
            self._audiences.clear()
        self._audiences[key] = (seq, channel, audience)
        return channel, audience

    def _may_forward(self, user_id: str, channel_id: str) -> bool:
        now = self.clock()
        interval = self.config.typing_interval
        key = (user_id, channel_id)
        last = self._forwarded.get(key)
        if last is not None and now - last < interval:
            return False
        if len(self._forwarded) >= 10_000:
            # Entries older than the interval decide nothing any more.
            self._forwarded = {k: t for k, t in self._forwarded.items() if now - t < interval}
        self._forwarded[key] = now
        return True

    def notice(self, payload: str) -> None:
        """A notification from another node (``listen``'s ``ephemeral`` callback)."""
        try:
            notice = _notice_decoder.decode(payload)
        except msgspec.MsgspecError:
            log.warning("ignored an unreadable ephemeral notice: %.100r", payload)
            return
        if notice.node == self.node_id:
            return
        if isinstance(notice, PresenceNotice):
            self._wake.set()
        else:
            task = asyncio.get_running_loop().create_task(self._remote_typing(notice))
            # Held until done: the loop keeps only a weak reference to a task.
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("typing from another node failed: %s", task.exception())

    async def _remote_typing(self, notice: TypingNotice) -> None:
        try:
            _, audience = await self._audience(notice.channel, notice.user)
        except NotFound:  # deleted meanwhile, or not visible to the user here
            return
        if self._may_forward(notice.user, notice.channel):
            self.hub.ephemeral(bytes(notice.frame), audience, notice.channel)

    # ---------------------------------------------------------------- presence

    def online(self) -> list[str]:
        """The ids of the users online now, on any node (as far as known here)."""
        return sorted(self._local.keys() | self._remote.keys())

    def connected(self, user: wire.User) -> None:
        """A connection of ``user`` logged in on this node."""
        entry = self._local.get(user.id)
        self._local[user.id] = (user, 1 if entry is None else entry[1] + 1)
        if entry is None:
            if user.id not in self._remote:
                self._announce(user, True)
            self._changed(user.id, user)

    def disconnected(self, user: wire.User) -> None:
        """A logged-in connection of ``user`` logged out or closed."""
        entry = self._local.get(user.id)
        if entry is None:
            return
        if entry[1] > 1:
            self._local[user.id] = (entry[0], entry[1] - 1)
            return
        del self._local[user.id]
        if user.id not in self._remote:
            self._announce(entry[0], False)
        self._changed(user.id, None)

    def _announce(self, user: wire.User, online: bool) -> None:
        frame = wire.encode(wire.EphemeralPresence(user=user, online=online))
        self.hub.ephemeral(frame, None)

    def _changed(self, user_id: str, user: wire.User | None) -> None:
        if self._cluster is not None:
            self._pending[user_id] = user
            self._wake.set()

    def _remote_online(self, rows: list[tuple[str, str]]) -> None:
        """The users online on the other nodes now: announce who came and went."""
        remote = {uid: wire.User(uid, name) for uid, name in rows}
        before = self._remote
        self._remote = remote
        for uid, user in remote.items():
            if uid not in before and uid not in self._local:
                self._announce(user, True)
        for uid, user in before.items():
            if uid not in remote and uid not in self._local:
                self._announce(user, False)

    # ---------------------------------------------------------------- the other nodes

    async def start(self) -> None:
        """With a shared backend: write this node's rows and read the others' once,
        then keep them current in the background."""
        if self._cluster is None:
            return
        try:
            await self._sync_once(full=True, beat=True)
        except Exception as exc:
            log.warning("presence: first sync failed (%s); retrying", exc)
        self._task = asyncio.get_running_loop().create_task(self._sync())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._cluster is not None:
            # The other nodes announce this node's users offline now, not after expiry.
            try:
                await self._cluster.presence_leave(self.node_id)
            except Exception as exc:
                log.warning("presence: could not leave (%s); other nodes will expire us", exc)

    async def _sync(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + cfg.presence_heartbeat
        full = False
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - loop.time()))
            self._wake.clear()
            beat = loop.time() >= next_beat
            if beat:
                next_beat = loop.time() + cfg.presence_heartbeat
            try:
                full = await self._sync_once(full=full, beat=beat)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: write everything once back
                if not full:  # once per outage, not once per heartbeat
                    log.warning("presence sync failed: %s; retrying", exc)
                full = True

    async def _sync_once(self, *, full: bool, beat: bool) -> bool:
        """Write this node's changes (all of its rows with ``full``), renew the
        heartbeat if ``beat``, read the other nodes' users; whether the next round
        must write all rows again."""
        cluster = self._cluster
        assert cluster is not None
        if beat and await cluster.presence_beat(self.node_id, self.config.presence_expiry):
            full = True  # this node was taken for dead: its rows are gone
        pending, self._pending = self._pending, {}
        if full:
            rows = [(u.id, u.name) for u, _ in self._local.values()]
            await cluster.presence_write(self.node_id, rows, [], full=True)
        elif pending:
            add = [(uid, u.name) for uid, u in pending.items() if u is not None]
            remove = [uid for uid, u in pending.items() if u is None]
            try:
                if await cluster.presence_write(self.node_id, add, remove, full=False):
                    # Taken for dead meanwhile: the rows of its other users are gone.
                    rows = [(u.id, u.name) for u, _ in self._local.values()]
                    await cluster.presence_write(self.node_id, rows, [], full=True)
            except BaseException:
                self._pending = {**pending, **self._pending}
                raise
        self._remote_online(
            await cluster.presence_read(self.node_id, self.config.presence_expiry))
        return False


