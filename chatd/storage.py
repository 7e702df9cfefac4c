"""The narrow interface a storage backend implements: rows in, rows out, no rules.

What a command means (who may do what, nonce replay, the cascade of a channel
delete, what expiry removes, which events a change emits and how they are
framed) lives in :mod:`chatd.rules`, once for every backend. A backend only
knows how to read and write rows, how to run a transaction, and which thread
writes. :class:`chatd.sqlite_store.SqliteBackend` is the embedded one; a
PostgreSQL backend implements the same three protocols.

Writes: the rules call :meth:`Backend.write_here` on the backend's writing
thread with a function of one :class:`WriteTx`. The backend opens a transaction
that holds the global counter for its whole length (sqlite: ``BEGIN IMMEDIATE``;
PostgreSQL: the counter row locked ``FOR UPDATE``), runs the function, and
commits; if the function raises, it rolls back and re-raises. Within one
transaction every read sees every row written earlier in it, with one
exception stated at :meth:`WriteTx.nonces`. A backend may buffer inserts and
write them in bulk (sqlite does, with one ``executemany`` per table) as long as
that rule holds.

Reads: :meth:`Backend.snapshot` yields a :class:`Snapshot` whose statements all
see one committed state; :meth:`Backend.reader` is the same without the
transaction, for a single statement. Reads run concurrently with the writer.

Rows are plain tuples in the order each method's docstring names, so a backend
can hand over what its driver returns without building objects.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from .migrations import Migration
from .search import Query

T = TypeVar("T")

#: (id, name, pw_hash, role, active); active as the backend stores it (1/0 or bool)
UserRow = tuple[str, str, str, str, Any]
#: (id, name, role, active)
AccountRow = tuple[str, str, str, Any]
#: (id, expires_ms, uses_left, created_by id, created_by name)
InviteRow = tuple[str, int, int, str, str]
#: (id, name, creator_id, kind)
ChannelRow = tuple[str, str, str, str]
#: (seq, frame, channel_id, restricted (0/1), only_user): an event as replay and the
#: tail read it, with what decides who may see it (chatd.visibility)
EventRow = tuple[int, bytes, str, int, str | None]
#: (channel_id, user_id, from_seq, to_seq or None): a membership interval
IntervalRow = tuple[str, str, int, int | None]
#: (id, name, kind, read_seq, unread): a channel as boot shows it to one user
BootChannelRow = tuple[str, str, str, int, int]
#: (seq, channel_id, sender_id)
MessageKey = tuple[int, str, str]
#: (message_id, seq, at_ms, channel_id, channel_name, body or None once deleted,
#: edited_ms or None)
NonceRow = tuple[str, int, int, str, str, str | None, int | None]
#: (id, seq, at_ms, sender_id, sender_name, body, edited_ms or None)
MessageRow = tuple[str, int, int, str, str, str, int | None]
#: (seq, channel_id, sender_id, sender_name, at_ms)
MessageInfo = tuple[int, str, str, str, int]
#: a MessageRow, then (channel_id, channel_name, channel kind)
SearchRow = tuple[str, int, int, str, str, str, int | None, str, str, str]


class WriteTx(Protocol):
    """One write transaction, used on the writing thread only."""

    # -- the global counter and the horizon (one row each)
    def counter(self) -> int:
        """The last seq assigned, as of this transaction (held until it ends)."""
        ...

    def set_counter(self, seq: int) -> None: ...

    def horizon(self) -> int: ...

    def set_horizon(self, seq: int) -> None: ...

    def last_event_at(self) -> int:
        """at_ms of the newest retained event, 0 when none is retained."""
        ...

    # -- savepoints, for the rules' careful path (one at a time, not nested)
    def savepoint(self) -> None: ...

    def rollback_savepoint(self) -> None:
        """Undo everything since :meth:`savepoint`, buffered rows included."""
        ...

    def release_savepoint(self) -> None: ...

    # -- users and tokens
    def user_by_key(self, key: str) -> UserRow | None: ...

    def insert_user(
        self, user_id: str, name: str, key: str, pw_hash: str, created_ms: int, role: str,
        created_seq: int,
    ) -> None: ...

    def user(self, user_id: str) -> AccountRow | None: ...

    def any_user(self) -> bool: ...

    def active_admins(self) -> int: ...

    def set_role(self, user_id: str, role: str) -> None: ...

    def set_active(self, user_id: str, active: bool) -> None: ...

    def set_password(self, user_id: str, pw_hash: str) -> None: ...

    def delete_user_tokens(self, user_id: str, keep: bytes | None) -> None:
        """End every token of the user but ``keep``."""
        ...

    # -- invites
    def invite_by_code(self, code_hash: bytes) -> tuple[str, int, int] | None:
        """(id, expires_ms, uses_left) of the invite with this code hash."""
        ...

    def invite_exists(self, invite_id: str) -> bool: ...

    def insert_invite(
        self, invite_id: str, code_hash: bytes, created_by: str, created_ms: int,
        expires_ms: int, uses: int,
    ) -> None: ...

    def use_invite(self, invite_id: str) -> None: ...

    def delete_invite(self, invite_id: str) -> None: ...

    def tidy_search_index(self, pages: int) -> None:
        """Up to ``pages`` pages of upkeep of the search index that the commits of
        sends leave out (sqlite: FTS5 segment merges); nothing where there is none."""
        ...

    def drop_invites_done(self, now_ms: int, limit: int) -> None:
        """Delete invites that expired or were used up."""
        ...

    def insert_token(
        self, token_hash: bytes, user_id: str, created_ms: int, expires_ms: int
    ) -> None: ...

    def delete_token(self, token_hash: bytes) -> None: ...

    # -- channels
    def channel(self, channel_id: str) -> ChannelRow | None: ...

    def channel_name_in_use(self, key: str) -> str | None:
        """The stored name of the channel whose name key is ``key``."""
        ...

    def channel_by_key(self, key: str) -> ChannelRow | None: ...

    def insert_channel(
        self, channel_id: str, name: str, key: str, creator_id: str, created_seq: int,
        at_ms: int, kind: str = "public",
    ) -> None: ...

    def delete_channel(self, channel_id: str) -> None:
        """Delete the channel row and its read positions (its membership intervals
        stay: replay of its retained events needs them)."""
        ...

    # -- membership (intervals) and read positions
    def channel_members(self, channel_id: str) -> list[str]:
        """The ids of the current members."""
        ...

    def add_member(self, channel_id: str, user_id: str, seq: int) -> None:
        """Open an interval at ``seq``."""
        ...

    def end_member(self, channel_id: str, user_id: str, seq: int) -> None:
        """Close the user's open interval at ``seq``."""
        ...

    def end_members(self, channel_id: str, seq: int) -> None:
        """Close every open interval of the channel at ``seq``."""
        ...

    def member_since(self, channel_id: str, user_id: str) -> int | None:
        """``from_seq`` of the user's open interval, None when not a member."""
        ...

    def drop_members_through(self, seq: int) -> None:
        """Forget the intervals that closed at or before ``seq`` (the horizon)."""
        ...

    def user_created_seq(self, user_id: str) -> int: ...

    def read_position(self, user_id: str, channel_id: str) -> int | None: ...

    def set_read_position(self, user_id: str, channel_id: str, seq: int) -> None: ...

    def unread(self, channel_id: str, user_id: str, after: int) -> int:
        """Messages of the channel with seq > after not sent by the user."""
        ...

    def touch_channel(self, channel_id: str, at_ms: int) -> None:
        """Record a new message in the channel at ``at_ms`` (for idle expiry; the
        rules call it only now and then, see :meth:`idle_channels`)."""
        ...

    # -- messages and the event log
    def message(self, message_id: str) -> MessageKey | None: ...

    def channel_messages(self, channel_id: str) -> list[tuple[str, int]]:
        """(id, seq) of every message of the channel, in seq order."""
        ...

    def insert_message(
        self, seq: int, message_id: str, channel_id: str, sender_id: str, sender_name: str,
        at_ms: int, body: str,
    ) -> None: ...

    def message_info(self, message_id: str) -> MessageInfo | None: ...

    def edit_message(self, seq: int, body: str, edited_ms: int) -> None:
        """Replace the body of the message with this seq (the old one is gone)."""
        ...

    def delete_messages(self, rows: list[tuple[str, int]]) -> None:
        """Delete these messages (id, seq) and every event that carries their
        bodies (message.sent and message.edited)."""
        ...

    def insert_event(
        self, seq: int, at_ms: int, channel_id: str, frame: bytes, message_id: str | None,
        restricted: bool = False, only_user: str | None = None,
    ) -> None:
        """Store an event; ``message_id`` for a message.edited (the event that
        carries a message's body besides its message.sent, which has its seq);
        ``restricted`` for an event of a private or dm channel; ``only_user`` for an
        account event."""
        ...

    def message_events(self, seq: int, message_id: str) -> list[tuple[int, bytes]]:
        """(seq, frame) of the retained events that carry the body of this message
        (its seq and id): its message.sent and every message.edited."""
        ...

    def set_event_frame(self, seq: int, frame: bytes) -> None: ...

    # -- send nonces
    def nonces(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], NonceRow]:
        """The first sends with these (user id, nonce) keys, from *earlier*
        transactions; keys never used are absent.

        One call per batch, before its operations: a batch of sends costs one
        lookup, not one per send (a round trip each on PostgreSQL). The
        exception to read-your-writes: a nonce inserted in this transaction may
        or may not be seen. The rules remember the nonces of the transaction
        themselves.
        """
        ...

    def insert_nonce(
        self, user_id: str, nonce: str, message_id: str, seq: int, at_ms: int,
        channel_id: str, channel_name: str,
    ) -> None: ...

    # -- expiry
    def messages_before(self, at_ms: int, limit: int) -> list[tuple[str, int, str, str]]:
        """(id, seq, channel_id, channel_name) of the oldest messages sent before at_ms:
        at most ``limit`` by seq, up to the first that is younger."""
        ...

    def idle_channels(self, active_before_ms: int, limit: int) -> list[tuple[str, str]]:
        """(id, name) of channels with no message since active_before_ms, least active
        first: neither the stored activity time (touch_channel, and a deleted
        message's time) nor the newest message still there is that recent."""
        ...

    def oldest_events(self, limit: int) -> list[tuple[int, int]]:
        """(seq, at_ms) of the oldest retained events, in seq order."""
        ...

    def drop_events_through(self, seq: int) -> None: ...

    def drop_nonces_before(self, at_ms: int, limit: int) -> None: ...

    def drop_tokens_expired(self, now_ms: int, limit: int) -> None: ...


class Snapshot(Protocol):
    """Reads; inside :meth:`Backend.snapshot` all of them see one committed state."""

    async def counter(self) -> tuple[int, int]:
        """(last seq assigned, horizon)."""
        ...

    async def user_by_key(self, key: str) -> UserRow | None: ...

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> tuple[str, str] | None:
        """(id, name) of the token's user while the token has not expired and the
        user is active."""
        ...

    async def user(self, user_id: str) -> UserRow | None: ...

    async def users(self) -> list[AccountRow]:
        """Every user, by name."""
        ...

    async def invites(self, now_ms: int) -> list[InviteRow]:
        """The invites that can still be used, oldest first."""
        ...

    async def live_tokens(self, token_hashes: list[bytes], now_ms: int) -> list[bytes]:
        """Those of ``token_hashes`` that still exist and have not expired."""
        ...

    async def channels(self) -> list[ChannelRow]:
        """Every channel, oldest first."""
        ...

    async def channel(self, channel_id: str) -> ChannelRow | None: ...

    async def visible_channel(self, channel_id: str, user_id: str) -> ChannelRow | None:
        """The channel if it exists and the user can see it (public, or a member)."""
        ...

    async def boot_channels(self, user_id: str) -> list[BootChannelRow]:
        """The channels the user can see, oldest first, with read positions and
        unread counts."""
        ...

    async def dm_members(self, user_id: str) -> list[tuple[str, str, str]]:
        """(channel id, member id, member name) of the user's dm channels."""
        ...

    async def members(self, channel_id: str) -> list[tuple[str, str]]:
        """(id, name) of the current members, by name."""
        ...

    async def intervals(
        self, user_id: str | None, channel_ids: list[str] | None
    ) -> list[IntervalRow]:
        """Membership intervals of one user, or of some channels (every user)."""
        ...

    async def messages(self, channel_id: str, before: int, limit: int) -> list[MessageRow]:
        """The newest ``limit`` messages of the channel with seq < before, newest first."""
        ...

    async def events(
        self, after: int, upto: int, channels: frozenset[str] | None, limit: int,
        user_id: str | None = None,
    ) -> list[EventRow]:
        """Retained events in (after, upto], of ``channels`` if given.

        With ``user_id``, leave out (in SQL) the events the user can never see:
        account events of other users, and events of private and dm channels it
        was never a member of. Whether it was a member *at each event's seq* is
        decided by the caller from :meth:`intervals` (chatd.visibility)."""
        ...

    async def messages_after(self, channel_id: str, after: int, limit: int) -> list[MessageRow]:
        """The oldest ``limit`` messages of the channel with seq > after, oldest first."""
        ...

    async def search(
        self, user_id: str, query: Query, channel_id: str | None, before: int, limit: int
    ) -> list[SearchRow] | None:
        """Candidates for ``query``: the newest ``limit`` messages with seq < before
        that its index finds (at least every match; :func:`chatd.search.matches`
        decides), newest first, in the channels ``user_id`` may search, or in
        ``channel_id`` only. None when ``channel_id`` is given and is not one of
        them. Which channels the user may search is
        :data:`chatd.sqlrows.SEARCH_VISIBLE`, and nowhere else."""
        ...


class Backend(Protocol):
    #: the opaque history id made when the database was created.
    epoch: str
    #: other processes may commit events to this database (several nodes): the
    #: daemon's fanout must then tail the events table (chatd.feed.TailFeed).
    shared: bool
    #: a write transaction is cheap enough to run on the event loop's thread
    #: when the writer is idle (chatd.writer: inline): no network round trips.
    commits_inline: bool
    #: what :meth:`open` did to the schema: created a new database, and the
    #: migrations (:mod:`chatd.migrations`) it applied, in order.
    created: bool
    migrated: list[Migration]

    async def listen(
        self, wake: Callable[[], None], ephemeral: Callable[[str], None] | None = None
    ) -> None:
        """Call ``wake`` whenever another process may have committed events, and
        ``ephemeral`` with each notice a node sent (typing, presence: see
        :mod:`chatd.ephemeral`).

        Runs until cancelled and reconnects by itself; a backend that is never
        shared returns at once. Best effort: the tail also polls.
        """
        ...

    async def open(self) -> None:
        """Connect, create or migrate the schema, read the epoch."""
        ...

    async def close(self) -> None: ...

    async def run_on_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writing thread and return its result; it may call
        :meth:`write_here`."""
        ...

    def write_here(self, fn: Callable[[WriteTx], T]) -> T:
        """One write transaction around ``fn``, on the writing thread; see the module doc."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[Snapshot]: ...

    def reader(self) -> AbstractAsyncContextManager[Snapshot]: ...
