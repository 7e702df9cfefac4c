"""The operator's database commands: ``chatd migrate``, ``chatd backup``, ``chatd export``.

They work on ``--db`` directly (a sqlite file or a ``postgresql://`` URL), with
or without a daemon running on it; :mod:`chatd.cli` defines their flags.
Failures print one line ``chatd: ...`` on stderr and exit 1.

- ``migrate`` opens the database as ``chatd serve`` does, which applies the
  pending migrations of :mod:`chatd.migrations` (one transaction each), and
  prints what it applied, or that it was up to date.
- ``backup`` (sqlite) copies the database with sqlite's online backup API, one
  read transaction, so the copy is consistent while a daemon commits; writes it
  to a temporary file next to OUT, checks it (``PRAGMA integrity_check``) and
  renames it over OUT. PostgreSQL databases are backed up with ``pg_dump``.
- ``export`` writes JSON lines from one snapshot: the users (no secrets), then
  each channel and its messages in seq order.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from . import wire
from .exceptions import StartupError
from .migrations import SCHEMA_VERSION
from .sqlite_store import COUNTER
from .store import Store, is_url, open_store

#: messages per read while exporting
EXPORT_PAGE = 1000


class ToolError(Exception):
    """A failure with a message fit for the one line on stderr."""


def _fail(message: str) -> int:
    print(f"chatd: {message}", file=sys.stderr)
    return 1


def _existing(db: str) -> None:
    """A sqlite path must name a database: these commands never create one."""
    if not is_url(db) and not Path(db).is_file():
        raise ToolError(f"no database at {db} (give --db, or set CHATD_DB)")


async def _opened(db: str) -> Store:
    _existing(db)
    store = open_store(db)
    await store.open()
    return store


# ------------------------------------------------------------------ migrate


async def migrate(db: str) -> list[str]:
    """Bring ``db`` to the newest schema version; the lines to print."""
    store = await _opened(db)
    try:
        backend = store.backend
        if backend.created:
            return [f"created a new database at schema version {SCHEMA_VERSION}"]
        if not backend.migrated:
            return [f"up to date: schema version {SCHEMA_VERSION}"]
        lines = [f"applied migration {m.version}: {m.name}" for m in backend.migrated]
        return [*lines, f"schema version {SCHEMA_VERSION}"]
    finally:
        await store.close()


def run_migrate(db: str) -> int:
    try:
        lines = asyncio.run(migrate(db))
    except (ToolError, StartupError, OSError) as exc:
        return _fail(str(exc))
    for line in lines:
        print(line)
    return 0


# ------------------------------------------------------------------- backup


def pg_dump_command(db: str, out: str) -> tuple[str, bool]:
    """The pg_dump command line for ``db``, without its password; whether it had one."""
    parts = urllib.parse.urlsplit(db)
    url = db
    if parts.password is not None:
        netloc = parts.netloc.replace(":" + parts.password + "@", "@", 1)
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    command = f"pg_dump --format=custom --file {shlex.quote(out)} --dbname {shlex.quote(url)}"
    return command, parts.password is not None


def backup_sqlite(db: str, out: str) -> tuple[str, int, int]:
    """Copy ``db`` to ``out`` while a daemon may serve it; (epoch, seq, schema version)
    of the copy."""
    _existing(db)
    target = Path(out)
    if target.is_dir():
        raise ToolError(f"{out} is a directory; give the backup's file name")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # mode=rw: never create a database; the daemon's WAL is read as it is.
        src = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(db))}?mode=rw", uri=True)
        try:
            src.execute("PRAGMA busy_timeout = 10000")
            dst = sqlite3.connect(tmp)
            try:
                # pages=-1: the whole database in one step, one read transaction on
                # src: a consistent snapshot that the daemon's commits do not restart.
                src.backup(dst, pages=-1)
                # One self-contained file: no -wal beside it until it is opened.
                dst.execute("PRAGMA journal_mode = DELETE")
                problems = [r[0] for r in dst.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise ToolError(f"the copy fails its integrity check: {problems[:5]}")
                meta = dict(dst.execute("SELECT key, value FROM meta"))
                meta["seq"] = dst.execute(COUNTER).fetchone()[0]
            finally:
                dst.close()
        finally:
            src.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except sqlite3.DatabaseError as exc:
        raise ToolError(f"cannot back up {db}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        return meta["epoch"], int(meta["seq"]), int(meta["schema_version"])
    except KeyError:
        raise ToolError(f"{db} is not a chatd database (its meta table is incomplete)") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_backup(db: str, out: str) -> int:
    if is_url(db):
        command, had_password = pg_dump_command(db, out)
        print(
            "chatd: chatd backup copies sqlite databases; a PostgreSQL database is backed\n"
            "up with pg_dump, which takes a consistent snapshot while every node serves:\n"
            f"  {command}\n"
            + ("(the password left out: pg_dump reads it from PGPASSWORD or ~/.pgpass)\n"
               if had_password else "")
            + "Restoring: docs/operations.md, section Backups, PostgreSQL.",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    try:
        epoch, seq, version = backup_sqlite(db, out)
    except (ToolError, OSError) as exc:
        return _fail(str(exc))
    print(f"backup {out}: epoch {epoch} seq {seq} (schema version {version},"
          f" {time.monotonic() - started:.2f} s)")
    return 0


# ------------------------------------------------------------------- export


async def export_lines(store: Store, channel: str | None) -> AsyncIterator[dict[str, Any]]:
    """The export, one object per line, from one snapshot."""
    async with store.backend.snapshot() as snap:
        for user_id, name, role, active in await snap.users():
            yield {"type": "user", "id": user_id, "name": name, "role": role,
                   "active": bool(active)}
        if channel is None:
            channels = await snap.channels()
        else:
            row = await snap.channel(channel)
            if row is None:
                raise ToolError(f"no channel with id {channel!r}")
            channels = [row]
        for channel_id, channel_name, _, kind in channels:
            line: dict[str, Any] = {"type": "channel", "id": channel_id, "name": channel_name,
                                    "kind": kind}
            if kind != "public":
                line["members"] = [i for i, _ in await snap.members(channel_id)]
            yield line
            after = 0
            while page := await snap.messages_after(channel_id, after, EXPORT_PAGE):
                for message_id, seq, at_ms, sender_id, sender_name, body, edited in page:
                    line = {"type": "message", "id": message_id, "channel": channel_id,
                            "seq": seq, "at": wire.format_at(at_ms),
                            "sender": {"id": sender_id, "name": sender_name}, "body": body}
                    if edited is not None:
                        line["edited_at"] = wire.format_at(edited)
                    yield line
                after = page[-1][1]


async def export(db: str, channel: str | None, out: TextIO) -> None:
    store = await _opened(db)
    try:
        async for obj in export_lines(store, channel):
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    finally:
        await store.close()


def run_export(db: str, channel: str | None, out: str | None) -> int:
    """To stdout, or to ``out`` whole or not at all (a temporary file renamed)."""
    try:
        if out is None or out == "-":
            asyncio.run(export(db, channel, sys.stdout))
            sys.stdout.flush()
            return 0
        target = Path(out)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                asyncio.run(export(db, channel, f))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except (ToolError, StartupError, OSError) as exc:
        return _fail(str(exc))
    return 0
