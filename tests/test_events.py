"""Every event kind with the exact fields of PROTOCOL.md, deletion semantics, filters."""

from __future__ import annotations

import asyncio
import contextlib
import json

from .helpers import (
    AT_RE,
    Pump,
    assert_strictly_increasing,
    check_event,
    client,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
)


async def test_each_event_kind_exact_fields(daemon):
    async with client(daemon.url, "alice") as alice, \
            client(daemon.url, "bob") as bob:
        await bob.ok("subscribe")
        ch = (await alice.ok("create_channel", name="general"))["channel"]
        sent = await alice.ok("send", channel=ch["id"], body="hello")
        msg = sent["message"]
        await alice.ok("delete_message", message=msg["id"])
        await alice.ok("delete_channel", channel=ch["id"])

        evs = []
        while len(evs) < 4:
            evs.append(await bob.next_event())
        for ev in evs:
            check_event(ev)
        assert [e["kind"] for e in evs] == ["channel.created", "message.sent", "message.deleted",
                                           "channel.deleted"]
        created, sent_ev, deleted, ch_deleted = evs
        assert created["channel"] == ch
        assert sent_ev["channel"] == ch
        assert sent_ev["sender"] == alice.me["user"]
        assert sent_ev["message"] == {"id": msg["id"], "body": "hello"}
        assert sent_ev["seq"] == msg["seq"] and sent_ev["at"] == msg["at"]
        assert deleted["channel"] == ch
        assert deleted["message"] == {"id": msg["id"]}
        assert ch_deleted["channel"] == ch
        assert_strictly_increasing(evs)


async def test_own_events_arrive_too(daemon):
    async with client(daemon.url, "alice") as ws:
        await ws.ok("subscribe")
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        m = (await ws.ok("send", channel=ch["id"], body="me"))["message"]
        evs = await ws.events_until(m["seq"])
        assert [e["kind"] for e in evs] == ["channel.created", "message.sent"]
        assert evs[1]["message"] == {"id": m["id"], "body": "me"}


async def test_delete_channel_deletes_its_messages_first(daemon):
    async with client(daemon.url, "alice") as alice, client(daemon.url, "bob") as bob:
        ch = (await alice.ok("create_channel", name="general"))["channel"]
        other = (await alice.ok("create_channel", name="other"))["channel"]
        ms = [(await (alice if i % 2 else bob).ok("send", channel=ch["id"], body=f"body-{i}-x"))
              ["message"] for i in range(4)]
        keep = (await bob.ok("send", channel=other["id"], body="keep"))["message"]
        await alice.ok("delete_message", message=ms[1]["id"])
        await bob.ok("subscribe")
        await alice.ok("delete_channel", channel=ch["id"])
        ev = await bob.next_event()
        tail = [ev]
        while ev["kind"] != "channel.deleted":
            ev = await bob.next_event()
            tail.append(ev)
        for e in tail:
            check_event(e)
        assert [e["kind"] for e in tail] == ["message.deleted"] * 3 + ["channel.deleted"], tail
        assert sorted(e["message"]["id"] for e in tail[:3]) == \
            sorted(m["id"] for m in (ms[0], ms[2], ms[3]))
        assert all(e["channel"] == ch for e in tail)
        assert_strictly_increasing(tail)

        # the other channel is untouched
        hist = await bob.ok("history", channel=other["id"])
        assert hist["messages"] == [keep]
        # replay: no message.sent of the deleted channel's messages, a message.deleted for each
        log = await stored_log(daemon.url, bob.me["token"], tail[-1]["seq"])
        ids = {m["id"] for m in ms}
        assert not [e for e in log if e["kind"] == "message.sent" and e["message"]["id"] in ids]
        assert sorted(e["message"]["id"] for e in log if e["kind"] == "message.deleted") == \
            sorted(ids)
        kinds = [e["kind"] for e in log if e["channel"]["id"] == ch["id"]]
        assert kinds[0] == "channel.created" and kinds[-1] == "channel.deleted", kinds
        assert "body-0-x" not in json.dumps(log) and "body-3-x" not in json.dumps(log)


async def test_deleted_body_never_comes_back(daemon):
    secret = "the-secret-body-4f1c"
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        before = (await ws.ok("send", channel=ch["id"], body="before"))["message"]
        m = (await ws.ok("send", channel=ch["id"], body=secret, nonce="secret-nonce"))["message"]
        after = (await ws.ok("send", channel=ch["id"], body="after"))["message"]
        await ws.ok("delete_message", message=m["id"])
        last = (await ws.ok("send", channel=ch["id"], body="last"))["message"]

        hist = (await ws.ok("history", channel=ch["id"]))["messages"]
        assert hist == [before, after, last]
        hist = (await ws.ok("history", channel=ch["id"], before=after["seq"]))["messages"]
        assert hist == [before]

        log = await stored_log(daemon.url, ws.me["token"], last["seq"])
        assert secret not in json.dumps(log)
        about = [e for e in log if e.get("message", {}).get("id") == m["id"]]
        assert [e["kind"] for e in about] == ["message.deleted"], about
        assert [e["message"].get("body") for e in log if e["kind"] == "message.sent"] == \
            ["before", "after", "last"]
        # also from a replay that starts just before the message was sent
        log2 = await stored_log(daemon.url, ws.me["token"], last["seq"], since=before["seq"])
        assert log2 == [e for e in log if e["seq"] > before["seq"]]

    # and after a restart
    await daemon.restart()
    async with client(daemon.url, token=ws.me["token"]) as ws2:
        hist = (await ws2.ok("history", channel=ch["id"]))["messages"]
        assert [x["id"] for x in hist] == [before["id"], after["id"], last["id"]]
        log3 = await stored_log(daemon.url, ws.me["token"], last["seq"])
        assert log3 == log


async def test_channels_filter(daemon):
    async with client(daemon.url, "alice") as ws, client(daemon.url, "bob") as sub:
        a = (await ws.ok("create_channel", name="a"))["channel"]
        b = (await ws.ok("create_channel", name="b"))["channel"]
        c = (await ws.ok("create_channel", name="c"))["channel"]
        for ch in (a, b, c):
            await ws.ok("send", channel=ch["id"], body=f"old {ch['name']}")

        # replay and live, one channel
        await sub.ok("subscribe", since=0, channels=[a["id"]])
        for ch in (b, c, a):
            await ws.ok("send", channel=ch["id"], body=f"new {ch['name']}")
        mark = (await ws.ok("send", channel=a["id"], body="mark a"))["message"]["seq"]
        evs = await sub.events_until(mark)
        assert {e["channel"]["id"] for e in evs} == {a["id"]}, evs
        assert [e["kind"] for e in evs] == ["channel.created"] + ["message.sent"] * 3
        assert [e["message"]["body"] for e in evs[1:]] == ["old a", "new a", "mark a"]

        # two channels; channel.deleted of a filtered channel still comes
        sub.events.clear()
        await sub.ok("subscribe", channels=[b["id"], c["id"]])
        for ch in (a, b, c):
            await ws.ok("send", channel=ch["id"], body=f"third {ch['name']}")
        await ws.ok("delete_channel", channel=a["id"])
        await ws.ok("delete_channel", channel=c["id"])
        d = (await ws.ok("create_channel", name="d"))["channel"]
        mark = (await ws.ok("send", channel=b["id"], body="mark b"))["message"]["seq"]
        evs = await sub.events_until(mark)
        got = [(e["kind"], e["channel"]["name"]) for e in evs]
        assert got == [("message.sent", "b"), ("message.sent", "c")] + \
            [("message.deleted", "c")] * 3 + [("channel.deleted", "c"), ("message.sent", "b")], got
        assert d["id"] not in {e["channel"]["id"] for e in evs}


async def test_at_format_and_strictly_increasing_seqs(daemon):
    async with client(daemon.url, "alice") as ws, client(daemon.url, "bob") as bob:
        await bob.ok("subscribe")
        chans = [(await ws.ok("create_channel", name=f"c{i}"))["channel"] for i in range(3)]
        last = 0
        for i in range(30):
            who = ws if i % 3 else bob
            r = await who.ok("send", channel=chans[i % 3]["id"], body=f"{i}")
            assert AT_RE.match(r["message"]["at"]), r
            assert r["message"]["seq"] > last
            last = r["message"]["seq"]
            if i % 7 == 0:
                await who.ok("delete_message", message=r["message"]["id"])
        last = (await ws.ok("send", channel=chans[0]["id"], body="end"))["message"]["seq"]
        evs = await bob.events_until(last)
        for e in evs:
            check_event(e)
        assert_strictly_increasing(evs)
        assert len(evs) == 3 + 31 + 5
        log = await stored_log(daemon.url, ws.me["token"], last)
        assert_strictly_increasing(log)
        for e in log:
            check_event(e)


async def test_ok_before_first_event_of_subscription(daemon):
    async with client(daemon.url, "alice") as ws, client(daemon.url, "bob") as sub:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        last = 0
        for i in range(5):
            last = (await ws.ok("send", channel=ch, body=f"{i}"))["message"]["seq"]

        # replay: the ok comes first, then the stored events
        await sub.send_raw(json.dumps({"op": "subscribe", "ref": "s1", "since": 0}))
        first = await sub.recv()
        assert first["type"] == "ok" and first["ref"] == "s1", first
        await sub.events_until(last)
        await sub.ok("unsubscribe")

        # live, while another connection sends continuously
        stop = asyncio.Event()

        async def sender() -> None:
            i = 0
            while not stop.is_set():
                await ws.ok("send", channel=ch, body=f"busy {i}")
                i += 1

        task = asyncio.ensure_future(sender())
        try:
            async with client(daemon.url, token=sub.me["token"]) as fresh:
                for k in range(5):
                    await fresh.send_raw(json.dumps({"op": "subscribe", "ref": f"k{k}",
                                                     **({"since": 1} if k % 2 else {})}))
                    if k == 0:
                        f = await fresh.recv()
                        assert f["type"] == "ok" and f["ref"] == "k0", f
                    else:
                        # events of the previous subscription may still come before this ok
                        while (f := await fresh.recv())["type"] == "event":
                            pass
                        assert f["type"] == "ok" and f["ref"] == f"k{k}", f
                    # and after the ok, events do come
                    await fresh.next_event()
        finally:
            stop.set()
            await task


async def test_live_stream_while_pump_reads(daemon):
    """Several subscribers see the same live stream, in the same order."""
    async with client(daemon.url, "alice") as ws, contextlib.AsyncExitStack() as stack:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        pumps = []
        for _ in range(4):
            s = await stack.enter_async_context(client(daemon.url, token=token))
            await s.ok("subscribe")
            pumps.append(Pump(s))
        try:
            last = 0
            for i in range(40):
                last = (await ws.ok("send", channel=ch, body=f"{i}"))["message"]["seq"]
            streams = [await p.until(last) for p in pumps]
            for s in streams:
                assert s == streams[0]
                assert [e["message"]["body"] for e in s] == [f"{i}" for i in range(40)]
        finally:
            for p in pumps:
                await p.stop()
