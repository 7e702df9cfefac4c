"""Chaos: resume without loss (PROTOCOL.md guarantees 2 and 3; issue 4 "Chaos").

50 subscribers read the event stream through a TCP proxy (tests/proxy.py) while a
sender produces about a thousand events of every kind (sends, message and
channel deletions, channel creations). Connections are lost at random points:

* the proxy cuts every connection at random intervals (anywhere, also inside a
  frame or between a subscribe and its ok);
* each subscriber also aborts its own TCP connection after a random number of
  events, and sometimes right after sending ``subscribe``;
* the daemon is killed with SIGKILL and restarted on the same port and file, and
  later stopped with SIGTERM and restarted.

After every loss a subscriber reconnects, authenticates and subscribes with its
last (epoch, seq). In the end each one must hold exactly the stored log (a fresh
``subscribe since=0``): every event once, in strictly increasing seq order, none
missing. The only allowed difference is a ``message.sent`` the subscriber saw
live before the message was deleted (a later replay no longer has it, by design).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

from .helpers import assert_same_stream, healthz_seq, stored_log, wait_for
from .proxy import Proxy
from .support import UNIT, WS

SUBSCRIBERS = 50
OPERATIONS = 900

Disconnect = (OSError, EOFError, TimeoutError, websockets.WebSocketException)


@dataclass
class Sub:
    index: int
    rng: random.Random
    events: list[dict[str, Any]] = field(default_factory=list)
    epoch: str | None = None
    connects: int = 0
    self_cuts: int = 0

    @property
    def last(self) -> int:
        return self.events[-1]["seq"] if self.events else 0


async def test_fifty_subscribers_resume_through_cuts_and_restarts(make_daemon, tmp_path):
    seed = random.randrange(2**32)
    print(f"chaos seed {seed}")
    master = random.Random(seed)
    d = await make_daemon("--scrypt-n", "1024", db=tmp_path / "chaos.db")
    async with WS.connect(d.url) as ws:
        sub_token = (await ws.login("watcher"))["token"]
    async with WS.connect(d.url) as ws:
        send_token = (await ws.login("talker"))["token"]
        epoch = (await ws.ok("boot"))["epoch"]

    proxy = await Proxy(d.port, seed=seed).start()
    final_seq: int | None = None
    subs = [Sub(i, random.Random(master.randrange(2**32))) for i in range(SUBSCRIBERS)]

    async def subscriber(s: Sub) -> None:
        while final_seq is None or s.last < final_seq:
            try:
                await session(s)
            except Disconnect:
                pass
            await asyncio.sleep(s.rng.uniform(0.0, 0.15))

    async def session(s: Sub) -> None:
        async with WS.connect(proxy.url, open_timeout=10 * UNIT) as ws:
            s.connects += 1
            r = await ws.request("auth", token=sub_token)
            if r["type"] != "ok":  # e.g. rate_limited during a reconnect storm
                assert r["code"] in ("rate_limited", "unavailable"), r
                await asyncio.sleep(r.get("retry_after") or 0.2)
                return
            args: dict[str, Any] = {"since": s.last}
            if s.epoch is not None:
                args["epoch"] = s.epoch
            if s.rng.random() < 0.08:
                # Lose the connection between subscribe and its ok.
                await ws.send_raw(json.dumps({"op": "subscribe", **args}))
                s.self_cuts += 1
                ws.conn.transport.abort()
                return
            r = await ws.request("subscribe", **args)
            if r["type"] != "ok":
                assert r["code"] in ("rate_limited", "unavailable"), (s.index, args, r)
                await asyncio.sleep(r.get("retry_after") or 0.2)
                return
            assert r["epoch"] == epoch, r
            s.epoch = r["epoch"]
            budget = s.rng.randint(1, 400)
            while final_seq is None or s.last < final_seq:
                try:
                    frame = await ws.recv(timeout=1)
                except TimeoutError:
                    continue
                if frame.get("type") != "event":
                    continue
                assert frame["seq"] > s.last, (
                    f"subscriber {s.index}: seq {frame['seq']} after {s.last}"
                    f" (duplicate or out of order) after {s.connects} connects")
                s.events.append(frame)
                budget -= 1
                if budget == 0:
                    s.self_cuts += 1
                    ws.conn.transport.abort()
                    return

    sub_tasks = [asyncio.ensure_future(subscriber(s)) for s in subs]
    proxy.start_chaos(0.3, 1.5)

    sent_count = 0

    async def sender() -> None:
        nonlocal sent_count
        rng = random.Random(master.randrange(2**32))
        channels: dict[str, str] = {}  # name -> id
        mine: list[str] = []  # ids of messages sent
        ws: WS | None = None
        stack = contextlib.AsyncExitStack()

        async def call(op: str, retry_ok: tuple[str, ...] = (), **args: Any) -> dict[str, Any]:
            nonlocal ws
            attempts = 0
            while True:
                try:
                    if ws is None:
                        ws = await stack.enter_async_context(WS.connect(d.url))
                        await ws.ok("auth", token=send_token)
                    r = await ws.request(op, timeout=30, **args)
                    if r["type"] == "ok" or (attempts and r["code"] in retry_ok):
                        return r
                    assert r["code"] == "unavailable", (op, args, r)
                except Disconnect:
                    pass
                attempts += 1
                await stack.aclose()
                ws = None
                await asyncio.sleep(0.1)

        async def create(name: str) -> None:
            r = await call("create_channel", ("conflict",), name=name)
            if r["type"] == "ok":
                channels[name] = r["channel"]["id"]
            else:  # committed before a lost ack
                boot = await call("boot")
                channels[name] = next(c["id"] for c in boot["channels"] if c["name"] == name)

        for name in ("alpha", "beta", "gamma"):
            await create(name)
        try:
            for k in range(OPERATIONS):
                roll = rng.random()
                if k == OPERATIONS // 3:
                    await create("ephemeral")
                elif k == 2 * OPERATIONS // 3 and "ephemeral" in channels:
                    await call("delete_channel", ("not_found",), channel=channels.pop("ephemeral"))
                elif roll < 0.06 and mine:
                    mid = mine.pop(rng.randrange(len(mine)))
                    await call("delete_message", ("not_found",), message=mid)
                else:
                    ch = rng.choice(list(channels.values()))
                    r = await call("send", channel=ch, body=f"m{k} " + "x" * rng.randint(0, 300),
                                   nonce=f"n{k}")
                    if r["channel"]["name"] != "ephemeral":
                        mine.append(r["message"]["id"])
                sent_count += 1
                if k % 10 == 0:
                    await asyncio.sleep(0.08)
        finally:
            await stack.aclose()

    send_task = asyncio.ensure_future(sender())
    restarts: list[str] = []
    try:
        for how in ("kill", "term", "kill"):
            target = sent_count + OPERATIONS // 4
            await wait_for(lambda t=target: sent_count >= t or send_task.done(), 60,
                           what="sender progress")
            if how == "kill":
                await d.kill()
            else:
                assert await d.terminate() == 0
            await asyncio.sleep(master.uniform(0.0, 0.5))
            await d.start(d.port)
            proxy.target_port = d.port
            restarts.append(how)
        await asyncio.wait_for(send_task, 120 * UNIT)
        proxy.stop_chaos()
        final_seq = await healthz_seq(d.http)
        started = time.monotonic()
        done, pending = await asyncio.wait(sub_tasks, timeout=120 * UNIT)
        for t in done:
            t.result()  # re-raise an assertion from a subscriber
        assert not pending, (
            f"{len(pending)} subscribers did not reach seq {final_seq}: "
            + ", ".join(f"#{s.index} at {s.last}" for s in subs if s.last < final_seq))
        print(f"subscribers caught up {time.monotonic() - started:.2f} s after the sender ended")
    finally:
        for t in sub_tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*sub_tasks, return_exceptions=True)
        await proxy.close()

    log = await stored_log(d.url, sub_token, final_seq)
    deleted = {e["message"]["id"] for e in log if e["kind"] == "message.deleted"}
    kinds = {e["kind"] for e in log}
    assert kinds == {"channel.created", "channel.deleted", "message.sent", "message.deleted"}
    for s in subs:
        got = [e for e in s.events if e["seq"] <= final_seq and not (
            e["kind"] == "message.sent" and e["message"]["id"] in deleted)]
        assert_same_stream(got, log, f"subscriber {s.index} ({s.connects} connections)")
        assert s.connects >= 3, (s.index, s.connects)  # at least the restarts cut it

    print(f"{len(log)} events (final seq {final_seq}); restarts {restarts}; proxy accepted "
          f"{proxy.connections} connections and cut {proxy.cuts}; subscriber connects "
          f"{sum(s.connects for s in subs)}, self-cuts {sum(s.self_cuts for s in subs)}")
    assert proxy.cuts > 0
    assert "Traceback" not in "".join(d.log), "".join(d.log)[-3000:]
