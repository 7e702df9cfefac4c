"""The store the daemon uses: the rules of :mod:`chatd.rules` over a backend.

:func:`open_store` picks the backend from ``--db``: a file path is the embedded
sqlite backend (:mod:`chatd.sqlite_store`); a ``postgresql://`` (or
``postgres://``) URL is the PostgreSQL backend (:mod:`chatd.postgres_store`).

Writes: :meth:`Store.apply_here` applies a list of operations in one
transaction on the backend's writing thread (the group-commit writer of
:mod:`chatd.writer` calls it inside :meth:`Store.run_on_writer`). Reads
(history, boot, replay pages, users and tokens) run concurrently with it and
each sees one committed snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from . import rules, search, wire
from .exceptions import StartupError
from .ops import EventPage, Op, Published, Result, StoredUser, TailPage
from .storage import Backend

T = TypeVar("T")

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(db: str) -> bool:
    """Whether ``--db`` is a URL (a database server) rather than a sqlite file."""
    return _URL.match(db) is not None


def open_store(db: str, *, search_index_batch: int = 0) -> Store:
    """The store for ``--db``: a path is sqlite; a URL names its backend.
    ``search_index_batch``: sqlite's (:class:`~chatd.sqlite_store.SqliteBackend`)."""
    m = _URL.match(db)
    if m is None:
        from .sqlite_store import SqliteBackend

        return Store(SqliteBackend(db, search_index_batch=search_index_batch))
    scheme = m.group("scheme").lower()
    if scheme in ("postgresql", "postgres"):
        from .postgres_store import PostgresBackend

        return Store(PostgresBackend(db))
    raise StartupError(
        f"--db {scheme}://…: unknown database URL scheme; give a sqlite file path"
        " or a postgresql:// URL"
    )


class Store:
    """A backend and the rules; the one storage object the daemon holds."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.rules = rules.Rules()

    @property
    def commits_inline(self) -> bool:
        return self.backend.commits_inline

    @property
    def epoch(self) -> str:
        return self.backend.epoch

    async def open(self) -> None:
        await self.backend.open()

    async def close(self) -> None:
        await self.backend.close()

    # ---------------------------------------------------------------- writes

    async def apply(self, ops: list[Op], now_ms: int) -> tuple[list[Result], list[Published]]:
        """Apply ``ops`` in one transaction, from the event loop (tests and tools)."""
        return await self.backend.run_on_writer(lambda: self.apply_here(ops, now_ms))

    async def run_on_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the backend's writing thread; it may call :meth:`apply_here`."""
        return await self.backend.run_on_writer(fn)

    def apply_here(self, ops: list[Op], now_ms: int) -> tuple[list[Result], list[Published]]:
        """Apply ``ops`` in one transaction, on the writing thread."""
        return self.rules.apply(self.backend, ops, now_ms)

    # ----------------------------------------------------------------- reads

    async def position(self) -> tuple[int, int]:
        """(current seq, horizon) from one snapshot."""
        async with self.backend.reader() as snap:
            return await snap.counter()

    async def user_by_name(self, key: str) -> StoredUser | None:
        async with self.backend.reader() as snap:
            row = await snap.user_by_key(key)
        return None if row is None else rules.stored_user(row)

    async def user(self, user_id: str) -> StoredUser | None:
        async with self.backend.reader() as snap:
            row = await snap.user(user_id)
        return None if row is None else rules.stored_user(row)

    async def users(self) -> list[wire.Account]:
        async with self.backend.reader() as snap:
            return await rules.users(snap)

    async def invites(self, actor: wire.User, now_ms: int) -> list[wire.Invite]:
        async with self.backend.snapshot() as snap:
            return await rules.invites(snap, actor, now_ms)

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> wire.User | None:
        async with self.backend.reader() as snap:
            row = await snap.user_by_token(token_hash, now_ms)
        return None if row is None else wire.User(*row)

    async def live_tokens(self, token_hashes: set[bytes], now_ms: int) -> set[bytes]:
        """Those of ``token_hashes`` that still log a connection in."""
        async with self.backend.reader() as snap:
            return set(await snap.live_tokens(sorted(token_hashes), now_ms))

    async def boot(self, user_id: str) -> tuple[int, wire.Me, list[wire.BootChannel]]:
        async with self.backend.snapshot() as snap:
            return await rules.boot(snap, user_id)

    async def typing_audience(
        self, channel_id: str, user_id: str
    ) -> tuple[wire.Channel, frozenset[str] | None]:
        """See :func:`chatd.rules.typing_audience`."""
        async with self.backend.reader() as snap:
            return await rules.typing_audience(snap, channel_id, user_id)

    async def history(
        self, channel_id: str, before: int | None, limit: int, user_id: str
    ) -> tuple[list[wire.Message], bool]:
        """The user's view of a channel's history (not_found if it cannot see it)."""
        async with self.backend.snapshot() as snap:
            return await rules.history(snap, channel_id, user_id, before, limit)

    async def members(
        self, channel_id: str, user_id: str
    ) -> tuple[list[wire.User], wire.User | None]:
        async with self.backend.snapshot() as snap:
            return await rules.members(snap, channel_id, user_id)

    async def search(
        self, user_id: str, query: str, channel_id: str | None, before: int | None, limit: int
    ) -> tuple[list[wire.SearchHit], bool]:
        """See :func:`chatd.rules.search`; ``bad_request`` for a query without a word."""
        parsed = search.parse(query)
        async with self.backend.snapshot() as snap:
            return await rules.search(snap, user_id, parsed, channel_id, before, limit)

    async def read_events(
        self, after: int, channels: frozenset[str] | None, limit: int, user_id: str
    ) -> EventPage:
        """A replay page: what ``user_id`` may see of the events after ``after``."""
        async with self.backend.snapshot() as snap:
            return await rules.read_events(snap, after, channels, limit, user_id)

    async def tail_events(self, after: int, limit: int) -> TailPage:
        """Every event after ``after``, with audiences (a node tailing a shared database)."""
        async with self.backend.snapshot() as snap:
            return await rules.tail_events(snap, after, limit)
