"""The embedded backend: one sqlite file in WAL mode. SQL, connections and threads
only; what the rows mean is :mod:`chatd.rules`'.

Writes run on one dedicated thread that owns the only writing connection: the
writer hands over a whole batch and the thread applies it in one
``BEGIN IMMEDIATE`` transaction, so a batch costs one thread hop and one fsync
rather than one per statement (aiosqlite would hop once per statement).
``BEGIN IMMEDIATE`` takes sqlite's write lock at once, so the counter read at
the start of a transaction stays the counter until it commits, whichever
process writes the file. Reads use a small pool of aiosqlite connections; WAL
lets them read committed snapshots while the writer works.

Durability: ``synchronous=FULL`` fsyncs the WAL on every commit, so a commit that
returned survives kill -9 and power loss (PROTOCOL.md guarantee 1). Acks are sent
only after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from . import migrations
from .crypto import new_epoch
from .exceptions import StartupError
from .migrations import SCHEMA_VERSION, Migration
from .search import Query, fts5_query, index_text
from .sendbuffer import SendBuffer
from .sqlrows import (
    SEARCH_CHANNEL,
    SEARCH_COLUMNS,
    SEARCH_VISIBLE,
    RowStatements,
    SnapshotStatements,
)
from .storage import (
    AccountRow,
    InviteRow,
    MessageRow,
    NonceRow,
    SearchRow,
    UserRow,
    WriteTx,
)

T = TypeVar("T")

log = logging.getLogger("chatd.store")



def schema_sql() -> str:
    """schema.sql from the installed package, or from the source tree in development."""
    try:
        return (resources.files("chatd") / "schema.sql").read_text("utf-8")
    except (FileNotFoundError, OSError):
        return (Path(__file__).resolve().parent.parent / "schema.sql").read_text("utf-8")


# The search index (schema.sql: message_words) is written here, not by triggers
# (schema.sql says why): with every message inserted, before a message's words
# change or it is deleted (FTS5's 'delete' takes the words that were indexed,
# read from the row while it still has them), and after they changed.
MESSAGE_WORDS_INSERT = "INSERT INTO message_words(rowid, words) VALUES (?, ?)"

# With a trailing index (SqliteBackend's ``search_index_batch``), meta
# ('search_indexed') is the newest seq up to which every message is in
# message_words; the messages after it (at most about a batch) are not, and a
# search reads them from ``messages`` instead (_SqliteSnapshot.search), so it
# finds every committed message all the same. The row is moved, and the messages
# after it indexed, in one transaction (INDEX_TRAILING, ADVANCE_INDEXED): a
# crash leaves both as they were. No row: every message is in the index, written
# in its own transaction (``search_index_batch`` 0, on a file that never trailed;
# the daemon trails by default, chatd.config). Each statement below reads the row
# itself, so any process writing the file keeps the index right in either mode.
INDEXED_SEQ = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'search_indexed'"
_INDEXED = f"coalesce(({INDEXED_SEQ}), 9223372036854775807)"
MESSAGE_WORDS_DELETE = (
    "INSERT INTO message_words(message_words, rowid, words)"
    f" SELECT 'delete', seq, words FROM messages WHERE seq = ? AND seq <= {_INDEXED}"
)
#: after an edit, the new words of an indexed message (a trailing one is indexed
#: with the words it has then)
MESSAGE_WORDS_REINSERT = (
    "INSERT INTO message_words(rowid, words)"
    f" SELECT seq, words FROM messages WHERE seq = ? AND seq <= {_INDEXED}"
)
INDEX_TRAILING = (
    "INSERT INTO message_words(rowid, words)"
    f" SELECT seq, words FROM messages WHERE seq > {_INDEXED} ORDER BY seq"
)
ADVANCE_INDEXED = (
    "UPDATE meta SET value = CAST(max(CAST(value AS INTEGER),"
    " coalesce((SELECT max(seq) FROM messages), 0)) AS TEXT) WHERE key = 'search_indexed'"
)


class _Trailing:
    """The writer's count of messages not yet in the search index; only decides
    when to catch up (the statements above read meta for what is right)."""

    __slots__ = ("batch", "pending")

    def __init__(self, batch: int, pending: int) -> None:
        self.batch = batch
        self.pending = pending


#: The one global counter, the last seq assigned, on sqlite: the newest event,
#: or the horizon if expiry dropped every event up to it, or meta('seq') (what
#: chatd wrote there before version 6, and never less than either). Every seq
#: is an event stored in the transaction that takes it, and an event is only
#: ever deleted in a transaction that stores a newer one or moves the horizon
#: past it, so this never goes back. Not writing meta('seq') spares every
#: commit a page (sqlite is one writer anyway; PostgreSQL keeps its counter row,
#: whose lock orders the nodes' commits).
COUNTER = (
    "SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
    " CAST((SELECT value FROM meta WHERE key = 'seq') AS INTEGER),"
    " CAST((SELECT value FROM meta WHERE key = 'horizon') AS INTEGER))"
)


class _SqliteTx(SendBuffer, RowStatements):
    """:class:`chatd.storage.WriteTx` on the writing connection.

    Rows that sends add (events, messages, nonces, the channel's activity) are
    buffered (:class:`~chatd.sendbuffer.SendBuffer`) and written with one
    ``executemany`` per table: a batch of sends then costs a few statements, not
    a few per send. Every other statement writes the buffers first, so it sees
    all rows before it; :meth:`nonce` does not (see its contract in
    :mod:`chatd.storage`), which keeps a send with a nonce on the buffered path.
    """

    def __init__(self, conn: sqlite3.Connection, trailing: _Trailing | None = None) -> None:
        super().__init__()
        self.conn = conn
        self._seq = -1
        #: None: each message's words go into the index in its own transaction
        self._trailing = trailing
        #: messages this transaction wrote, and how many of them before it caught up
        self._added = 0
        self._caught_up: int | None = None

    def _flush(self) -> None:
        conn = self.conn
        if self._events:
            conn.executemany(
                "INSERT INTO events(seq, at_ms, channel_id, frame, message_id, restricted,"
                " only_user) VALUES (?,?,?,?,?,?,?)",
                self._events,
            )
            self._events.clear()
        if self._messages:
            conn.executemany(
                "INSERT INTO messages(seq, id, channel_id, sender_id, sender_name, at_ms, body,"
                " words) VALUES (?,?,?,?,?,?,?,?)",
                self._messages,
            )
            if self._trailing is None:
                conn.executemany(MESSAGE_WORDS_INSERT, [(m[0], m[7]) for m in self._messages])
            else:
                self._added += len(self._messages)
            self._messages.clear()
        if self._nonces:
            conn.executemany(
                "INSERT INTO nonces(user_id, nonce, message_id, seq, at_ms, channel_id,"
                " channel_name) VALUES (?,?,?,?,?,?,?)",
                self._nonces,
            )
            self._nonces.clear()
        if self._active:
            conn.executemany(
                "UPDATE channels SET active_ms = ? WHERE id = ?",
                [(at_ms, cid) for cid, at_ms in self._active.items()],
            )
            self._active.clear()

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        self._flush()
        return self.conn.execute(sql, args).fetchone()

    def _run(self, sql: str, args: tuple[Any, ...]) -> None:
        self._flush()
        self.conn.execute(sql, args)

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        self._flush()
        return self.conn.execute(sql, args).fetchall()

    # -- counter and horizon

    def counter(self) -> int:
        if self._seq < 0:
            self._seq = int(self._one(COUNTER, ())[0])
        return self._seq

    def set_counter(self, seq: int) -> None:
        # Nothing to write: the events just inserted are the counter (COUNTER).
        self._seq = seq

    def horizon(self) -> int:
        return int(self._one("SELECT value FROM meta WHERE key = 'horizon'", ())[0])

    def set_horizon(self, seq: int) -> None:
        self._run("UPDATE meta SET value = ? WHERE key = 'horizon'", (str(seq),))

    # -- savepoints

    def savepoint(self) -> None:
        self._run("SAVEPOINT op", ())

    def rollback_savepoint(self) -> None:
        self._drop_buffers()
        self.conn.execute("ROLLBACK TO op")
        self.conn.execute("RELEASE op")

    def release_savepoint(self) -> None:
        self._run("RELEASE op", ())

    # -- users and tokens

    # -- channels

    # -- messages and events

    def edit_message(self, seq: int, body: str, edited_ms: int) -> None:
        words = index_text(body)
        self._run(MESSAGE_WORDS_DELETE, (seq,))
        self._run("UPDATE messages SET body = ?, edited_ms = ?, words = ? WHERE seq = ?",
                  (body, edited_ms, words, seq))
        self._run(MESSAGE_WORDS_REINSERT, (seq,))

    def delete_messages(self, rows: list[tuple[str, int]]) -> None:
        self._flush()
        seqs = [(s,) for _, s in rows]
        # The channel had a message then, even if it is gone now (idle_channels).
        self.conn.executemany(
            "UPDATE channels SET active_ms = max(active_ms, m.at_ms) FROM messages m"
            " WHERE m.seq = ? AND channels.id = m.channel_id", seqs)
        self.conn.executemany(MESSAGE_WORDS_DELETE, seqs)
        self.conn.executemany("DELETE FROM messages WHERE seq = ?", seqs)
        # Its message.sent has its seq; its message.edited events have its id.
        self.conn.executemany("DELETE FROM events WHERE seq = ?", seqs)
        self.conn.executemany("DELETE FROM events WHERE message_id = ?", [(i,) for i, _ in rows])

    # -- nonces

    def nonces(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], NonceRow]:
        # One indexed lookup per key: in-process that is cheaper than one
        # statement for all (sqlite plans a row-value IN over VALUES as a scan).
        found: dict[tuple[str, str], NonceRow] = {}
        execute = self.conn.execute
        for key in keys:
            row = execute(
                "SELECT n.message_id, n.seq, n.at_ms, n.channel_id, n.channel_name, m.body,"
                " m.edited_ms FROM nonces n LEFT JOIN messages m ON m.id = n.message_id"
                " WHERE n.user_id = ? AND n.nonce = ?",
                key,
            ).fetchone()
            if row is not None:
                found[key] = row
        return found

    # -- expiry

    def tidy_search_index(self, pages: int) -> None:
        if self._trailing is not None:
            # the expiry round: the index never trails a quiet chat for longer
            self._catch_up()
        self._run("INSERT INTO message_words(message_words, rank) VALUES ('merge', ?)", (pages,))

    def _catch_up(self) -> None:
        """Index every message the index trails, and move meta('search_indexed')."""
        self._flush()
        self.conn.execute(INDEX_TRAILING)
        self.conn.execute(ADVANCE_INDEXED)
        self._caught_up = self._added

    def commit(self) -> None:
        self._flush()
        trailing = self._trailing
        if trailing is not None and trailing.pending + self._added >= trailing.batch:
            self._catch_up()
        self.conn.execute("COMMIT")
        if trailing is not None:
            if self._caught_up is None:
                trailing.pending += self._added
            else:
                trailing.pending = self._added - self._caught_up


class SqliteBackend:
    """See the module docstring. :mod:`chatd.storage` states the contract."""

    #: one daemon per file: its own commits are the whole stream.
    shared = False
    commits_inline = True

    def __init__(self, path: str, *, readers: int = 3, search_index_batch: int = 0) -> None:
        """``search_index_batch``: 0 writes each message's search index entry in
        the message's transaction; N > 0 (the daemon's default, chatd.config)
        lets the index trail by up to about N messages, written together (FTS5's
        fixed cost per commit, ~100 µs of CPU, is then paid once per N sends),
        while searches read the trailing messages directly and find every
        committed message."""
        self.path = path
        self._index_batch = search_index_batch
        self._trailing: _Trailing | None = None
        self.epoch = ""
        self._readers_n = readers
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="chatd-writer")
        self._w: sqlite3.Connection | None = None
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._readers: list[aiosqlite.Connection] = []
        self._dirty: set[aiosqlite.Connection] = set()
        #: what open() did to the schema: made it, and the migrations it applied
        self.created = False
        self.migrated: list[Migration] = []

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
            raise StartupError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        # A deleted body must not linger in freed pages either (FAST: no extra I/O).
        conn.execute("PRAGMA secure_delete = FAST")
        self.created = self._create(conn)
        self.migrated = migrate(conn, self.path)
        self.epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        self._trailing = self._open_trailing(conn)
        self._w = conn

    def _open_trailing(self, conn: sqlite3.Connection) -> _Trailing | None:
        """The trailing index's state; None when every message is indexed in its
        own transaction. A file that has trailed once keeps meta('search_indexed'),
        and a process with ``search_index_batch`` 0 then catches up in every commit
        that adds messages: the same index, one meta page more."""
        row = conn.execute(INDEXED_SEQ).fetchone()
        if row is None:
            if self._index_batch <= 0:
                return None
            with _schema_tx(conn):
                # every message so far is in the index: it was written with it
                conn.execute("INSERT OR IGNORE INTO meta(key, value) SELECT 'search_indexed',"
                             " CAST(coalesce(max(seq), 0) AS TEXT) FROM messages")
            row = conn.execute(INDEXED_SEQ).fetchone()
        (pending,) = conn.execute("SELECT count(*) FROM messages WHERE seq > ?", row).fetchone()
        return _Trailing(max(1, self._index_batch), pending)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> bool:
        """Make the schema of a new database; whether it was new."""
        with _schema_tx(conn):
            if _has_meta(conn):
                return False
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
            conn.execute(
                "INSERT INTO migrations(version, name, applied_ms) VALUES (?, ?, ?)",
                (SCHEMA_VERSION, migrations.CREATED, int(time.time() * 1000)),
            )
        return True

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    async def listen(
        self, wake: Callable[[], None], ephemeral: Callable[[str], None] | None = None
    ) -> None:
        return None

    # ---------------------------------------------------------------- writes

    async def run_on_writer(self, fn: Callable[[], T]) -> T:
        result: T = await self._on_writer(fn)
        return result

    def write_here(self, fn: Callable[[WriteTx], T]) -> T:
        conn = self._w
        assert conn is not None, "open() first"
        tx = _SqliteTx(conn, self._trailing)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(tx)
            tx.commit()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

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

    def reader(self) -> AbstractAsyncContextManager[_SqliteSnapshot]:
        return self._reads(transaction=False)

    def snapshot(self) -> AbstractAsyncContextManager[_SqliteSnapshot]:
        return self._reads(transaction=True)

    @asynccontextmanager
    async def _reads(self, *, transaction: bool) -> AsyncIterator[_SqliteSnapshot]:
        """With ``transaction``, every statement inside sees one committed state."""
        async with self._reader() as conn:
            if not transaction:
                yield _SqliteSnapshot(conn)
                return
            await conn.execute("BEGIN")
            try:
                yield _SqliteSnapshot(conn)
            finally:
                await conn.execute("COMMIT")


class _SqliteSnapshot(SnapshotStatements):
    """:class:`chatd.storage.Snapshot` on a pooled aiosqlite connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return list(await self.conn.execute_fetchall(sql, args))

    async def counter(self) -> tuple[int, int]:
        (seq,), = await self._rows(COUNTER)
        (horizon,), = await self._rows("SELECT value FROM meta WHERE key = 'horizon'")
        return int(seq), int(horizon)

    async def user_by_key(self, key: str) -> UserRow | None:
        rows = await self._rows(
            "SELECT id, name, pw_hash, role, active FROM users WHERE name_key = ?", (key,))
        return tuple(rows[0]) if rows else None

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> tuple[str, str] | None:
        rows = await self._rows(
            "SELECT u.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.hash = ? AND t.expires_ms > ? AND u.active",
            (token_hash, now_ms),
        )
        return tuple(rows[0]) if rows else None

    async def user(self, user_id: str) -> UserRow | None:
        rows = await self._rows(
            "SELECT id, name, pw_hash, role, active FROM users WHERE id = ?", (user_id,))
        return tuple(rows[0]) if rows else None

    async def users(self) -> list[AccountRow]:
        return await self._rows("SELECT id, name, role, active FROM users ORDER BY name_key")

    async def invites(self, now_ms: int) -> list[InviteRow]:
        return await self._rows(
            "SELECT i.id, i.expires_ms, i.uses_left, i.created_by, coalesce(u.name, '')"
            " FROM invites i LEFT JOIN users u ON u.id = i.created_by"
            " WHERE i.expires_ms > ? AND i.uses_left > 0 ORDER BY i.created_ms, i.id",
            (now_ms,),
        )

    async def live_tokens(self, token_hashes: list[bytes], now_ms: int) -> list[bytes]:
        live: list[bytes] = []
        for i in range(0, len(token_hashes), 500):  # sqlite's bound-parameter limit
            chunk = token_hashes[i:i + 500]
            rows = await self._rows(
                "SELECT hash FROM tokens WHERE expires_ms > ? AND hash IN"
                f" ({','.join('?' * len(chunk))})",
                (now_ms, *chunk),
            )
            live += [bytes(r[0]) for r in rows]
        return live

    async def messages(self, channel_id: str, before: int, limit: int) -> list[MessageRow]:
        return await self._rows(
            "SELECT id, seq, at_ms, sender_id, sender_name, body, edited_ms FROM messages"
            " WHERE channel_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (channel_id, before, limit),
        )

    @staticmethod
    def _in_channels(channels: frozenset[str]) -> tuple[str, Any]:
        return "IN (SELECT value FROM json_each(?))", msgspec.json.encode(sorted(channels)).decode()

    async def messages_after(self, channel_id: str, after: int, limit: int) -> list[MessageRow]:
        return await self._rows(
            "SELECT id, seq, at_ms, sender_id, sender_name, body, edited_ms FROM messages"
            " WHERE channel_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (channel_id, after, limit),
        )

    async def search(
        self, user_id: str, query: Query, channel_id: str | None, before: int, limit: int
    ) -> list[SearchRow] | None:
        # FTS5 walks its index by rowid (the seq), newest first, and stops at the
        # limit: no sort, whatever the number of matches.
        where: tuple[str, ...] = (user_id,)
        in_channel = ""
        if channel_id is not None:
            if not await self._rows(SEARCH_CHANNEL, (channel_id, user_id)):
                return None
            in_channel, where = " AND m.channel_id = ?", (channel_id, user_id)
        rows: list[SearchRow] = []
        indexed = await self._rows(INDEXED_SEQ)
        if indexed and before > indexed[0][0] + 1:
            # The messages the index trails (a batch at most), newest first, all of
            # them candidates: the caller confirms each on its body.
            upto = indexed[0][0]
            rows = await self._rows(
                f"SELECT {SEARCH_COLUMNS} FROM messages m JOIN channels c ON c.id = m.channel_id"
                f" WHERE m.seq > ? AND m.seq < ?{in_channel} AND {SEARCH_VISIBLE}"
                " ORDER BY m.seq DESC LIMIT ?",
                (upto, before, *where, limit),
            )
            if len(rows) >= limit:
                return rows
            before, limit = upto + 1, limit - len(rows)
        return rows + await self._rows(
            f"SELECT {SEARCH_COLUMNS} FROM message_words w"
            " JOIN messages m ON m.seq = w.rowid JOIN channels c ON c.id = m.channel_id"
            f" WHERE message_words MATCH ? AND w.rowid < ?{in_channel} AND {SEARCH_VISIBLE}"
            " ORDER BY w.rowid DESC LIMIT ?",
            (fts5_query(query), before, *where, limit),
        )


def _has_meta(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    return row.fetchone() is not None


@contextmanager
def _schema_tx(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction holding sqlite's write lock: one process changes the schema."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise StartupError("meta has no schema_version: not a chatd database")
    return int(row[0])


def migrate(conn: sqlite3.Connection, where: str) -> list[Migration]:
    """Apply the pending migrations of :mod:`chatd.migrations`, one transaction each."""

    def apply(m: Migration) -> None:
        for statement in _split_sql(m.sqlite):
            conn.execute(statement)
        if m.backfill is not None:
            m.backfill("sqlite", conn)
        for statement in _split_sql(m.sqlite_after):
            conn.execute(statement)
        for sql, args in zip(
            migrations.RECORD, migrations.record_args(m, int(time.time() * 1000)), strict=True
        ):
            conn.execute(sql, args)

    return migrations.upgrade(
        lambda: _schema_tx(conn), lambda: schema_version(conn), apply, where
    )


def _split_sql(script: str) -> list[str]:
    """Statements of schema.sql (it has no semicolons inside literals or triggers)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
