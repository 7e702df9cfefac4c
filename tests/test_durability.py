"""Restart durability: SIGKILL mid-send loses no acknowledged change; the sequence and
the epoch survive; SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import websockets

from .helpers import (
    Pump,
    all_history,
    client,
    close_code,
    expect_error,
    healthz_seq,
    plain_channel,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
    wait_for,
)
from .support import UNIT, WS


async def test_sigkill_mid_send_loses_no_acked_message(daemon):
    n_senders = 6
    tokens = []
    for i in range(3):
        async with WS.connect(daemon.url) as ws:
            tokens.append((await ws.login(f"user{i}"))["token"])
    async with client(daemon.url, token=tokens[0]) as ws:
        chans = [(await ws.ok("create_channel", name=f"c{i}"))["channel"]["id"] for i in range(2)]
        epoch = (await ws.ok("boot"))["epoch"]

    acked: dict[str, dict[str, Any]] = {}  # nonce -> message
    nonce_token: dict[str, str] = {}  # nonces are per user
    in_flight: dict[int, tuple[str, str, str]] = {}  # sender -> (nonce, channel, body)
    count = 0

    async def sender(i: int) -> None:
        nonlocal count
        with contextlib.suppress(websockets.ConnectionClosed, OSError, TimeoutError):
            async with client(daemon.url, token=tokens[i % 3]) as ws:
                k = 0
                while True:
                    nonce, ch, body = f"n{i}-{k}", chans[k % 2], f"body {i}-{k}"
                    nonce_token[nonce] = tokens[i % 3]
                    in_flight[i] = (nonce, ch, body)
                    r = await ws.ok("send", channel=ch, body=body, nonce=nonce)
                    del in_flight[i]
                    assert r["message"]["body"] == body
                    acked[nonce] = r["message"]
                    count += 1
                    k += 1

    tasks = [asyncio.ensure_future(sender(i)) for i in range(n_senders)]
    await wait_for(lambda: count >= 300 or any(t.done() for t in tasks), 60,
                   what="300 acked sends")
    await daemon.kill()  # while the senders are still sending
    await asyncio.gather(*tasks)
    assert len(acked) >= 300
    max_acked = max(m["seq"] for m in acked.values())

    await daemon.restart()
    async with client(daemon.url, token=tokens[0]) as ws:
        assert (await ws.ok("boot"))["epoch"] == epoch, "the epoch survives a restart"
        stored: list[dict[str, Any]] = []
        for ch in chans:
            stored += await all_history(ws, ch)
        by_id: dict[str, list[dict[str, Any]]] = {}
        for m in stored:
            by_id.setdefault(m["id"], []).append(m)
        seqs = [m["seq"] for m in stored]
        assert len(seqs) == len(set(seqs)), "seqs are unique"
        for nonce, m in acked.items():
            assert m["id"] in by_id, f"acked message {nonce} {m} lost by SIGKILL"
            assert by_id[m["id"]] == [m], f"acked message {nonce} stored as {by_id[m['id']]}"
        # nothing stored that nobody sent: at most the sends in flight at the kill
        unacked = [m for m in stored if m["id"] not in {a["id"] for a in acked.values()}]
        assert len(unacked) <= len(in_flight), unacked
        in_flight_bodies = {body for _, _, body in in_flight.values()}
        assert all(m["body"] in in_flight_bodies for m in unacked), unacked

    # a send that was in flight at the kill, sent again with its nonce: exactly once
    for nonce, ch, body in in_flight.values():
        async with client(daemon.url, token=nonce_token[nonce]) as ws:
            r = await ws.ok("send", channel=ch, body=body, nonce=nonce)
            again = await all_history(ws, ch)
            assert [m["id"] for m in again if m["body"] == body] == [r["message"]["id"]]
    # an acked nonce, sent again: the first ok
    for nonce, m in list(acked.items())[:: max(1, len(acked) // 10)]:
        async with client(daemon.url, token=nonce_token[nonce]) as ws:
            r = await ws.ok("send", channel=chans[0], body="ignored", nonce=nonce)
            assert r["message"]["id"] == m["id"] and r["message"]["seq"] == m["seq"]

    async with client(daemon.url, token=tokens[0]) as ws:
        # the sequence continues above the old maximum
        assert await healthz_seq(daemon.http) >= max(seqs)
        new = (await ws.ok("send", channel=chans[0], body="after restart"))["message"]
        assert new["seq"] > max(max_acked, *seqs)
        log = await stored_log(daemon.url, tokens[1], new["seq"])
        log_seqs = [e["seq"] for e in log]
        assert len(log_seqs) == len(set(log_seqs))


async def test_acked_changes_of_every_kind_survive_sigkill(daemon):
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        a = (await ws.ok("create_channel", name="a"))["channel"]
        b = (await ws.ok("create_channel", name="b"))["channel"]
        m1 = (await ws.ok("send", channel=a["id"], body="one"))["message"]
        m2 = (await ws.ok("send", channel=a["id"], body="two"))["message"]
        await ws.ok("send", channel=b["id"], body="in b")
        await ws.ok("delete_message", message=m1["id"])
        await ws.ok("delete_channel", channel=b["id"])
        c = (await ws.ok("create_channel", name="c"))["channel"]
        boot = await ws.ok("boot")
        # kill right after the last ok
        await daemon.kill()
    await daemon.restart()
    async with client(daemon.url, token=token) as ws:
        after = await ws.ok("boot")
        assert after["epoch"] == boot["epoch"]
        assert after["resume_point"] == boot["resume_point"]
        assert sorted(map(plain_channel, after["channels"]), key=lambda x: x["name"]) == [a, c]
        assert (await ws.ok("history", channel=a["id"]))["messages"] == [m2]
        await expect_error(ws, "not_found", "history", channel=b["id"])
        await expect_error(ws, "not_found", "delete_message", message=m1["id"])
        await expect_error(ws, "conflict", "create_channel", name="A")
        await ws.ok("create_channel", name="b")


async def test_resume_across_restart(daemon):
    """A subscriber's (epoch, seq) from before a crash resumes after the restart."""
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        sub_reply = None
        async with client(daemon.url, token=token) as sub:
            sub_reply = await sub.ok("subscribe")
            m = (await ws.ok("send", channel=ch, body="seen"))["message"]
            seen = await sub.events_until(m["seq"])
        missed = [(await ws.ok("send", channel=ch, body=f"missed {i}"))["message"]
                  for i in range(3)]
    await daemon.restart()
    async with client(daemon.url, token=token) as sub:
        await sub.ok("subscribe", since=seen[-1]["seq"], epoch=sub_reply["epoch"])
        evs = await sub.events_until(missed[-1]["seq"])
        assert [e["message"]["id"] for e in evs] == [x["id"] for x in missed]
        async with client(daemon.url, token=token) as ws:
            new = (await ws.ok("send", channel=ch, body="new"))["message"]
        evs = await sub.events_until(new["seq"])
        assert evs[-1]["message"]["id"] == new["id"] and len(evs) == 4


async def test_sequence_never_reused_after_expiry_deleted_newest_rows(make_daemon, tmp_path):
    db = tmp_path / "expiring.db"
    d = await make_daemon("--message-ttl", str(0.3 * UNIT), "--channel-ttl", str(0.6 * UNIT),
                          "--event-ttl", str(UNIT), "--expire-interval", "0.1", db=db)
    async with client(d.url, "alice") as ws, client(d.url, token=None) as sub:
        token = ws.me["token"]
        await sub.ok("auth", token=token)
        epoch = (await sub.ok("subscribe"))["epoch"]
        pump = Pump(sub)
        ch = (await ws.ok("create_channel", name="general"))["channel"]
        top = 0
        for i in range(5):
            top = (await ws.ok("send", channel=ch["id"], body=f"{i}"))["message"]["seq"]
        # expiry deletes the messages, then the channel (new events above `top`) ...
        await wait_for(lambda: any(e["kind"] == "channel.deleted" for e in sub.events), 30,
                       what="channel.deleted by expiry")
        top = max(top, pump.last_seq)

        # ... and then drops every event: the horizon reaches the newest seq
        async def horizon_reached() -> bool:
            async with client(d.url, token=token) as probe:
                r = await probe.request("subscribe", since=0)
            if r["type"] == "ok":
                return False
            assert r["code"] == "resume_gap", r
            return r["horizon"] >= top
        await wait_for(horizon_reached, 30, interval=0.1, what="all events dropped")
        assert (await ws.ok("boot"))["channels"] == []
        await pump.stop()
    await d.kill()

    # restart with the default TTLs on the same file: the counter was not derived from rows
    d2 = await make_daemon(db=db)
    assert await healthz_seq(d2.http) >= top
    async with client(d2.url, token=token) as ws:
        boot = await ws.ok("boot")
        assert boot["epoch"] == epoch
        assert boot["resume_point"] >= top
        r = await ws.ok("create_channel", name="again")
        await ws.ok("subscribe", since=boot["resume_point"])
        m = (await ws.ok("send", channel=r["channel"]["id"], body="x"))["message"]
        evs = await ws.events_until(m["seq"])
        assert evs[0]["kind"] == "channel.created" and evs[0]["seq"] > top, evs
        assert m["seq"] > top


async def test_sigterm_exits_0_and_closes_1001(daemon):
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        m = (await ws.ok("send", channel=ch, body="before sigterm"))["message"]
        await ws.ok("subscribe")
        rc = await daemon.terminate(signal.SIGTERM)
        assert rc == 0, "".join(daemon.log[-20:])
        assert await close_code(ws) == 1001
    await daemon.start()
    async with client(daemon.url, token=token) as ws:
        assert (await ws.ok("history", channel=ch))["messages"] == [m]


async def test_sigint_exits_0(daemon):
    async with client(daemon.url, "alice") as ws:
        await ws.ok("create_channel", name="general")
    rc = await daemon.terminate(signal.SIGINT)
    assert rc == 0, "".join(daemon.log[-20:])


async def test_wal_mode(daemon):
    from .sqlite_file import db_pragma

    async with client(daemon.url, "alice") as ws:
        await ws.ok("create_channel", name="general")
    assert str(await db_pragma(daemon.db, "journal_mode")).lower() == "wal"


async def test_many_restarts_keep_one_sequence(daemon):
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
    seqs = []
    for i in range(3):
        async with client(daemon.url, token=token) as ws:
            for k in range(3):
                seqs.append((await ws.ok("send", channel=ch, body=f"{i}-{k}"))["message"]["seq"])
            # a send without waiting for its reply, then the crash
            await ws.send_raw(json.dumps({"op": "send", "channel": ch, "body": f"{i}-x"}))
            await daemon.restart()
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    async with client(daemon.url, token=token) as ws:
        hist = await all_history(ws, ch)
        hseqs = [m["seq"] for m in hist]
        assert hseqs == sorted(hseqs) and len(set(hseqs)) == len(hseqs)
        assert set(seqs) <= set(hseqs)
