"""The PostgreSQL backend: several chatd nodes on one database. SQL, connections
and threads only; what the rows mean is :mod:`chatd.rules`'.

The driver is psycopg 3, not asyncpg: the rules run synchronously on one
writing thread (the group-commit writer hands a whole batch to that thread), so
the writer needs a synchronous connection; psycopg 3 has one, and an
:class:`~psycopg.AsyncConnection` for the reads and LISTEN in the
event loop: one library, one set of types and errors for both.

Writes run on one dedicated thread that owns the writing connection. A batch is
one transaction, ``READ COMMITTED``: it first locks the one row of ``counter``
(``SELECT ... FOR UPDATE``, sent with the ``BEGIN`` in one round trip), so
writers on every node take turns, and because each later statement of a READ
COMMITTED transaction sees everything committed before it, the batch sees the
rows of every writer before it. The counter is that row, incremented in the
transaction that stores the events, not a SEQUENCE: sequence values are handed
out before commit, so a reader could see seq 11 committed before 10. Rows that
sends add are buffered and written, with the counter and the ``COMMIT``, in one
pipeline: a batch of sends costs two round trips, plus one for the nonces of
the batch's sends that carry one (looked up together).
``synchronous_commit = on``: a commit that returned is on the server's disk
(and its synchronous standbys', if it has any) before the ack.

Reads use a small pool of async connections: :meth:`PostgresBackend.snapshot`
is a ``REPEATABLE READ READ ONLY`` transaction, :meth:`PostgresBackend.reader`
one statement without one. A server that cannot be reached, or a connection it
dropped, is :class:`~chatd.exceptions.Unavailable` for that call; the next one
connects again.

Deleted rows: sqlite's ``secure_delete`` has no PostgreSQL equivalent. A deleted
message's body stays in its table page (and in the WAL, and in backups) until
VACUUM reuses the space; autovacuum does so eventually, ``VACUUM`` sooner.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import select
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo
from psycopg.pq import ConnStatus, TransactionStatus

from . import migrations
from .crypto import new_epoch
from .exceptions import StartupError, Unavailable
from .migrations import PG_WORDS, SCHEMA_VERSION, Migration
from .search import Query, index_text, tsquery, tsvector_text
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

#: pg_advisory_xact_lock key held while a node creates or migrates the schema.
_SCHEMA_LOCK = 0x636861746400  # "chatd\0"

_IN_TX = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
#: the NOTIFY channel of a commit that stored events (no payload).
_EVENTS_CHANNEL = "chatd_events"
#: the NOTIFY channel of typing and presence notices (chatd.ephemeral)
_EPHEMERAL_CHANNEL = "chatd_ephemeral"

#: Who is online on which node (chatd.ephemeral explains the design). Runtime
#: state, not data: UNLOGGED (no WAL; a crash of the server empties them, and
#: each node's heartbeat then writes its rows again), made by every node at
#: start-up rather than by a migration, and never backed up or migrated.
_PRESENCE_TABLES = """
CREATE UNLOGGED TABLE IF NOT EXISTS presence_nodes (
    node_id TEXT PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS presence_users (
    node_id TEXT NOT NULL REFERENCES presence_nodes ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    PRIMARY KEY (node_id, user_id)
);
"""
_BEAT = (
    "INSERT INTO presence_nodes(node_id, seen) VALUES (%s, now())"
    " ON CONFLICT (node_id) DO UPDATE SET seen = now()"
)


def schema_sql() -> str:
    """chatd/schema_pg.sql, shipped inside the package."""
    return (resources.files("chatd") / "schema_pg.sql").read_text("utf-8")


def _one_line(exc: BaseException) -> str:
    """A driver error as one line (libpq's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


#: what a lost connection or an unreachable server raises
_LOST = (psycopg.OperationalError, psycopg.InterfaceError)


def _ended_by_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server has ended this idle connection; no round trip.

    An idle connection that does not LISTEN is sent nothing unasked but the
    server's last words (an error, then end of file) when its session is
    terminated or the server shuts down; read them if they are there.
    """
    if conn.closed:
        return True
    pgconn = conn.pgconn
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    try:
        for _ in range(3):
            if not poller.poll(0):
                break
            pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return pgconn.status != ConnStatus.OK


_INSERT_EVENTS = (
    "INSERT INTO events(seq, at_ms, channel_id, frame, message_id, restricted, only_user)"
    " SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::bytea[], %b::text[],"
    " %b::integer[], %b::text[])"
)
_INSERT_MESSAGES = (
    "INSERT INTO messages(seq, id, channel_id, sender_id, sender_name, at_ms, body, words)"
    " SELECT seq, id, channel_id, sender_id, sender_name, at_ms, body, "
    + PG_WORDS.format("words")
    + " FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::bigint[], %b::bytea[], %b::text[])"
    " AS t(seq, id, channel_id, sender_id, sender_name, at_ms, body, words)"
)
_INSERT_NONCES = (
    "INSERT INTO nonces(user_id, nonce, message_id, seq, at_ms, channel_id, channel_name)"
    " SELECT * FROM unnest(%b::text[], %b::bytea[], %b::text[], %b::bigint[], %b::bigint[],"
    " %b::text[], %b::text[])"
)
_TOUCH_CHANNELS = (
    "UPDATE channels c SET active_ms = t.at_ms"
    " FROM unnest(%b::text[], %b::bigint[]) AS t(id, at_ms) WHERE c.id = t.id"
)


#: search walks this many of the newest seqs before it turns to the GIN index
_SEARCH_WINDOW = 10_000


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column."""
    return [list(column) for column in zip(*rows, strict=True)]


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """``?`` placeholders (the statements shared with sqlite) as psycopg's ``%s``."""
    return sql.replace("?", "%s")


def _matches_nothing(args: tuple[Any, ...]) -> bool:
    """Whether a lookup by these values can find no row: a text with NUL.

    TEXT cannot hold NUL (PostgreSQL refuses it as a parameter), so no stored
    id or name has one; a client may still send one (the protocol allows any
    Unicode), and looking it up finds nothing, as on sqlite.
    """
    return any(isinstance(a, str) and "\x00" in a for a in args)


class _PgTx(SendBuffer, RowStatements):
    """:class:`chatd.storage.WriteTx` on the writing connection, in a transaction
    whose counter row is already locked.

    Rows that sends add (events, messages, nonces, the channel's activity:
    :class:`~chatd.sendbuffer.SendBuffer`) and the new counter are buffered.
    Every other statement is sent in one pipeline after them, so it sees all
    rows before it, and the commit sends them with the ``COMMIT``. :meth:`nonce`
    does not write them first (see its contract in :mod:`chatd.storage`), which
    keeps a send with a nonce at one round trip.
    """

    def __init__(self, conn: psycopg.Connection[Any], seq: int) -> None:
        super().__init__()
        self.conn = conn
        self._seq = seq
        #: the counter as the database has it in this transaction
        self._stored_seq = seq
        #: the counter at :meth:`savepoint`
        self._saved_seq = seq
        #: the counter when the transaction began
        self._start_seq = seq

    def _buffered(self) -> bool:
        return super()._buffered() or self._seq != self._stored_seq

    def _queue(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> psycopg.Cursor[Any]:
        """Execute in the current pipeline, never as a prepared statement.

        psycopg prepares a statement on its fifth run; in a pipeline that an
        earlier error aborts, the server skips that Parse, but psycopg takes the
        statement as prepared from then on, and every later run of it fails
        ("prepared statement _pg3_N does not exist"). Statements run outside a
        pipeline are prepared as usual (the nonce lookup, the reads).
        """
        return self.conn.execute(sql, args, prepare=False)

    def _queue_buffers(self) -> None:
        """Send the buffered rows; in a pipeline, without waiting for the server.

        One statement per table, the rows as one array per column (``unnest``):
        for a batch of sends that is a few statements, where ``executemany``
        would send (and psycopg handle) one per row.
        """
        execute = self._queue
        if self._events:
            execute(_INSERT_EVENTS, _columns(self._events))
            self._events.clear()
        if self._messages:
            columns = _columns(self._messages)
            columns[6] = [body.encode() for body in columns[6]]  # BYTEA: UTF-8
            columns[7] = [tsvector_text(words) for words in columns[7]]
            execute(_INSERT_MESSAGES, columns)
            self._messages.clear()
        if self._nonces:
            columns = _columns(self._nonces)
            columns[1] = [nonce.encode() for nonce in columns[1]]  # BYTEA: UTF-8
            execute(_INSERT_NONCES, columns)
            self._nonces.clear()
        if self._active:
            execute(_TOUCH_CHANNELS, (list(self._active), list(self._active.values())))
            self._active.clear()
        if self._seq != self._stored_seq:
            execute("UPDATE counter SET seq = %s", (self._seq,))
            self._stored_seq = self._seq

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        """Execute after the buffers; in one round trip with them when there are any.

        ``sql`` may use ``?`` placeholders, as :mod:`chatd.sqlrows` does.
        """
        sql = _placeholders(sql)
        if not self._buffered():
            return self.conn.execute(sql, args)
        with self.conn.pipeline():
            self._queue_buffers()
            cur = self._queue(sql, args)
        return cur

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        if _matches_nothing(args):
            return None
        return self._run(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self._run(sql, args).fetchall()

    # -- counter and horizon

    def counter(self) -> int:
        return self._seq

    def set_counter(self, seq: int) -> None:
        self._seq = seq

    def horizon(self) -> int:
        return int(self._one("SELECT horizon FROM counter", ())[0])

    def set_horizon(self, seq: int) -> None:
        self._run("UPDATE counter SET horizon = %s", (seq,))

    # -- savepoints

    def savepoint(self) -> None:
        self._run("SAVEPOINT op")
        self._saved_seq = self._seq

    def rollback_savepoint(self) -> None:
        self._drop_buffers()
        self.conn.execute("ROLLBACK TO op")
        self.conn.execute("RELEASE op")
        self._seq = self._stored_seq = self._saved_seq

    def release_savepoint(self) -> None:
        # The operation's buffered rows go first: a failure among them is its failure.
        self._run("RELEASE op")

    # -- users and tokens

    # -- channels

    # -- messages and events

    def edit_message(self, seq: int, body: str, edited_ms: int) -> None:
        self._run("UPDATE messages SET body = %s, edited_ms = %s, words = "
                  + PG_WORDS.format("%s") + " WHERE seq = %s",
                  (body.encode(), edited_ms, tsvector_text(index_text(body)), seq))

    def delete_messages(self, rows: list[tuple[str, int]]) -> None:
        seqs, ids = [s for _, s in rows], [i for i, _ in rows]
        with self.conn.pipeline():
            self._queue_buffers()
            # The channel had a message then, even if it is gone now (idle_channels).
            self._queue(
                "UPDATE channels c SET active_ms = GREATEST(c.active_ms, m.at_ms) FROM"
                " (SELECT channel_id, max(at_ms) AS at_ms FROM messages WHERE seq = ANY(%s)"
                " GROUP BY channel_id) m WHERE c.id = m.channel_id", (seqs,))
            self._queue("DELETE FROM messages WHERE seq = ANY(%s)", (seqs,))
            self._queue("DELETE FROM events WHERE seq = ANY(%s) OR message_id = ANY(%s)",
                        (seqs, ids))

    # -- nonces

    def nonces(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], NonceRow]:
        rows = self.conn.execute(
            "SELECT n.user_id, n.nonce, n.message_id, n.seq, n.at_ms, n.channel_id,"
            " n.channel_name, m.body, m.edited_ms"
            " FROM nonces n LEFT JOIN messages m ON m.id = n.message_id"
            " WHERE (n.user_id, n.nonce) IN"
            " (SELECT * FROM unnest(%s::text[], %s::bytea[]))",
            ([user_id for user_id, _ in keys], [nonce.encode() for _, nonce in keys]),
        ).fetchall()
        return {
            (user_id, nonce.decode()): (message_id, seq, at_ms, channel_id, channel_name,
                                        None if body is None else body.decode(), edited_ms)
            for user_id, nonce, message_id, seq, at_ms, channel_id, channel_name, body, edited_ms
            in rows
        }

    # -- expiry

    def tidy_search_index(self, pages: int) -> None:
        """Nothing: GIN keeps its pending list itself (autovacuum merges it)."""

    def commit(self) -> None:
        """The buffers and the COMMIT, in one round trip; with a NOTIFY to the
        other nodes' :meth:`PostgresBackend.listen` if events were stored."""
        with self.conn.pipeline():
            self._queue_buffers()
            if self._seq != self._start_seq:
                self._queue(f"NOTIFY {_EVENTS_CHANNEL}")
            cur = self._queue("COMMIT")
        # A transaction that an error aborted "commits" as ROLLBACK, without an error.
        if cur.statusmessage != "COMMIT":
            raise psycopg.OperationalError(f"COMMIT answered {cur.statusmessage}")


class PostgresBackend:
    """See the module docstring. :mod:`chatd.storage` states the contract."""

    #: several nodes may commit events to one database.
    shared = True
    commits_inline = False

    def __init__(self, url: str, *, readers: int = 3, connect_timeout: int = 10) -> None:
        scheme, sep, rest = url.partition("://")
        # libpq knows postgresql:// and postgres://, in lower case only.
        self.url = scheme.lower() + sep + rest
        self.epoch = ""
        self._readers_n = readers
        self._connect_timeout = connect_timeout
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="chatd-writer")
        self._w: psycopg.Connection[Any] | None = None
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._readers: list[psycopg.AsyncConnection[Any]] = []
        self._closed = False
        #: what open() did to the schema: made it, and the migrations it applied
        self.created = False
        self.migrated: list[Migration] = []

    # ------------------------------------------------------------ lifecycle

    def _conninfo(self) -> str:
        """The URL with chatd's defaults for what it does not set itself."""
        try:
            given = conninfo.conninfo_to_dict(self.url)
        except psycopg.ProgrammingError as exc:
            raise StartupError(f"--db: not a PostgreSQL URL: {_one_line(exc)}") from None
        defaults: dict[str, str | int] = {
            "connect_timeout": self._connect_timeout, "application_name": "chatd",
        }
        return conninfo.make_conninfo(
            self.url, **{k: v for k, v in defaults.items() if k not in given}
        )

    async def open(self) -> None:
        try:
            await self._on_writer(self._open_writer)
            for _ in range(self._readers_n):
                conn = await self._connect_reader()
                self._readers.append(conn)
                self._pool.put_nowait(conn)
        except BaseException as exc:
            with suppress(Exception):
                await self.close()
            if isinstance(exc, psycopg.OperationalError):
                raise StartupError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None
            if isinstance(exc, psycopg.Error):
                raise StartupError(f"PostgreSQL: {_one_line(exc)}") from None
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._readers:
            with suppress(psycopg.Error):
                await conn.close()
        self._readers.clear()
        self._pool = asyncio.Queue()
        await self._on_writer(self._close_writer)
        self._exec.shutdown(wait=True)

    async def _on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def _connect_writer(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo(), autocommit=True)
        conn.execute("SET synchronous_commit = on")
        return conn

    def _open_writer(self) -> None:
        conn = self._w = self._connect_writer()
        # Two nodes starting at once on a new database: one creates, the other
        # waits, then finds it made; likewise for each migration.
        with self._schema_tx(conn):
            self.created = self._create(conn)
        self.migrated = migrate(conn, "PostgreSQL database", self._schema_tx)
        with self._schema_tx(conn):
            conn.execute(_PRESENCE_TABLES)
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        assert row is not None, "meta has no epoch"
        self.epoch = row[0]

    @staticmethod
    @contextmanager
    def _schema_tx(conn: psycopg.Connection[Any]) -> Iterator[None]:
        """A transaction holding the schema lock (an advisory lock, released at its end)."""
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            yield
            conn.execute("COMMIT")
        except BaseException:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _create(conn: psycopg.Connection[Any]) -> bool:
        """Make the schema of a new database; whether it was new."""
        row = conn.execute("SELECT to_regclass('meta')").fetchone()
        if row is not None and row[0] is not None:
            return False
        conn.execute(schema_sql().encode())  # several statements: no parameters
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO meta(key, value) VALUES (%s, %s)",
                [("schema_version", str(SCHEMA_VERSION)), ("epoch", new_epoch())],
            )
        conn.execute("INSERT INTO counter(seq, horizon) VALUES (0, 0)")
        conn.execute(
            "INSERT INTO migrations(version, name, applied_ms) VALUES (%s, %s, %s)",
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
        """Call ``wake`` after each commit that stored events, on any node, and
        ``ephemeral`` with the payload of each ``chatd_ephemeral`` notice.

        LISTEN on a connection of its own; until cancelled. A lost connection is
        made again a second later, and ``wake`` is called once it listens (what
        was committed meanwhile notified nobody; lost notices are lost, they are
        best effort, and presence is re-read at each heartbeat anyway).
        """
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {_EVENTS_CHANNEL}")
                    if ephemeral is not None:
                        await conn.execute(f"LISTEN {_EPHEMERAL_CHANNEL}")
                    wake()
                    async for note in conn.notifies():
                        if note.channel == _EVENTS_CHANNEL:
                            wake()
                        elif ephemeral is not None:
                            ephemeral(note.payload)
            except psycopg.Error as exc:
                log.warning("LISTEN %s: %s; again in 1 s", _EVENTS_CHANNEL, _one_line(exc))
            await asyncio.sleep(1.0)

    # ------------------------------------------------- presence (chatd.ephemeral)

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for statements outside the event transactions: they
        never take the counter lock, so presence does not wait for group commits."""
        async with self._reads(transaction=False) as snap:
            yield snap.conn

    async def presence_write(
        self, node_id: str, add: list[tuple[str, str]], remove: list[str], *, full: bool
    ) -> bool:
        async with self._autocommit() as conn, conn.transaction():
            cur = await conn.execute(_BEAT + " RETURNING (xmax = 0)", (node_id,))
            row = await cur.fetchone()
            if full:
                await conn.execute("DELETE FROM presence_users WHERE node_id = %s", (node_id,))
            elif remove:
                await conn.execute(
                    "DELETE FROM presence_users WHERE node_id = %s AND user_id = ANY(%s)",
                    (node_id, remove))
            if add:
                await conn.execute(
                    "INSERT INTO presence_users(node_id, user_id, user_name)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                    (node_id, [u for u, _ in add], [n for _, n in add]))
            await conn.execute("SELECT pg_notify(%s, %s)",
                               (_EPHEMERAL_CHANNEL, f'{{"k":"p","node":"{node_id}"}}'))
        return bool(row and row[0])

    async def presence_beat(self, node_id: str, expiry: float) -> bool:
        async with self._autocommit() as conn, conn.transaction():
            cur = await conn.execute(_BEAT + " RETURNING (xmax = 0)", (node_id,))
            row = await cur.fetchone()
            # ON DELETE CASCADE takes the dead nodes' users with them.
            await conn.execute(
                "DELETE FROM presence_nodes WHERE seen < now() - make_interval(secs => %s)",
                (expiry,))
        return bool(row and row[0])

    async def presence_read(self, node_id: str, expiry: float) -> list[tuple[str, str]]:
        async with self._autocommit() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT u.user_id, u.user_name FROM presence_users u"
                " JOIN presence_nodes n USING (node_id)"
                " WHERE n.node_id <> %s AND n.seen >= now() - make_interval(secs => %s)",
                (node_id, expiry))
            return [(uid, name) for uid, name in await cur.fetchall()]

    async def presence_leave(self, node_id: str) -> None:
        async with self._autocommit() as conn, conn.transaction():
            await conn.execute("DELETE FROM presence_nodes WHERE node_id = %s", (node_id,))
            await conn.execute("SELECT pg_notify(%s, %s)",
                               (_EPHEMERAL_CHANNEL, f'{{"k":"p","node":"{node_id}"}}'))

    async def notify_ephemeral(self, payload: bytes) -> None:
        async with self._autocommit() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)",
                               (_EPHEMERAL_CHANNEL, payload.decode()))

    # ---------------------------------------------------------------- writes

    async def run_on_writer(self, fn: Callable[[], T]) -> T:
        result: T = await self._on_writer(fn)
        return result

    def write_here(self, fn: Callable[[WriteTx], T]) -> T:
        """See :class:`chatd.storage.Backend`; a lost or unreachable server is
        :class:`~chatd.exceptions.Unavailable` (the batch may or may not have
        committed: nothing was acknowledged, and a nonce retry finds out)."""
        try:
            return self._write(fn)
        except _LOST as exc:
            raise Unavailable(f"the database is unreachable: {_one_line(exc)}") from exc

    def _write(self, fn: Callable[[WriteTx], T]) -> T:
        conn = self._w
        if conn is None or _ended_by_server(conn):  # the server restarted: connect again
            if conn is not None:
                log.warning("writing connection lost; reconnecting")
                with suppress(psycopg.Error):
                    conn.close()
                self._w = None
            conn = self._w = self._connect_writer()
        # One round trip: the transaction and the counter row, locked until it ends.
        cur = conn.execute(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT seq FROM counter FOR UPDATE"
        )
        try:
            cur.nextset()
            row = cur.fetchone()
            assert row is not None, "the counter row is missing"
            tx = _PgTx(conn, int(row[0]))
            result = fn(tx)
            tx.commit()
        except BaseException:
            if conn.info.transaction_status in _IN_TX:
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    # ----------------------------------------------------------------- reads

    async def _connect_reader(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)

    async def _usable(self, conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncConnection[Any]:
        """``conn``, or a new connection in its place if it is not usable as is.

        A reader that was cancelled mid-statement (its client went away) leaves
        its connection in a transaction (psycopg cancels the statement), or
        closed if the server did not answer the cancel; a server that restarted
        or ended the session has closed it.
        """
        if _ended_by_server(conn):
            with suppress(psycopg.Error):
                await conn.close()
            new = await self._connect_reader()
            self._readers[self._readers.index(conn)] = new
            return new
        if conn.info.transaction_status in _IN_TX:
            await conn.execute("ROLLBACK")
        return conn

    def reader(self) -> AbstractAsyncContextManager[_PgSnapshot]:
        return self._reads(transaction=False)

    def snapshot(self) -> AbstractAsyncContextManager[_PgSnapshot]:
        return self._reads(transaction=True)

    @asynccontextmanager
    async def _reads(self, *, transaction: bool) -> AsyncIterator[_PgSnapshot]:
        """With ``transaction``, every statement inside sees one committed state.

        That state is consistent for the rules' reads: a snapshot that sees the
        counter at N sees every event <= N. The transaction that set the counter
        to N stored its own events with it, atomically; and every writer before
        it had committed, and was visible to new snapshots, before this one could
        lock the counter row (a row lock is released after the commit becomes
        visible). So a snapshot that includes the commit of N includes theirs.
        """
        conn = await self._pool.get()
        try:
            conn = await self._usable(conn)
            if not transaction:
                yield _PgSnapshot(conn)
                return
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield _PgSnapshot(conn)
            finally:
                # What was read stands; a connection left unusable is made again.
                if conn.info.transaction_status in _IN_TX:
                    with suppress(psycopg.Error):
                        await conn.execute("COMMIT")
        except _LOST as exc:
            raise Unavailable(f"the database is unreachable: {_one_line(exc)}") from exc
        finally:
            self._pool.put_nowait(conn)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise StartupError("meta has no schema_version: not a chatd database")
    return int(row[0])


def migrate(
    conn: psycopg.Connection[Any],
    where: str,
    locked: Callable[[psycopg.Connection[Any]], AbstractContextManager[None]],
) -> list[Migration]:
    """Apply the pending migrations of :mod:`chatd.migrations`, one transaction each."""

    def apply(m: Migration) -> None:
        if m.postgres.strip():
            conn.execute(m.postgres.encode())  # several statements: no parameters
        if m.backfill is not None:
            m.backfill("postgres", conn)
        if m.postgres_after.strip():
            conn.execute(m.postgres_after.encode())
        for sql, args in zip(
            migrations.RECORD, migrations.record_args(m, int(time.time() * 1000)), strict=True
        ):
            conn.execute(_placeholders(sql), args)

    return migrations.upgrade(
        lambda: locked(conn), lambda: schema_version(conn), apply, where
    )


class _PgSnapshot(SnapshotStatements):
    """:class:`chatd.storage.Snapshot` on a pooled async connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """``sql`` may use ``?`` placeholders, as :mod:`chatd.sqlrows` does."""
        if _matches_nothing(args):
            return []
        cur = await self.conn.execute(_placeholders(sql), args)
        return await cur.fetchall()

    async def _row(self, sql: str, args: tuple[Any, ...]) -> Any:
        if _matches_nothing(args):
            return None
        cur = await self.conn.execute(_placeholders(sql), args)
        return await cur.fetchone()

    async def counter(self) -> tuple[int, int]:
        row = await self._row("SELECT seq, horizon FROM counter", ())
        return int(row[0]), int(row[1])

    async def user_by_key(self, key: str) -> UserRow | None:
        row: UserRow | None = await self._row(
            "SELECT id, name, pw_hash, role, active FROM users WHERE name_key = %s", (key,)
        )
        return row

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> tuple[str, str] | None:
        row: tuple[str, str] | None = await self._row(
            "SELECT u.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.hash = %s AND t.expires_ms > %s AND u.active",
            (token_hash, now_ms),
        )
        return row

    async def user(self, user_id: str) -> UserRow | None:
        row: UserRow | None = await self._row(
            "SELECT id, name, pw_hash, role, active FROM users WHERE id = %s", (user_id,))
        return row

    async def users(self) -> list[AccountRow]:
        return await self._rows("SELECT id, name, role, active FROM users ORDER BY name_key")

    async def invites(self, now_ms: int) -> list[InviteRow]:
        return await self._rows(
            "SELECT i.id, i.expires_ms, i.uses_left, i.created_by, coalesce(u.name, '')"
            " FROM invites i LEFT JOIN users u ON u.id = i.created_by"
            " WHERE i.expires_ms > %s AND i.uses_left > 0 ORDER BY i.created_ms, i.id",
            (now_ms,),
        )

    async def live_tokens(self, token_hashes: list[bytes], now_ms: int) -> list[bytes]:
        rows = await self._rows(
            "SELECT hash FROM tokens WHERE hash = ANY(%s) AND expires_ms > %s",
            (token_hashes, now_ms),
        )
        return [bytes(r[0]) for r in rows]

    async def _messages(self, where: str, args: tuple[Any, ...]) -> list[MessageRow]:
        """Message rows with their bodies decoded (BYTEA: UTF-8)."""
        rows = await self._rows(
            "SELECT id, seq, at_ms, sender_id, sender_name, body, edited_ms FROM messages "
            + where, args
        )
        return [(i, seq, at_ms, uid, name, body.decode(), edited)
                for i, seq, at_ms, uid, name, body, edited in rows]

    async def messages(self, channel_id: str, before: int, limit: int) -> list[MessageRow]:
        return await self._messages(
            "WHERE channel_id = %s AND seq < %s ORDER BY seq DESC LIMIT %s",
            (channel_id, before, limit),
        )

    @staticmethod
    def _in_channels(channels: frozenset[str]) -> tuple[str, Any]:
        return "= ANY(?)", [c for c in channels if "\x00" not in c]

    async def messages_after(self, channel_id: str, after: int, limit: int) -> list[MessageRow]:
        return await self._messages(
            "WHERE channel_id = %s AND seq > %s ORDER BY seq LIMIT %s", (channel_id, after, limit)
        )

    async def search(
        self, user_id: str, query: Query, channel_id: str | None, before: int, limit: int
    ) -> list[SearchRow] | None:
        """Two statements whose work is bounded whatever the words' frequencies,
        rather than one whose plan rests on the planner's guess of them (a wrong
        guess walks every message for a rare word, or reads every match of a
        frequent one, 100 ms and more at 300,000 messages): first the newest
        :data:`_SEARCH_WINDOW` seqs, walked newest first; only if they hold too
        few matches (so the words are rare), the older messages through the GIN
        index."""
        if channel_id is not None:
            if await self._row(SEARCH_CHANNEL, (channel_id, user_id)) is None:
                return None
        ts = tsquery(query)
        in_channel = "" if channel_id is None else " AND m.channel_id = ?"
        also = () if channel_id is None else (channel_id,)
        # The window ends at the newest message, not at `before` (2^63 - 1 for "all").
        last, _ = await self.counter()
        before = min(before, last + 1)
        start = max(0, before - _SEARCH_WINDOW)
        rows = await self._rows((
            f"SELECT {SEARCH_COLUMNS} FROM messages m JOIN channels c ON c.id = m.channel_id"
            f" WHERE m.seq < ? AND m.seq >= ? AND m.words @@ ?::tsquery{in_channel}"
            f" AND {SEARCH_VISIBLE} ORDER BY m.seq DESC LIMIT ?"),
            (before, start, ts, *also, user_id, limit))
        if len(rows) < limit and start > 0:
            # MATERIALIZED: the matches are found through the index, all of them
            # (few: the window had fewer than the limit), then sorted.
            rows += await self._rows((
                "WITH hits AS MATERIALIZED (SELECT m.seq FROM messages m"
                f" WHERE m.seq < ? AND m.words @@ ?::tsquery{in_channel})"
                f" SELECT {SEARCH_COLUMNS} FROM hits h JOIN messages m ON m.seq = h.seq"
                f" JOIN channels c ON c.id = m.channel_id WHERE {SEARCH_VISIBLE}"
                " ORDER BY m.seq DESC LIMIT ?"),
                (start, ts, *also, user_id, limit - len(rows)))
        return [(i, seq, at_ms, uid, name, body.decode(), edited, cid, cname, kind)
                for i, seq, at_ms, uid, name, body, edited, cid, cname, kind in rows]
