"""One service on several nodes: daemons on one PostgreSQL database, real
WebSocket, the guarantees of PROTOCOL.md across nodes ("One service, several
nodes")."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from .helpers import (
    Pump,
    all_history,
    assert_strictly_increasing,
    client,
    close_code,
    marker,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
)
from .support import Daemon

FAST = ("--scrypt-n", "1024", "--no-rate-limits")


async def nodes(make_daemon: Any, url: str, n: int, *args: str) -> list[Daemon]:
    return [await make_daemon(*FAST, *args, db=url) for _ in range(n)]


async def alice_in_general(url: str) -> tuple[str, str]:
    """Log alice in and create #general: her token and the channel id."""
    async with client(url, "alice") as ws:
        channel = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        return ws.me["token"], channel


async def send_many(url: str, token: str, channel: str, n: int, tag: str) -> list[dict[str, Any]]:
    """``n`` sends, one after another on one connection; their messages."""
    async with client(url, token=token) as ws:
        return [(await ws.ok("send", channel=channel, body=f"{tag}-{i}",
                             nonce=f"{tag}-{i}"))["message"] for i in range(n)]


async def test_three_nodes_one_stream(make_daemon: Any, pg_url: str) -> None:
    ds = await nodes(make_daemon, pg_url, 3)
    token, channel = await alice_in_general(ds[0].url)
    async with contextlib.AsyncExitStack() as stack:
        subscribers = []
        for d in ds:
            sub = await stack.enter_async_context(client(d.url, token=token))
            await sub.ok("subscribe", since=0)
            subscribers.append(sub)
        pumps = [Pump(s) for s in subscribers]
        await _three_nodes(ds, token, channel, pumps)


async def _three_nodes(ds: list[Daemon], token: str, channel: str, pumps: list[Pump]) -> None:
    try:
        sent = await asyncio.gather(*(
            send_many(d.url, token, channel, 60, f"n{i}-s{j}")
            for i, d in enumerate(ds) for j in range(2)))
        acked = {m["id"]: m["seq"] for batch in sent for m in batch}
        assert len(acked) == 360
        last = max(acked.values())
        streams = [await p.until(last) for p in pumps]
        for events in streams:
            assert_strictly_increasing(events)
        first = [(e["seq"], e["kind"], e.get("message", {}).get("id")) for e in streams[0]]
        for events in streams[1:]:
            assert [(e["seq"], e["kind"], e.get("message", {}).get("id")) for e in events] == first
        delivered = {e["message"]["id"]: e["seq"] for e in streams[0]
                     if e["kind"] == "message.sent"}
        assert delivered == acked, "every acknowledged send, on every node, at its seq"
    finally:
        for p in pumps:
            await p.stop()


async def test_resume_on_another_node(make_daemon: Any, pg_url: str) -> None:
    a, b, c = await nodes(make_daemon, pg_url, 3)
    token, channel = await alice_in_general(a.url)
    async with client(a.url, token=token) as ws:
        epoch = (await ws.ok("boot"))["epoch"]
        await ws.ok("subscribe", since=0)
        seen_upto = await marker(ws, channel, "before")
        seen = await ws.events_until(seen_upto)
    await send_many(b.url, token, channel, 25, "while-away")
    upto = await send_many(b.url, token, channel, 1, "last")
    want = await stored_log(a.url, token, upto[0]["seq"])
    async with client(c.url, token=token) as ws:
        await ws.ok("subscribe", since=seen[-1]["seq"], epoch=epoch)
        got = await ws.events_until(upto[0]["seq"])
    assert got == [e for e in want if e["seq"] > seen[-1]["seq"]]
    assert [e["message"]["body"] for e in got if e["kind"] == "message.sent"] == [
        f"while-away-{i}" for i in range(25)] + ["last-0"]


async def test_one_nonce_on_two_nodes_makes_one_message(make_daemon: Any, pg_url: str) -> None:
    a, b = await nodes(make_daemon, pg_url, 2)
    token, channel = await alice_in_general(a.url)
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(client(d.url, token=token))
                 for d in (a, b, a, b)]
        for round_ in range(10):
            replies = await asyncio.gather(*(
                w.ok("send", channel=channel, body="once", nonce=f"n{round_}") for w in conns))
            assert len({(r["message"]["id"], r["message"]["seq"]) for r in replies}) == 1
        history = await all_history(conns[0], channel)
    assert len(history) == 10


async def test_sigkill_of_a_node_under_load_loses_no_acknowledged_send(
    make_daemon: Any, pg_url: str
) -> None:
    a, b = await nodes(make_daemon, pg_url, 2)
    token, channel = await alice_in_general(b.url)
    acked: list[str] = []

    async def sender(tag: str) -> None:
        try:
            async with client(a.url, token=token) as ws:
                for i in range(10_000):
                    reply = await ws.ok("send", channel=channel, body=f"{tag}-{i}")
                    acked.append(reply["message"]["id"])
        except Exception:  # the node died under us: what was acked counts
            return

    senders = [asyncio.ensure_future(sender(f"s{j}")) for j in range(8)]
    await asyncio.sleep(random.uniform(0.5, 1.5))
    await a.kill()
    await asyncio.gather(*senders)
    assert len(acked) > 50, "the load ran before the kill"
    async with client(b.url, token=token) as ws:
        stored = {m["id"] for m in await all_history(ws, channel)}
        await ws.ok("send", channel=channel, body="b still serves")
    missing = [m for m in acked if m not in stored]
    assert not missing, f"{len(missing)} acknowledged sends lost"


async def test_expiry_on_three_nodes_deletes_each_message_once(
    make_daemon: Any, pg_url: str
) -> None:
    ds = await nodes(make_daemon, pg_url, 3, "--message-ttl", "1.5s", "--expire-interval", "0.2s")
    async with client(ds[0].url, "alice") as ws:
        channel = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        await ws.ok("subscribe", since=0)
        ids = [(await ws.ok("send", channel=channel, body=f"m{i}"))["message"]["id"]
               for i in range(20)]

        def deletions() -> list[str]:
            return [e["message"]["id"] for e in ws.events if e["kind"] == "message.deleted"]

        while not set(ids) <= set(deletions()):
            await ws.next_event(timeout=30)
        # more rounds on every node: none may delete anything again
        await asyncio.sleep(1.0)
        await ws.events_until(await marker(ws, channel, "after"))
    assert sorted(deletions()) == sorted(ids), "each deletion once, not once per node"


async def test_logout_on_one_node_ends_the_token_on_the_others(
    make_daemon: Any, pg_url: str
) -> None:
    a, b = await nodes(make_daemon, pg_url, 2)
    async with client(a.url, "alice") as wa:
        token = wa.me["token"]
        async with client(b.url, token=token) as wb, client(b.url, "bob") as other:
            await wb.ok("boot")
            await wa.ok("logout")
            # node b learns it from its token check (every 2 s): close 4001
            assert await close_code(wb, within=15) == 4001
            await other.ok("boot")  # another user's connection is untouched
        async with client(b.url) as ws:
            reply = await ws.request("auth", token=token)
            assert reply["code"] == "unauthorized"
