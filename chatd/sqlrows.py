"""The row statements both SQL backends share, written once.

Most of :class:`chatd.storage.WriteTx` is the same SQL on sqlite and on
PostgreSQL. It is written here with ``?`` placeholders and run through the
backend's own ``_one``, ``_run`` and ``_all`` (which write buffered rows first,
and on PostgreSQL turn each ``?`` into ``%s``). What differs stays with the
backend: the counter, savepoints, bulk deletes, nonce lookups, commit.
"""

from __future__ import annotations

from typing import Any

from .storage import AccountRow, ChannelRow, MessageInfo, MessageKey, UserRow

# ---------------------------------------------------------------- visibility
#: THE rule of which channels a user may search (PROTOCOL.md: the channels it
#: can see), as a condition on ``c``, a row of ``channels``; its one ``?`` is the
#: searching user's id. Both backends' search statements use it, and nothing
#: else decides. Until channels have members, every channel.
SEARCH_VISIBLE = "(CAST(? AS TEXT) IS NOT NULL)"

#: the columns of a :data:`chatd.storage.SearchRow`, over ``messages m`` and ``channels c``
SEARCH_COLUMNS = (
    "m.id, m.seq, m.at_ms, m.sender_id, m.sender_name, m.body, m.edited_ms, c.id, c.name"
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
            "SELECT id, name, creator_id FROM channels WHERE id = ?", (channel_id,)
        )
        return row

    def channel_name_in_use(self, key: str) -> str | None:
        row = self._one("SELECT name FROM channels WHERE name_key = ?", (key,))
        return None if row is None else str(row[0])

    def insert_channel(
        self, channel_id: str, name: str, key: str, creator_id: str, created_seq: int,
        at_ms: int,
    ) -> None:
        self._run(
            "INSERT INTO channels(id, name, name_key, creator_id, created_seq, active_ms)"
            " VALUES (?,?,?,?,?,?)",
            (channel_id, name, key, creator_id, created_seq, at_ms),
        )

    def delete_channel(self, channel_id: str) -> None:
        self._run("DELETE FROM channels WHERE id = ?", (channel_id,))

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

    def message_events(self, message_id: str) -> list[tuple[int, bytes]]:
        return [(seq, bytes(frame)) for seq, frame in self._all(
            "SELECT seq, frame FROM events WHERE message_id = ? ORDER BY seq", (message_id,))]

    def set_event_frame(self, seq: int, frame: bytes) -> None:
        self._run("UPDATE events SET frame = ? WHERE seq = ?", (frame, seq))

    def channel_messages(self, channel_id: str) -> list[tuple[str, int]]:
        return self._all(
            "SELECT id, seq FROM messages WHERE channel_id = ? ORDER BY seq", (channel_id,)
        )

    def messages_before(self, at_ms: int, limit: int) -> list[tuple[str, int, str, str]]:
        return self._all(
            "SELECT m.id, m.seq, m.channel_id, c.name FROM messages m"
            " JOIN channels c ON c.id = m.channel_id"
            " WHERE m.at_ms < ? ORDER BY m.seq LIMIT ?",
            (at_ms, limit),
        )

    def idle_channels(self, active_before_ms: int, limit: int) -> list[tuple[str, str]]:
        return self._all(
            "SELECT id, name FROM channels WHERE active_ms < ? ORDER BY active_ms LIMIT ?",
            (active_before_ms, limit),
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
