"""Every error code reachable in the core, and that the connection survives each."""

from __future__ import annotations

import json

import pytest

from .helpers import (
    assert_usable,
    client,
    close_code,
    expect_error,
    raw_reply,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
)
from .support import WS

# ------------------------------------------------------------------ bad_request: frames


async def test_bad_frames_get_bad_request_with_null_ref(daemon):
    async with WS.connect(daemon.url) as ws:
        for frame in (b"\x00\x01binary", "{not json", "",
                      '{"op": "ping", "ref": "x"', "[1,2,3]", '"ping"', "42", "null", "true",
                      '[{"op":"ping","ref":"x"}]'):
            r = await raw_reply(ws, frame)
            assert r["type"] == "error" and r["code"] == "bad_request", (frame, r)
            assert "ref" in r and r["ref"] is None, (frame, r)
            assert isinstance(r["message"], str), r
            await assert_usable(ws)
        # a binary frame is refused even when its bytes are a valid command
        r = await raw_reply(ws, b'{"op":"ping","ref":"r"}')
        assert r["type"] == "error" and r["code"] == "bad_request", r
        await assert_usable(ws)


@pytest.mark.parametrize("logged_in", [False, True])
async def test_unknown_op_is_bad_request(daemon, logged_in):
    async with client(daemon.url, "alice" if logged_in else None) as ws:
        for frame in ({"op": "frobnicate", "ref": "u1"}, {"op": "LOGIN", "ref": "u2"},
                      {"op": 7, "ref": "u3"}, {"ref": "u4"}, {"op": None, "ref": "u5"}):
            r = await raw_reply(ws, json.dumps(frame))
            assert r["type"] == "error" and r["code"] == "bad_request", (frame, r)
            # the frame was parsed: its ref is echoed
            assert r["ref"] == frame["ref"], (frame, r)
            await assert_usable(ws)


async def test_wrong_field_type_names_the_field(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        cases = [
            ("send", {"channel": ch, "body": 123}, "body"),
            ("send", {"channel": ch, "body": ["x"]}, "body"),
            ("send", {"channel": ch, "body": None}, "body"),
            ("send", {"channel": ch}, "body"),
            ("send", {"channel": 5, "body": "x"}, "channel"),
            ("send", {"body": "x"}, "channel"),
            ("send", {"channel": ch, "body": "x", "nonce": 5}, "nonce"),
            ("send", {"channel": ch, "body": "x", "nonce": "n" * 65}, "nonce"),
            ("history", {"channel": ch, "limit": "10"}, "limit"),
            ("history", {"channel": ch, "limit": 0}, "limit"),
            ("history", {"channel": ch, "limit": 501}, "limit"),
            ("history", {"channel": ch, "limit": -1}, "limit"),
            ("history", {"channel": ch, "limit": 1.5}, "limit"),
            ("history", {"channel": ch, "before": "x"}, "before"),
            ("history", {"channel": ch, "before": -1}, "before"),
            ("history", {}, "channel"),
            ("create_channel", {"name": 1}, "name"),
            ("create_channel", {}, "name"),
            ("delete_channel", {"channel": {"id": ch}}, "channel"),
            ("delete_message", {"message": 1}, "message"),
            ("subscribe", {"since": "0"}, "since"),
            ("subscribe", {"since": -1}, "since"),
            ("subscribe", {"since": 1.5}, "since"),
            ("subscribe", {"epoch": 1}, "epoch"),
            ("subscribe", {"channels": ch}, "channels"),
            ("subscribe", {"channels": [1]}, "channels"),
        ]
        for op, args, field in cases:
            r = await ws.request(op, **args)
            assert r["type"] == "error" and r["code"] == "bad_request", (op, args, r)
            assert field in r["message"], (op, args, r)
            assert r["ref"] == f"r{ws._ref}", r
            await assert_usable(ws)
        # nothing was sent by any of those
        hist = await ws.ok("history", channel=ch)
        assert hist["messages"] == []

    async with WS.connect(daemon.url) as ws:
        for op, args, field in [
            ("login", {"name": 1, "password": "x"}, "name"),
            ("login", {"name": "bob", "password": 1}, "password"),
            ("login", {"name": "bob"}, "password"),
            ("login", {"password": "x"}, "name"),
            ("auth", {"token": 1}, "token"),
            ("auth", {}, "token"),
        ]:
            r = await ws.request(op, **args)
            assert r["type"] == "error" and r["code"] == "bad_request", (op, args, r)
            assert field in r["message"], (op, args, r)
            await assert_usable(ws)


@pytest.mark.parametrize("ref", ["x" * 65, 1.5, 1.0, [1], ["a"], True, False, {"a": 1}, {}])
async def test_bad_ref_is_bad_request(daemon, ref):
    async with WS.connect(daemon.url) as ws:
        r = await raw_reply(ws, json.dumps({"op": "ping", "ref": ref}))
        assert r["type"] == "error" and r["code"] == "bad_request", (ref, r)
        assert "ref" in r["message"], r
        assert "ref" in r and r["ref"] in (None, ref) and not isinstance(r["ref"], (float, bool))
        await assert_usable(ws)


async def test_empty_and_bad_names(daemon):
    async with client(daemon.url, "alice") as ws:
        for name in ("", "   ", "\t\n", "a\x00b", "a\x07b", "line\nbreak"):
            r = await expect_error(ws, "bad_request", "create_channel", name=name)
            assert "name" in r["message"], r
            await assert_usable(ws)
        assert (await ws.ok("boot"))["channels"] == []
    async with WS.connect(daemon.url) as ws:
        for name in ("", "  ", "a\x01"):
            r = await expect_error(ws, "bad_request", "login", name=name, password="pw")
            assert "name" in r["message"], r
        await assert_usable(ws)


async def test_empty_body_is_bad_request(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        r = await expect_error(ws, "bad_request", "send", channel=ch, body="")
        assert "body" in r["message"]
        await assert_usable(ws)
        assert (await ws.ok("history", channel=ch))["messages"] == []


async def test_lone_surrogate_never_internal(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        frames = [
            '{"op":"send","ref":"s1","channel":"CH","body":"\\ud800"}',
            '{"op":"send","ref":"s2","channel":"CH","body":"a\\udfffb"}',
            '{"op":"send","ref":"s3","channel":"CH","body":"x","nonce":"\\ud800"}',
            '{"op":"create_channel","ref":"s4","name":"\\udc00"}',
            '{"op":"ping","ref":"\\ud800"}',
            '{"op":"history","ref":"s6","channel":"\\ud800"}',
            '{"op":"delete_message","ref":"s7","message":"\\ud800"}',
        ]
        for frame in frames:
            r = await raw_reply(ws, frame.replace('"CH"', json.dumps(ch)))
            assert r["type"] in ("ok", "error"), r
            if r["type"] == "error":
                assert r["code"] in ("bad_request", "not_found"), (frame, r)
            await assert_usable(ws)
        # the stored data is still readable
        await ws.ok("history", channel=ch)
        await ws.ok("boot")
    async with WS.connect(daemon.url) as ws:
        r = await raw_reply(ws, '{"op":"login","ref":1,"name":"\\ud800","password":"\\ud800"}')
        assert r["type"] == "ok" or r["code"] == "bad_request", r
        await assert_usable(ws)


# ------------------------------------------------------------------ bad frame limits


async def test_close_1008_after_20_bad_frames(daemon):
    async with WS.connect(daemon.url) as ws:
        bad = ["{nope", b"\x01", "[]", '{"op":"nope"}', '{"op":"ping","ref":1.5}']
        for i in range(20):
            await ws.send_raw(bad[i % len(bad)])
        assert await close_code(ws) == 1008
        # only the 20th may go without its error frame
        errors = [r for r in ws.replies if r["type"] == "error"]
        assert len(errors) >= 19 and all(r["code"] == "bad_request" for r in errors), errors


async def test_good_frame_resets_bad_count(daemon):
    async with client(daemon.url, "alice") as ws:
        for _ in range(19):
            r = await raw_reply(ws, "{bad")
            assert r["code"] == "bad_request"
        await ws.ok("ping")
        for _ in range(19):
            r = await raw_reply(ws, '{"op":"unknown"}')
            assert r["code"] == "bad_request"
        await ws.ok("ping")
        await ws.ok("boot")
        # other errors than bad_request do not count either
        for _ in range(25):
            await expect_error(ws, "not_found", "delete_message", message="Mnope")
        await ws.ok("ping")


async def test_close_1009_over_max_frame(make_daemon):
    d = await make_daemon("--max-frame", "1000")
    async with WS.connect(d.url) as ws:
        # ~660 bytes: fine
        r = await raw_reply(ws, json.dumps({"op": "ping", "ref": "a", "pad": "\u00e9" * 300},
                                           ensure_ascii=False))
        assert r["type"] == "ok", r
        # 600 characters but 1200+ bytes: counted in bytes, too big
        await ws.send_raw(json.dumps({"op": "ping", "ref": "b", "pad": "\u00e9" * 600},
                                     ensure_ascii=False))
        assert await close_code(ws) == 1009
    # the daemon is still fine
    async with WS.connect(d.url) as ws:
        await ws.ok("ping")


async def test_close_1009_default_64k(daemon):
    async with WS.connect(daemon.url) as ws:
        r = await raw_reply(ws, json.dumps({"op": "ping", "ref": "a", "pad": "x" * 60000}))
        assert r["type"] == "ok", r
        await ws.send_raw(json.dumps({"op": "ping", "ref": "b", "pad": "x" * 66000}))
        assert await close_code(ws) == 1009
    async with WS.connect(daemon.url) as ws:
        await ws.ok("ping")


# ------------------------------------------------------------------ unauthorized


async def test_unauthorized_without_login(daemon):
    async with client(daemon.url, "alice") as owner:
        ch = (await owner.ok("create_channel", name="general"))["channel"]["id"]
        msg = (await owner.ok("send", channel=ch, body="x"))["message"]["id"]
    async with WS.connect(daemon.url) as ws:
        for op, args in [("logout", {}), ("boot", {}), ("create_channel", {"name": "x"}),
                         ("delete_channel", {"channel": ch}),
                         ("send", {"channel": ch, "body": "x"}),
                         ("delete_message", {"message": msg}), ("history", {"channel": ch}),
                         ("subscribe", {}), ("subscribe", {"since": 0}), ("unsubscribe", {})]:
            r = await expect_error(ws, "unauthorized", op, **args)
            assert r["ref"] == f"r{ws._ref}"
            await assert_usable(ws)
    async with client(daemon.url, "alice") as owner:
        hist = (await owner.ok("history", channel=ch))["messages"]
        assert [m["id"] for m in hist] == [msg]
        assert len((await owner.ok("boot"))["channels"]) == 1


async def test_unauthorized_wrong_password_and_bad_token(daemon):
    async with client(daemon.url, "alice", password="right") as a:
        token = a.me["token"]
    async with WS.connect(daemon.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="alice", password="wrong")
        await expect_error(ws, "unauthorized", "login", name="ALICE", password="Right")
        await expect_error(ws, "unauthorized", "boot")  # still not logged in
        for bad in ("nope", token[:-1], token + "x", token.upper() if token.upper() != token
                    else token.lower()):
            await expect_error(ws, "unauthorized", "auth", token=bad)
            await assert_usable(ws)
        await expect_error(ws, "unauthorized", "boot")
        await ws.ok("auth", token=token)
        await ws.ok("boot")


# ------------------------------------------------------------------ forbidden, not_found


async def test_forbidden(daemon):
    async with client(daemon.url, "root"):
        pass  # the first account is the admin: alice and bob are members
    async with client(daemon.url, "alice") as alice, client(daemon.url, "bob") as bob:
        ch = (await alice.ok("create_channel", name="general"))["channel"]["id"]
        m = (await alice.ok("send", channel=ch, body="mine"))["message"]
        await expect_error(bob, "forbidden", "delete_message", message=m["id"])
        await expect_error(bob, "forbidden", "delete_channel", channel=ch)
        await assert_usable(bob)
        # nothing was deleted
        assert (await bob.ok("history", channel=ch))["messages"] == [m]
        assert [c["id"] for c in (await bob.ok("boot"))["channels"]] == [ch]
        # bob may send to alice's channel and delete his own message
        mb = (await bob.ok("send", channel=ch, body="bob"))["message"]
        await expect_error(alice, "forbidden", "delete_message", message=mb["id"])
        await bob.ok("delete_message", message=mb["id"])


async def test_not_found(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        m = (await ws.ok("send", channel=ch, body="x"))["message"]["id"]
        for op, args in [
            ("send", {"channel": "Cnope", "body": "x"}),
            ("send", {"channel": m, "body": "x"}),
            ("history", {"channel": "Cnope"}),
            ("delete_channel", {"channel": "Cnope"}),
            ("delete_channel", {"channel": m}),
            ("delete_message", {"message": "Mnope"}),
            ("delete_message", {"message": ch}),
        ]:
            r = await expect_error(ws, "not_found", op, **args)
            assert r["ref"] == f"r{ws._ref}"
            await assert_usable(ws)
        await ws.ok("delete_message", message=m)
        await expect_error(ws, "not_found", "delete_message", message=m)
        await ws.ok("delete_channel", channel=ch)
        await expect_error(ws, "not_found", "history", channel=ch)
        await expect_error(ws, "not_found", "send", channel=ch, body="x")


# ------------------------------------------------------------------ conflict, too_large


async def test_conflict_on_equal_names(daemon):
    async with client(daemon.url, "alice") as ws, client(daemon.url, "bob") as bob:
        await ws.ok("create_channel", name="General")
        for name in ("General", "general", "GENERAL", "  general  "):
            r = await expect_error(ws, "conflict", "create_channel", name=name)
            assert r["ref"] == f"r{ws._ref}"
        await expect_error(bob, "conflict", "create_channel", name="gEnErAl")
        await ws.ok("create_channel", name="\ufb00")  # LATIN SMALL LIGATURE FF
        await expect_error(ws, "conflict", "create_channel", name="ff")
        await expect_error(ws, "conflict", "create_channel", name="FF")
        await ws.ok("create_channel", name="Stra\u00dfe")
        await expect_error(ws, "conflict", "create_channel", name="STRASSE")
        await ws.ok("create_channel", name="Cafe\u0301")
        await expect_error(ws, "conflict", "create_channel", name="caf\u00e9")
        await ws.ok("create_channel", name="\u2168")  # ROMAN NUMERAL NINE, NFKC "IX"
        await expect_error(ws, "conflict", "create_channel", name="ix")
        await assert_usable(ws)
        names = sorted(c["name"] for c in (await ws.ok("boot"))["channels"])
        assert names == sorted(["General", "\ufb00", "Stra\u00dfe", "Caf\u00e9", "\u2168"])


async def test_too_large_with_limit(daemon):
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        r = await expect_error(ws, "too_large", "send", channel=ch, body="x" * 4097)
        assert r["limit"] == 4096, r
        assert r["ref"] == f"r{ws._ref}"
        # counted in code points, not bytes or UTF-16 units
        m = await ws.ok("send", channel=ch, body="\U0001f600" * 4096)
        assert m["message"]["body"] == "\U0001f600" * 4096
        await ws.ok("send", channel=ch, body="x" * 4096)
        r = await expect_error(ws, "too_large", "send", channel=ch, body="\U0001f600" * 4097)
        assert r["limit"] == 4096

        r = await expect_error(ws, "too_large", "create_channel", name="n" * 65)
        assert r["limit"] == 64, r
        await ws.ok("create_channel", name="n" * 64)
        await ws.ok("create_channel", name="  " + "\u00e9" * 64 + "  ")  # trimmed first
        await assert_usable(ws)
        assert len((await ws.ok("history", channel=ch))["messages"]) == 2
    async with WS.connect(daemon.url) as ws:
        r = await expect_error(ws, "too_large", "login", name="u" * 65, password="pw")
        assert r["limit"] == 64, r
        await assert_usable(ws)


# ------------------------------------------------------------------ resume_gap


async def test_resume_gap(daemon):
    async with client(daemon.url, "alice") as ws:
        boot = await ws.ok("boot")
        epoch = boot["epoch"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        pos = (await ws.ok("send", channel=ch, body="x"))["message"]["seq"]

        r = await expect_error(ws, "resume_gap", "subscribe", since=pos + 1000)
        assert r["horizon"] == 0 and r["epoch"] == epoch, r
        assert r["ref"] == f"r{ws._ref}"
        r = await expect_error(ws, "resume_gap", "subscribe", since=0, epoch="not-the-epoch")
        assert r["horizon"] == 0 and r["epoch"] == epoch, r
        r = await expect_error(ws, "resume_gap", "subscribe", since=pos, epoch=epoch + "x")
        assert r["epoch"] == epoch, r
        await assert_usable(ws)
        assert ws.events == []  # no subscription was started by those

        # the current position, the horizon (0 on a new database) and epoch alone are fine
        await ws.ok("subscribe", since=pos, epoch=epoch)
        await ws.ok("subscribe", since=0, epoch=epoch)
        evs = await ws.events_until(pos)
        assert evs[-1]["seq"] == pos
        await ws.ok("subscribe", epoch=epoch)
        r = await expect_error(ws, "resume_gap", "subscribe", epoch="other")
        assert r["epoch"] == epoch
