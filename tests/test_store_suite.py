"""The store suite: the rules of chatd/rules.py through the store interface, run
against every backend. A new backend passes all of it or is not done.

Every test gets ``db``, a fresh database as ``--db`` would name it, and opens
stores on it with :func:`chatd.store.open_store`; nothing here reads a
backend's files or tables directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chatd import wire
from chatd.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalError,
    NotFound,
    Unauthorized,
)
from chatd.ops import (
    AddMemberOp,
    ChangePasswordOp,
    CreateChannelOp,
    CreateInviteOp,
    CreateUserOp,
    DeleteChannelOp,
    DeleteMessageOp,
    EditMessageOp,
    Expired,
    ExpireOp,
    IssueTokenOp,
    MarkReadOp,
    Op,
    OpenDmOp,
    Published,
    ReadPosition,
    RemoveMemberOp,
    RevokeInviteOp,
    RevokeTokenOp,
    SendOp,
    Sent,
    SetActiveOp,
    SetRoleOp,
    StoredUser,
)
from chatd.store import Store, open_store

#: "sqlite-trailing": sqlite whose search index trails its messages by up to
#: TRAILING of them (``--search-index-batch``); tests that open more stores on
#: the file open them with 0 (as ``chatd user …`` does), which keeps up the same index
BACKENDS = ["sqlite", "sqlite-trailing", "postgresql"]
TRAILING = 4
FAR = 10**13  # a time in ms long after every test's clock


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database, named as --db names it."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")  # tests/pg.py: a new database
        return url
    if request.param == "sqlite-trailing":
        return str(tmp_path / "suite-trailing.db")
    assert request.param == "sqlite"
    return str(tmp_path / "suite.db")


def index_batch(db: str) -> int:
    return TRAILING if db.endswith("-trailing.db") else 0


OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def opened(db: str) -> AsyncIterator[OpenStore]:
    """Open stores on ``db`` (several make several writers); all closed at the end."""
    stores: list[Store] = []

    async def open_one() -> Store:
        store = open_store(db, search_index_batch=index_batch(db))
        await store.open()
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


async def one(store: Store, op: Op, now_ms: int = 1000) -> Any:
    """Apply one operation; its result, or raise its refusal."""
    (result,), _ = await store.apply([op], now_ms)
    if isinstance(result, Exception):
        raise result
    return result


async def alice(store: Store, name: str = "alice") -> wire.User:
    user = await one(store, CreateUserOp(name, name, "h"))
    assert isinstance(user, StoredUser)
    return wire.User(user.id, user.name)


def decoded(events: list[Published]) -> list[wire.Event]:
    return [msgspec.json.decode(e.frame, type=wire.Event) for e in events]


async def replay(store: Store, after: int = 0, channels: frozenset[str] | None = None
                 ) -> list[wire.Event]:
    page = await store.read_events(after, channels, 10_000, "Uanyone")
    return [msgspec.json.decode(f, type=wire.Event) for _, f in page.events]


# ------------------------------------------------------------------ batches


async def test_batch_commits_refusals_alone(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    (channel,), events = await store.apply([CreateChannelOp(me, "g", "g")], 1000)
    assert isinstance(channel, wire.Channel) and [e.seq for e in events] == [1]
    ops: list[Op] = [
        SendOp(me, channel.id, "one", "n1"),
        SendOp(me, "Cnope", "lost", None),
        CreateChannelOp(me, "G", "g"),
        SendOp(me, channel.id, "one again", "n1"),  # same nonce, same batch
        SendOp(me, channel.id, "two", None),
    ]
    results, events = await store.apply(ops, 2000)
    assert isinstance(results[1], NotFound) and isinstance(results[2], Conflict)
    first, again, two = results[0], results[3], results[4]
    assert isinstance(first, Sent) and isinstance(two, Sent)
    assert again == first
    assert [e.seq for e in events] == [2, 3]
    messages, more = await store.history(channel.id, None, 10, "Uanyone")
    assert [m.body for m in messages] == ["one", "two"] and not more
    assert (await store.position())[0] == 3


async def test_unexpected_failure_fails_only_its_operation(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    await one(store, IssueTokenOp(me.id, b"t" * 32, FAR))
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    # The duplicate token violates a primary key: not a refusal, a failure.
    results, events = await store.apply(
        [
            SendOp(me, channel.id, "before", "n-before"),
            IssueTokenOp(me.id, b"t" * 32, FAR),
            SendOp(me, channel.id, "after", None),
        ],
        2000,
    )
    assert isinstance(results[0], Sent) and isinstance(results[2], Sent)
    assert isinstance(results[1], InternalError)
    assert [e.seq for e in events] == [2, 3]
    messages, _ = await store.history(channel.id, None, 10, "Uanyone")
    assert [m.body for m in messages] == ["before", "after"]
    # the rules' caches survived the rollback of the first attempt
    later = await one(store, SendOp(me, channel.id, "later", None), 3000)
    assert later.message.seq == 4
    # and the nonce of the first attempt was kept once, by the second
    again = await one(store, SendOp(me, channel.id, "before", "n-before"), 3000)
    assert again == results[0]


async def test_reopen_keeps_epoch_sequence_and_channels(db: str) -> None:
    store = open_store(db)
    await store.open()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    epoch = store.epoch
    await store.close()
    store = open_store(db)
    await store.open()
    try:
        assert store.epoch == epoch and epoch
        sent = await one(store, SendOp(me, channel.id, "x", None), 500)
        assert sent.message.seq == 2
        # the clock went backwards: timestamps along the sequence do not
        assert wire.parse_at(sent.message.at) == 1000
    finally:
        await store.close()


async def test_the_counter_never_goes_back(db: str) -> None:
    """Not when the newest event is deleted, not when expiry drops every event,
    and not across a reopen after either (sqlite reads its counter from the
    events and the horizon; PostgreSQL keeps a counter row)."""
    store = open_store(db)
    await store.open()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"), 1000)       # seq 1
    sent = await one(store, SendOp(me, channel.id, "x", None), 1000)       # seq 2
    await one(store, DeleteMessageOp(me, sent.message.id), 1000)           # seq 3
    assert await store.position() == (3, 0)
    # Every event dropped (all older than 5000); nothing else to expire.
    done = await one(store, ExpireOp(0, 0, 5000, 0, 0, limit=100), 10_000)
    assert done.horizon == 3
    assert await store.position() == (3, 3)
    assert await replay(store) == []
    await store.close()
    store = open_store(db)
    await store.open()
    try:
        assert await store.position() == (3, 3)
        again = await one(store, SendOp(me, channel.id, "y", None), 11_000)
        assert again.message.seq == 4
    finally:
        await store.close()


async def test_open_says_what_it_did_to_the_schema(db: str) -> None:
    """A new database is created at the newest version; opened again, nothing is
    applied (tests/test_upgrade.py migrates old ones)."""
    for created in (True, False):
        store = open_store(db)
        await store.open()
        try:
            assert store.backend.created is created
            assert store.backend.migrated == []
        finally:
            await store.close()


async def test_accounts_and_messages_in_order_for_export(opened: OpenStore) -> None:
    """Snapshot.users (by name, role and active) and Snapshot.messages_after
    (ascending pages, deleted messages absent): what ``chatd export`` reads."""
    store = await opened()
    bob = await one(store, CreateUserOp("bob", "bob", "h"), 1000)
    al = await one(store, CreateUserOp("Al", "al", "h"), 2000)
    me = wire.User(al.id, al.name)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    bodies = [f"m{i}" for i in range(7)] + ["nul\x00 \U0001f600"]
    sent = [await one(store, SendOp(me, channel.id, b, None), 3000 + i)
            for i, b in enumerate(bodies)]
    await one(store, DeleteMessageOp(me, sent[2].message.id))
    async with store.backend.snapshot() as snap:
        users = await snap.users()
        assert [(i, n, bool(a)) for i, n, _, a in users] == [
            (al.id, "Al", True), (bob.id, "bob", True)]
        assert all(role in ("admin", "member") for _, _, role, _ in users)
        got, after = [], 0
        while page := await snap.messages_after(channel.id, after, 3):
            assert len(page) <= 3
            got += page
            after = page[-1][1]
        assert await snap.messages_after("Cnope", 0, 10) == []
    kept = [s for i, s in enumerate(sent) if i != 2]
    assert got == [(s.message.id, s.message.seq, wire.parse_at(s.message.at), al.id, "Al",
                    s.message.body, None) for s in kept]


# ------------------------------------------------------------- the rules


async def test_users_and_tokens(opened: OpenStore) -> None:
    store = await opened()
    first = await one(store, CreateUserOp("Alice", "alice", "hash1"))
    assert first.created
    again = await one(store, CreateUserOp("ALICE", "alice", "hash2"))
    assert not again.created and (again.id, again.name, again.pw_hash) == (
        first.id, "Alice", "hash1")
    assert await store.user_by_name("alice") == StoredUser(first.id, "Alice", "hash1", "admin")
    assert await store.user_by_name("bob") is None
    await one(store, IssueTokenOp(first.id, b"a" * 32, 5000))
    assert await store.user_by_token(b"a" * 32, 4999) == wire.User(first.id, "Alice")
    assert await store.user_by_token(b"a" * 32, 5000) is None, "expired"
    await one(store, IssueTokenOp(first.id, b"b" * 32, FAR))
    await one(store, RevokeTokenOp(b"b" * 32))
    assert await store.user_by_token(b"b" * 32, 1000) is None, "revoked"
    assert await store.live_tokens({b"a" * 32, b"b" * 32, b"c" * 32}, 4999) == {b"a" * 32}
    assert await store.live_tokens({b"a" * 32}, 5000) == set()
    many = {bytes([i % 256, i // 256]) * 16 for i in range(1200)}  # over sqlite's IN limit
    for h in sorted(many)[:700]:
        await one(store, IssueTokenOp(first.id, h, FAR))
    assert await store.live_tokens(many, 1000) == set(sorted(many)[:700])
    assert (await store.position())[0] == 0, "accounts emit no event"


async def test_channel_names_and_deletion_rights(opened: OpenStore) -> None:
    store = await opened()
    admin = await alice(store, "root")  # the first account is the admin
    a, b = await alice(store), await alice(store, "bob")
    channel = await one(store, CreateChannelOp(a, "General", "general"))
    with pytest.raises(Conflict, match="'General'"):
        await one(store, CreateChannelOp(b, "GENERAL", "general"))
    with pytest.raises(Forbidden):
        await one(store, DeleteChannelOp(b, channel.id))
    with pytest.raises(NotFound):
        await one(store, DeleteChannelOp(a, "Cnope"))
    sent = await one(store, SendOp(b, channel.id, "hi", None))
    with pytest.raises(Forbidden):
        await one(store, DeleteMessageOp(a, sent.message.id))
    with pytest.raises(NotFound):
        await one(store, DeleteMessageOp(b, "Mnope"))
    history = (await store.history(channel.id, None, 10, "Uanyone"))[0]
    assert [m.id for m in history] == [sent.message.id]
    # an admin may delete any message and any channel
    assert await one(store, DeleteMessageOp(admin, sent.message.id)) == (sent.message.id, channel)
    assert await one(store, DeleteChannelOp(admin, channel.id)) == channel


async def test_delete_channel_cascades_and_bodies_leave_the_replay(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    other = await one(store, CreateChannelOp(me, "o", "o"))
    m1 = await one(store, SendOp(me, channel.id, "secret one", None))
    m2 = await one(store, SendOp(me, channel.id, "secret two", None))
    kept = await one(store, SendOp(me, other.id, "kept", None))
    results, events = await store.apply([DeleteChannelOp(me, channel.id)], 2000)
    assert results == [channel]
    kinds = [(e.kind, e.message.id if e.message else None) for e in decoded(events)]
    assert kinds == [
        ("message.deleted", m1.message.id),
        ("message.deleted", m2.message.id),
        ("channel.deleted", None),
    ]
    with pytest.raises(NotFound):
        await store.history(channel.id, None, 10, "Uanyone")
    with pytest.raises(NotFound):
        await one(store, SendOp(me, channel.id, "late", None))
    seq, me_as_booted, channels = await store.boot(me.id)
    assert me_as_booted == wire.Me(me.id, me.name, "admin")
    assert [c.id for c in channels] == [other.id] and seq == events[-1].seq
    stream = await replay(store)
    bodies = [e.message.body for e in stream if e.message and e.message.body]
    assert bodies == ["kept"], "deleted bodies are gone from the event log"
    assert [e.seq for e in stream] == sorted(e.seq for e in stream)
    assert kept.message.seq in [e.seq for e in stream]
    # the name is free again
    assert isinstance(await one(store, CreateChannelOp(me, "g", "g")), wire.Channel)


async def test_nonce_retry_after_delete_returns_the_first_ok(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    first = await one(store, SendOp(me, channel.id, "hello", "n1"), 2000)
    again = await one(store, SendOp(me, channel.id, "hello", "n1"), 3000)
    assert again == first
    await one(store, DeleteMessageOp(me, first.message.id))
    after = await one(store, SendOp(me, channel.id, "hello retry", "n1"), 4000)
    assert (after.message.id, after.message.seq, after.message.at) == (
        first.message.id, first.message.seq, first.message.at)
    assert after.message.body == "hello retry", "the body is gone; the retry's is echoed"
    other = await alice(store, "bob")
    theirs = await one(store, SendOp(other, channel.id, "same nonce", "n1"))
    assert theirs.message.id != first.message.id, "nonces are per user"


async def test_any_text_comes_back_exactly_and_odd_ids_find_nothing(
    opened: OpenStore,
) -> None:
    """A body or nonce is any Unicode a client sends, NUL included (PostgreSQL's
    TEXT cannot hold NUL); an id with characters no id has finds nothing."""
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    body = "nul\x00 \x01 bidi\u202e zero\u200b astral\U0001f600 non\ufffe"
    first = await one(store, SendOp(me, channel.id, body, "n\x00\U0001f600"), 2000)
    again = await one(store, SendOp(me, channel.id, "retry", "n\x00\U0001f600"), 3000)
    assert again == first and first.message.body == body
    assert [m.body for m in (await store.history(channel.id, None, 10, "Uanyone"))[0]] == [body]
    with pytest.raises(NotFound):
        await one(store, SendOp(me, channel.id + "\x00", "x", None))
    with pytest.raises(NotFound):
        await one(store, DeleteMessageOp(me, first.message.id + "\x00"))
    with pytest.raises(NotFound):
        await store.history("C\x00", None, 10, "Uanyone")
    page = await store.read_events(0, frozenset({"C\x00", channel.id}), 10, "Uanyone")
    assert [s for s, _ in page.events] == [1, 2]
    assert await store.user_by_name("alice\x00") is None


async def test_a_batch_of_retries_finds_every_earlier_nonce(opened: OpenStore) -> None:
    """One lookup for a batch's nonces, also past sqlite's parameter chunks."""
    store = await opened()
    me, other = await alice(store), await alice(store, "bob")
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    first, _ = await store.apply(
        [SendOp(me, channel.id, f"m{i}", f"n{i}") for i in range(450)], 2000)
    assert all(isinstance(r, Sent) for r in first)
    ops = [SendOp(u, channel.id, f"again{i}", f"n{i}")
           for i in range(0, 900, 2) for u in (me, other)]
    again, events = await store.apply(ops, 3000)
    for op, result in zip(ops, again, strict=True):
        assert isinstance(result, Sent)
        i = int(op.nonce[1:])  # type: ignore[index]
        if op.user == me and i < 450:
            assert result == first[i], "an earlier nonce returns the first ok"
        else:
            assert result.message.body == op.body, "a new nonce makes a new message"
    assert len(events) == len(ops) - 225


async def test_edits_keep_only_the_latest_body_everywhere(opened: OpenStore) -> None:
    store = await opened()
    me, bob = await alice(store), await alice(store, "bob")
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    first = await one(store, SendOp(me, channel.id, "first text", "n1"), 2000)
    other = await one(store, SendOp(bob, channel.id, "bob's", None), 2000)
    with pytest.raises(Forbidden, match="only its sender"):
        await one(store, EditMessageOp(bob, first.message.id, "hijacked"))
    with pytest.raises(NotFound):
        await one(store, EditMessageOp(me, "Mnope", "x"))
    (_,), events1 = await store.apply(
        [EditMessageOp(me, first.message.id, "second text")], 3000)
    (edit2,), events2 = await store.apply(
        [EditMessageOp(me, first.message.id, "third text")], 4000)
    assert isinstance(edit2, Sent)
    assert (edit2.message.id, edit2.message.seq, edit2.message.at) == (
        first.message.id, first.message.seq, first.message.at)
    assert edit2.message.body == "third text"
    assert edit2.message.edited_at == wire.format_at(4000)
    (live,) = decoded(events2)
    assert live.kind == "message.edited" and live.sender == me
    assert live.message == wire.EventMessage(first.message.id, "third text", wire.format_at(4000))
    # history and every replayed frame that carries the body show the latest one
    (h1, h2), _ = await store.history(channel.id, None, 10, "Uanyone")
    assert (h1.body, h1.edited_at) == ("third text", wire.format_at(4000))
    assert h2 == other.message and h2.edited_at is None
    carrying = [e for e in await replay(store) if e.message and e.message.id == first.message.id]
    assert [e.kind for e in carrying] == ["message.sent", "message.edited", "message.edited"]
    assert {(e.message.body, e.message.edited_at) for e in carrying if e.message} == {
        ("third text", wire.format_at(4000))}
    assert [e.seq for e in carrying] == [first.message.seq, events1[0].seq, events2[0].seq]
    # a nonce retry after an edit: the first ok's id, seq, at; the retry's own body
    again = await one(store, SendOp(me, channel.id, "first text", "n1"), 5000)
    assert (again.message.id, again.message.body, again.message.edited_at) == (
        first.message.id, "first text", None)
    # deleting it removes every event that carried a body
    await one(store, DeleteMessageOp(me, first.message.id), 6000)
    stream = await replay(store)
    assert not [e for e in stream if e.message and e.message.body
                and e.message.id == first.message.id]
    assert [e.kind for e in stream if e.message and e.message.id == first.message.id] == [
        "message.deleted"]


async def test_history_pages(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    sent = [await one(store, SendOp(me, channel.id, f"m{i}", None)) for i in range(7)]
    seqs = [s.message.seq for s in sent]
    page, more = await store.history(channel.id, None, 3, "Uanyone")
    assert [m.seq for m in page] == seqs[-3:] and more
    page, more = await store.history(channel.id, page[0].seq, 3, "Uanyone")
    assert [m.seq for m in page] == seqs[1:4] and more
    page, more = await store.history(channel.id, page[0].seq, 3, "Uanyone")
    assert [m.seq for m in page] == seqs[:1] and not more
    assert page[0] == sent[0].message


async def test_read_events_pages_filters_and_snapshot_position(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    a = await one(store, CreateChannelOp(me, "a", "a"))
    b = await one(store, CreateChannelOp(me, "b", "b"))
    for i in range(5):
        await one(store, SendOp(me, a.id, f"a{i}", None))
        await one(store, SendOp(me, b.id, f"b{i}", None))
    page = await store.read_events(0, None, 4, "Uanyone")
    assert [s for s, _ in page.events] == [1, 2, 3, 4] and page.upto == 12
    assert page.horizon == 0
    page = await store.read_events(4, frozenset({b.id, "Cdeleted-long-ago"}), 100, "Uanyone")
    assert [s for s, _ in page.events] == [6, 8, 10, 12]
    assert {e.channel.id for e in await replay(store, 0, frozenset({a.id}))} == {a.id}


async def test_expiry_messages_channels_events_and_horizon(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    old = await one(store, CreateChannelOp(me, "old", "old"), 1000)
    busy = await one(store, CreateChannelOp(me, "busy", "busy"), 1000)
    early = await one(store, SendOp(me, busy.id, "early", "n-early"), 2000)
    late = await one(store, SendOp(me, busy.id, "late", None), 9000)
    await one(store, IssueTokenOp(me.id, b"x" * 32, 3000))

    def expire(limit: int = 100) -> ExpireOp:
        return ExpireOp(
            message_before_ms=5000, channel_idle_before_ms=5000, event_before_ms=5000,
            nonce_before_ms=5000, token_before_ms=5000, limit=limit,
        )

    results, events = await store.apply([expire()], 10_000)
    done = results[0]
    assert isinstance(done, Expired)
    assert (done.messages, done.channels, done.more) == (1, 1, False)
    kinds = [(e.kind, e.channel.id) for e in decoded(events)]
    assert kinds == [("message.deleted", busy.id), ("channel.deleted", old.id)]
    # events before 5000 are dropped: the two creations (seqs 1 and 2, at 1000); the
    # early send's event (2000) went with its message. The horizon is the newest dropped.
    assert done.horizon == 2
    seq, horizon = await store.position()
    assert horizon == done.horizon and seq == events[-1].seq
    assert [m.body for m in (await store.history(busy.id, None, 10, "Uanyone"))[0]] == ["late"]
    assert (await replay(store))[0].seq == late.message.seq
    assert await store.user_by_token(b"x" * 32, 1000) is None, "the expired token is gone"
    # the nonce expired with its message's day: the same nonce makes a new message
    again = await one(store, SendOp(me, busy.id, "early", "n-early"), 11_000)
    assert again.message.id != early.message.id


async def test_idle_channels_count_every_message_also_a_deleted_one(opened: OpenStore) -> None:
    """A send stores its channel's activity time only now and then (a page less
    per commit), so idle expiry must find the true last message by itself: the
    newest one still there, or one deleted since."""
    store = await opened()
    me = await alice(store)
    quiet = await one(store, CreateChannelOp(me, "quiet", "quiet"), 1000)
    talk = await one(store, CreateChannelOp(me, "talk", "talk"), 1000)
    await one(store, SendOp(me, talk.id, "first", None), 2000)
    last = await one(store, SendOp(me, talk.id, "last", None), 30_000)  # a few seconds later

    def idle_before(ms: int) -> ExpireOp:
        return ExpireOp(0, ms, 0, 0, 0, limit=100)

    _, events = await store.apply([idle_before(20_000)], 40_000)
    assert [(e.kind, e.channel.id) for e in decoded(events)] == [("channel.deleted", quiet.id)]
    # The newest message is deleted: it was still a message at 30,000.
    await one(store, DeleteMessageOp(me, last.message.id), 50_000)
    _, events = await store.apply([idle_before(25_000)], 60_000)
    assert events == [], "'talk' had a message at 30,000"
    _, events = await store.apply([idle_before(31_000)], 70_000)
    assert [(e.kind, e.channel.id) for e in decoded(events)][-1] == ("channel.deleted", talk.id)


async def test_expiry_rounds_are_bounded(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"), 1000)
    for i in range(5):
        await one(store, SendOp(me, channel.id, f"m{i}", None), 1000)
    await one(store, SendOp(me, channel.id, "new", None), 9000)
    rounds = []
    while True:
        done = await one(store, ExpireOp(5000, 0, 0, 0, 0, limit=2), 10_000)
        rounds.append(done.messages)
        if not done.more:
            break
    assert rounds == [2, 2, 1]
    assert [m.body for m in (await store.history(channel.id, None, 10, "Uanyone"))[0]] == ["new"]


# ------------------------------------------------------------------ accounts


async def test_roles_the_first_account_is_admin_and_one_always_stays(opened: OpenStore) -> None:
    store = await opened()
    root, bob = await alice(store, "root"), await alice(store, "bob")
    assert [(u.name, u.role, u.active) for u in await store.users()] == [
        ("bob", "member", True), ("root", "admin", True)]
    with pytest.raises(Forbidden, match="set_role"):
        await one(store, SetRoleOp(bob, bob.id, "admin"))
    with pytest.raises(NotFound, match="user"):
        await one(store, SetRoleOp(root, "Unope", "admin"))
    with pytest.raises(Conflict, match="no active admin"):
        await one(store, SetRoleOp(root, root.id, "member"))
    with pytest.raises(Conflict, match="no active admin"):
        await one(store, SetActiveOp(root, root.id, False))
    assert await one(store, SetRoleOp(root, bob.id, "admin")) == wire.Account(
        bob.id, "bob", "admin", True)
    # two admins: either may step down now, but not both
    assert (await one(store, SetRoleOp(bob, root.id, "member"))).role == "member"
    with pytest.raises(Conflict):
        await one(store, SetRoleOp(bob, bob.id, "member"))


async def test_deactivation_ends_tokens_and_reactivation_lets_in_again(
    opened: OpenStore,
) -> None:
    store = await opened()
    root, bob = await alice(store, "root"), await alice(store, "bob")
    await one(store, IssueTokenOp(bob.id, b"b" * 32, FAR))
    account = await one(store, SetActiveOp(root, bob.id, False))
    assert account == wire.Account(bob.id, "bob", "member", False)
    assert await store.user_by_token(b"b" * 32, 1000) is None
    assert not (await store.user_by_name("bob")).active  # type: ignore[union-attr]
    await one(store, IssueTokenOp(bob.id, b"c" * 32, FAR))
    assert await store.user_by_token(b"c" * 32, 1000) is None, "no login while inactive"
    assert (await one(store, SetActiveOp(root, bob.id, True))).active
    assert await store.user_by_token(b"c" * 32, 1000) == bob


async def test_change_password_keeps_one_token(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    for t in (b"1", b"2", b"3"):
        await one(store, IssueTokenOp(me.id, t * 32, FAR))
    await one(store, ChangePasswordOp(me.id, "new-hash", b"2" * 32))
    assert (await store.user(me.id)).pw_hash == "new-hash"  # type: ignore[union-attr]
    assert await store.live_tokens({b"1" * 32, b"2" * 32, b"3" * 32}, 1000) == {b"2" * 32}


async def test_invites(opened: OpenStore) -> None:
    store = await opened()
    root, bob = await alice(store, "root"), await alice(store, "bob")
    with pytest.raises(Forbidden):
        await one(store, CreateInviteOp(bob, "Ibob", b"x" * 32, 1, FAR))
    invite = await one(store, CreateInviteOp(root, "I1", b"c" * 32, 2, 50_000))
    assert invite == wire.Invite(id="I1", expires_at=wire.format_at(50_000), uses_left=2,
                                 created_by=root)
    short = await one(store, CreateInviteOp(root, "I2", b"s" * 32, 5, 2_000))
    assert [i.id for i in await store.invites(root, 1000)] == ["I1", "I2"]
    with pytest.raises(Forbidden):
        await store.invites(bob, 1000)
    with pytest.raises(Unauthorized, match="invite"):
        await one(store, CreateUserOp("carol", "carol", "h", need_invite=True))
    with pytest.raises(Unauthorized, match="invite"):
        await one(store, CreateUserOp("carol", "carol", "h", b"wrong" * 6, need_invite=True))
    with pytest.raises(Unauthorized, match="invite"):  # expired at 2000
        await one(store, CreateUserOp("carol", "carol", "h", b"s" * 32, need_invite=True), 3000)
    carol = await one(store, CreateUserOp("carol", "carol", "h", b"c" * 32, need_invite=True))
    assert carol.created and carol.role == "member"
    again = await one(store, CreateUserOp("carol", "carol", "h", b"c" * 32, need_invite=True))
    assert not again.created, "an existing name uses no invite"
    await one(store, CreateUserOp("dave", "dave", "h", b"c" * 32, need_invite=True))
    with pytest.raises(Unauthorized, match="used up"):
        await one(store, CreateUserOp("erin", "erin", "h", b"c" * 32, need_invite=True))
    assert [i.id for i in await store.invites(root, 1000)] == [short.id]
    await one(store, RevokeInviteOp(root, short.id))
    with pytest.raises(NotFound, match="invite"):
        await one(store, RevokeInviteOp(root, short.id))
    assert await store.invites(root, 1000) == []


# ------------------------------------------------- several writers, one database


async def test_caches_hold_with_another_writer(opened: OpenStore) -> None:
    """Two stores on one database, as two nodes (or the daemon and a `chatd`
    command) are: neither may act on what it remembers once the other wrote."""
    a, b = await opened(), await opened()
    me = await alice(a)
    channel = await one(a, CreateChannelOp(me, "g", "g"), 1000)
    sent = await one(b, SendOp(me, channel.id, "via b", None), 1000)  # b learns the channel
    assert sent.message.seq == 2
    await one(a, DeleteChannelOp(me, channel.id), 5000)
    with pytest.raises(NotFound):
        await one(b, SendOp(me, channel.id, "to a deleted channel", None), 1000)
    # one counter: b's next event follows a's, and its time does not go back
    again = await one(a, CreateChannelOp(me, "g", "g"), 5000)
    late = await one(b, SendOp(me, again.id, "after", None), 2000)
    assert late.message.seq == (await a.position())[0]
    assert wire.parse_at(late.message.at) >= 5000
    stream = await replay(b)
    assert [e.seq for e in stream] == sorted({e.seq for e in stream})



# ------------------------------------------------------- membership, unread


async def test_unread_is_exact_after_deletes_and_expiry(opened: OpenStore) -> None:
    """Unread counts are counted, not kept: a delete or an expiry changes them at
    once; a private channel's read position starts at the member.added."""
    store = await opened()
    a, b = await alice(store), await alice(store, "bob")
    pub = await one(store, CreateChannelOp(a, "pub", "pub"))
    sent = [await one(store, SendOp(a, pub.id, f"m{i}", None), 1000 + i) for i in range(4)]
    await one(store, SendOp(b, pub.id, "own", None), 1010)

    def unread_of(channels: list[wire.BootChannel], cid: str) -> tuple[int, int]:
        (c,) = [c for c in channels if c.id == cid]
        return c.read_seq, c.unread

    assert unread_of((await store.boot(b.id))[2], pub.id)[1] == 4
    await one(store, DeleteMessageOp(a, sent[0].message.id))
    assert unread_of((await store.boot(b.id))[2], pub.id)[1] == 3
    pos = await one(store, MarkReadOp(b, pub.id, sent[1].message.seq))
    assert isinstance(pos, ReadPosition) and (pos.read_seq, pos.unread) == (
        sent[1].message.seq, 2)
    # never backwards: an older seq answers the current position and emits nothing
    results, events = await store.apply([MarkReadOp(b, pub.id, 1)], 2000)
    assert results[0] == pos and events == []
    await store.apply([ExpireOp(1002 + 1, 0, 0, 0, 0, limit=100)], 5000)
    # m0 deleted, m1 read, m2 expired (sent at 1002 < 1003): m3 is left
    assert unread_of((await store.boot(b.id))[2], pub.id) == (sent[1].message.seq, 1)
    # a private channel: history before bob joined is not unread for him
    priv = await one(store, CreateChannelOp(a, "priv", "priv", private=True))
    await one(store, SendOp(a, priv.id, "before", None))
    _, added = await store.apply([AddMemberOp(a, priv.id, b.id)], 3000)
    await one(store, SendOp(a, priv.id, "after", None))
    assert unread_of((await store.boot(b.id))[2], priv.id) == (added[0].seq, 1)
    # removed and added again: it starts again at the new member.added
    await one(store, RemoveMemberOp(b, priv.id, b.id))
    assert priv.id not in {c.id for c in (await store.boot(b.id))[2]}
    await one(store, SendOp(a, priv.id, "while away", None))
    _, again = await store.apply([AddMemberOp(a, priv.id, b.id)], 3000)
    assert unread_of((await store.boot(b.id))[2], priv.id) == (again[0].seq, 0)


async def test_membership_decides_replay_and_audiences(opened: OpenStore) -> None:
    store = await opened()
    a, b, c = await alice(store), await alice(store, "bob"), await alice(store, "carol")
    priv = await one(store, CreateChannelOp(a, "priv", "priv", private=True))
    _, ev_before = await store.apply([SendOp(a, priv.id, "before", None)], 1000)
    _, ev_added = await store.apply([AddMemberOp(a, priv.id, b.id)], 1000)
    _, ev_during = await store.apply([SendOp(a, priv.id, "during", None)], 1000)
    _, ev_removed = await store.apply([RemoveMemberOp(a, priv.id, b.id)], 1000)
    _, ev_after = await store.apply([SendOp(a, priv.id, "after", None)], 1000)
    dm = await one(store, OpenDmOp(a, c.id))
    assert dm.created and dm.channel.kind == "dm" and dm.channel.name == "alice, carol"
    again = await one(store, OpenDmOp(c, a.id))
    assert not again.created and again.channel.id == dm.channel.id
    # the writer's audiences
    assert ev_before[0].audience == {a.id}
    assert ev_added[0].audience == {a.id, b.id}
    assert ev_during[0].audience == {a.id, b.id}
    assert ev_removed[0].audience == {a.id, b.id}
    assert ev_after[0].audience == {a.id}
    # replay for bob: from its member.added to its member.removed, nothing else
    page = await store.read_events(0, None, 10_000, b.id)
    assert [s for s, _ in page.events] == [ev_added[0].seq, ev_during[0].seq,
                                            ev_removed[0].seq]
    page = await store.read_events(0, None, 10_000, c.id)
    kinds = [msgspec.json.decode(f, type=wire.Event).kind for _, f in page.events]
    assert kinds == ["channel.created"]  # the dm only
    # the tail's audiences match the writer's
    tail = await store.tail_events(0, 10_000)
    by_seq = {e.seq: e.audience for e in tail.events}
    for ev in (*ev_before, *ev_added, *ev_during, *ev_removed, *ev_after):
        assert by_seq[ev.seq] == ev.audience
    # a page cut at the limit says how far it read, visible or not
    # (bob was a member of priv, so its first two events are read, then left out)
    page = await store.read_events(0, None, 2, b.id)
    assert page.more and page.events == [] and page.scanned == ev_before[0].seq
    with pytest.raises(NotFound):
        await store.history(priv.id, None, 10, b.id)
    with pytest.raises(NotFound):
        await one(store, SendOp(b, priv.id, "x", None))


# ------------------------------------------------------------------ search

#: words that collide in the ways the rules care about: prefixes, case, NFKC,
#: casefold, digits, separators
_VOCAB = ["apple", "app", "apply", "Apple", "banana", "ban", "ﬁsh", "fish", "straße",
          "STRASSE", "x1", "42", "foo_bar", "foo", "bar", "naïve", "NEAR", "AND", "*", "-"]


async def _everything(store: Store, user: wire.User, query: str, channel: str | None = None,
                      page: int = 3) -> list[wire.SearchHit]:
    """Every hit of ``query``, read page by page with ``before``."""
    hits: list[wire.SearchHit] = []
    before = None
    while True:
        found, more = await store.search(user.id, query, channel, before, page)
        assert len(found) <= page and [h.seq for h in found] == sorted(
            (h.seq for h in found), reverse=True)
        hits += found
        if not more:
            return hits
        assert len(found) == page
        before = found[-1].seq


@pytest.mark.parametrize("window", [20_000, 7])
async def test_search_finds_current_bodies_only_on_every_backend(
    opened: OpenStore, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same data and queries give the reference answer (chatd.search.matches
    over what is left), so every backend gives the same answer: after sends,
    edits, deletes, a channel delete and expiry. With a small window, PostgreSQL
    finds most matches through its second statement (the GIN index)."""
    import random

    from chatd import postgres_store, search

    monkeypatch.setattr(postgres_store, "_SEARCH_WINDOW", window)

    store = await opened()
    me, bob = await alice(store), await alice(store, "bob")
    rng = random.Random(14)
    channels = [await one(store, CreateChannelOp(me, n, n), 1000) for n in ("a", "b", "c")]
    live: dict[str, tuple[wire.Message, wire.Channel]] = {}
    for i in range(120):
        channel = channels[i % 3]
        body = " ".join(rng.choice(_VOCAB) for _ in range(rng.randint(1, 5)))
        who = me if i % 2 else bob
        # the first ten are old enough to expire
        sent = await one(store, SendOp(who, channel.id, body, None), 2000 if i < 10 else 9000)
        live[sent.message.id] = (sent.message, channel)
    ids = list(live)
    for mid in ids[20:40:3]:  # edits: only the latest body is searched
        message, channel = live[mid]
        body = " ".join(rng.choice(_VOCAB) for _ in range(3))
        edited = await one(store, EditMessageOp(
            me if message.sender == me else bob, mid, body), 9500)
        live[mid] = (edited.message, channel)
    for mid in ids[40:60:4]:
        await one(store, DeleteMessageOp(me, mid), 9500)
        del live[mid]
    await one(store, DeleteChannelOp(me, channels[2].id), 9500)
    live = {k: v for k, v in live.items() if v[1].id != channels[2].id}
    expired = await one(store, ExpireOp(
        message_before_ms=5000, channel_idle_before_ms=0, event_before_ms=0,
        nonce_before_ms=0, token_before_ms=0, limit=1000), 10_000)
    assert expired.messages == len([m for m, _ in live.values() if m.at == wire.format_at(2000)])
    live = {k: v for k, v in live.items() if v[0].at != wire.format_at(2000)}

    queries = ["apple", "app", "APP", "appl", "ban", "banana", "fish", "ﬁ", "strasse",
               "STRAßE", "x1", "4", "42", "foo bar", '"foo bar"', '"bar foo"', "foo_b",
               '"apple', 'apple "', "near and", "NEAR(", "apple -ban", "naïve", "nai",
               '"fish" "apple banana"', "* app", "zzz"]
    for query in queries:
        parsed = search.parse(query)
        expected = sorted(
            ((m.seq, m.id, m.body, m.edited_at, c.id) for m, c in live.values()
             if search.matches(parsed, m.body)), reverse=True)
        got = [(h.seq, h.id, h.body, h.edited_at, h.channel.id)
               for h in await _everything(store, me, query)]
        assert got == expected, query
        in_a = [h.id for h in await _everything(store, bob, query, channels[0].id, page=100)]
        assert in_a == [e[1] for e in expected if e[4] == channels[0].id], query
    # a hit is the message as history shows it, and its channel
    (hit,) = (await store.search(me.id, "apple", channels[0].id, None, 1))[0]
    shown = {m.id: m for m in (await store.history(channels[0].id, None, 500, me.id))[0]}
    assert wire.Message(hit.id, hit.seq, hit.at, hit.sender, hit.body,
                        hit.edited_at) == shown[hit.id]
    assert hit.channel == channels[0]


def _fts(path: str, match: str = "t*") -> tuple[int, list[int]]:
    """meta('search_indexed') (-1: no row) and the seqs FTS5 itself finds for
    ``match``; FTS5's integrity check (the index against the messages) passes."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'search_indexed'").fetchone()
        (newest,) = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()
        # rank 1: also against each message's words, once none trails (those are
        # rightly missing from the index until it catches up)
        caught_up = row is None or newest <= int(row[0])
        conn.execute("INSERT INTO message_words(message_words, rank) VALUES ('integrity-check', ?)",
                     (1 if caught_up else 0,))
        seqs = [r[0] for r in conn.execute(
            "SELECT rowid FROM message_words WHERE message_words MATCH ? ORDER BY rowid",
            (match,))]
        return (-1 if row is None else int(row[0])), seqs
    finally:
        conn.close()


async def test_a_trailing_search_index_finds_everything_and_catches_up(tmp_path: Path) -> None:
    """sqlite with --search-index-batch: messages not yet in FTS5 are searched all
    the same (edited, deleted or not), the index catches up every few messages and
    in the expiry round, never holds a word twice or a stale one, and a file
    left with a trailing part (a crash: nothing of it lives in memory) is found
    in full and caught up by a store opened with 0 (as ``chatd user …`` opens it)."""
    path = str(tmp_path / "trail.db")
    stores: list[Store] = []

    async def opened_with(batch: int) -> Store:
        store = open_store(path, search_index_batch=batch)
        await store.open()
        stores.append(store)
        return store

    try:
        await _trailing(opened_with, path)
    finally:  # a store left open would keep its threads, and pytest, waiting
        for store in stores:
            with contextlib.suppress(RuntimeError):  # closed already
                await store.close()


async def _trailing(opened_with: Callable[[int], Awaitable[Store]], path: str) -> None:
    store = await opened_with(4)
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))

    async def found(query: str) -> list[int]:
        return [h.seq for h in await _everything(store, me, query, page=2)]

    a, b, c = [(await one(store, SendOp(me, channel.id, f"t{i} alpha", None))).message
               for i in range(3)]
    assert _fts(path) == (0, [])  # three trail; nothing indexed yet
    assert await found("alpha") == [c.seq, b.seq, a.seq]
    await one(store, EditMessageOp(me, b.id, "t1 kappa"))  # twice while it trails
    await one(store, EditMessageOp(me, b.id, "t1 beta"))
    await one(store, DeleteMessageOp(me, c.id))
    assert await found("alpha") == [a.seq] and await found("beta") == [b.seq]
    d = (await one(store, SendOp(me, channel.id, "t3 alpha", None))).message
    # the fourth message: the index caught up, with the edited words, without the deleted
    assert _fts(path) == (d.seq, [a.seq, b.seq, d.seq])
    assert _fts(path, "kappa")[1] == [] and _fts(path, "beta")[1] == [b.seq]
    assert await found("alpha") == [d.seq, a.seq] and await found("beta") == [b.seq]
    await one(store, EditMessageOp(me, a.id, "t0 gamma"))  # an indexed one now
    assert await found("alpha") == [d.seq] and await found("gamma") == [a.seq]
    e = (await one(store, SendOp(me, channel.id, "t4 delta", None))).message
    await one(store, ExpireOp(message_before_ms=0, channel_idle_before_ms=0, event_before_ms=0,
                              nonce_before_ms=0, token_before_ms=0, limit=100), 2000)
    assert _fts(path) == (e.seq, [a.seq, b.seq, d.seq, e.seq])  # the expiry round caught up
    f, g = [(await one(store, SendOp(me, channel.id, f"t{i} omega", None))).message
            for i in (5, 6)]
    await store.close()  # what a crash leaves too: nothing of the trailing part is in memory
    assert _fts(path) == (e.seq, [a.seq, b.seq, d.seq, e.seq])

    store = await opened_with(0)  # each message indexed in its own transaction
    assert await found("omega") == [g.seq, f.seq]
    await one(store, EditMessageOp(me, f.id, "t5 sigma"))
    h = (await one(store, SendOp(me, channel.id, "t7 omega", None))).message
    assert _fts(path) == (h.seq, [a.seq, b.seq, d.seq, e.seq, f.seq, g.seq, h.seq])
    assert await found("omega") == [h.seq, g.seq] and await found("sigma") == [f.seq]
    assert await found("t") == [h.seq, g.seq, f.seq, e.seq, d.seq, b.seq, a.seq]


async def test_search_pages_limits_and_refusals(opened: OpenStore) -> None:
    store = await opened()
    me = await alice(store)
    channel = await one(store, CreateChannelOp(me, "g", "g"))
    other = await one(store, CreateChannelOp(me, "h", "h"))
    sent = [await one(store, SendOp(me, (channel, other)[i % 2].id, f"word{i} common", None))
            for i in range(7)]
    seqs = [s.message.seq for s in reversed(sent)]
    hits, more = await store.search(me.id, "common", None, None, 3)
    assert [h.seq for h in hits] == seqs[:3] and more
    hits, more = await store.search(me.id, "common", None, hits[-1].seq, 3)
    assert [h.seq for h in hits] == seqs[3:6] and more
    hits, more = await store.search(me.id, "common", None, hits[-1].seq, 3)
    assert [h.seq for h in hits] == seqs[6:] and not more
    hits, more = await store.search(me.id, "comm", None, seqs[0] + 1, 7)
    assert len(hits) == 7 and not more
    hits, more = await store.search(me.id, "common", None, 0, 5)
    assert (hits, more) == ([], False)
    hits, _ = await store.search(me.id, "word", other.id, None, 20)  # prefix
    assert {h.channel.id for h in hits} == {other.id} and len(hits) == 3
    assert (await store.search(me.id, "word3", None, None, 20))[0][0].id == sent[3].message.id
    with pytest.raises(NotFound, match="channel"):
        await store.search(me.id, "common", "Cnope", None, 20)
    with pytest.raises(NotFound, match="channel"):
        await store.search(me.id, "common", "C\x00nul", None, 20)
    for empty in ("", "  ", '""', "!?", "_"):
        with pytest.raises(BadRequest, match=r"\$\.query"):
            await store.search(me.id, empty, None, None, 20)
    # what FTS engines take as syntax is text here, never an error
    await one(store, SendOp(me, channel.id, 'NEAR AND OR NOT "quoted" a*b ^c -d', None))
    for query in ['NEAR(a b)', 'AND', 'OR', 'NOT', '"quoted', "a*", "^c", "-d", "a:b",
                  "a'b", "a\\", "a':*", "'c", "x" * 1000, "é" * 999, "\x00a", "a\x00"]:
        await store.search(me.id, query, None, None, 20)
    assert len((await store.search(me.id, "near and or not", None, None, 20))[0]) == 1
    # candidates that are not matches (a long prefix is looked up by its first
    # characters, a phrase by its words) are skipped, however many come first
    wanted = [await one(store, SendOp(me, other.id, f"deployment {i} went fine", None))
              for i in range(2)]
    for i in range(60):
        await one(store, SendOp(me, other.id, f"deployed fine went {i}", None))
    # a word too frequent in one body for PostgreSQL to keep all its positions
    repeated = await one(store, SendOp(me, channel.id, "x " * 300 + "y z", None))
    assert [h.id for h in (await store.search(me.id, '"x y z"', None, None, 5))[0]] == [
        repeated.message.id]
    assert (await store.search(me.id, '"y x"', None, None, 5))[0] == []
    for query in ("deploym", '"went fine"'):
        hits, more = await store.search(me.id, query, None, None, 1)
        assert [h.id for h in hits] == [wanted[1].message.id] and more, query
        hits, more = await store.search(me.id, query, None, hits[0].seq, 5)
        assert [h.id for h in hits] == [wanted[0].message.id] and not more, query
