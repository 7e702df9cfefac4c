"""The PostgreSQL backend beyond the store suite: several writers on one
database (as several nodes are), the daemon on a postgresql:// URL, and a
database it cannot reach. The server comes from tests/pg.py."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator

import msgspec
import psycopg
import pytest

from chatd import wire
from chatd.exceptions import StartupError
from chatd.ops import CreateChannelOp, CreateUserOp, Op, SendOp, Sent, StoredUser
from chatd.postgres_store import SCHEMA_VERSION, PostgresBackend
from chatd.storage import WriteTx
from chatd.store import Store, open_store

from .support import UNIT, WS, Daemon


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[Store]]:
    """Three stores on one fresh database: three writers, as three nodes."""
    opened = [open_store(pg_url) for _ in range(3)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


async def _channel(store: Store) -> tuple[wire.User, wire.Channel]:
    (user,), _ = await store.apply([CreateUserOp("alice", "alice", "h")], 1000)
    assert isinstance(user, StoredUser)
    me = wire.User(user.id, user.name)
    (channel,), _ = await store.apply([CreateChannelOp(me, "g", "g")], 1000)
    assert isinstance(channel, wire.Channel)
    return me, channel


async def test_a_later_seq_never_commits_before_an_earlier_one(stores: list[Store]) -> None:
    """While one writer holds seq N uncommitted, no other writer commits N+1, so no
    reader sees N+1 without N. (Seqs from a SEQUENCE would fail this: the second
    writer would take N+1 and commit while N is still open.)"""
    a, b, reader = stores
    me, channel = await _channel(a)
    holding, release = threading.Event(), threading.Event()

    def hold(tx: WriteTx) -> int:
        seq = tx.counter() + 1
        tx.insert_event(seq, 2000, channel.id, b'{"held":true}', None)
        tx.set_counter(seq)
        holding.set()
        release.wait(30)
        return seq

    held = asyncio.ensure_future(a.backend.run_on_writer(lambda: a.backend.write_here(hold)))
    try:
        assert await asyncio.to_thread(holding.wait, 10 * UNIT)
        later = asyncio.ensure_future(b.apply([SendOp(me, channel.id, "later", None)], 2000))
        await asyncio.sleep(0.5 * UNIT)
        assert not later.done(), "a second writer committed while the first held the counter"
        page = await reader.read_events(0, None, 100, "Uanyone")
        assert page.upto == 1 and [s for s, _ in page.events] == [1]
    finally:
        release.set()
    n = await held
    _, events = await later
    assert [e.seq for e in events] == [n + 1]
    page = await reader.read_events(0, None, 100, "Uanyone")
    assert [s for s, _ in page.events] == [1, n, n + 1] and page.upto == n + 1


async def test_concurrent_writers_unique_seqs_and_no_visible_gap(stores: list[Store]) -> None:
    """Two writers commit batches as fast as they can while a reader polls: seqs
    are unique and gapless, every page a reader gets is contiguous up to the
    counter it saw, and times never go back along the seqs though one writer's
    clock is behind."""
    a, b, reader = stores
    me, channel = await _channel(a)
    rounds, per_batch = 60, 4
    writing = True

    async def write(store: Store, tag: str, now_ms: int) -> list[int]:
        seqs: list[int] = []
        for i in range(rounds):
            ops: list[Op] = [SendOp(me, channel.id, f"{tag}{i}.{k}", f"{tag}{i}.{k}")
                             for k in range(per_batch)]
            _, events = await store.apply(ops, now_ms + i)
            batch = [e.seq for e in events]
            assert batch == list(range(batch[0], batch[0] + per_batch)), batch
            seqs += batch
        return seqs

    async def read() -> int:
        after, polls = 1, 0
        while writing or after < 1 + 2 * rounds * per_batch:
            page = await reader.read_events(after, None, 10_000, "Uanyone")
            seqs = [s for s, _ in page.events]
            assert seqs == list(range(after + 1, page.upto + 1)), (after, page.upto, seqs)
            after, polls = page.upto, polls + 1
        return polls

    polling = asyncio.ensure_future(read())
    try:
        seqs_a, seqs_b = await asyncio.gather(write(a, "a", 5000), write(b, "b", 1000))
    finally:
        writing = False
    polls = await polling
    assert polls > 1
    assert sorted(seqs_a + seqs_b) == list(range(2, 2 + 2 * rounds * per_batch))
    page = await reader.read_events(0, None, 10_000, "Uanyone")
    times = [msgspec.json.decode(f, type=wire.Event).at for _, f in page.events]
    assert times == sorted(times), "times go back along the seqs"


async def test_a_failure_in_buffered_rows_is_its_operations(stores: list[Store]) -> None:
    """Buffered rows are written at release_savepoint at the latest, so an error in
    them fails the operation that added them, and rolling its savepoint back leaves
    the transaction usable (PostgreSQL aborts a transaction on any error outside
    a savepoint). Many times over, in several transactions: past the count at
    which the driver prepares statements, a statement it would prepare in a
    pipeline that the error aborts must not be taken for prepared."""
    a = stores[0]
    _, channel = await _channel(a)  # seq 1

    def batch(tx: WriteTx) -> list[bool]:
        failed = []
        for _ in range(8):
            seq = tx.counter() + 1
            for taken in (False, True):
                tx.savepoint()
                tx.insert_event(1 if taken else seq, 2000, channel.id, b"{}", None)  # 1 is taken
                tx.set_counter(seq)
                try:
                    tx.release_savepoint()
                    failed.append(False)
                except psycopg.IntegrityError:
                    tx.rollback_savepoint()
                    failed.append(True)
        return failed

    for _ in range(3):
        failed = await a.backend.run_on_writer(lambda: a.backend.write_here(batch))
        assert failed == [False, True] * 8
    page = await a.read_events(0, None, 100, "Uanyone")
    assert [s for s, _ in page.events] == list(range(1, 26)) and page.upto == 25


async def test_cancelled_reads_leave_the_pool_usable(stores: list[Store]) -> None:
    """A client that goes away cancels its read mid-statement."""
    a = stores[0]
    me, channel = await _channel(a)
    await a.apply([SendOp(me, channel.id, f"m{i}", None) for i in range(200)], 2000)
    for i in range(60):  # cancelled after 0, 1, 2, ... turns of the loop: at every await
        task = asyncio.ensure_future(a.history(channel.id, None, 200, "Uanyone"))
        for _ in range(i):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for _ in range(6):
        messages, _ = await a.history(channel.id, None, 200, "Uanyone")
        assert len(messages) == 200
        page = await a.read_events(0, frozenset(), 10, "Uanyone")
        assert page.events == [] and page.upto == 201


async def test_listen_wakes_on_every_nodes_commits_of_events(stores: list[Store]) -> None:
    """listen() is what wakes a node's tail of the events table: after a commit
    with events on any node, and after it (re)connects; not for a commit without."""
    a, b, _ = stores
    me, channel = await _channel(a)
    woken = asyncio.Event()
    listening = asyncio.ensure_future(b.backend.listen(woken.set))  # type: ignore[attr-defined]
    try:
        await asyncio.wait_for(woken.wait(), 10 * UNIT)  # listening now
        for store in (a, b):
            woken.clear()
            await store.apply([SendOp(me, channel.id, "hi", None)], 2000)
            await asyncio.wait_for(woken.wait(), 10 * UNIT)
        woken.clear()
        await a.apply([CreateUserOp("bob", "bob", "h")], 2000)  # no event
        await asyncio.sleep(0.3 * UNIT)
        assert not woken.is_set()
        with psycopg.connect(a.backend.url, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE query LIKE 'LISTEN%'")
        await asyncio.wait_for(woken.wait(), 10 * UNIT)  # listening again
        woken.clear()
        await a.apply([SendOp(me, channel.id, "again", None)], 2000)
        await asyncio.wait_for(woken.wait(), 10 * UNIT)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def test_two_nodes_starting_at_once_make_one_schema(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert len({s.epoch for s in stores}) == 1 and stores[0].epoch
    finally:
        for s in stores:
            await s.close()


async def test_a_database_newer_than_the_code_is_refused(pg_url: str) -> None:
    store = open_store(pg_url)
    await store.open()
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StartupError, match="newer than this chatd"):
        await open_store(pg_url).open()


async def test_connections_lost_are_made_again(stores: list[Store]) -> None:
    """An admin ends chatd's sessions (or the server restarts): the next write
    and the next read connect again."""
    a = stores[0]
    me, channel = await _channel(a)
    pg_url = a.backend.url  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = 'chatd'").fetchall()
        assert len(ended) == 4 * len(stores)  # a writer and three readers each
        for _ in range(100):  # until they are gone (a session dying as it is used fails)
            left = conn.execute("SELECT count(*) FROM pg_stat_activity"
                                " WHERE application_name = 'chatd'").fetchone()
            if left == (0,):
                break
            await asyncio.sleep(0.05)
    (sent,), _ = await a.apply([SendOp(me, channel.id, "after", None)], 3000)
    assert isinstance(sent, Sent) and sent.message.seq == 2
    for _ in range(4):  # every pooled connection
        page = await a.read_events(0, None, 10, "Uanyone")
        assert [s for s, _ in page.events] == [1, 2]


async def test_the_daemon_serves_on_a_postgresql_url(pg_url: str) -> None:
    daemon = Daemon(pg_url)  # type: ignore[arg-type]  # --db as given
    await daemon.start()
    try:
        async with WS.connect(daemon.url) as ws:
            await ws.login("alice")
            channel = (await ws.ok("create_channel", name="general"))["channel"]
            sent = await ws.ok("send", channel=channel["id"], body="hello", nonce="n1")
            again = await ws.ok("send", channel=channel["id"], body="hello", nonce="n1")
            assert again["message"] == sent["message"]
            history = await ws.ok("history", channel=channel["id"])
            assert [m["body"] for m in history["messages"]] == ["hello"]
    finally:
        await daemon.kill()
    assert not any("Traceback" in line for line in daemon.log), "".join(daemon.log)


async def test_an_unreachable_database_is_one_clear_line_and_exit_1() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", "serve", "--db", "postgresql://nobody@127.0.0.1:1/x",
        "--port", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30 * UNIT)
    text = err.decode()
    assert proc.returncode == 1, text
    assert "cannot connect to PostgreSQL" in text and "127.0.0.1" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text


async def test_an_unreachable_database_is_a_startup_error() -> None:
    backend = PostgresBackend("postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(StartupError, match=r"cannot connect to PostgreSQL: .*127\.0\.0\.1") as e:
        await Store(backend).open()
    assert "\n" not in str(e.value)
