"""chatd/store.py: which backend --db names."""

from __future__ import annotations

import pytest

from chatd.exceptions import StartupError
from chatd.postgres_store import PostgresBackend
from chatd.sqlite_store import SqliteBackend
from chatd.store import open_store


@pytest.mark.parametrize("db", ["chatd.db", "./data/chatd.db", "/var/lib/chatd/chatd.db",
                                "relative/with:colon.db"])
def test_a_path_is_sqlite(db: str) -> None:
    store = open_store(db)
    assert isinstance(store.backend, SqliteBackend) and store.backend.path == db


@pytest.mark.parametrize(("db", "url"), [
    ("postgresql://chatd@localhost/chatd", "postgresql://chatd@localhost/chatd"),
    ("POSTGRES://h/db", "postgres://h/db"),  # libpq knows the scheme in lower case only
])
def test_a_postgresql_url_is_postgresql(db: str, url: str) -> None:
    store = open_store(db)
    assert isinstance(store.backend, PostgresBackend) and store.backend.url == url


def test_an_unknown_url_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="unknown database URL scheme"):
        open_store("mysql://localhost/chatd")


@pytest.mark.parametrize(("db", "shown"), [
    ("postgresql://chatd:s3cret@db.example/chatd", "postgresql://chatd:***@db.example/chatd"),
    ("postgresql://chatd@/chatd?host=/run/pg", "postgresql://chatd@/chatd?host=/run/pg"),
])
def test_the_log_never_shows_a_database_password(db: str, shown: str) -> None:
    from chatd.cli import shown_db

    assert shown_db(db) == shown
