"""The embedded store: one sqlite file in WAL mode.

Writes run on one dedicated thread that owns the only writing connection: the
writer hands over a whole batch of operations and the thread applies them in one
``BEGIN IMMEDIATE`` transaction, so a batch costs one thread hop and one fsync
rather than one per statement (aiosqlite would hop once per statement). Reads
use a small pool of aiosqlite connections; WAL lets them read committed
snapshots while the writer works.

Durability: ``synchronous=FULL`` fsyncs the WAL on every commit, so a commit that
returned survives kill -9 and power loss (PROTOCOL.md guarantee 1). Acks are sent
only after :meth:`SqliteStore.apply` returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from . import wire
from .crypto import new_epoch, new_id, new_ordered_id
from .exceptions import Conflict, Forbidden, InternalError, NotFound, ProtocolError
from .store import (
    Batch,
    CreateChannel,
    CreateUser,
    DeleteChannel,
    DeleteMessage,
    Expire,
    Expired,
    IssueToken,
    Operation,
    Published,
    Result,
    RevokeToken,
    SendMessage,
    Sent,
    StoredUser,
)

log = logging.getLogger("chatd.store")

SCHEMA_VERSION = 1
#: version -> SQL that upgrades a database from version-1 to version.
MIGRATIONS: dict[int, str] = {}


def schema_sql() -> str:
    """schema.sql from the installed package, or from the source tree in development."""
    try:
        return (resources.files("chatd") / "schema.sql").read_text("utf-8")
    except (FileNotFoundError, OSError):
        return (Path(__file__).resolve().parent.parent / "schema.sql").read_text("utf-8")


@dataclass
class _Tx:
    """The state of one write transaction on the writer thread.

    Rows that sends add are kept here and written with one ``executemany`` per
    table (:meth:`flush`): a batch of sends then costs a few statements, not a
    few per send. Every operation other than a send flushes first, so it sees
    all rows of the batch before it.
    """

    conn: sqlite3.Connection
    seq: int
    at_ms: int
    encoder: msgspec.json.Encoder
    events: list[Published] = field(default_factory=list)
    at: str = ""
    new_events: list[tuple[int, int, str, bytes]] = field(default_factory=list)
    new_messages: list[tuple[int, str, str, str, str, int, str]] = field(default_factory=list)
    new_nonces: list[tuple[str, str, str, int, int, str, str]] = field(default_factory=list)
    #: (user id, nonce) -> result, for a retry that lands in the same batch as the first.
    nonces: dict[tuple[str, str], Sent] = field(default_factory=dict)
    #: channel id -> time of its newest message in this batch
    active: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.at = wire.format_at(self.at_ms)

    def emit(
        self,
        kind: wire.EventKind,
        channel: wire.Channel,
        sender: wire.User | None = None,
        message: wire.EventMessage | None = None,
    ) -> int:
        self.seq += 1
        frame = self.encoder.encode(
            wire.Event(self.seq, self.at, kind, channel, sender, message)
        )
        self.new_events.append((self.seq, self.at_ms, channel.id, frame))
        self.events.append(Published(self.seq, channel.id, frame))
        return self.seq

    def flush(self) -> None:
        conn = self.conn
        if self.new_events:
            conn.executemany(
                "INSERT INTO events(seq, at_ms, channel_id, frame) VALUES (?,?,?,?)",
                self.new_events,
            )
            self.new_events.clear()
        if self.new_messages:
            conn.executemany(
                "INSERT INTO messages(seq, id, channel_id, sender_id, sender_name, at_ms, body)"
                " VALUES (?,?,?,?,?,?,?)",
                self.new_messages,
            )
            self.new_messages.clear()
        if self.new_nonces:
            conn.executemany(
                "INSERT INTO nonces(user_id, nonce, message_id, seq, at_ms, channel_id,"
                " channel_name) VALUES (?,?,?,?,?,?,?)",
                self.new_nonces,
            )
            self.new_nonces.clear()
        if self.active:
            conn.executemany(
                "UPDATE channels SET active_ms = ? WHERE id = ?",
                [(at_ms, cid) for cid, at_ms in self.active.items()],
            )
            self.active.clear()

    def delete_messages(self, channel: wire.Channel, rows: list[tuple[str, int]]) -> None:
        """Delete messages (id, seq) of one channel: emit message.deleted, drop the body."""
        for message_id, _ in rows:
            self.emit("message.deleted", channel, message=wire.EventMessage(message_id))
        seqs = [(seq,) for _, seq in rows]
        self.conn.executemany("DELETE FROM messages WHERE seq = ?", seqs)
        # The message.sent event carries the body: it goes with the message.
        self.conn.executemany("DELETE FROM events WHERE seq = ?", seqs)

    def delete_channel(self, channel: wire.Channel) -> int:
        rows = self.conn.execute(
            "SELECT id, seq FROM messages WHERE channel_id = ? ORDER BY seq", (channel.id,)
        ).fetchall()
        self.delete_messages(channel, rows)
        self.emit("channel.deleted", channel)
        self.conn.execute("DELETE FROM channels WHERE id = ?", (channel.id,))
        return len(rows)


class SqliteStore:
    """See the module docstring. Times come with each batch, so the store has no clock."""

    def __init__(self, path: str, *, readers: int = 3) -> None:
        self.path = path
        self.epoch = ""
        self._readers_n = readers
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="chatd-writer")
        self._w: sqlite3.Connection | None = None
        self._seq = 0
        self._horizon = 0
        self._last_at = 0
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._readers: list[aiosqlite.Connection] = []
        self._dirty: set[aiosqlite.Connection] = set()
        # Used on the writer thread only.
        self._encoder = msgspec.json.Encoder()
        self._channels: dict[str, tuple[wire.Channel, str]] = {}
        self._rng = random.Random(os.urandom(16))

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._on_writer(self._open_writer)
        for _ in range(self._readers_n):
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            await conn.execute("PRAGMA query_only = 1")
            await conn.execute("PRAGMA busy_timeout = 10000")
            self._readers.append(conn)
            self._pool.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._readers:
            await conn.close()
        self._readers.clear()
        await self._on_writer(self._close_writer)
        self._exec.shutdown(wait=True)

    async def _on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def _open_writer(self) -> None:
        Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        # A deleted body must not linger in freed pages either (FAST: no extra I/O).
        conn.execute("PRAGMA secure_delete = FAST")
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not exists:
            self._create(conn)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta["schema_version"])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this chatd ({SCHEMA_VERSION})"
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; COMMIT;")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(v),))
        self.epoch = meta["epoch"]
        self._seq = int(meta["seq"])
        self._horizon = int(meta["horizon"])
        row = conn.execute("SELECT max(at_ms) FROM events").fetchone()
        self._last_at = int(row[0] or 0)
        self._load_channels(conn)
        self._w = conn

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(schema_sql()):
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("epoch", new_epoch()),
                    ("seq", "0"),
                    ("horizon", "0"),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    # ---------------------------------------------------------------- writes

    async def apply(
        self, ops: list[Operation], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        result: tuple[list[Result], list[Published]] = await self._on_writer(
            self.apply_here, ops, now_ms
        )
        return result

    async def run_on_writer(self, fn: Callable[[], None]) -> None:
        await self._on_writer(fn)

    def apply_here(
        self, ops: list[Operation], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        try:
            return self._apply_batch(ops, now_ms, careful=False)
        except Exception:
            # Something failed that is not a refusal (a bug, a constraint): redo the
            # batch with one savepoint per operation so that only that one fails.
            log.warning("batch of %d failed; retrying one operation at a time", len(ops))
            return self._apply_batch(ops, now_ms, careful=True)

    def _apply_batch(
        self, ops: list[Operation], now_ms: int, *, careful: bool
    ) -> tuple[list[Result], list[Published]]:
        """Apply ``ops`` in one transaction.

        Fast path (``careful=False``): every operation raises its ProtocolError
        (not_found, forbidden, conflict) before it writes anything, so a refused
        operation needs no savepoint to undo it. Any other exception aborts the
        batch; :meth:`apply_here` then runs it carefully, with a savepoint each.
        """
        conn = self._w
        assert conn is not None
        # Timestamps never go backwards along the sequence, even if the clock does.
        tx = _Tx(conn, self._seq, max(now_ms, self._last_at), self._encoder)
        results: list[Result] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                if type(op) is not SendMessage or careful:
                    tx.flush()
                if careful:
                    results.append(self._apply_one_carefully(tx, op))
                    continue
                try:
                    results.append(_APPLY[type(op)](self, tx, op))
                except ProtocolError as exc:
                    results.append(exc)
            tx.flush()
            if tx.seq != self._seq:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(tx.seq),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._load_channels(conn)
            raise
        self._seq = tx.seq
        self._last_at = tx.at_ms
        return results, tx.events

    def _apply_one_carefully(self, tx: _Tx, op: Operation) -> Result:
        conn = tx.conn
        seq, n_events = tx.seq, len(tx.events)
        conn.execute("SAVEPOINT op")
        try:
            result = _APPLY[type(op)](self, tx, op)
            tx.flush()
            conn.execute("RELEASE op")
            return result
        except Exception as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            tx.seq = seq
            del tx.events[n_events:]
            tx.new_events.clear()
            tx.new_messages.clear()
            tx.new_nonces.clear()
            tx.active.clear()
            self._load_channels(conn)
            if isinstance(exc, ProtocolError):
                return exc
            log.exception("store: %s failed", type(op).__name__)
            return InternalError("internal error")

    def _load_channels(self, conn: sqlite3.Connection) -> None:
        """The writer's copy of the channel table (it is the only writer)."""
        self._channels = {
            cid: (wire.Channel(cid, name), creator)
            for cid, name, creator in conn.execute("SELECT id, name, creator_id FROM channels")
        }

    def _create_user(self, tx: _Tx, op: CreateUser) -> StoredUser:
        row = tx.conn.execute(
            "SELECT id, name, pw_hash FROM users WHERE name_key = ?", (op.key,)
        ).fetchone()
        if row:
            return StoredUser(*row)
        user_id = new_id("U")
        tx.conn.execute(
            "INSERT INTO users(id, name, name_key, pw_hash, created_ms) VALUES (?,?,?,?,?)",
            (user_id, op.name, op.key, op.pw_hash, tx.at_ms),
        )
        return StoredUser(user_id, op.name, op.pw_hash, created=True)

    def _issue_token(self, tx: _Tx, op: IssueToken) -> None:
        tx.conn.execute(
            "INSERT INTO tokens(hash, user_id, created_ms, expires_ms) VALUES (?,?,?,?)",
            (op.token_hash, op.user_id, tx.at_ms, op.expires_ms),
        )

    def _revoke_token(self, tx: _Tx, op: RevokeToken) -> None:
        tx.conn.execute("DELETE FROM tokens WHERE hash = ?", (op.token_hash,))

    def _create_channel(self, tx: _Tx, op: CreateChannel) -> wire.Channel:
        taken = tx.conn.execute(
            "SELECT name FROM channels WHERE name_key = ?", (op.key,)
        ).fetchone()
        if taken:
            raise Conflict(f"name: a channel named {taken[0]!r} exists")
        channel = wire.Channel(new_id("C"), op.name)
        seq = tx.emit("channel.created", channel)
        tx.conn.execute(
            "INSERT INTO channels(id, name, name_key, creator_id, created_seq, active_ms)"
            " VALUES (?,?,?,?,?,?)",
            (channel.id, op.name, op.key, op.user.id, seq, tx.at_ms),
        )
        self._channels[channel.id] = (channel, op.user.id)
        return channel

    def _channel(self, channel_id: str) -> tuple[wire.Channel, str]:
        """(channel, creator id) from the writer's copy of the channel table."""
        found = self._channels.get(channel_id)
        if found is None:
            raise NotFound(f"channel: no channel {channel_id!r}")
        return found

    def _delete_channel(self, tx: _Tx, op: DeleteChannel) -> wire.Channel:
        channel, creator = self._channel(op.channel_id)
        if creator != op.user.id:
            raise Forbidden("channel: only its creator may delete it")
        tx.delete_channel(channel)
        del self._channels[channel.id]
        return channel

    def _send(self, tx: _Tx, op: SendMessage) -> Sent:
        if op.nonce is not None:
            first = tx.nonces.get((op.user.id, op.nonce))
            if first is not None:
                return first
            row = tx.conn.execute(
                "SELECT n.message_id, n.seq, n.at_ms, n.channel_id, n.channel_name, m.body"
                " FROM nonces n LEFT JOIN messages m ON m.id = n.message_id"
                " WHERE n.user_id = ? AND n.nonce = ?",
                (op.user.id, op.nonce),
            ).fetchone()
            if row:
                message_id, seq, at_ms, channel_id, channel_name, body = row
                # The first ok again. If the message was deleted since, its body is
                # gone for good; the retry carries the same body, so echo that.
                message = wire.Message(
                    message_id, seq, wire.format_at(at_ms), op.user,
                    body if body is not None else op.body,
                )
                return Sent(message, wire.Channel(channel_id, channel_name))
        channel, _ = self._channel(op.channel_id)
        # The event about to be emitted gets tx.seq + 1.
        message_id = new_ordered_id("M", tx.seq + 1, self._rng)
        seq = tx.emit(
            "message.sent", channel, sender=op.user,
            message=wire.EventMessage(message_id, op.body),
        )
        tx.new_messages.append(
            (seq, message_id, channel.id, op.user.id, op.user.name, tx.at_ms, op.body)
        )
        tx.active[channel.id] = tx.at_ms
        sent = Sent(wire.Message(message_id, seq, tx.at, op.user, op.body), channel)
        if op.nonce is not None:
            tx.new_nonces.append(
                (op.user.id, op.nonce, message_id, seq, tx.at_ms, channel.id, channel.name)
            )
            tx.nonces[(op.user.id, op.nonce)] = sent
        return sent

    def _delete_message(self, tx: _Tx, op: DeleteMessage) -> tuple[str, wire.Channel]:
        row = tx.conn.execute(
            "SELECT seq, channel_id, sender_id FROM messages WHERE id = ?", (op.message_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"message: no message {op.message_id!r}")
        seq, channel_id, sender_id = row
        if sender_id != op.user.id:
            raise Forbidden("message: only its sender may delete it")
        channel, _ = self._channel(channel_id)
        tx.delete_messages(channel, [(op.message_id, seq)])
        return op.message_id, channel

    def _expire(self, tx: _Tx, op: Expire) -> Expired:
        conn, budget = tx.conn, op.limit
        messages = channels = events = 0
        old = conn.execute(
            "SELECT m.id, m.seq, m.channel_id, c.name FROM messages m"
            " JOIN channels c ON c.id = m.channel_id"
            " WHERE m.at_ms < ? ORDER BY m.seq LIMIT ?",
            (op.message_before_ms, budget),
        ).fetchall()
        for message_id, seq, channel_id, channel_name in old:
            tx.delete_messages(wire.Channel(channel_id, channel_name), [(message_id, seq)])
        messages += len(old)
        budget -= len(old)
        if budget > 0:
            idle = conn.execute(
                "SELECT id, name FROM channels WHERE active_ms < ? ORDER BY active_ms LIMIT ?",
                (op.channel_idle_before_ms, budget),
            ).fetchall()
            for channel_id, name in idle:
                dropped = tx.delete_channel(wire.Channel(channel_id, name))
                self._channels.pop(channel_id, None)
                messages += dropped
                channels += 1
                budget -= 1 + dropped
                if budget <= 0:
                    break
        if budget > 0:
            # at_ms never decreases along seq, so the expired events are a prefix.
            rows = conn.execute(
                "SELECT seq, at_ms FROM events ORDER BY seq LIMIT ?", (budget,)
            ).fetchall()
            last = 0
            for seq, at_ms in rows:
                if at_ms >= op.event_before_ms:
                    break
                last = seq
                events += 1
            if last:
                conn.execute("DELETE FROM events WHERE seq <= ?", (last,))
                if last > self._horizon:
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'horizon'", (str(last),)
                    )
                    self._horizon = last
            budget -= events
        conn.execute(
            "DELETE FROM nonces WHERE (user_id, nonce) IN"
            " (SELECT user_id, nonce FROM nonces WHERE at_ms < ? LIMIT ?)",
            (op.nonce_before_ms, op.limit),
        )
        conn.execute(
            "DELETE FROM tokens WHERE hash IN"
            " (SELECT hash FROM tokens WHERE expires_ms < ? LIMIT ?)",
            (op.token_before_ms, op.limit),
        )
        return Expired(messages, channels, events, self._horizon, more=budget <= 0)

    # ----------------------------------------------------------------- reads

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A pooled read connection.

        A reader that was cancelled mid-statement (its client went away) may
        have left a transaction open: the statement still runs on the
        connection's thread after the await is gone. Such a connection is marked
        and rolled back before its next use.
        """
        conn = await self._pool.get()
        clean = False
        try:
            if conn in self._dirty:
                with suppress(sqlite3.OperationalError):
                    await conn.execute("ROLLBACK")
                self._dirty.discard(conn)
            yield conn
            clean = True
        finally:
            if not clean:
                self._dirty.add(conn)
            self._pool.put_nowait(conn)

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read transaction: every statement inside sees the same committed state."""
        async with self._reader() as conn:
            await conn.execute("BEGIN")
            try:
                yield conn
            finally:
                await conn.execute("COMMIT")

    async def position(self) -> tuple[int, int]:
        async with self._reader() as conn:
            rows = await conn.execute_fetchall(
                "SELECT key, value FROM meta WHERE key IN ('seq', 'horizon')"
            )
        meta = {k: int(v) for k, v in rows}
        return meta["seq"], meta["horizon"]

    async def user_by_name(self, key: str) -> StoredUser | None:
        async with self._reader() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT id, name, pw_hash FROM users WHERE name_key = ?", (key,)
                )
            )
        return StoredUser(*rows[0]) if rows else None

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> wire.User | None:
        async with self._reader() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT u.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id"
                    " WHERE t.hash = ? AND t.expires_ms > ?",
                    (token_hash, now_ms),
                )
            )
        return wire.User(*rows[0]) if rows else None

    async def boot(self) -> tuple[int, list[wire.Channel]]:
        async with self._snapshot() as conn:
            seq_rows = list(
                await conn.execute_fetchall("SELECT value FROM meta WHERE key = 'seq'")
            )
            rows = await conn.execute_fetchall(
                "SELECT id, name FROM channels ORDER BY created_seq"
            )
        return int(seq_rows[0][0]), [wire.Channel(i, n) for i, n in rows]

    async def history(
        self, channel_id: str, before: int | None, limit: int
    ) -> tuple[list[wire.Message], bool]:
        async with self._snapshot() as conn:
            exists = list(
                await conn.execute_fetchall("SELECT 1 FROM channels WHERE id = ?", (channel_id,))
            )
            if not exists:
                raise NotFound(f"channel: no channel {channel_id!r}")
            rows = list(
                await conn.execute_fetchall(
                    "SELECT id, seq, at_ms, sender_id, sender_name, body FROM messages"
                    " WHERE channel_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (channel_id, wire.MAX_SEQ if before is None else before, limit + 1),
                )
            )
        more = len(rows) > limit
        messages = [
            wire.Message(mid, seq, wire.format_at(at_ms), wire.User(uid, uname), body)
            for mid, seq, at_ms, uid, uname, body in reversed(rows[:limit])
        ]
        return messages, more

    async def read_events(
        self, after: int, channels: frozenset[str] | None, limit: int
    ) -> Batch:
        async with self._snapshot() as conn:
            meta = {
                k: int(v)
                for k, v in await conn.execute_fetchall(
                    "SELECT key, value FROM meta WHERE key IN ('seq', 'horizon')"
                )
            }
            upto = meta["seq"]
            if channels is None:
                rows = await conn.execute_fetchall(
                    "SELECT seq, frame FROM events WHERE seq > ? AND seq <= ?"
                    " ORDER BY seq LIMIT ?",
                    (after, upto, limit),
                )
            else:
                rows = await conn.execute_fetchall(
                    "SELECT seq, frame FROM events WHERE seq > ? AND seq <= ?"
                    " AND channel_id IN (SELECT value FROM json_each(?))"
                    " ORDER BY seq LIMIT ?",
                    (after, upto, msgspec.json.encode(sorted(channels)).decode(), limit),
                )
        return Batch([(s, f) for s, f in rows], upto, meta["horizon"])


_APPLY: dict[type, Callable[[SqliteStore, _Tx, Any], object]] = {
    CreateUser: SqliteStore._create_user,
    IssueToken: SqliteStore._issue_token,
    RevokeToken: SqliteStore._revoke_token,
    CreateChannel: SqliteStore._create_channel,
    DeleteChannel: SqliteStore._delete_channel,
    SendMessage: SqliteStore._send,
    DeleteMessage: SqliteStore._delete_message,
    Expire: SqliteStore._expire,
}


def _split_sql(script: str) -> list[str]:
    """Statements of schema.sql (it has no semicolons inside literals or triggers)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
