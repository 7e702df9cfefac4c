"""Upgrades: a database made by an older chatd, served by this one.

sqlite: tests/data/chatd-0.1.0.db was made once by chatd 0.1.0 through its
protocol (tests/data/make_010_db.py, run against the 0.1.0 tree), and
tests/data/chatd-0.1.0.json records what that daemon showed. The current daemon
starts on a copy and must show the same: users, passwords, tokens, channels,
history, the first ok of a nonce, epoch, seq, horizon and the retained events,
and a client of the old daemon resumes without a gap.

PostgreSQL: there was no 0.1.0 release for it; a database made with the
version-1 schema (tests/data/schema_pg_v1.sql) and a few rows migrates to the
current version.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chatd.migrations import CREATED, MIGRATIONS, SCHEMA_VERSION
from chatd.store import open_store

from .helpers import chatd, client, expect_error, server_log_guard  # noqa: F401
from .sqlite_file import query
from .support import UNIT, Daemon

DATA = Path(__file__).resolve().parent / "data"
OLD_DB = DATA / "chatd-0.1.0.db"
RECORD: dict[str, Any] = json.loads((DATA / "chatd-0.1.0.json").read_text())
#: nothing made in 2026 may expire while the test reads it
KEEP = ["--message-ttl", "36500d", "--channel-ttl", "36500d", "--event-ttl", "36500d",
        "--expire-interval", "36500d"]


def old_copy(tmp_path: Path) -> Path:
    db = tmp_path / "upgraded.db"
    shutil.copyfile(OLD_DB, db)
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    return db


def _only(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


async def test_a_0_1_0_database_serves_as_it_was(tmp_path: Path) -> None:
    db = old_copy(tmp_path)
    d = Daemon(db, KEEP)
    await d.start()
    try:
        users = RECORD["users"]
        alice_id, bob_id = users["alice"]["id"], users["bob"]["id"]
        general = RECORD["channels"]["general"]
        epoch, seq, horizon = RECORD["epoch"], RECORD["seq"], RECORD["horizon"]

        # A client of the old daemon resumes where it was: nothing new yet.
        async with client(d.url, token=users["bob"]["token"]) as resumer:
            await resumer.ok("subscribe", since=seq, epoch=epoch)

            for name, user in users.items():
                async with client(d.url) as ws:
                    login = await ws.login(name, user["password"])
                    assert login["user"] == {"id": user["id"], "name": name}
                async with client(d.url, token=user["token"]) as ws:  # a 0.1.0 token
                    assert ws.me["user"] == {"id": user["id"], "name": name}  # type: ignore[attr-defined]

            async with client(d.url, token=users["alice"]["token"]) as alice:
                boot = await alice.ok("boot")
                assert boot["epoch"] == epoch and boot["resume_point"] == seq
                assert [_only(c, "id", "name") for c in boot["channels"]] == RECORD[
                    "boot_channels"]
                assert RECORD["deleted_channel"] not in {c["id"] for c in boot["channels"]}
                for cid, messages in RECORD["history"].items():
                    reply = await alice.ok("history", channel=cid, limit=500)
                    assert reply["messages"] == messages and not reply["more"]
                    gone = set(RECORD["deleted_messages"])
                    assert not gone & {m["id"] for m in reply["messages"]}
                await expect_error(alice, "not_found", "history",
                                   channel=RECORD["deleted_channel"])

                # Migration 4 indexed the old messages: each is found by its words.
                for messages in RECORD["history"].values():
                    for m in messages:
                        found = await alice.ok("search", query=m["body"], limit=100)
                        assert m in [{k: v for k, v in hit.items() if k != "channel"}
                                     for hit in found["messages"]], m

                # The nonce of 0.1.0 still answers with the first ok, and makes no event.
                nonce = RECORD["nonce"]
                again = await alice.ok("send", channel=nonce["channel"], body=nonce["body"],
                                       nonce=nonce["nonce"])
                first = nonce["ok"]
                assert again["message"] == first["message"]
                assert _only(again["channel"], "id", "name") == first["channel"]

                # The horizon and the retained events, exactly as 0.1.0 replayed them.
                gap = await expect_error(alice, "resume_gap", "subscribe", since=horizon - 1)
                assert gap["horizon"] == horizon and gap["epoch"] == epoch
                await alice.ok("subscribe", since=horizon, epoch=epoch)
                assert await alice.events_until(seq) == RECORD["events"]

                # Roles: the protocol's `users` once the account commands exist.
                reply = await alice.request("users")
                if reply["type"] == "ok":
                    roles = {u["id"]: (u["role"], u["active"]) for u in reply["users"]}
                    assert roles == {alice_id: ("admin", True), bob_id: ("member", True)}

                # New events follow on from the old sequence, to the resumed client.
                sent = await alice.ok("send", channel=general, body="first words of 0.2")
                assert sent["message"]["seq"] == seq + 1
            new = await resumer.events_until(seq + 1)
            assert [e["seq"] for e in new] == [seq + 1]
            assert new[0]["message"]["id"] == sent["message"]["id"]
    finally:
        await d.terminate()

    assert query(db, "SELECT id, role, active, created_seq FROM users ORDER BY created_ms") == [
        (alice_id, "admin", 1, 0), (bob_id, "member", 1, 0)]
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]
    assert [v for v, in query(db, "SELECT version FROM migrations ORDER BY version")] == list(
        range(2, SCHEMA_VERSION + 1))
    # The export shows the roles too (and no secrets).
    code, out, err = await chatd("export", "--db", str(db))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [u for u in lines if u["type"] == "user"] == [
        {"type": "user", "id": alice_id, "name": "alice", "role": "admin", "active": True},
        {"type": "user", "id": bob_id, "name": "bob", "role": "member", "active": True},
    ]


async def test_chatd_migrate_applies_then_is_up_to_date(tmp_path: Path) -> None:
    db = old_copy(tmp_path)
    code, out, err = await chatd("migrate", "--db", str(db))
    assert code == 0, err
    assert out.splitlines() == [
        *(f"applied migration {v}: {MIGRATIONS[v].name}" for v in range(2, SCHEMA_VERSION + 1)),
        f"schema version {SCHEMA_VERSION}",
    ]
    rows = query(db, "SELECT version, name, applied_ms FROM migrations ORDER BY version")
    assert [(v, n) for v, n, _ in rows] == [
        (v, MIGRATIONS[v].name) for v in range(2, SCHEMA_VERSION + 1)]
    assert rows[0][2] > 1_700_000_000_000
    code, out, err = await chatd("migrate", "--db", str(db))
    assert (code, out) == (0, f"up to date: schema version {SCHEMA_VERSION}\n"), err
    assert query(db, "SELECT count(*) FROM migrations") == [(len(rows),)]

    code, out, err = await chatd("migrate", "--db", str(tmp_path / "typo.db"))
    assert code == 1 and "no database at" in err and not (tmp_path / "typo.db").exists()


def _sqlite_schema(db: Path) -> dict[str, Any]:
    """Tables with their columns, and indexes with theirs, of a sqlite file."""
    conn = sqlite3.connect(db)
    try:
        out: dict[str, Any] = {}
        for (table,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            out[table] = [r[1:] for r in conn.execute(f"PRAGMA table_info('{table}')")]
            for _, index, unique, *_ in conn.execute(f"PRAGMA index_list('{table}')"):
                cols = [r[2] for r in conn.execute(f"PRAGMA index_info('{index}')")]
                out[f"{table}/{index if not index.startswith('sqlite_') else 'auto'}"
                    f"/{cols}"] = unique
        return out
    finally:
        conn.close()


async def test_a_migrated_sqlite_database_is_a_new_one(tmp_path: Path) -> None:
    """Migrations and schema.sql agree: same tables, columns (in order, with
    types, defaults, NOT NULL) and indexes."""
    old = old_copy(tmp_path)
    new = tmp_path / "new.db"
    for db in (old, new):
        store = open_store(str(db))
        await store.open()
        await store.close()
    assert _sqlite_schema(old) == _sqlite_schema(new)
    assert query(new, "SELECT version, name FROM migrations") == [(SCHEMA_VERSION, CREATED)]


# ------------------------------------------------------------------ newer


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_newer_database_is_refused_by_serve_and_migrate(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        db = request.getfixturevalue("pg_url")
    else:
        db = str(tmp_path / "newer.db")
    store = open_store(db)
    await store.open()
    await store.close()
    set_version = "UPDATE meta SET value = '999' WHERE key = 'schema_version'"
    if backend == "postgresql":
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(set_version)
    else:
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(set_version)
        conn.close()
    for args in (["serve", "--db", db, "--port", "0"], ["migrate", "--db", db]):
        code, _, err = await chatd(*args, within=30)
        assert code == 1, err
        assert "newer than this chatd" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    if backend == "postgresql":
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            assert row == ("999",)
    else:
        assert query(Path(db), "SELECT value FROM meta WHERE key = 'schema_version'") == [
            ("999",)]


# --------------------------------------------------------------- PostgreSQL


def make_pg_v1(url: str) -> dict[str, str]:
    """A version-1 PostgreSQL database with a few rows, as chatd 0.1.x's PostgreSQL
    backend (schema_pg.sql at version 1) left it; the users' ids by name."""
    ids = {"bob": "Ubbbbbbbbbbbbbbbbbbbb", "alice": "Uzzzzzzzzzzzzzzzzzzzz",
           "carol": "Uaaaaaaaaaaaaaaaaaaaa"}
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute((DATA / "schema_pg_v1.sql").read_bytes())
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', 'Eoldpg')")
        conn.execute("INSERT INTO counter(seq, horizon) VALUES (3, 1)")
        # alice is the oldest; carol was made in the same ms as bob, with a smaller id
        for name, created in (("bob", 2000), ("alice", 1000), ("carol", 2000)):
            conn.execute("INSERT INTO users VALUES (%s, %s, %s, 'scrypt$x', %s)",
                         (ids[name], name, name, created))
        conn.execute("INSERT INTO channels VALUES ('Cg', 'general', 'general', %s, 1, 3000)",
                     (ids["alice"],))
        for seq, body in ((2, b"one"), (3, b"two")):
            conn.execute(
                "INSERT INTO messages VALUES (%s, %s, 'Cg', %s, 'alice', %s, %s)",
                (seq, f"M{seq}", ids["alice"], 3000 + seq, body))
            conn.execute("INSERT INTO events VALUES (%s, %s, 'Cg', %s)",
                         (seq, 3000 + seq, b'{"type":"event"}'))
    return ids


async def test_a_version_1_postgresql_database_migrates(pg_url: str) -> None:
    ids = make_pg_v1(pg_url)
    store = open_store(pg_url)
    await store.open()
    try:
        assert [m.version for m in store.backend.migrated] == list(
            range(2, SCHEMA_VERSION + 1))
        assert store.epoch == "Eoldpg" and await store.position() == (3, 1)
        async with store.backend.snapshot() as snap:
            assert await snap.users() == [
                (ids["alice"], "alice", "admin", True),
                (ids["bob"], "bob", "member", True),
                (ids["carol"], "carol", "member", True),
            ]
        messages, _ = await store.history("Cg", None, 10, "Uanyone")
        assert [m.body for m in messages] == ["one", "two"]
        hits, _ = await store.search(ids["bob"], "TW", None, None, 10)
        assert [(h.id, h.body) for h in hits] == [("M3", "two")]
    finally:
        await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT DISTINCT created_seq FROM users").fetchall() == [(0,)]
        assert conn.execute("SELECT version FROM migrations ORDER BY version").fetchall() == [
            (v,) for v in range(2, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT count(*) FROM invites").fetchone() == (0,)


async def test_chatd_migrate_on_postgresql(pg_url: str) -> None:
    make_pg_v1(pg_url)
    code, out, err = await chatd("migrate", "--db", pg_url)
    assert code == 0, err
    assert out.splitlines()[0] == f"applied migration 2: {MIGRATIONS[2].name}"
    code, out, err = await chatd("migrate", "--db", pg_url)
    assert (code, out) == (0, f"up to date: schema version {SCHEMA_VERSION}\n"), err


async def test_nodes_starting_at_once_migrate_once(pg_url: str) -> None:
    make_pg_v1(pg_url)
    stores = [open_store(pg_url) for _ in range(4)]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.open() for s in stores)), 60 * UNIT)
        # Each migration is a transaction of its own, so different nodes may apply
        # different ones; together they apply each exactly once.
        applied = sorted(m.version for s in stores for m in s.backend.migrated)
        assert applied == list(range(2, SCHEMA_VERSION + 1)), applied
        assert {s.epoch for s in stores} == {"Eoldpg"}
    finally:
        for s in stores:
            await s.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM migrations ORDER BY version").fetchall() == [
            (v,) for v in range(2, SCHEMA_VERSION + 1)]


def _pg_schema(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable,"
            " column_default FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position").fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname").fetchall()
        checks = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " ORDER BY 1, 2").fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": checks}


async def test_a_migrated_postgresql_database_is_a_new_one(pg_server: Any) -> None:
    old, new = pg_server.create_database()[1], pg_server.create_database()[1]
    make_pg_v1(old)
    for url in (old, new):
        store = open_store(url)
        await store.open()
        await store.close()
    assert _pg_schema(old) == _pg_schema(new)


def test_the_version_1_schema_kept_here_is_that_of_0_1_0(tmp_path: Path) -> None:
    """tests/data/schema_v1.sql (0.1.0's schema.sql) is what the 0.1.0 database has."""
    v1 = tmp_path / "v1.db"
    conn = sqlite3.connect(v1)
    conn.executescript((DATA / "schema_v1.sql").read_text())
    conn.close()
    assert _sqlite_schema(v1) == _sqlite_schema(OLD_DB)
