"""The expiry coroutine with tiny TTLs: old messages, idle channels, old events."""

from __future__ import annotations

import asyncio
import time

from .helpers import (
    Pump,
    check_event,
    client,
    expect_error,
    plain_channel,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
    wait_for,
)
from .support import UNIT


async def test_old_messages_expire(make_daemon):
    # UNIT/60 minutes = UNIT seconds: the suffix is honoured (read as minutes, not as
    # seconds or days)
    d = await make_daemon("--message-ttl", f"{UNIT / 60}m", "--expire-interval", "0.1s")
    async with client(d.url, "alice") as ws, client(d.url, "bob") as sub:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        await sub.ok("subscribe")
        ms = [(await ws.ok("send", channel=ch["id"], body=f"expiring-body-{i}"))["message"]
              for i in range(3)]

        deleted = [e for e in await _events_of_kind(sub, "message.deleted", 3)]
        for e in deleted:
            check_event(e)
            assert e["channel"] == ch
            assert e["seq"] > ms[-1]["seq"]
        assert sorted(e["message"]["id"] for e in deleted) == sorted(m["id"] for m in ms)
        assert (await ws.ok("history", channel=ch["id"]))["messages"] == []
        await expect_error(ws, "not_found", "delete_message", message=ms[0]["id"])
        # the channel (default channel-ttl) is still there
        assert list(map(plain_channel, (await ws.ok("boot"))["channels"])) == [ch]

        # a replay has the deletions and not the bodies
        log = await stored_log(d.url, ws.me["token"], max(e["seq"] for e in deleted))
        assert [e["kind"] for e in log] == ["channel.created"] + ["message.deleted"] * 3
        assert "expiring-body" not in str(log)


async def _events_of_kind(ws, kind: str, n: int, within: float = 20) -> list[dict]:
    async def enough() -> bool:
        return len([e for e in ws.events if e["kind"] == kind]) >= n

    async def read() -> None:
        while not await enough():
            await ws.next_event(timeout=within)

    await asyncio.wait_for(read(), within * UNIT)
    return [e for e in ws.events if e["kind"] == kind]


async def test_new_messages_do_not_expire_early(make_daemon):
    d = await make_daemon("--message-ttl", "1h", "--channel-ttl", "1d", "--expire-interval", "0.05")
    async with client(d.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        m = (await ws.ok("send", channel=ch["id"], body="stay"))["message"]
        await asyncio.sleep(0.5 * UNIT)  # ten expiry passes
        assert (await ws.ok("history", channel=ch["id"]))["messages"] == [m]
        assert list(map(plain_channel, (await ws.ok("boot"))["channels"])) == [ch]


async def test_idle_channels_expire(make_daemon):
    d = await make_daemon("--channel-ttl", str(UNIT), "--expire-interval", "0.1")
    async with client(d.url, "alice") as ws, client(d.url, "bob") as sub:
        await sub.ok("subscribe")
        with_msgs = (await ws.ok("create_channel", name="with-messages"))["channel"]
        empty = (await ws.ok("create_channel", name="never-used"))["channel"]
        ms = [(await ws.ok("send", channel=with_msgs["id"], body=f"m{i}"))["message"]
              for i in range(2)]

        await _events_of_kind(sub, "channel.deleted", 2)
        evs = [e for e in sub.events if e["kind"] in ("message.deleted", "channel.deleted")]
        for e in evs:
            check_event(e)
        # the messages of a channel are deleted before the channel
        of_msgs = [e for e in evs if e["channel"]["id"] == with_msgs["id"]]
        assert [e["kind"] for e in of_msgs] == ["message.deleted"] * 2 + ["channel.deleted"]
        assert sorted(e["message"]["id"] for e in of_msgs[:2]) == sorted(m["id"] for m in ms)
        assert of_msgs[-1]["channel"] == with_msgs
        # a channel that never had a message counts from its creation
        of_empty = [e for e in evs if e["channel"]["id"] == empty["id"]]
        assert [e["kind"] for e in of_empty] == ["channel.deleted"]
        assert list(map(plain_channel, (await ws.ok("boot"))["channels"])) == []
        await expect_error(ws, "not_found", "history", channel=with_msgs["id"])
        await expect_error(ws, "not_found", "send", channel=empty["id"], body="x")
        # the name is free again
        await ws.ok("create_channel", name="never-used")


async def test_active_channel_is_kept(make_daemon):
    ttl = 2 * UNIT
    d = await make_daemon("--channel-ttl", str(ttl), "--expire-interval", "0.1")
    async with client(d.url, "alice") as ws, client(d.url, "bob") as sub:
        await sub.ok("subscribe")
        active = (await ws.ok("create_channel", name="active"))["channel"]
        idle = (await ws.ok("create_channel", name="idle"))["channel"]
        # keep `active` busy until `idle` (created at the same time) has expired
        pump = Pump(sub)
        deadline = time.monotonic() + 30 * UNIT
        try:
            while not any(e["kind"] == "channel.deleted" for e in sub.events):
                assert time.monotonic() < deadline, "the idle channel never expired"
                await ws.ok("send", channel=active["id"], body="still here")
                await asyncio.sleep(0.1 * UNIT)
                assert pump.error is None, pump.error
        finally:
            await pump.stop()
        deleted = [e["channel"]["id"] for e in sub.events if e["kind"] == "channel.deleted"]
        assert deleted == [idle["id"]]
        assert list(map(plain_channel, (await ws.ok("boot"))["channels"])) == [active]


async def test_event_ttl_moves_horizon(make_daemon):
    d = await make_daemon("--event-ttl", "0.5", "--expire-interval", "0.1")
    async with client(d.url, "alice") as ws:
        epoch = (await ws.ok("boot"))["epoch"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        ms = [(await ws.ok("send", channel=ch["id"], body=f"m{i}"))["message"] for i in range(3)]
        last = ms[-1]["seq"]
        horizon = 0

        async def moved() -> bool:
            nonlocal horizon
            r = await ws.request("subscribe", since=0)
            if r["type"] == "ok":
                await ws.ok("unsubscribe")
                return False
            assert r["code"] == "resume_gap", r
            assert r["epoch"] == epoch
            assert isinstance(r["horizon"], int)
            horizon = r["horizon"]
            return horizon >= last

        await wait_for(moved, 30, interval=0.1, what="the horizon to pass every event")
        assert horizon == last, "nothing happened after the last send"
        # the same answer every time, on one connection
        for _ in range(5):
            r = await expect_error(ws, "resume_gap", "subscribe", since=0)
            assert r["horizon"] == horizon and r["epoch"] == epoch
        # since equal to the horizon is fine; one less is a gap
        ws.events.clear()
        await ws.ok("subscribe", since=horizon, epoch=epoch)
        r = await expect_error(ws, "resume_gap", "subscribe", since=horizon - 1)
        assert r["horizon"] == horizon and r["epoch"] == epoch
        await ws.ok("subscribe", since=horizon)
        m = (await ws.ok("send", channel=ch["id"], body="new"))["message"]
        evs = await ws.events_until(m["seq"])
        assert [e["seq"] for e in evs] == [m["seq"]]
        # dropping events does not delete messages or channels
        hist = (await ws.ok("history", channel=ch["id"]))["messages"]
        assert hist == [*ms, m]
        assert list(map(plain_channel, (await ws.ok("boot"))["channels"])) == [ch]


async def test_ttl_flags_from_environment(make_daemon):
    d = await make_daemon(env={"CHATD_MESSAGE_TTL": "0.5", "CHATD_EXPIRE_INTERVAL": "0.1"})
    async with client(d.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        await ws.ok("send", channel=ch["id"], body="short-lived")

        async def gone() -> bool:
            return (await ws.ok("history", channel=ch["id"]))["messages"] == []

        await wait_for(gone, 20, interval=0.1, what="the message to expire")
