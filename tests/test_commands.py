"""Every command of PROTOCOL.md and the shape of its ok reply; ref echo; reply order."""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata

from .helpers import (
    check_at,
    check_boot_channel,
    check_channel,
    check_message,
    check_user,
    client,
    expect_error,
    plain_channel,
    raw_reply,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
)
from .support import UNIT, WS

# ------------------------------------------------------------------ accounts


async def test_login_creates_user_and_matches_password(daemon):
    async with WS.connect(daemon.url) as ws:
        r = await ws.ok("login", name="alice", password="correct horse")
        assert set(r) == {"type", "ref", "user", "token"}, r
        check_user(r["user"])
        assert r["user"]["name"] == "alice"
        token = r["token"]
        assert isinstance(token, str) and len(token) >= 22, "token too short for 128 random bits"

    async with WS.connect(daemon.url) as ws:
        r2 = await ws.ok("login", name="alice", password="correct horse")
        assert r2["user"]["id"] == r["user"]["id"]
        assert r2["token"] != token, "each login makes a new random token"
        await expect_error(ws, "unauthorized", "login", name="alice", password="wrong horse")

    async with WS.connect(daemon.url) as ws:
        r3 = await ws.ok("login", name="bob", password="correct horse")
        assert r3["user"]["id"] != r["user"]["id"]


async def test_login_name_casefold_is_same_user(daemon):
    async with client(daemon.url, "Alice") as a:
        uid = a.me["user"]["id"]
        assert a.me["user"]["name"] == "Alice"
    for variant in ("alice", "ALICE", "  aLiCe  "):
        async with WS.connect(daemon.url) as ws:
            r = await ws.login(variant)
            assert r["user"]["id"] == uid, variant
            await expect_error(ws, "unauthorized", "login", name=variant, password="nope")


async def test_login_name_normalised(daemon):
    # NFC and trimmed; the NFKC/casefold twin is the same user.
    async with client(daemon.url, "  Cafe\u0301 ") as a:
        assert a.me["user"]["name"] == unicodedata.normalize("NFC", "Cafe\u0301")
        assert a.me["user"]["name"] == "Caf\u00e9"
    async with client(daemon.url, "CAF\u00c9") as b:
        assert b.me["user"]["id"] == a.me["user"]["id"]


async def test_auth_with_token_on_new_connection(daemon):
    async with client(daemon.url, "alice") as a:
        token, user = a.me["token"], a.me["user"]
    async with WS.connect(daemon.url) as ws:
        r = await ws.ok("auth", token=token)
        assert set(r) == {"type", "ref", "user"}, r
        assert r["user"] == user
        boot = await ws.ok("boot")
        assert boot["user"] == {**user, "role": "admin"}


async def test_auth_after_restart(daemon):
    async with client(daemon.url, "alice") as a:
        token, user = a.me["token"], a.me["user"]
    await daemon.restart()
    async with WS.connect(daemon.url) as ws:
        r = await ws.ok("auth", token=token)
        assert r["user"] == user
        await ws.ok("create_channel", name="after-restart")


async def test_logout_ends_that_token_only(daemon):
    async with client(daemon.url, "alice") as a1, client(daemon.url, "alice") as a2:
        t1, t2 = a1.me["token"], a2.me["token"]
        assert t1 != t2
        r = await a1.ok("logout")
        assert set(r) == {"type", "ref"}, r
    async with WS.connect(daemon.url) as ws:
        await expect_error(ws, "unauthorized", "auth", token=t1)
        r = await ws.ok("auth", token=t2)
        assert r["user"]["name"] == "alice"
    # also after a restart: the logout was stored
    await daemon.restart()
    async with WS.connect(daemon.url) as ws:
        await expect_error(ws, "unauthorized", "auth", token=t1)
        await ws.ok("auth", token=t2)


async def test_token_expires(make_daemon):
    ttl = 1.5 * UNIT
    d = await make_daemon("--token-ttl", str(ttl))
    async with client(d.url, "alice") as ws:
        token = ws.me["token"]
        issued = time.monotonic()
    async with WS.connect(d.url) as ws:
        r = await ws.request("auth", token=token)
        if time.monotonic() - issued < ttl / 2:
            assert r["type"] == "ok", r
        await asyncio.sleep(max(0.0, issued + ttl + 0.5 * UNIT - time.monotonic()))
        await expect_error(ws, "unauthorized", "auth", token=token)
        # a new login gives a new, valid token
        fresh = (await ws.login("alice"))["token"]
        await ws.ok("auth", token=fresh)


async def test_ping_without_login(daemon):
    async with WS.connect(daemon.url) as ws:
        r = await ws.ok("ping")
        assert set(r) == {"type", "ref"}, r
        assert r["ref"] == "r1"


async def test_unknown_extra_fields_are_ignored(daemon):
    async with client(daemon.url, "alice") as ws:
        await ws.ok("ping", extra=1, more={"x": [1, 2]})
        ch = (await ws.ok("create_channel", name="x", colour="blue"))["channel"]
        r = await ws.ok("send", channel=ch["id"], body="hi", priority="high")
        assert r["message"]["body"] == "hi"


# ------------------------------------------------------------------ boot


async def test_boot_snapshot(daemon):
    async with client(daemon.url, "alice") as ws:
        b0 = await ws.ok("boot")
        assert set(b0) == {"type", "ref", "user", "epoch", "resume_point", "channels",
                           "online"}, b0
        assert b0["online"] == [ws.me["user"]["id"]]
        assert b0["user"] == {**ws.me["user"], "role": "admin"}
        assert isinstance(b0["epoch"], str) and b0["epoch"]
        assert isinstance(b0["resume_point"], int) and b0["resume_point"] >= 0
        assert b0["channels"] == []

        a = (await ws.ok("create_channel", name="alpha"))["channel"]
        b = (await ws.ok("create_channel", name="beta"))["channel"]
        b1 = await ws.ok("boot")
        assert b1["epoch"] == b0["epoch"]
        assert b1["resume_point"] > b0["resume_point"]
        for ch in b1["channels"]:
            check_boot_channel(ch)
        assert sorted(map(plain_channel, b1["channels"]), key=lambda c: c["name"]) == [a, b]

        await ws.ok("delete_channel", channel=a["id"])
        b2 = await ws.ok("boot")
        assert list(map(plain_channel, b2["channels"])) == [b]
        assert b2["resume_point"] > b1["resume_point"]

        # subscribing with since=resume_point delivers exactly what happened after it
        c = (await ws.ok("create_channel", name="gamma"))["channel"]
        async with client(daemon.url, token=ws.me["token"]) as sub:
            await sub.ok("subscribe", since=b2["resume_point"], epoch=b2["epoch"])
            ev = await sub.next_event()
            assert ev["kind"] == "channel.created" and ev["channel"] == c, ev
            assert ev["seq"] > b2["resume_point"]


# ------------------------------------------------------------------ channels


async def test_create_and_delete_channel(daemon):
    async with client(daemon.url, "alice") as ws:
        r = await ws.ok("create_channel", name="  General  ")
        assert set(r) == {"type", "ref", "channel"}, r
        ch = r["channel"]
        check_channel(ch)
        assert ch["name"] == "General"

        r = await ws.ok("create_channel", name="Cafe\u0301")
        assert r["channel"]["name"] == "Caf\u00e9", "names are NFC"

        d = await ws.ok("delete_channel", channel=ch["id"])
        assert set(d) == {"type", "ref", "channel"}, d
        assert d["channel"] == ch
        await expect_error(ws, "not_found", "send", channel=ch["id"], body="x")
        await expect_error(ws, "not_found", "delete_channel", channel=ch["id"])
        # the name is free again
        again = (await ws.ok("create_channel", name="general"))["channel"]
        assert again["id"] != ch["id"]


# ------------------------------------------------------------------ messages


async def test_send_reply_shape(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        body = "hello \u00e9\u4e16\U0001f600 \"quoted\" \\ \n new line"
        r = await ws.ok("send", channel=ch["id"], body=body)
        assert set(r) == {"type", "ref", "message", "channel"}, r
        m = r["message"]
        check_message(m)
        assert m["body"] == body
        assert m["sender"] == ws.me["user"]
        assert r["channel"] == ch
        check_at(m["at"])
        r2 = await ws.ok("send", channel=ch["id"], body="second")
        assert r2["message"]["seq"] > m["seq"]
        assert r2["message"]["id"] != m["id"]


async def test_send_nonce_idempotent(daemon):
    async with client(daemon.url, "alice") as ws, client(daemon.url, "bob") as bob:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        await ws.ok("subscribe")
        first = await ws.ok("send", channel=ch["id"], body="once", nonce="n-1")
        again = await ws.ok("send", channel=ch["id"], body="once", nonce="n-1")
        assert again["message"]["id"] == first["message"]["id"]
        assert again["message"]["seq"] == first["message"]["seq"]
        assert again["message"] == first["message"]
        assert again["channel"] == first["channel"]
        # another user's nonce space is its own
        other = await bob.ok("send", channel=ch["id"], body="bob's", nonce="n-1")
        assert other["message"]["id"] != first["message"]["id"]
        # a different nonce is a different message; 64 characters is fine
        third = await ws.ok("send", channel=ch["id"], body="once", nonce="n" * 64)
        assert third["message"]["id"] != first["message"]["id"]
        await ws.events_until(third["message"]["seq"])
        sent = [e["message"]["id"] for e in ws.events if e["kind"] == "message.sent"]
        assert sent == [first["message"]["id"], other["message"]["id"], third["message"]["id"]]
        hist = (await ws.ok("history", channel=ch["id"]))["messages"]
        assert [m["id"] for m in hist] == sent


async def test_send_nonce_idempotent_after_restart(daemon):
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        first = await ws.ok("send", channel=ch["id"], body="once", nonce="n-restart")
    await daemon.restart()
    async with client(daemon.url, token=token) as ws:
        again = await ws.ok("send", channel=ch["id"], body="once", nonce="n-restart")
        assert again["message"]["id"] == first["message"]["id"]
        assert again["message"]["seq"] == first["message"]["seq"]
        after = await ws.ok("send", channel=ch["id"], body="new")
        log = await stored_log(daemon.url, token, after["message"]["seq"])
        sent = [e for e in log if e["kind"] == "message.sent"]
        assert [e["message"]["id"] for e in sent] == [first["message"]["id"],
                                                      after["message"]["id"]]


async def test_delete_message(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        m1 = (await ws.ok("send", channel=ch["id"], body="one"))["message"]
        m2 = (await ws.ok("send", channel=ch["id"], body="two"))["message"]
        r = await ws.ok("delete_message", message=m1["id"])
        assert set(r) == {"type", "ref", "message", "channel"}, r
        assert r["message"] == {"id": m1["id"]}
        assert r["channel"] == ch
        hist = (await ws.ok("history", channel=ch["id"]))["messages"]
        assert hist == [m2]
        await expect_error(ws, "not_found", "delete_message", message=m1["id"])


# ------------------------------------------------------------------ history


async def test_history_paging(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        other = (await ws.ok("create_channel", name="other"))["channel"]
        sent = []
        for i in range(7):
            sent.append((await ws.ok("send", channel=ch["id"], body=f"m{i}"))["message"])
            await ws.ok("send", channel=other["id"], body=f"noise{i}")

        r = await ws.ok("history", channel=ch["id"])
        assert set(r) == {"type", "ref", "messages", "more"}, r
        assert r["messages"] == sent and r["more"] is False
        for m in r["messages"]:
            check_message(m)

        p1 = await ws.ok("history", channel=ch["id"], limit=3)
        assert p1["messages"] == sent[4:] and p1["more"] is True
        p2 = await ws.ok("history", channel=ch["id"], limit=3, before=p1["messages"][0]["seq"])
        assert p2["messages"] == sent[1:4] and p2["more"] is True
        p3 = await ws.ok("history", channel=ch["id"], limit=3, before=p2["messages"][0]["seq"])
        assert p3["messages"] == sent[:1] and p3["more"] is False

        # `before` is exclusive and need not be a message's seq
        r = await ws.ok("history", channel=ch["id"], before=sent[3]["seq"])
        assert r["messages"] == sent[:3] and r["more"] is False
        r = await ws.ok("history", channel=ch["id"], before=sent[3]["seq"] + 1, limit=2)
        assert r["messages"] == sent[2:4] and r["more"] is True
        r = await ws.ok("history", channel=ch["id"], before=sent[0]["seq"])
        assert r["messages"] == [] and r["more"] is False
        # exactly `limit` messages left: more is false
        r = await ws.ok("history", channel=ch["id"], limit=7)
        assert r["messages"] == sent and r["more"] is False
        r = await ws.ok("history", channel=ch["id"], limit=6)
        assert r["messages"] == sent[1:] and r["more"] is True
        r = await ws.ok("history", channel=ch["id"], limit=500)
        assert r["messages"] == sent


async def test_history_default_limit_is_100(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        # pipeline the sends, then read the replies in order
        for i in range(105):
            await ws.send_raw(json.dumps({"op": "send", "ref": i, "channel": ch["id"],
                                          "body": f"m{i}"}))
        seqs = []
        while len(seqs) < 105:
            f = await ws.recv()
            assert f["type"] == "ok", f
            seqs.append(f["message"]["seq"])
        r = await ws.ok("history", channel=ch["id"])
        assert len(r["messages"]) == 100 and r["more"] is True
        assert [m["seq"] for m in r["messages"]] == seqs[5:]
        assert [m["body"] for m in r["messages"]] == [f"m{i}" for i in range(5, 105)]


async def test_history_of_empty_channel(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        r = await ws.ok("history", channel=ch["id"])
        assert r["messages"] == [] and r["more"] is False


# ------------------------------------------------------------------ subscribe


async def test_subscribe_and_unsubscribe(daemon):
    async with client(daemon.url, "alice") as ws, \
            client(daemon.url, token=None) as watcher:
        await watcher.ok("auth", token=ws.me["token"])
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        r = await ws.ok("subscribe")
        assert set(r) == {"type", "ref", "epoch", "resume_point"}, r
        boot = await ws.ok("boot")
        assert r["epoch"] == boot["epoch"]
        assert isinstance(r["resume_point"], int)
        # without since: events with seq > resume_point, nothing older
        m = (await ws.ok("send", channel=ch["id"], body="live"))["message"]
        ev = (await ws.events_until(m["seq"]))[0]
        assert len(ws.events) == 1, ws.events
        assert ev["kind"] == "message.sent" and ev["message"]["id"] == m["id"], ev
        assert ev["seq"] == m["seq"] > r["resume_point"]
        assert all(e["seq"] > r["resume_point"] for e in ws.events)

        u = await ws.ok("unsubscribe")
        assert set(u) == {"type", "ref"}, u
        n_before = len(ws.events)
        await watcher.ok("subscribe")
        m2 = (await ws.ok("send", channel=ch["id"], body="not for you"))["message"]
        await watcher.events_until(m2["seq"])  # it was broadcast
        await ws.ok("ping")
        await ws.ok("ping")
        assert len(ws.events) == n_before, ws.events[n_before:]
        # subscribing again works
        await ws.ok("subscribe", since=m["seq"])
        ev = await ws.next_event()
        assert ev["seq"] == m2["seq"], ev


async def test_second_subscribe_replaces_first(daemon):
    async with client(daemon.url, "alice") as ws:
        a = (await ws.ok("create_channel", name="a"))["channel"]
        b = (await ws.ok("create_channel", name="b"))["channel"]
        ma = (await ws.ok("send", channel=a["id"], body="a1"))["message"]
        mb = (await ws.ok("send", channel=b["id"], body="b1"))["message"]

        await ws.ok("subscribe", since=0)
        await ws.events_until(mb["seq"])
        first = list(ws.events)
        assert [e["seq"] for e in first][-2:] == [ma["seq"], mb["seq"]]

        # a second subscribe since=0 replays once more, exactly once, not twice
        ws.events.clear()
        await ws.ok("subscribe", since=0)
        replay = await ws.events_until(mb["seq"])
        assert replay == first
        m3 = (await ws.ok("send", channel=a["id"], body="a2"))["message"]
        await ws.events_until(m3["seq"])
        await ws.ok("ping")
        assert [e["seq"] for e in ws.events] == [e["seq"] for e in first] + [m3["seq"]]

        # a third, restricted to b: nothing of a any more
        await ws.ok("subscribe", channels=[b["id"]])
        ws.events.clear()
        await ws.ok("send", channel=a["id"], body="a3")
        mb2 = (await ws.ok("send", channel=b["id"], body="b2"))["message"]
        await ws.events_until(mb2["seq"])
        assert [e["channel"]["id"] for e in ws.events] == [b["id"]], ws.events


# ------------------------------------------------------------------ ref and order


async def test_ref_echo(daemon):
    async with WS.connect(daemon.url) as ws:
        for ref in ("abc", "", "x" * 64, "\u00e9\U0001f600", 0, 42, -7, 2**53):
            r = await raw_reply(ws, json.dumps({"op": "ping", "ref": ref}))
            assert r["type"] == "ok" and r["ref"] == ref, (ref, r)
            assert type(r["ref"]) is type(ref)
        r = await raw_reply(ws, json.dumps({"op": "ping"}))
        assert r["type"] == "ok" and r.get("ref") is None, r
        r = await raw_reply(ws, json.dumps({"op": "ping", "ref": None}))
        assert r["type"] == "ok" and r.get("ref") is None, r
        # errors echo the ref too
        r = await raw_reply(ws, json.dumps({"op": "boot", "ref": "needs-login"}))
        assert r["type"] == "error" and r["code"] == "unauthorized" and r["ref"] == "needs-login"
        r = await raw_reply(ws, json.dumps({"op": "boot", "ref": 17}))
        assert r["type"] == "error" and r["ref"] == 17, r


async def test_replies_in_order_when_pipelined(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        await ws.ok("subscribe")
        ops = []
        for i in range(50):
            kind = ("send", "history", "ping", "send", "boot")[i % 5]
            cmd: dict = {"op": kind, "ref": f"p{i}" if i % 2 else i}
            if kind == "send":
                cmd |= {"channel": ch["id"], "body": f"b{i}"}
            elif kind == "history":
                cmd |= {"channel": ch["id"], "limit": 5}
            ops.append(cmd)
        for cmd in ops:
            await ws.send_raw(json.dumps(cmd))
        replies = []
        while len(replies) < len(ops):
            f = await ws.recv()
            if f["type"] != "event":
                replies.append(f)
        assert [r["ref"] for r in replies] == [c["ref"] for c in ops]
        # exactly one reply each: the next reply is the next command's
        assert (await ws.request("ping"))["ref"] == f"r{ws._ref}"
        assert [r["ref"] for r in ws.replies[-51:-1]] == [c["ref"] for c in ops]
        assert all(r["type"] == "ok" for r in replies), replies
        sends = [r for r, c in zip(replies, ops, strict=True) if c["op"] == "send"]
        assert [r["message"]["body"] for r in sends] == \
            [c["body"] for c in ops if c["op"] == "send"]
        seqs = [r["message"]["seq"] for r in sends]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for r, c in zip(replies, ops, strict=True):
            assert set(r) >= {"history": {"messages", "more"}, "boot": {"epoch", "channels"},
                              "send": {"message"}, "ping": {"ref"}}[c["op"]], (c, r)
        await ws.events_until(seqs[-1])
        assert [e["seq"] for e in ws.events if e["kind"] == "message.sent"] == seqs
