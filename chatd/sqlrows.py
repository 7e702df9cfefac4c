"""The row statements both SQL backends share, written once.

Most of :class:`chatd.storage.WriteTx` is the same SQL on sqlite and on
PostgreSQL. It is written here with ``?`` placeholders and run through the
backend's own ``_one``, ``_run`` and ``_all`` (which write buffered rows first,
and on PostgreSQL turn each ``?`` into ``%s``). What differs stays with the
backend: the counter, savepoints, bulk deletes, nonce lookups, commit.
"""

from __future__ import annotations

from typing import Any

from .storage import (
    AccountRow,
    BootChannelRow,
    ChannelRow,
    EventRow,
    IntervalRow,
    MessageInfo,
    MessageKey,
    UserRow,
)

#: the channels a user can see: public ones, and those it is a member of now
#: (``?``: the user id). The one place this rule is written in SQL.
VISIBLE = (
    "(c.kind = 'public' OR EXISTS (SELECT 1 FROM members v WHERE v.channel_id = c.id"
    " AND v.user_id = ? AND v.to_seq IS NULL))"
)

#: the events a user can never see, left out of a replay read in SQL (``?``, ``?``:
#: the user id twice); membership at each event's seq is chatd.visibility's
USER_EVENTS = (
    " AND (only_user IS NULL OR only_user = ?)"
    " AND (restricted = 0 OR channel_id IN (SELECT channel_id FROM members WHERE user_id = ?))"
)


# ---------------------------------------------------------------- visibility
#: THE rule of which channels a user may search (PROTOCOL.md: the channels it
#: can see), as a condition on ``c``, a row of ``channels``; its one ``?`` is the
#: searching user's id. Both backends' search statements use it, and nothing
#: else decides: the channels the user can see (:data:`VISIBLE`).
SEARCH_VISIBLE = VISIBLE

#: the columns of a :data:`chatd.storage.SearchRow`, over ``messages m`` and ``channels c``
SEARCH_COLUMNS = (
    "m.id, m.seq, m.at_ms, m.sender_id, m.sender_name, m.body, m.edited_ms, c.id, c.name,"
    " c.kind"
)
#: whether the channel ``?`` (then the user ``?``) may be searched
SEARCH_CHANNEL = f"SELECT 1 FROM channels c WHERE c.id = ? AND {SEARCH_VISIBLE}"


class RowStatements:
    """Mixed into a backend's write transaction; see the module docstring."""

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The first row of ``sql``, or None."""
        raise NotImplementedError

    def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def last_event_at(self) -> int:
        row = self._one("SELECT at_ms FROM events ORDER BY seq DESC LIMIT 1", ())
        return int(row[0]) if row else 0

    def user_by_key(self, key: str) -> UserRow | None:
        row: UserRow | None = self._one(
            "SELECT id, name, pw_hash, role, active FROM users WHERE name_key = ?", (key,)
        )
        return row

    def insert_user(
        self, user_id: str, name: str, key: str, pw_hash: str, created_ms: int, role: str,
        created_seq: int,
    ) -> None:
        self._run(
            "INSERT INTO users(id, name, name_key, pw_hash, created_ms, role, created_seq)"
            " VALUES (?,?,?,?,?,?,?)",
            (user_id, name, key, pw_hash, created_ms, role, created_seq),
        )

    def user(self, user_id: str) -> AccountRow | None:
        row: AccountRow | None = self._one(
            "SELECT id, name, role, active FROM users WHERE id = ?", (user_id,)
        )
        return row

    def any_user(self) -> bool:
        return self._one("SELECT 1 FROM users LIMIT 1", ()) is not None

    def active_admins(self) -> int:
        return int(self._one(
            "SELECT count(*) FROM users WHERE role = 'admin' AND active", ())[0])

    def set_role(self, user_id: str, role: str) -> None:
        self._run("UPDATE users SET role = ? WHERE id = ?", (role, user_id))

    def set_active(self, user_id: str, active: bool) -> None:
        self._run("UPDATE users SET active = ? WHERE id = ?", (active, user_id))

    def set_password(self, user_id: str, pw_hash: str) -> None:
        self._run("UPDATE users SET pw_hash = ? WHERE id = ?", (pw_hash, user_id))

    def delete_user_tokens(self, user_id: str, keep: bytes | None) -> None:
        if keep is None:
            self._run("DELETE FROM tokens WHERE user_id = ?", (user_id,))
        else:
            self._run("DELETE FROM tokens WHERE user_id = ? AND hash <> ?", (user_id, keep))

    def invite_by_code(self, code_hash: bytes) -> tuple[str, int, int] | None:
        row: tuple[str, int, int] | None = self._one(
            "SELECT id, expires_ms, uses_left FROM invites WHERE code_hash = ?", (code_hash,)
        )
        return row

    def invite_exists(self, invite_id: str) -> bool:
        return self._one("SELECT 1 FROM invites WHERE id = ?", (invite_id,)) is not None

    def insert_invite(
        self, invite_id: str, code_hash: bytes, created_by: str, created_ms: int,
        expires_ms: int, uses: int,
    ) -> None:
        self._run(
            "INSERT INTO invites(id, code_hash, created_by, created_ms, expires_ms, uses_left)"
            " VALUES (?,?,?,?,?,?)",
            (invite_id, code_hash, created_by, created_ms, expires_ms, uses),
        )

    def use_invite(self, invite_id: str) -> None:
        self._run("UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?", (invite_id,))

    def delete_invite(self, invite_id: str) -> None:
        self._run("DELETE FROM invites WHERE id = ?", (invite_id,))

    def drop_invites_done(self, now_ms: int, limit: int) -> None:
        self._run(
            "DELETE FROM invites WHERE id IN (SELECT id FROM invites"
            " WHERE expires_ms < ? OR uses_left <= 0 LIMIT ?)",
            (now_ms, limit),
        )

    def insert_token(
        self, token_hash: bytes, user_id: str, created_ms: int, expires_ms: int
    ) -> None:
        self._run(
            "INSERT INTO tokens(hash, user_id, created_ms, expires_ms) VALUES (?,?,?,?)",
            (token_hash, user_id, created_ms, expires_ms),
        )

    def delete_token(self, token_hash: bytes) -> None:
        self._run("DELETE FROM tokens WHERE hash = ?", (token_hash,))

    def channel(self, channel_id: str) -> ChannelRow | None:
        row: ChannelRow | None = self._one(
            "SELECT id, name, creator_id, kind FROM channels WHERE id = ?", (channel_id,)
        )
        return row

    def channel_by_key(self, key: str) -> ChannelRow | None:
        row: ChannelRow | None = self._one(
            "SELECT id, name, creator_id, kind FROM channels WHERE name_key = ?", (key,)
        )
        return row

    def channel_name_in_use(self, key: str) -> str | None:
        row = self._one("SELECT name FROM channels WHERE name_key = ?", (key,))
        return None if row is None else str(row[0])

    def insert_channel(
        self, channel_id: str, name: str, key: str, creator_id: str, created_seq: int,
        at_ms: int, kind: str = "public",
    ) -> None:
        self._run(
            "INSERT INTO channels(id, name, name_key, creator_id, created_seq, active_ms, kind)"
            " VALUES (?,?,?,?,?,?,?)",
            (channel_id, name, key, creator_id, created_seq, at_ms, kind),
        )

    def delete_channel(self, channel_id: str) -> None:
        self._run("DELETE FROM channels WHERE id = ?", (channel_id,))
        self._run("DELETE FROM reads WHERE channel_id = ?", (channel_id,))

    def channel_members(self, channel_id: str) -> list[str]:
        return [r[0] for r in self._all(
            "SELECT user_id FROM members WHERE channel_id = ? AND to_seq IS NULL", (channel_id,))]

    def add_member(self, channel_id: str, user_id: str, seq: int) -> None:
        self._run("INSERT INTO members(channel_id, user_id, from_seq) VALUES (?,?,?)",
                  (channel_id, user_id, seq))

    def end_member(self, channel_id: str, user_id: str, seq: int) -> None:
        self._run("UPDATE members SET to_seq = ? WHERE channel_id = ? AND user_id = ?"
                  " AND to_seq IS NULL", (seq, channel_id, user_id))

    def end_members(self, channel_id: str, seq: int) -> None:
        self._run("UPDATE members SET to_seq = ? WHERE channel_id = ? AND to_seq IS NULL",
                  (seq, channel_id))

    def member_since(self, channel_id: str, user_id: str) -> int | None:
        row = self._one("SELECT from_seq FROM members WHERE channel_id = ? AND user_id = ?"
                        " AND to_seq IS NULL", (channel_id, user_id))
        return None if row is None else int(row[0])

    def drop_members_through(self, seq: int) -> None:
        self._run("DELETE FROM members WHERE to_seq <= ?", (seq,))

    def user_created_seq(self, user_id: str) -> int:
        row = self._one("SELECT created_seq FROM users WHERE id = ?", (user_id,))
        return 0 if row is None else int(row[0])

    def read_position(self, user_id: str, channel_id: str) -> int | None:
        row = self._one("SELECT read_seq FROM reads WHERE user_id = ? AND channel_id = ?",
                        (user_id, channel_id))
        return None if row is None else int(row[0])

    def set_read_position(self, user_id: str, channel_id: str, seq: int) -> None:
        self._run(
            "INSERT INTO reads(user_id, channel_id, read_seq) VALUES (?,?,?)"
            " ON CONFLICT (user_id, channel_id) DO UPDATE SET read_seq = excluded.read_seq",
            (user_id, channel_id, seq),
        )

    def unread(self, channel_id: str, user_id: str, after: int) -> int:
        return int(self._one(_UNREAD_ONE, (channel_id, after, channel_id, user_id, after))[0])

    def message(self, message_id: str) -> MessageKey | None:
        row: MessageKey | None = self._one(
            "SELECT seq, channel_id, sender_id FROM messages WHERE id = ?", (message_id,)
        )
        return row

    def message_info(self, message_id: str) -> MessageInfo | None:
        row: MessageInfo | None = self._one(
            "SELECT seq, channel_id, sender_id, sender_name, at_ms FROM messages WHERE id = ?",
            (message_id,),
        )
        return row

    def message_events(self, seq: int, message_id: str) -> list[tuple[int, bytes]]:
        return [(seq, bytes(frame)) for seq, frame in self._all(
            "SELECT seq, frame FROM events WHERE seq = ? OR message_id = ? ORDER BY seq",
            (seq, message_id))]

    def set_event_frame(self, seq: int, frame: bytes) -> None:
        self._run("UPDATE events SET frame = ? WHERE seq = ?", (frame, seq))

    def channel_messages(self, channel_id: str) -> list[tuple[str, int]]:
        return self._all(
            "SELECT id, seq FROM messages WHERE channel_id = ? ORDER BY seq", (channel_id,)
        )

    def messages_before(self, at_ms: int, limit: int) -> list[tuple[str, int, str, str]]:
        # The oldest by seq, up to the first that is not old enough: times never
        # go backwards along the sequence (rules), so no index on at_ms is needed
        # (a send writes one b-tree less). Should a clock step back have left an
        # older time after a newer one, that message waits for the newer one.
        rows = self._all(
            "SELECT m.id, m.seq, m.channel_id, c.name, m.at_ms FROM messages m"
            " JOIN channels c ON c.id = m.channel_id ORDER BY m.seq LIMIT ?",
            (limit,),
        )
        old = []
        for message_id, seq, channel_id, name, message_at in rows:
            if message_at >= at_ms:
                break
            old.append((message_id, seq, channel_id, name))
        return old

    def idle_channels(self, active_before_ms: int, limit: int) -> list[tuple[str, str]]:
        # A send stores the activity time only now and then (rules.TOUCH_EVERY_MS),
        # a delete stores its message's: the last message is the stored time or
        # the newest message still there, whichever is later.
        return self._all(
            "SELECT c.id, c.name FROM channels c WHERE c.active_ms < ? AND COALESCE(("
            "SELECT m.at_ms FROM messages m WHERE m.channel_id = c.id"
            " ORDER BY m.seq DESC LIMIT 1), 0) < ? ORDER BY c.active_ms LIMIT ?",
            (active_before_ms, active_before_ms, limit),
        )

    def oldest_events(self, limit: int) -> list[tuple[int, int]]:
        return self._all("SELECT seq, at_ms FROM events ORDER BY seq LIMIT ?", (limit,))

    def drop_events_through(self, seq: int) -> None:
        self._run("DELETE FROM events WHERE seq <= ?", (seq,))

    def drop_nonces_before(self, at_ms: int, limit: int) -> None:
        self._run(
            "DELETE FROM nonces WHERE (user_id, nonce) IN"
            " (SELECT user_id, nonce FROM nonces WHERE at_ms < ? LIMIT ?)",
            (at_ms, limit),
        )

    def drop_tokens_expired(self, now_ms: int, limit: int) -> None:
        self._run(
            "DELETE FROM tokens WHERE hash IN"
            " (SELECT hash FROM tokens WHERE expires_ms < ? LIMIT ?)",
            (now_ms, limit),
        )


# Unread counts as two index-only counts over messages(channel_id, seq,
# sender_id) (all messages after the read position, less the user's own), not
# one count that reads every row for its sender_id; and no index of its own,
# which would cost every send a third b-tree insert:
# boot of 200 channels over 100,000 messages stays a few milliseconds.
_UNREAD = (
    "(SELECT count(*) FROM messages m WHERE m.channel_id = {c} AND m.seq > {r})"
    " - (SELECT count(*) FROM messages m WHERE m.channel_id = {c} AND m.sender_id = {u}"
    " AND m.seq > {r})"
)
_UNREAD_ONE = "SELECT " + _UNREAD.format(c="?", r="?", u="?")

# The channels a user can see, where the user began to see each (public: its
# account's created_seq; private/dm: its current interval's from_seq), and its
# read position: the larger of that and the stored one.
_BOOT_CHANNELS = (
    "WITH v(id, start) AS ("
    " SELECT c.id, (SELECT created_seq FROM users WHERE id = ?) FROM channels c"
    " WHERE c.kind = 'public'"
    " UNION ALL"
    " SELECT channel_id, from_seq FROM members WHERE user_id = ? AND to_seq IS NULL"
    "), w AS ("
    " SELECT c.id AS id, c.name AS name, c.kind AS kind, c.created_seq AS created_seq,"
    " CASE WHEN r.read_seq > v.start THEN r.read_seq ELSE v.start END AS read_seq"
    " FROM v JOIN channels c ON c.id = v.id"
    " LEFT JOIN reads r ON r.user_id = ? AND r.channel_id = v.id"
    ") SELECT id, name, kind, read_seq, "
    + _UNREAD.format(c="w.id", r="w.read_seq", u="?")
    + " FROM w ORDER BY created_seq"
)


class SnapshotStatements:
    """The reads both backends share, mixed into their snapshots (``?``
    placeholders; PostgreSQL's ``_rows`` turns them into ``%s``)."""

    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _in_channels(channels: frozenset[str]) -> tuple[str, Any]:
        """The backend's ``channel_id`` condition for a set of ids, and its argument."""
        raise NotImplementedError

    async def events(
        self, after: int, upto: int, channels: frozenset[str] | None, limit: int,
        user_id: str | None = None,
    ) -> list[EventRow]:
        sql = ("SELECT seq, frame, channel_id, restricted, only_user FROM events"
               " WHERE seq > ? AND seq <= ?")
        args: tuple[Any, ...] = (after, upto)
        if channels is not None:
            clause, arg = self._in_channels(channels)
            sql += " AND channel_id " + clause
            args += (arg,)
        if user_id is not None:
            sql += USER_EVENTS
            args += (user_id, user_id)
        return await self._rows(sql + " ORDER BY seq LIMIT ?", (*args, limit))

    async def channels(self) -> list[ChannelRow]:
        """Every channel, oldest first (the operator's export)."""
        return await self._rows(
            "SELECT id, name, creator_id, kind FROM channels ORDER BY created_seq")

    async def channel(self, channel_id: str) -> ChannelRow | None:
        rows = await self._rows(
            "SELECT id, name, creator_id, kind FROM channels WHERE id = ?", (channel_id,))
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    async def visible_channel(self, channel_id: str, user_id: str) -> ChannelRow | None:
        rows = await self._rows(
            "SELECT c.id, c.name, c.creator_id, c.kind FROM channels c WHERE c.id = ? AND "
            + VISIBLE, (channel_id, user_id))
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    async def boot_channels(self, user_id: str) -> list[BootChannelRow]:
        return [tuple(r) for r in await self._rows(  # type: ignore[misc]
            _BOOT_CHANNELS, (user_id, user_id, user_id, user_id))]

    async def dm_members(self, user_id: str) -> list[tuple[str, str, str]]:
        return await self._rows(
            "SELECT o.channel_id, u.id, u.name FROM members mine"
            " JOIN channels c ON c.id = mine.channel_id AND c.kind = 'dm'"
            " JOIN members o ON o.channel_id = mine.channel_id AND o.to_seq IS NULL"
            " JOIN users u ON u.id = o.user_id"
            " WHERE mine.user_id = ? AND mine.to_seq IS NULL ORDER BY o.channel_id, u.name_key",
            (user_id,))

    async def members(self, channel_id: str) -> list[tuple[str, str]]:
        return await self._rows(
            "SELECT u.id, u.name FROM members m JOIN users u ON u.id = m.user_id"
            " WHERE m.channel_id = ? AND m.to_seq IS NULL ORDER BY u.name_key", (channel_id,))

    async def intervals(
        self, user_id: str | None, channel_ids: list[str] | None
    ) -> list[IntervalRow]:
        if user_id is not None:
            return await self._rows(
                "SELECT channel_id, user_id, from_seq, to_seq FROM members WHERE user_id = ?",
                (user_id,))
        ids = channel_ids or []
        rows: list[IntervalRow] = []
        for i in range(0, len(ids), 500):  # sqlite's bound-parameter limit
            chunk = ids[i:i + 500]
            rows += await self._rows(
                "SELECT channel_id, user_id, from_seq, to_seq FROM members"
                f" WHERE channel_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        return rows
