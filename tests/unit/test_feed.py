"""chatd/feed.py: the tail of a shared events table, over two real stores on one
sqlite file (two writers, as two nodes on one PostgreSQL are)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatd import wire
from chatd.feed import TailFeed
from chatd.ops import CreateChannelOp, CreateUserOp, Published, SendOp
from chatd.store import Store, open_store

from ..helpers import wait_for


class Node:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.published: list[Published] = []
        self.feed = TailFeed(store.tail_events, self.published.extend, cursor=0,
                             poll_interval=0.05, page_size=3)

    async def commit(self, *ops: Any) -> tuple[list[Any], list[Published]]:
        """Apply, then hand the events to the feed as the writer does; the results
        once the feed says they are published."""
        results, events = await self.store.apply(list(ops), 1000)
        if events:
            done = asyncio.get_running_loop().create_future()
            self.feed.committed(events, lambda: done.set_result(None))
            await asyncio.wait_for(done, 5)
        return results, events

    def seqs(self) -> list[int]:
        return [e.seq for e in self.published]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    db = str(tmp_path / "shared.db")
    a, b = Node(open_store(db)), Node(open_store(db))
    for n in (a, b):
        await n.store.open()
        n.feed.start()
    yield a, b
    for n in (a, b):
        await n.feed.stop()
        await n.store.close()


async def test_each_node_publishes_every_commit_once_in_order(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    (user,), _ = await a.commit(CreateUserOp("alice", "alice", "h"))
    me = wire.User(user.id, user.name)
    (channel,), _ = await a.commit(CreateChannelOp(me, "g", "g"))
    for i in range(10):
        node = (a, b)[i % 2]
        await node.commit(*(SendOp(me, channel.id, f"m{i}.{j}", None) for j in range(i % 3 + 1)))
    last = (await a.store.position())[0]
    for n in (a, b):
        await wait_for(lambda n=n: bool(n.seqs()) and n.seqs()[-1] >= last, within=5,
                       interval=0.01, what="every node to publish the last event")
        assert n.seqs() == list(range(1, last + 1)), "every event once, in seq order"
        assert {e.channel_id for e in n.published} == {channel.id}


async def test_an_ok_waits_until_the_events_before_it_are_published(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    await b.feed.stop()  # b does not read a's events yet
    (user,), _ = await a.commit(CreateUserOp("alice", "alice", "h"))
    me = wire.User(user.id, user.name)
    (channel,), _ = await a.commit(CreateChannelOp(me, "g", "g"))
    await a.commit(SendOp(me, channel.id, "from a", None))
    assert b.seqs() == []
    # b's own commit comes after a's events: published (and acknowledged) after them
    b.feed.start()
    _, events = await b.commit(SendOp(me, channel.id, "from b", None))
    assert b.seqs() == [1, 2, 3] and events[-1].seq == 3


async def test_a_failing_read_retries_from_the_same_cursor(tmp_path: Path) -> None:
    db = str(tmp_path / "flaky.db")
    store = open_store(db)
    await store.open()
    fail = True
    published: list[int] = []
    health: list[bool] = []

    async def read(after: int, limit: int) -> Any:
        if fail:
            raise OSError("the database is unreachable")
        return await store.tail_events(after, limit)

    feed = TailFeed(read, lambda es: published.extend(e.seq for e in es), cursor=0,
                    poll_interval=0.02, on_health=health.append)
    feed.start()
    try:
        (user,), _ = await store.apply([CreateUserOp("alice", "alice", "h")], 1000)
        me = wire.User(user.id, user.name)
        await store.apply([CreateChannelOp(me, f"c{i}", f"c{i}") for i in range(5)], 1000)
        await asyncio.sleep(0.1)
        assert published == [] and health == [False] and not feed.healthy
        fail = False
        await wait_for(lambda: len(published) >= 5, within=5, interval=0.01,
                       what="the tail to read again")
        assert published == [1, 2, 3, 4, 5] and health == [False, True]
    finally:
        await feed.stop()
        await store.close()
