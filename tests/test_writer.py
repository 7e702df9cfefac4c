"""Group commit (chatd/writer.py) over a real sqlite store: order, batching,
failure, overload, close."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from chatd import wire
from chatd.exceptions import Unavailable
from chatd.feed import LocalFeed
from chatd.ops import CreateChannelOp, CreateUserOp, Op, Published, Result, SendOp, Sent
from chatd.sqlite_store import SqliteBackend
from chatd.store import Store
from chatd.writer import Writer


def sqlite_store(path: Path) -> Store:
    return Store(SqliteBackend(str(path)))


class FailingStore(Store):
    """The real store, except that a batch holding a body of "boom" fails whole,
    as if the disk had failed under it."""

    def apply_here(
        self, ops: list[Op], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        if any(isinstance(op, SendOp) and op.body == "boom" for op in ops):
            raise OSError("disk I/O error")
        return super().apply_here(ops, now_ms)


class Harness:
    def __init__(self, store: Store, **kw: Any) -> None:
        self.store = store
        self.published: list[int] = []
        self.batches: list[int] = []
        self.writer = Writer(
            store, LocalFeed(self._publish), on_batch=lambda n, _s: self.batches.append(n), **kw
        )
        self.me: wire.User | None = None
        self.channel = ""

    def _publish(self, events: list[Published]) -> None:
        self.published += [e.seq for e in events]

    async def setup(self) -> None:
        await self.store.open()
        self.writer.start()
        user = await self.writer.submit(CreateUserOp("alice", "alice", "h"))
        self.me = wire.User(user.id, user.name)
        self.channel = (await self.writer.submit(CreateChannelOp(self.me, "g", "g"))).id

    def send(self, body: str) -> SendOp:
        assert self.me is not None
        return SendOp(self.me, self.channel, body, None)


@pytest.fixture
async def h(tmp_path: Path) -> Any:
    harness = Harness(sqlite_store(tmp_path / "w.db"))
    await harness.setup()
    yield harness
    await harness.writer.close()
    await harness.store.close()


async def test_concurrent_sends_commit_in_groups_published_before_acked(h: Harness) -> None:
    acked_after_publish: list[bool] = []

    async def one(i: int) -> Sent:
        sent: Sent = await h.writer.submit(h.send(f"m{i}"))
        # By the time a caller has its ack, its event has been published.
        acked_after_publish.append(sent.message.seq in h.published)
        return sent

    results = await asyncio.gather(*(one(i) for i in range(500)))
    seqs = [r.message.seq for r in results]
    assert sorted(seqs) == list(range(2, 502))  # seq 1 is the channel
    assert h.published == list(range(1, 502)), "published in seq order, no gap"
    assert all(acked_after_publish)
    assert max(h.batches) > 1, "a burst of sends was committed in groups"
    assert sum(h.batches) == 502
    messages, _ = await h.store.history(h.channel, None, 1000, "Uanyone")
    assert [m.body for m in messages] == [f"m{i}" for i in range(500)]


async def test_a_failed_commit_fails_its_batch_only(tmp_path: Path) -> None:
    h = Harness(FailingStore(SqliteBackend(str(tmp_path / "f.db"))))
    await h.setup()
    try:
        ok_before = await h.writer.submit(h.send("before"))
        with pytest.raises(Unavailable, match="storage failure"):
            await h.writer.submit(h.send("boom"))
        ok_after = await h.writer.submit(h.send("after"))
        assert ok_after.message.seq == ok_before.message.seq + 1, "nothing of the failed batch"
        messages, _ = await h.store.history(h.channel, None, 10, "Uanyone")
        assert [m.body for m in messages] == ["before", "after"]
    finally:
        await h.writer.close()
        await h.store.close()


async def test_overload_is_refused_not_queued(tmp_path: Path) -> None:
    h = Harness(sqlite_store(tmp_path / "o.db"), max_pending=10)
    await h.setup()
    try:
        outcomes = await asyncio.gather(
            *(h.writer.submit(h.send(f"m{i}")) for i in range(200)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, Unavailable)]
        stored = [o for o in outcomes if isinstance(o, Sent)]
        assert refused and stored and len(refused) + len(stored) == 200
        assert all("overloaded" in str(o) for o in refused)
        messages, _ = await h.store.history(h.channel, None, 1000, "Uanyone")
        assert sorted(m.seq for m in messages) == sorted(s.message.seq for s in stored)
    finally:
        await h.writer.close()
        await h.store.close()


async def test_close_commits_what_is_pending_then_refuses(h: Harness) -> None:
    pending = [asyncio.ensure_future(h.writer.submit(h.send(f"m{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # all 50 submitted
    await h.writer.close()
    assert all(p.done() for p in pending), "close() returned before every ack"
    assert [p.result().message.body for p in pending] == [f"m{i}" for i in range(50)]
    with pytest.raises(Unavailable, match="shutting down"):
        await h.writer.submit(h.send("late"))
    messages, _ = await h.store.history(h.channel, None, 100, "Uanyone")
    assert len(messages) == 50


class ThreadRecordingStore(Store):
    """The real store, noting for each batch its size and the thread it ran on."""

    def __init__(self, backend: SqliteBackend) -> None:
        super().__init__(backend)
        self.runs: list[tuple[int, bool]] = []

    def apply_here(
        self, ops: list[Op], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        self.runs.append((len(ops), threading.current_thread() is threading.main_thread()))
        return super().apply_here(ops, now_ms)


async def test_a_lone_send_commits_on_the_loop_a_burst_on_the_writer_thread(
    tmp_path: Path,
) -> None:
    store = ThreadRecordingStore(SqliteBackend(str(tmp_path / "i.db")))
    h = Harness(store)
    await h.setup()
    try:
        store.runs.clear()
        for i in range(3):
            await h.writer.submit(h.send(f"lone {i}"))
        assert store.runs == [(1, True)] * 3, "an idle writer commits a lone send inline"
        store.runs.clear()
        await asyncio.gather(*(h.writer.submit(h.send(f"burst {i}")) for i in range(100)))
        assert all(not on_loop for _, on_loop in store.runs), store.runs
        assert max(n for n, _ in store.runs) > 1, "a burst still commits in groups"
        # Right after a batch of several (load), a lone send goes to the thread
        # too; once a batch of one has been committed, lone sends go inline again.
        store.runs.clear()
        for i in range(3):
            await h.writer.submit(h.send(f"after {i}"))
        assert store.runs == [(1, False), (1, True), (1, True)], store.runs
    finally:
        await h.writer.close()
        await h.store.close()


async def test_no_inline_commit_always_uses_the_writer_thread(tmp_path: Path) -> None:
    store = ThreadRecordingStore(SqliteBackend(str(tmp_path / "t.db")))
    h = Harness(store, inline=False)
    await h.setup()
    try:
        await h.writer.submit(h.send("lone"))
        assert store.runs and not any(on_loop for _, on_loop in store.runs)
    finally:
        await h.writer.close()
        await h.store.close()


async def test_inline_and_threaded_commits_publish_in_seq_order(tmp_path: Path) -> None:
    """Bursts (the writer thread) and lone sends (inline) in a random mix: an
    inline commit must wait until the thread's last batch is published, or its
    events would overtake that batch's."""
    store = ThreadRecordingStore(SqliteBackend(str(tmp_path / "m.db")))
    h = Harness(store)
    await h.setup()
    rng = random.Random(15)
    try:
        tasks: list[asyncio.Future[Any]] = []
        for i in range(400):
            tasks.append(asyncio.ensure_future(h.writer.submit(h.send(f"m{i}"))))
            pause = rng.random()
            if pause < 0.5:
                await asyncio.sleep(0)
            elif pause < 0.6:
                await asyncio.sleep(0.0005)
        results = await asyncio.gather(*tasks)
        assert h.published == list(range(1, 402)), "published in seq order, no gap"
        assert sorted(r.message.seq for r in results) == list(range(2, 402))
        modes = {on_loop for _, on_loop in store.runs}
        assert modes == {True, False}, "both kinds of commit happened"
    finally:
        await h.writer.close()
        await h.store.close()
