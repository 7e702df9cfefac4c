"""Typing and presence through sessions and the hub, without sockets (the
harness of test_session.py: the real App over a real sqlite file, in-memory
sinks), with an injected clock for the typing rate limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chatd import wire
from chatd.config import Config
from chatd.fanout import Hub
from chatd.ops import EventPage
from chatd.server import App
from chatd.store import open_store

from .test_session import Harness

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """One App and the connections made to it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.conns: list[Harness] = []

    async def conn(self, name: str, *, subscribe: dict[str, Any] | None = None) -> Harness:
        h = Harness(self.app)
        self.conns.append(h)
        self.app.sessions.add(h.session)  # as App.handle does: logout ends the others
        await h.login(name)
        if subscribe is not None:
            h.peer.command("subscribe", "sub", **subscribe)
            await h.replies(1)
            h.sink.frames.clear()
        return h


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Node] = []

    async def make(clock: Callable[[], float] | None = None, **config: Any) -> Node:
        # Written at once (no gathering): the tests look right after each command.
        config.setdefault("ephemeral_flush", 0.0)
        cfg = Config(db=str(tmp_path / "unit.db"), scrypt_n=1024, **config)
        app = App(cfg, open_store(cfg.db), clock=clock or Clock())
        await app.start()
        n = Node(app)
        made.append(n)
        return n

    yield make
    for n in made:
        for h in n.conns:
            h.peer.end()
        await asyncio.gather(*(h.task for h in n.conns), return_exceptions=True)
        await n.app.writer.close()
        await n.app.stop()


def ephemerals(h: Harness, kind: str | None = None) -> list[dict[str, Any]]:
    return [f for f in h.sink.frames
            if f["type"] == "ephemeral" and (kind is None or f["kind"] == kind)]


async def command(h: Harness, op: str, **args: Any) -> dict[str, Any]:
    """Send one command; its reply (other frames stay in the sink)."""
    ref = f"{op}-{len(h.sink.frames)}-{id(args)}"
    h.peer.command(op, ref, **args)
    await h.sink.wait_for(lambda: any(f.get("ref") == ref for f in h.sink.frames))
    return next(f for f in h.sink.frames if f.get("ref") == ref)


async def settle() -> None:
    """Let frames that would be written be written (ephemeral frames are
    written synchronously by the command, so a few loop turns suffice)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_typing_recipients(node: Any) -> None:
    n = await node()
    alice = await n.conn("alice", subscribe={"ephemeral": True})
    channel = (await command(alice, "create_channel", name="general"))["channel"]
    other = (await command(alice, "create_channel", name="other"))["channel"]
    alice2 = await n.conn("alice", subscribe={"ephemeral": True})
    bob = await n.conn("bob", subscribe={"ephemeral": True})
    bob_events_only = await n.conn("bob", subscribe={})
    bob_filtered_out = await n.conn("bob", subscribe={"ephemeral": True,
                                                     "channels": [other["id"]]})
    bob_filtered_in = await n.conn("bob", subscribe={"ephemeral": True,
                                                    "channels": [channel["id"]]})
    carol_unsubscribed = await n.conn("carol")
    everyone = [alice, alice2, bob, bob_events_only, bob_filtered_out, bob_filtered_in,
                carol_unsubscribed]
    for h in everyone:
        h.sink.frames.clear()

    reply = await command(alice, "typing", channel=channel["id"])
    assert reply == {"type": "ok", "ref": reply["ref"]}
    await settle()
    want = {"type": "ephemeral", "kind": "typing", "channel": channel,
            "user": alice.session.user and {"id": alice.session.user.id, "name": "alice"}}
    assert ephemerals(alice) == [], "never to the connection that sent it"
    for h in (alice2, bob, bob_filtered_in):
        assert ephemerals(h) == [want]
    for h in (bob_events_only, bob_filtered_out, carol_unsubscribed):
        assert ephemerals(h) == []
    # typing makes no event and moves no seq
    assert all(f["type"] != "event" for h in everyone for f in h.sink.frames)


async def test_typing_is_forwarded_once_per_user_channel_and_interval(node: Any) -> None:
    clock = Clock()
    n = await node(clock)
    alice = await n.conn("alice")
    general = (await command(alice, "create_channel", name="general"))["channel"]["id"]
    random_ = (await command(alice, "create_channel", name="random"))["channel"]["id"]
    alice_other = await n.conn("alice")
    bob = await n.conn("bob", subscribe={"ephemeral": True})
    bob.sink.frames.clear()

    async def typed() -> list[tuple[str, str]]:
        await settle()
        return [(f["user"]["name"], f["channel"]["id"]) for f in ephemerals(bob, "typing")]

    for _ in range(5):
        assert (await command(alice, "typing", channel=general))["type"] == "ok"
        assert (await command(alice_other, "typing", channel=general))["type"] == "ok"
    assert await typed() == [("alice", general)], "one per user and channel, any connection"
    await command(alice, "typing", channel=random_)
    carol = await n.conn("carol")
    await command(carol, "typing", channel=general)
    assert await typed() == [("alice", general), ("alice", random_), ("carol", general)]
    clock.now += 0.999
    await command(alice, "typing", channel=general)
    assert len(await typed()) == 3, "still within the second"
    clock.now += 0.001
    await command(alice, "typing", channel=general)
    assert await typed() == [("alice", general), ("alice", random_), ("carol", general),
                             ("alice", general)]


async def test_typing_errors(node: Any) -> None:
    n = await node()
    alice = await n.conn("alice")
    reply = await command(alice, "typing", channel="Cnope")
    assert (reply["type"], reply["code"]) == ("error", "not_found")
    assert "channel" in reply["message"]
    reply = await command(alice, "typing")
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "channel" in reply["message"]
    out = Harness(n.app)
    n.conns.append(out)
    reply = await command(out, "typing", channel="C1")
    assert (reply["type"], reply["code"]) == ("error", "unauthorized")


async def test_presence_online_offline_and_boot(node: Any) -> None:
    n = await node()
    watcher = await n.conn("watcher", subscribe={"ephemeral": True})
    events_only = await n.conn("quiet", subscribe={})
    watcher_id = watcher.session.user.id  # type: ignore[union-attr]

    def presence() -> list[tuple[str, bool]]:
        return [(f["user"]["name"], f["online"]) for f in ephemerals(watcher, "presence")
                if f["user"]["name"] != "quiet"]

    alice = await n.conn("alice")
    alice_id = alice.session.user.id  # type: ignore[union-attr]
    assert presence() == [("alice", True)]
    boot = await command(alice, "boot")
    assert boot["online"] == sorted([watcher_id, alice_id, events_only.session.user.id])  # type: ignore[union-attr]
    alice2 = await n.conn("alice", subscribe={"ephemeral": True})
    assert presence() == [("alice", True)], "a second connection changes nothing"
    alice.peer.end()
    await alice.task
    assert presence() == [("alice", True)], "still online on its other connection"
    await command(alice2, "logout")
    assert presence() == [("alice", True), ("alice", False)]
    assert ephemerals(events_only) == []
    boot = await command(watcher, "boot")
    assert alice_id not in boot["online"]
    # the user's own other connections hear of it too
    w2 = await n.conn("watcher")
    await settle()
    assert ephemerals(watcher, "presence")[-1]["user"]["name"] == "alice"
    w2.peer.end()
    await w2.task
    bob = await n.conn("bob")
    bob.peer.end()
    await bob.task
    assert presence()[-2:] == [("bob", True), ("bob", False)]


async def test_presence_of_own_user_reaches_its_other_connections(node: Any) -> None:
    n = await node()
    mine = await n.conn("alice", subscribe={"ephemeral": True})
    other = await n.conn("bob")
    await command(other, "logout")
    assert [(f["user"]["name"], f["online"]) for f in ephemerals(mine, "presence")] == [
        ("bob", True), ("bob", False)]
    # bob's own connection hears of bob's other connections coming and going
    bob_watch = await n.conn("bob", subscribe={"ephemeral": True})
    bob2 = await n.conn("bob")
    await command(bob_watch, "logout")
    await command(bob2, "logout")
    assert ephemerals(bob_watch) == [], "logged out: its subscription ended"
    bob3 = await n.conn("bob", subscribe={"ephemeral": True})
    bob3.sink.frames.clear()
    carol = await n.conn("carol")
    bob4 = await n.conn("bob")
    await command(bob4, "logout")  # bob3 keeps bob online
    await command(carol, "logout")
    assert [(f["user"]["name"], f["online"]) for f in ephemerals(bob3, "presence")] == [
        ("carol", True), ("carol", False)]
    mine.sink.frames.clear()
    await command(bob3, "logout")
    assert [(f["user"]["name"], f["online"]) for f in ephemerals(mine, "presence")] == [
        ("bob", False)]


async def test_deactivated_user_goes_offline(node: Any) -> None:
    n = await node()
    admin = await n.conn("admin", subscribe={"ephemeral": True})
    bob = await n.conn("bob")
    bob_id = bob.session.user.id  # type: ignore[union-attr]
    reply = await command(admin, "deactivate_user", user=bob_id)
    assert reply["type"] == "ok", reply
    await bob.sink.wait_for(lambda: bob.sink.closed is not None)
    await bob.task
    assert [(f["user"]["name"], f["online"]) for f in ephemerals(admin, "presence")] == [
        ("bob", True), ("bob", False)]


# ------------------------------------------------------------- the hub alone


class CountingSink:
    """A sink that counts how often the hub even looked at it, and its writes."""

    def __init__(self, unsent: int = 0) -> None:
        self.data = b""
        self.looked = 0
        self.writes = 0
        self.unsent = unsent

    def write(self, frames: bytes) -> None:
        self.data += frames
        self.writes += 1

    def send(self, payload: bytes) -> None:
        raise AssertionError("the hub writes framed bytes")

    def buffered(self) -> int:
        self.looked += 1
        return self.unsent

    @property
    def open(self) -> bool:
        return True

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        pass


async def _no_events(after: int, channels: frozenset[str] | None, limit: int) -> EventPage:
    return EventPage([], after, 0)


async def test_hub_delivers_to_the_audience_by_user_id_only() -> None:
    hub = Hub(0, _no_events, buffer_limit=1000)
    sinks = {f"U{i}": CountingSink() for i in range(200)}
    for uid, sink in sinks.items():
        hub.subscribe(sink, None, None, uid, ephemeral=True)
    plain = CountingSink()
    hub.subscribe(plain, None, None, "U1", ephemeral=False)
    frame = b'{"type":"ephemeral","kind":"typing"}'
    hub.ephemeral(frame, frozenset({"U1", "U7", "Unobody"}), "C1")
    assert hub.ephemeral_frames == 2
    for uid, sink in sinks.items():
        if uid in ("U1", "U7"):
            assert sink.data == bytes((0x81, len(frame))) + frame
        else:
            assert (sink.data, sink.looked) == (b"", 0), f"{uid} was looked at"
    assert plain.data == b""
    hub.ephemeral(frame, None)
    assert hub.ephemeral_frames == 202


async def test_hub_skips_slow_and_lagging_readers_and_keeps_cursors() -> None:
    hub = Hub(5, _no_events, buffer_limit=1000)
    fast, slow = CountingSink(), CountingSink(unsent=501)
    sub_fast = hub.subscribe(fast, None, None, "U1", ephemeral=True)
    sub_slow = hub.subscribe(slow, None, None, "U2", ephemeral=True)
    hub.ephemeral(b"{}", None)
    assert hub.ephemeral_frames == 1
    assert (fast.data, slow.data) == (b"\x81\x02{}", b"")
    assert (sub_fast.cursor, sub_slow.cursor, hub.last_seq) == (5, 5, 5)
    hub.unsubscribe(sub_fast)
    hub.ephemeral(b"{}", None)
    hub.unsubscribe(sub_slow)
    hub.ephemeral(b"{}", frozenset({"U1", "U2"}))
    assert hub.ephemeral_frames == 1


async def test_hub_gathers_ephemeral_frames_into_one_write() -> None:
    hub = Hub(0, _no_events, buffer_limit=1000, ephemeral_delay=0.01)
    a, b, c = CountingSink(), CountingSink(), CountingSink()
    hub.subscribe(a, None, None, "U1", ephemeral=True)
    hub.subscribe(b, frozenset({"C2"}), None, "U2", ephemeral=True)
    sub_c = hub.subscribe(c, None, None, "U3", ephemeral=True)
    hub.ephemeral(b"1", None, "C1")
    hub.ephemeral(b"2", frozenset({"U1", "U2", "U3"}), "C2", exclude=a)
    hub.ephemeral(b"3", None)
    hub.unsubscribe(sub_c)  # ended before the flush: nothing for it
    assert (a.writes, b.writes) == (0, 0), "gathered, not written yet"
    await asyncio.sleep(0.05)
    assert (a.writes, a.data) == (1, b"\x81\x011\x81\x013")
    assert (b.writes, b.data) == (1, b"\x81\x012\x81\x013")
    assert (c.writes, hub.ephemeral_frames) == (0, 4)


def test_ephemeral_frames_encode_as_protocol_md_shows_them() -> None:
    typing = wire.EphemeralTyping(channel=wire.Channel("C1", "general"),
                                  user=wire.User("U1", "alice"))
    assert wire.encode(typing) == (
        b'{"type":"ephemeral","kind":"typing","channel":{"id":"C1","name":"general","kind":"public"},'
        b'"user":{"id":"U1","name":"alice"}}')
    presence = wire.EphemeralPresence(user=wire.User("U1", "alice"), online=False)
    assert wire.encode(presence) == (
        b'{"type":"ephemeral","kind":"presence","user":{"id":"U1","name":"alice"},'
        b'"online":false}')


async def test_typing_from_another_node_is_limited_here_too(node: Any) -> None:
    """A node applies the one-a-second limit to the typing other nodes send it, so
    a user typing on connections to two nodes reaches each subscriber once."""
    clock = Clock()
    n = await node(clock)
    alice = await n.conn("alice")
    channel = (await command(alice, "create_channel", name="general"))["channel"]
    bob = await n.conn("bob", subscribe={"ephemeral": True})
    bob.sink.frames.clear()
    me = {"id": alice.session.user.id, "name": "alice"}  # type: ignore[union-attr]
    frame = json.dumps({"type": "ephemeral", "kind": "typing", "channel": channel,
                        "user": me})

    def notice(node_id: str, channel_id: str = channel["id"]) -> str:
        return (f'{{"k":"t","node":"{node_id}","channel":"{channel_id}",'
                f'"user":"{me["id"]}","frame":{frame}}}')

    async def done() -> None:
        await asyncio.gather(*n.app.ephemeral.tasks)

    n.app.ephemeral.notice(notice(n.app.ephemeral.node_id))  # our own: ignored
    n.app.ephemeral.notice(notice("Nother"))
    await done()
    assert ephemerals(bob) == [json.loads(frame)]
    await command(alice, "typing", channel=channel["id"])  # within the second: not again
    n.app.ephemeral.notice(notice("Nthird"))
    n.app.ephemeral.notice(notice("Nother", "Cgone"))  # a channel this node does not know
    n.app.ephemeral.notice("not json")
    await done()
    assert len(ephemerals(bob)) == 1
    clock.now += 1
    n.app.ephemeral.notice(notice("Nthird"))
    await done()
    assert len(ephemerals(bob)) == 2
