"""Crash durability (PROTOCOL.md guarantee 1; issue 4 "Crash").

32 concurrent senders, each on its own connection (all logged in with one token
through ``auth``), send with nonces as fast as the daemon acknowledges. At a
random moment the daemon gets SIGKILL. Then, before anything else touches the
file, sqlite's ``PRAGMA integrity_check`` must be ``ok``; the daemon restarts on
the same file and:

* every acknowledged send is present exactly once, with its acknowledged id, seq
  and body, both in ``history`` and in a replay ``subscribe since=0``;
* the replay's seqs are unique and strictly increasing, and the stored seq
  counter (``/healthz``, ``boot``) is at least every seq ever acknowledged;
* the epoch is the one from before the crash;
* retrying every unacknowledged send with its nonce creates it at most once;
* new sends after the restart get seqs above everything before (never reused).

The loop does this at least 5 times per run, each at a different random moment,
on the same database, so later rounds also crash a daemon that recovered from an
earlier crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

import websockets

from .helpers import (
    all_history,
    assert_strictly_increasing,
    client,
    healthz_seq,
    stored_log,
    wait_for,
)
from .sqlite_file import integrity_of_copy
from .support import WS

SENDERS = 32
ROUNDS = 6


async def test_sigkill_at_random_moments_loses_no_acked_send(make_daemon, tmp_path):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    print(f"crash test seed {seed}")
    d = await make_daemon("--scrypt-n", "1024", "--no-rate-limits", db=tmp_path / "crash.db")
    async with WS.connect(d.url) as ws:
        login = await ws.login("crasher")
        token = login["token"]
        chans = [(await ws.ok("create_channel", name=f"crash{i}"))["channel"]["id"]
                 for i in range(4)]
        epoch = (await ws.ok("boot"))["epoch"]

    acked: dict[str, dict[str, Any]] = {}  # nonce -> the acknowledged message
    attempted: dict[str, tuple[str, str]] = {}  # nonce -> (channel, body), acked or not
    high_water = 0  # the highest seq acknowledged so far, over all rounds
    kills: list[tuple[float, int]] = []

    for rnd in range(ROUNDS):
        # The random moment: anywhere from "right away" to well into the stream.
        delay = rng.uniform(0.0, 1.5) if rnd else 0.0
        kills.append((delay, await send_until_killed(d, token, chans, rnd, delay,
                                                     acked, attempted)))

        check, stored_epoch = await asyncio.to_thread(
            integrity_of_copy, d.db, tmp_path / f"copy{rnd}")
        assert check == "ok", f"round {rnd}: integrity_check after SIGKILL: {check}"
        assert stored_epoch == epoch

        await d.start()
        assert await healthz_seq(d.http) >= max(
            (m["seq"] for m in acked.values()), default=0)
        async with client(d.url, token=token) as ws:
            boot = await ws.ok("boot")
            assert boot["epoch"] == epoch, "the epoch changed across a crash"
            assert {c["id"] for c in boot["channels"]} == set(chans)
            assert boot["resume_point"] >= high_water
            await check_exactly_once(d, token, ws, chans, acked, attempted)

            # Retry every send that was in flight at the kill, with its nonce: it
            # was committed (same message back) or not (created now), never both.
            unacked = [n for n in attempted if n not in acked]
            for nonce in unacked:
                ch, body = attempted[nonce]
                r = await ws.ok("send", channel=ch, body=body, nonce=nonce)
                acked[nonce] = r["message"]
            await check_exactly_once(d, token, ws, chans, acked, attempted)

            # The sequence continues above everything before the crash.
            top = max(m["seq"] for m in acked.values()) if acked else 0
            fresh = await ws.ok("send", channel=chans[0], body=f"after crash {rnd}",
                                nonce=f"after-{rnd}")
            assert fresh["message"]["seq"] > max(top, boot["resume_point"]), fresh
            acked[f"after-{rnd}"] = fresh["message"]
            attempted[f"after-{rnd}"] = (chans[0], f"after crash {rnd}")
            high_water = fresh["message"]["seq"]

    print(f"{ROUNDS} kills (delay s, acks before the kill): "
          + ", ".join(f"({t:.2f}, {n})" for t, n in kills)
          + f"; {len(acked)} sends acknowledged in all")
    assert sum(n for _, n in kills) > 0, "no send was acknowledged before any kill"
    assert "Traceback" not in "".join(d.log), "".join(d.log)[-3000:]
    await d.kill()
    check, stored_epoch = await asyncio.to_thread(integrity_of_copy, d.db, tmp_path / "final")
    assert (check, stored_epoch) == ("ok", epoch)


async def send_until_killed(d: Any, token: str, chans: list[str], rnd: int, delay: float,
                            acked: dict[str, dict[str, Any]],
                            attempted: dict[str, tuple[str, str]]) -> int:
    """Run the senders, SIGKILL the daemon ``delay`` s after all are logged in;
    returns how many sends were acknowledged in this round."""
    count = 0
    ready = 0

    async def sender(i: int) -> None:
        nonlocal count, ready
        with contextlib.suppress(websockets.ConnectionClosed, OSError, TimeoutError):
            async with WS.connect(d.url) as ws:
                await ws.ok("auth", token=token)
                ready += 1
                k = 0
                while True:
                    nonce = f"r{rnd}-s{i}-{k}"
                    ch, body = chans[(i + k) % len(chans)], f"round {rnd} sender {i} #{k}"
                    attempted[nonce] = (ch, body)
                    r = await ws.request("send", timeout=60, channel=ch, body=body,
                                         nonce=nonce)
                    assert r["type"] == "ok", r
                    assert r["message"]["body"] == body and r["channel"]["id"] == ch, r
                    acked[nonce] = r["message"]
                    count += 1
                    k += 1

    tasks = [asyncio.ensure_future(sender(i)) for i in range(SENDERS)]
    await wait_for(lambda: ready == SENDERS or any(t.done() for t in tasks), 30,
                   what="every sender logged in")
    assert ready == SENDERS, f"only {ready} senders logged in"
    await asyncio.sleep(delay)
    await d.kill()
    for r in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(r, BaseException):
            raise r
    return count


async def check_exactly_once(d: Any, token: str, ws: WS, chans: list[str],
                             acked: dict[str, dict[str, Any]],
                             attempted: dict[str, tuple[str, str]]) -> None:
    by_body = {body: nonce for nonce, (_, body) in attempted.items()}

    # history: every acknowledged message exactly once, as acknowledged.
    stored: list[dict[str, Any]] = []
    for ch in chans:
        msgs = await all_history(ws, ch)
        assert_strictly_increasing(msgs)
        stored += msgs
    counts = Counter(m["body"] for m in stored)
    dups = [b for b, n in counts.items() if n > 1]
    assert not dups, f"stored more than once: {dups[:10]}"
    ids = Counter(m["id"] for m in stored)
    assert max(ids.values()) == 1
    seqs = Counter(m["seq"] for m in stored)
    assert max(seqs.values()) == 1, "two messages share a seq"
    by_stored_body = {m["body"]: m for m in stored}
    for nonce, msg in acked.items():
        got = by_stored_body.get(msg["body"])
        assert got is not None, f"acknowledged send {nonce} (seq {msg['seq']}) lost"
        assert got == msg, (got, msg)
    for m in stored:
        assert m["body"] in by_body, f"a message nobody sent: {m}"

    # replay since=0: the same messages, once each, seqs unique and increasing.
    upto = await healthz_seq(d.http)
    log = await stored_log(d.url, token, upto)
    seq_list = [e["seq"] for e in log]
    assert len(seq_list) == len(set(seq_list))
    sent = [e for e in log if e["kind"] == "message.sent"]
    replay_bodies = Counter(e["message"]["body"] for e in sent)
    assert max(replay_bodies.values(), default=1) == 1
    replayed = {e["message"]["id"]: e for e in sent}
    for msg in acked.values():
        ev = replayed.get(msg["id"])
        assert ev is not None, f"acknowledged message {msg['id']} missing from the replay"
        assert ev["seq"] == msg["seq"] and ev["at"] == msg["at"], (ev, msg)
        assert ev["message"]["body"] == msg["body"], (ev, msg)
    assert {e["message"]["id"] for e in sent} == {m["id"] for m in stored}
