"""Schema versions and the numbered migrations between them, for both SQL backends.

``schema.sql`` (sqlite) and ``chatd/schema_pg.sql`` (PostgreSQL) describe a
*new* database at :data:`SCHEMA_VERSION`. A database made by an older chatd is
taken there by the migrations below, one :class:`Migration` per version, each
with its SQL for sqlite and for PostgreSQL (the same changes, in each
database's types). Version 1 is the schema of chatd 0.1.0.

How a backend applies them (:func:`upgrade`): at open, and by ``chatd
migrate``, each pending migration runs in a transaction of its own that holds
the schema lock (sqlite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped
advisory lock, so two nodes starting at once never both migrate). Inside it the
version is read again (another process may have migrated meanwhile), the
migration's SQL runs, ``meta('schema_version')`` is set to its version and a
row ``migrations(version, name, applied_ms)`` records it. A new database gets
one ``migrations`` row, its creation at the newest version (name
:data:`CREATED`). A database whose version is newer than this code is a
:class:`~chatd.exceptions.StartupError`, and nothing in it is changed.

A migration may also need Python (:attr:`Migration.backfill`): it runs
between the migration's SQL and its ``*_after`` SQL, in the same transaction.

Adding version N: write :data:`SCHEMA_VERSION` = N, the new tables or columns in
both schema files (new columns last, where ``ALTER TABLE ... ADD COLUMN`` puts
them), a ``Migration(N, ...)`` here, and check that tests/test_upgrade.py still
finds a migrated database equal to a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from . import search
from .exceptions import StartupError

#: The schema version of a new database; the version this code reads and writes.
SCHEMA_VERSION = 7

#: The ``migrations.name`` of the row a new database is created with.
CREATED = "new database"


@dataclass(frozen=True)
class Migration:
    """Takes a database from ``version - 1`` to ``version``."""

    version: int
    #: what it does, in a few words (``chatd migrate`` prints it)
    name: str
    #: statements separated by semicolons, no semicolon inside a literal
    sqlite: str
    postgres: str
    #: what SQL cannot compute (a message's search words need Python's Unicode
    #: rules): ``backfill(backend, conn)`` runs after the SQL above, in the same
    #: transaction, with ``backend`` "sqlite" or "postgres" and that backend's
    #: DB-API connection (sqlite3 or psycopg); then ``*_after`` runs (indexes are
    #: cheaper to build once the rows are filled).
    backfill: Callable[[str, Any], None] | None = None
    sqlite_after: str = ""
    postgres_after: str = ""


_V2_SQLITE = """
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('admin', 'member'));
ALTER TABLE users ADD COLUMN active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1));
ALTER TABLE users ADD COLUMN created_seq INTEGER NOT NULL DEFAULT 0;
UPDATE users SET role = 'admin'
    WHERE id = (SELECT id FROM users ORDER BY created_ms, id LIMIT 1);
CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    code_hash  BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX invites_expiry ON invites(expires_ms);
CREATE TABLE migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ms INTEGER NOT NULL
);
"""

_V2_POSTGRES = """
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('admin', 'member'));
ALTER TABLE users ADD COLUMN active BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE users ADD COLUMN created_seq BIGINT NOT NULL DEFAULT 0;
UPDATE users SET role = 'admin'
    WHERE id = (SELECT id FROM users ORDER BY created_ms, id COLLATE "C" LIMIT 1);
CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    code_hash  BYTEA NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    uses_left  INTEGER NOT NULL
);
CREATE INDEX invites_expiry ON invites(expires_ms);
CREATE TABLE migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
);
"""

# Edits: a message's latest edit time, and which events carry a message's body
# (a message.sent event has the seq of its message).
_V3 = """
ALTER TABLE messages ADD COLUMN edited_ms {int};
ALTER TABLE events ADD COLUMN message_id TEXT;
UPDATE events SET message_id = (SELECT id FROM messages WHERE messages.seq = events.seq)
    WHERE seq IN (SELECT seq FROM messages);
CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL
"""

# Private channels, dms and membership; read positions.
_V4 = """
ALTER TABLE channels ADD COLUMN kind TEXT NOT NULL DEFAULT 'public'
    CHECK (kind IN ('public', 'private', 'dm'));
ALTER TABLE events ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN only_user TEXT;
DROP INDEX messages_channel;
CREATE INDEX messages_channel ON messages(channel_id, seq, sender_id);
CREATE TABLE members (
    channel_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    from_seq   {int} NOT NULL,
    to_seq     {int},
    PRIMARY KEY (channel_id, user_id, from_seq)
){rowid};
CREATE INDEX members_user ON members(user_id, channel_id);
CREATE TABLE reads (
    user_id    TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    read_seq   {int} NOT NULL,
    PRIMARY KEY (user_id, channel_id)
){rowid};
CREATE INDEX reads_channel ON reads(channel_id)
"""

# Search (issue 14): each message's words as search.index_text makes them, and an
# index of them kept by the database in the transaction that changes the message.
# sqlite: an FTS5 table over messages.words (external content: the words are
# stored once), written by the store with every insert, edit and delete of a
# message (schema.sql says why not by triggers). PostgreSQL: a tsvector of the
# words with their positions (search.tsvector_text: no parser, no stemming)
# with a GIN index.
_V5_SQLITE = """
ALTER TABLE messages ADD COLUMN words TEXT NOT NULL DEFAULT ''
"""
_V5_SQLITE_AFTER = """
CREATE VIRTUAL TABLE message_words USING fts5(
    words, content='messages', content_rowid='seq', tokenize='ascii', columnsize=0,
    prefix='1 2 3 4 5 6'
);
INSERT INTO message_words(message_words, rank) VALUES ('automerge', 0);
INSERT INTO message_words(message_words) VALUES ('rebuild')
"""
_V5_POSTGRES = """
ALTER TABLE messages ADD COLUMN words TSVECTOR NOT NULL DEFAULT ''
"""
# ANALYZE: the planner needs the words' statistics to choose between walking
# messages newest first (a frequent word) and the GIN index (a rare one); a
# backfilled column has none until autovacuum gets to it.
_V5_POSTGRES_AFTER = """
CREATE INDEX messages_words ON messages USING gin (words);
ANALYZE messages
"""
#: the PostgreSQL expression of a message's tsvector from search.tsvector_text
PG_WORDS = "{}::tsvector"

_BACKFILL_PAGE = 5000


def _v5_backfill(backend: str, conn: Any) -> None:
    """messages.words of every existing message, a page at a time (by seq)."""
    last = -1
    while True:
        if backend == "sqlite":
            rows = conn.execute(
                "SELECT seq, body FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, _BACKFILL_PAGE)).fetchall()
            if not rows:
                return
            conn.executemany("UPDATE messages SET words = ? WHERE seq = ?",
                             [(search.index_text(body), seq) for seq, body in rows])
        else:
            rows = conn.execute(
                "SELECT seq, body FROM messages WHERE seq > %s ORDER BY seq LIMIT %s",
                (last, _BACKFILL_PAGE)).fetchall()
            if not rows:
                return
            conn.execute(
                "UPDATE messages m SET words = " + PG_WORDS.format("t.words")
                + " FROM unnest(%s::bigint[], %s::text[]) AS t(seq, words) WHERE m.seq = t.seq",
                ([seq for seq, _ in rows],
                 [search.tsvector_text(search.index_text(bytes(body).decode()))
                  for _, body in rows]))
        last = rows[-1][0]


#: Every migration, by version (2 to :data:`SCHEMA_VERSION`, none missing).
MIGRATIONS: dict[int, Migration] = {
    m.version: m
    for m in [
        Migration(
            2,
            "user roles (the oldest account becomes the admin), deactivation,"
            " created_seq; invites; the migrations table",
            _V2_SQLITE,
            _V2_POSTGRES,
        ),
        Migration(
            3,
            "message edits: messages.edited_ms; events.message_id for the events"
            " that carry a message's body",
            _V3.format(int="INTEGER"),
            _V3.format(int="BIGINT"),
        ),
        Migration(
            4,
            "private channels, dms and membership (channels.kind, members,"
            " events.restricted/only_user); read positions (reads)",
            _V4.format(int="INTEGER", rowid=" WITHOUT ROWID"),
            _V4.format(int="BIGINT", rowid=""),
        ),
        Migration(
            5,
            "search: messages.words, and an index of them (sqlite FTS5, PostgreSQL GIN);"
            " filled from the existing messages",
            _V5_SQLITE,
            _V5_POSTGRES,
            backfill=_v5_backfill,
            sqlite_after=_V5_SQLITE_AFTER,
            postgres_after=_V5_POSTGRES_AFTER,
        ),
        Migration(
            6,
            "fewer pages per send: no index on messages.at_ms (expiry reads by seq)",
            "DROP INDEX IF EXISTS messages_at",
            "DROP INDEX IF EXISTS messages_at",
        ),
        # Nothing to change in the tables: the number alone keeps a chatd of version
        # 6 from opening a file whose newest messages may not be in the search index
        # yet (meta('search_indexed'), chatd.sqlite_store). That chatd would never
        # index them, and indexing them again later would double their entries.
        Migration(
            7,
            "sqlite: the search index may trail the newest messages (meta('search_indexed'))",
            "",
            "",
        ),
    ]
}

assert sorted(MIGRATIONS) == list(range(2, SCHEMA_VERSION + 1)), "a migration is missing"

#: the statements that record a migration in its own transaction (``?`` placeholders)
RECORD = (
    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
    "INSERT INTO migrations(version, name, applied_ms) VALUES (?, ?, ?)",
)


def record_args(m: Migration, now_ms: int) -> tuple[tuple[str], tuple[int, str, int]]:
    """The arguments of the two :data:`RECORD` statements for ``m``."""
    return (str(m.version),), (m.version, m.name, now_ms)


def check_not_newer(version: int, where: str) -> None:
    """A database written by a newer chatd is refused, never rewritten."""
    if version > SCHEMA_VERSION:
        raise StartupError(
            f"{where}: schema version {version} is newer than this chatd ({SCHEMA_VERSION});"
            " run the chatd that wrote it, or restore a backup"
        )
    if version < 1:
        raise StartupError(f"{where}: schema version {version} is not one chatd made")


def upgrade(
    locked: Callable[[], AbstractContextManager[None]],
    version: Callable[[], int],
    apply: Callable[[Migration], None],
    where: str,
) -> list[Migration]:
    """Apply every pending migration, one transaction each; those this call applied.

    ``locked()`` is a transaction holding the schema lock (committed when the
    block ends, rolled back on an error); ``version()`` reads
    ``meta('schema_version')`` inside it; ``apply(m)`` runs ``m``'s SQL and the
    :data:`RECORD` statements.
    """
    applied: list[Migration] = []
    while True:
        with locked():
            current = version()
            check_not_newer(current, where)
            if current == SCHEMA_VERSION:
                break
            m = MIGRATIONS[current + 1]
            apply(m)
        applied.append(m)
    return applied

