"""The sqlite store on its own, with a real file: batches, refusals, the careful path."""

from __future__ import annotations

from pathlib import Path

from chatd import wire
from chatd.exceptions import Conflict, InternalError, NotFound
from chatd.sqlite_store import SqliteStore
from chatd.store import CreateChannel, CreateUser, IssueToken, SendMessage, Sent, StoredUser


async def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    return store


async def test_batch_commits_refusals_alone(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        (user,), _ = await store.apply([CreateUser("alice", "alice", "h")], 1000)
        assert isinstance(user, StoredUser)
        me = wire.User(user.id, user.name)
        (channel,), events = await store.apply([CreateChannel(me, "g", "g")], 1000)
        assert isinstance(channel, wire.Channel) and [e.seq for e in events] == [1]
        ops = [
            SendMessage(me, channel.id, "one", "n1"),
            SendMessage(me, "Cnope", "lost", None),
            CreateChannel(me, "G", "g"),
            SendMessage(me, channel.id, "one again", "n1"),  # same nonce, same batch
            SendMessage(me, channel.id, "two", None),
        ]
        results, events = await store.apply(ops, 2000)
        assert isinstance(results[1], NotFound) and isinstance(results[2], Conflict)
        first, again, two = results[0], results[3], results[4]
        assert isinstance(first, Sent) and isinstance(two, Sent)
        assert again == first
        assert [e.seq for e in events] == [2, 3]
        messages, more = await store.history(channel.id, None, 10)
        assert [m.body for m in messages] == ["one", "two"] and not more
        assert (await store.position())[0] == 3
    finally:
        await store.close()


async def test_unexpected_failure_fails_only_its_operation(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        (user,), _ = await store.apply([CreateUser("alice", "alice", "h")], 1000)
        assert isinstance(user, StoredUser)
        me = wire.User(user.id, user.name)
        await store.apply([IssueToken(user.id, b"t" * 32, 10**12)], 1000)
        (channel,), _ = await store.apply([CreateChannel(me, "g", "g")], 1000)
        assert isinstance(channel, wire.Channel)
        # The duplicate token violates a primary key: not a refusal, a failure.
        results, events = await store.apply(
            [
                SendMessage(me, channel.id, "before", None),
                IssueToken(user.id, b"t" * 32, 10**12),
                SendMessage(me, channel.id, "after", None),
            ],
            2000,
        )
        assert isinstance(results[0], Sent) and isinstance(results[2], Sent)
        assert isinstance(results[1], InternalError)
        assert [e.seq for e in events] == [2, 3]
        messages, _ = await store.history(channel.id, None, 10)
        assert [m.body for m in messages] == ["before", "after"]
        # the writer's channel cache survived the rollback of the first attempt
        results, _ = await store.apply([SendMessage(me, channel.id, "later", None)], 3000)
        assert isinstance(results[0], Sent) and results[0].message.seq == 4
    finally:
        await store.close()


async def test_reopen_keeps_epoch_sequence_and_channels(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    (user,), _ = await store.apply([CreateUser("alice", "alice", "h")], 1000)
    assert isinstance(user, StoredUser)
    me = wire.User(user.id, user.name)
    (channel,), _ = await store.apply([CreateChannel(me, "g", "g")], 1000)
    assert isinstance(channel, wire.Channel)
    epoch = store.epoch
    await store.close()
    store = await _store(tmp_path)
    try:
        assert store.epoch == epoch
        (sent,), _ = await store.apply([SendMessage(me, channel.id, "x", None)], 500)
        assert isinstance(sent, Sent) and sent.message.seq == 2
        # the clock went backwards: timestamps along the sequence do not
        assert wire.parse_at(sent.message.at) == 1000
    finally:
        await store.close()
