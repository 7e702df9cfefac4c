"""The one place tests read or write a sqlite database file directly.

Everything else talks to the daemon over WebSocket, or to a store through
chatd/store.py. What is here checks what the protocol cannot show: that
secrets and deleted bodies are not in the file, that the file survives a
crash intact, and databases built by hand (a schema newer than the code).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from chatd.sqlite_store import ADVANCE_INDEXED, INDEX_TRAILING, INDEXED_SEQ


def connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def read_db_rows(db: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """Every row of every table, read-only, in a stable order."""
    conn = connect_ro(db)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        rows: list[tuple[str, tuple[Any, ...]]] = []
        for t in tables:
            rows += [(t, r) for r in conn.execute(f'SELECT * FROM "{t}" ORDER BY 1')]
        return rows
    finally:
        conn.close()


async def db_rows(db: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """Every row of every table of the daemon's sqlite file (read-only, schema-agnostic)."""
    return await asyncio.to_thread(read_db_rows, db)


def _db_pragma(db: Path, pragma: str) -> Any:
    conn = connect_ro(db)
    try:
        return conn.execute(f"PRAGMA {pragma}").fetchone()[0]
    finally:
        conn.close()


async def db_pragma(db: Path, pragma: str) -> Any:
    return await asyncio.to_thread(_db_pragma, db, pragma)


def _read_files_bytes(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.exists())


async def db_bytes(db: Path) -> bytes:
    """The raw bytes of the database file and its WAL."""
    paths = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")]
    return await asyncio.to_thread(_read_files_bytes, paths)


def integrity_of_copy(db: Path, scratch: Path) -> tuple[str, str]:
    """(integrity_check, epoch) of the file as a crash left it, WAL included.

    It runs on a copy, so that the restarted daemon itself still has to recover
    the WAL that the kill left behind (opening the original would checkpoint it).
    """
    scratch.mkdir()
    for suffix in ("", "-wal"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            shutil.copyfile(src, scratch / (db.name + suffix))
    conn = sqlite3.connect(str(scratch / db.name), timeout=30)
    try:
        check = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        return check, epoch
    finally:
        conn.close()


def integrity_check(db: Path) -> str:
    conn = connect_ro(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def search_index_check(db: Path) -> None:
    """FTS5's own check of the search index against the messages it indexes
    (raises sqlite3.DatabaseError if they disagree); the daemon must be stopped.
    A trailing index (``--search-index-batch``) first catches up, with the
    store's own statements, as the daemon's next catch-up would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if conn.execute(INDEXED_SEQ).fetchone() is not None:
            conn.execute("BEGIN")
            conn.execute(INDEX_TRAILING)
            conn.execute(ADVANCE_INDEXED)
            conn.execute("COMMIT")
        conn.execute("INSERT INTO message_words(message_words, rank) VALUES ('integrity-check', 1)")
        conn.commit()
    finally:
        conn.close()


def build_db(db: Path, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Make a database file by hand, statement by statement."""
    conn = sqlite3.connect(db)
    try:
        for sql, args in statements:
            conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = connect_ro(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
