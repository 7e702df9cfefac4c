"""Typing and presence against the real daemon over WebSocket: one node on
sqlite, and several nodes on one PostgreSQL (PROTOCOL.md "Ephemeral frames",
"One service, several nodes"). No sleeps: every wait polls with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from chatd import wire
from chatd.client import Client

from .helpers import (
    PASSWORD,
    client,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    wait_for,
)
from .support import UNIT, WS

FAST = ("--scrypt-n", "1024", "--no-rate-limits")
#: heartbeats shortened so that a dead node is noticed within about a second
QUICK_PRESENCE = ("--presence-heartbeat", "0.2s", "--presence-expiry", "1s")
TYPING_KEYS = {"type", "kind", "channel", "user"}
PRESENCE_KEYS = {"type", "kind", "user", "online"}


def ephemerals(ws: WS, kind: str) -> list[dict[str, Any]]:
    return [f for f in ws.replies if f.get("type") == "ephemeral" and f["kind"] == kind]


async def until_ephemeral(ws: WS, test: Any, within: float = 10) -> dict[str, Any]:
    """Read frames until an ephemeral frame passes ``test``; return it."""
    deadline = time.monotonic() + within * UNIT
    seen = len(ws.replies)
    while True:
        for frame in ws.replies[seen:]:
            if frame.get("type") == "ephemeral" and test(frame):
                return frame
        seen = len(ws.replies)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no such ephemeral frame; got {ephemerals(ws, 'typing')}"
                                 f" {ephemerals(ws, 'presence')}")
        with contextlib.suppress(TimeoutError):
            await ws.recv(timeout=left / UNIT)


def presence_of(name: str, online: bool) -> Any:
    return lambda f: (f["kind"] == "presence" and f["user"]["name"] == name
                      and f["online"] is online)


def typing_of(name: str, channel: str) -> Any:
    return lambda f: (f["kind"] == "typing" and f["user"]["name"] == name
                      and f["channel"]["id"] == channel)


async def quiet(ws: WS, test: Any, within: float = 0.5) -> None:
    """No frame passing ``test`` arrives within ``within`` (for what must not come)."""
    with contextlib.suppress(AssertionError):
        frame = await until_ephemeral(ws, test, within)
        raise AssertionError(f"unexpected {frame}")


async def until_online(ws: WS, user_id: str, online: bool, within: float = 10) -> None:
    """Boot until ``online`` does (or does not) list ``user_id``."""
    deadline = time.monotonic() + within * UNIT
    while (user_id in (await ws.ok("boot"))["online"]) != online:
        assert time.monotonic() < deadline, f"boot.online never {'had' if online else 'lost'}"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ one node


async def test_typing_over_websocket(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "alice") as alice, client(d.url, "bob") as bob, \
            client(d.url, "bob") as bob_events_only, client(d.url, "alice") as alice2:
        channel = (await alice.ok("create_channel", name="general"))["channel"]
        for ws in (alice, bob, alice2):
            await ws.ok("subscribe", ephemeral=True)
        await bob_events_only.ok("subscribe")
        await alice.ok("typing", channel=channel["id"])
        frame = await until_ephemeral(bob, typing_of("alice", channel["id"]))
        assert set(frame) == TYPING_KEYS
        assert frame == {"type": "ephemeral", "kind": "typing", "channel": channel,
                         "user": alice.me["user"]}
        await until_ephemeral(alice2, typing_of("alice", channel["id"]))
        # the second within the second is swallowed; a marker event shows what arrived
        await alice.ok("typing", channel=channel["id"])
        sent = await alice.ok("send", channel=channel["id"], body="marker")
        await bob.events_until(sent["message"]["seq"])
        assert len(ephemerals(bob, "typing")) == 1
        await bob_events_only.events_until(sent["message"]["seq"])
        assert ephemerals(bob_events_only, "typing") == []
        assert ephemerals(alice, "typing") == []
        err = await alice.request("typing", channel="Cnope")
        assert (err["type"], err["code"]) == ("error", "not_found")


async def test_presence_over_websocket(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "watcher") as watcher:
        await watcher.ok("subscribe", ephemeral=True)
        async with client(d.url, "alice") as alice:
            frame = await until_ephemeral(watcher, presence_of("alice", True))
            assert set(frame) == PRESENCE_KEYS and frame["user"] == alice.me["user"]
            boot = await watcher.ok("boot")
            assert boot["online"] == sorted([watcher.me["user"]["id"], alice.me["user"]["id"]])
            async with client(d.url, token=alice.me["token"]) as alice2:
                await alice2.ok("ping")
            # alice's first connection is still logged in
            await quiet(watcher, presence_of("alice", False))
        # the last connection closed
        await until_ephemeral(watcher, presence_of("alice", False))
        assert alice.me["user"]["id"] not in (await watcher.ok("boot"))["online"]
        async with client(d.url, "bob") as bob:
            await until_ephemeral(watcher, presence_of("bob", True))
            await bob.ok("logout")  # logged out, still connected: offline
            await until_ephemeral(watcher, presence_of("bob", False))


# ------------------------------------------------------------------ several nodes


async def test_typing_and_presence_across_nodes(make_daemon: Any, pg_url: str) -> None:
    a = await make_daemon(*FAST, *QUICK_PRESENCE, db=pg_url)
    b = await make_daemon(*FAST, *QUICK_PRESENCE, db=pg_url)
    async with client(a.url, "alice") as alice, client(b.url, "bob") as bob:
        channel = (await alice.ok("create_channel", name="general"))["channel"]
        await bob.ok("subscribe", ephemeral=True)
        await alice.ok("subscribe", ephemeral=True)
        # boot.online on either node knows both, wherever they logged in
        for ws in (alice, bob):
            for user in (alice, bob):
                await until_online(ws, user.me["user"]["id"], True)
        # typing on node a reaches bob on node b
        await alice.ok("typing", channel=channel["id"])
        frame = await until_ephemeral(bob, typing_of("alice", channel["id"]))
        assert frame == {"type": "ephemeral", "kind": "typing", "channel": channel,
                         "user": alice.me["user"]}
        # and back
        await bob.ok("typing", channel=channel["id"])
        await until_ephemeral(alice, typing_of("bob", channel["id"]))
        # carol comes and goes on node b: alice on node a hears both
        async with client(b.url, "carol") as carol:
            await until_ephemeral(alice, presence_of("carol", True))
            # carol also on node a, then leaves node b: still online
            async with client(a.url, token=carol.me["token"]) as carol_a:
                await carol_a.ok("ping")
                await until_online(bob, carol.me["user"]["id"], True)
            await quiet(alice, presence_of("carol", False), within=0.3)
        await until_ephemeral(alice, presence_of("carol", False))
        await until_ephemeral(bob, presence_of("carol", False))
        await until_online(alice, carol.me["user"]["id"], False)


async def test_a_killed_node_s_users_go_offline(make_daemon: Any, pg_url: str) -> None:
    a = await make_daemon(*FAST, *QUICK_PRESENCE, db=pg_url)
    b = await make_daemon(*FAST, *QUICK_PRESENCE, db=pg_url)
    async with client(a.url, "alice") as alice, client(b.url, "dora") as on_b:
        await alice.ok("subscribe", ephemeral=True)
        dora = on_b.me["user"]
        await until_online(alice, dora["id"], True)
        started = time.monotonic()
        await b.kill()
        await until_ephemeral(alice, presence_of("dora", False), within=5)
        took = time.monotonic() - started
        # expiry 1 s + heartbeat 0.2 s, with room for a loaded machine
        assert took < 4 * UNIT, took
        assert dora["id"] not in (await alice.ok("boot"))["online"]
        assert alice.me["user"]["id"] in (await alice.ok("boot"))["online"]


# ------------------------------------------------------------------ the client library


async def test_client_library_typing_and_presence(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with Client(d.url, name="alice", password=PASSWORD) as alice, \
            Client(d.url, name="bob", password=PASSWORD) as bob:
        channel = (await alice.create_channel("general")).channel
        alice_id = (await alice.boot()).user.id
        bob_id = (await bob.boot()).user.id
        got: list[Any] = []

        async def collect(stream: AsyncGenerator[Any, None]) -> None:
            async for item in stream:
                got.append(item)
                if isinstance(item, wire.EphemeralTyping):
                    return

        events = bob.events(ephemeral=True)
        first = asyncio.ensure_future(collect(events))
        # the consumer's first step subscribes: wait until it has
        await wait_for(lambda: bob.position is not None and bob.position[1] is not None,
                       what="bob subscribed")
        async with Client(d.url, name="carol", password=PASSWORD) as carol:
            boot = await carol.boot()
            assert boot.online == sorted([alice_id, bob_id, boot.user.id])
            await wait_for(lambda: any(isinstance(i, wire.EphemeralPresence)
                                       and i.user.name == "carol" for i in got),
                           what="carol's presence")
        await alice.typing(channel.id)
        await asyncio.wait_for(first, 10 * UNIT)
        await events.aclose()
        # (alice's own arrival may come too: frames are gathered for 50 ms)
        presence = [i for i in got if isinstance(i, wire.EphemeralPresence)
                    and i.user.name == "carol"]
        assert presence[0] == wire.EphemeralPresence(user=wire.User(boot.user.id, "carol"),
                                                     online=True)
        assert got[-1] == wire.EphemeralTyping(channel=channel,
                                               user=wire.User(alice_id, "alice"))
        plain = alice.events()
        nxt = asyncio.ensure_future(anext(plain))
        await wait_for(lambda: alice.position is not None and alice.position[1] is not None,
                       what="alice subscribed")
        await bob.typing(channel.id)
        sent = await bob.send(channel.id, "hello")
        item = await asyncio.wait_for(nxt, 10 * UNIT)
        assert isinstance(item, wire.Event) and item.seq == sent.message.seq, (
            "without ephemeral=True the stream has events only")
        await plain.aclose()
