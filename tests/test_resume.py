"""Gapless resume: disconnects at random points, and the subscribe-since race of issue 2.

The reference for every comparison is the stored log: what a fresh
``subscribe since=0`` replays once the writers have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from typing import Any

from .helpers import (
    Pump,
    assert_same_stream,
    assert_strictly_increasing,
    client,
    plain_channel,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
    wait_for,
)
from .support import UNIT, WS

# Every random choice derives from SEED; set CHATD_TEST_SEED to replay a failing run.
SEED = int(os.environ.get("CHATD_TEST_SEED") or random.randrange(2**32))


def rng(salt: str) -> random.Random:
    return random.Random(f"{SEED}-{salt}")


async def _setup(url: str, users: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Log ``users`` users in once each; return their tokens and three channels."""
    tokens = []
    for i in range(users):
        async with WS.connect(url) as ws:
            tokens.append((await ws.login(f"user{i}"))["token"])
    async with client(url, token=tokens[0]) as ws:
        chans = [(await ws.ok("create_channel", name=f"chan{i}"))["channel"] for i in range(3)]
    return tokens, chans


class Senders:
    """``n`` connections sending continuously until stopped or until ``budget`` sends
    have been acknowledged; tracks the highest acked seq."""

    def __init__(self, url: str, tokens: list[str], chans: list[dict[str, Any]], n: int,
                 mix: bool = False, budget: int | None = None):
        self.url, self.tokens, self.chans, self.n, self.mix = url, tokens, chans, n, mix
        self.budget = budget
        self.top = 0
        self.acked = 0
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self._run(i)) for i in range(self.n)]

    @property
    def running(self) -> bool:
        return not self.stop.is_set() and (self.budget is None or self.acked < self.budget)

    async def _run(self, i: int) -> None:
        r = rng(f"sender{i}")
        async with client(self.url, token=self.tokens[i % len(self.tokens)]) as ws:
            mine: list[str] = []
            k = 0
            while self.running:
                if self.mix and mine and r.random() < 0.15:
                    await ws.ok("delete_message", message=mine.pop(r.randrange(len(mine))))
                    continue
                if self.mix and r.random() < 0.02:
                    await ws.ok("create_channel", name=f"s{i}-{k}")
                    k += 1
                    continue
                # sometimes several in flight at once
                burst = r.choice([1, 1, 1, 2, 3])
                for _ in range(burst):
                    ch = self.chans[r.randrange(len(self.chans))]["id"]
                    await ws.send_raw(json.dumps({"op": "send", "ref": k, "channel": ch,
                                                  "body": f"s{i}-{k}"}))
                    k += 1
                for _ in range(burst):
                    f = await ws.recv()
                    if f["type"] == "error" and f["code"] == "rate_limited":
                        # not sent, so not in the log; back off like a polite client
                        await asyncio.sleep(f.get("retry_after") or 0.1)
                        continue
                    assert f["type"] == "ok", f
                    self.top = max(self.top, f["message"]["seq"])
                    self.acked += 1
                    mine.append(f["message"]["id"])

    def check(self) -> None:
        for t in self.tasks:
            if t.done():
                t.result()  # raise a sender's failure here

    async def wait_acked(self, n: int) -> None:
        target = self.acked + n

        def done() -> bool:
            self.check()
            return self.acked >= target
        await wait_for(done, 60, what=f"{n} more acked sends")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


def deleted_ids(log: list[dict[str, Any]]) -> set[str]:
    return {e["message"]["id"] for e in log if e["kind"] == "message.deleted"}


def without_deleted_sends(events: list[dict[str, Any]], gone: set[str]) -> list[dict[str, Any]]:
    """A live subscriber may have seen a message.sent whose message was deleted later;
    the stored log no longer has it. Drop those to compare with the log."""
    return [e for e in events
            if not (e["kind"] == "message.sent" and e["message"]["id"] in gone)]


# ------------------------------------------------------------------ resume at random points


async def _resuming_subscriber(url: str, token: str, r: random.Random,
                               mark: asyncio.Future[int],
                               channels: list[str] | None = None) -> list[dict[str, Any]]:
    """Subscribe, read a random number of events, drop the connection in a random way,
    resume with (epoch, last seq); repeat. Once ``mark`` is known, resume a last time
    and read up to it. Returns every event seen."""
    seen: list[dict[str, Any]] = []
    epoch: str | None = None
    while True:
        final = mark.done()
        async with WS.connect(url, max_queue=None) as ws:
            await ws.ok("auth", token=token)
            args: dict[str, Any] = {"since": seen[-1]["seq"] if seen else 0}
            if epoch is not None:
                args["epoch"] = epoch
            if channels is not None:
                args["channels"] = channels
            reply = await ws.ok("subscribe", **args)
            epoch = epoch or reply["epoch"]
            assert reply["epoch"] == epoch
            assert not ws.events, "an event came before the subscribe ok"
            if final:
                if args["since"] >= mark.result():
                    return seen  # it had already read the last event
                try:
                    seen += await ws.events_until(mark.result(), timeout=30)
                except TimeoutError:
                    raise AssertionError(
                        f"seed {SEED}: resumed with {args} and never got the last event "
                        f"{mark.result()}; got {[e['seq'] for e in ws.events]}"
                    ) from None
                return seen
            n = r.choice([0, 1, 2, 5, 20, 100])
            for _ in range(n):
                try:
                    seen.append(await ws.next_event(timeout=0.3))
                except TimeoutError:
                    break
            how = r.random()
            if how < 0.4:
                # vanish without a close handshake, possibly mid-replay
                ws.conn.transport.abort()
            elif how < 0.6:
                # unsubscribe first, then close politely
                await ws.send_raw(json.dumps({"op": "unsubscribe"}))
            # else: a normal close when the context exits
        await asyncio.sleep(r.random() * 0.05)


async def test_resume_after_random_disconnects(daemon):
    tokens, chans = await _setup(daemon.url, 3)
    senders = Senders(daemon.url, tokens, chans, 4, mix=True)
    senders.start()
    mark: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    subs = [
        asyncio.ensure_future(_resuming_subscriber(daemon.url, tokens[i % 3], rng(f"sub{i}"),
                                                   mark, [chans[0]["id"]] if i == 3 else None))
        for i in range(4)
    ]
    try:
        await senders.wait_acked(2000)
    finally:
        await senders.finish()
    async with client(daemon.url, token=tokens[0]) as ws:
        mark.set_result((await ws.ok("send", channel=chans[0]["id"], body="end"))["message"]["seq"])
    streams = await asyncio.gather(*subs)

    log = await stored_log(daemon.url, tokens[1], mark.result())
    assert log[-1]["seq"] == mark.result()
    gone = deleted_ids(log)
    assert gone, "the senders deleted some messages"
    for i, seen in enumerate(streams):
        assert_strictly_increasing(seen)  # no duplicate, never backwards across reconnects
        want = log if i != 3 else [e for e in log if e["channel"]["id"] == chans[0]["id"]]
        assert_same_stream(without_deleted_sends(seen, gone), want, f"resuming subscriber {i}")


# ------------------------------------------------------------------ the race of issue 2 item 4


async def test_subscribe_since_race(daemon):
    """Many senders; subscribers join at random moments with since = a random earlier seq.

    Each must get exactly the stored events > since, in order, with no gap and no
    duplicate across the handover from replay to live. Long-lived subscribers stay
    to the end and are compared with the whole log; short-lived ones subscribe,
    read past the handover, leave and come back, again and again while the senders
    run, and each round is compared with the log between its ``since`` and the
    last event it read.
    """
    n_senders, n_long, n_roamers, budget = 12, 6, 8, 6000
    tokens, chans = await _setup(daemon.url, 4)
    senders = Senders(daemon.url, tokens, chans, n_senders, budget=budget)
    senders.start()

    def subscribe_args(r: random.Random, mode: int, near: bool
                       ) -> tuple[dict[str, Any], list[str] | None]:
        top = senders.top
        if mode == 0:
            since = 0 if not near else max(0, top - 200)
        elif mode == 1:
            since = top
        elif mode == 2:
            since = max(0, top - 1)
        else:
            since = max(0, top - r.randint(0, 60)) if near else r.randint(0, top)
        channels = [chans[r.randrange(3)]["id"]] if mode == 6 else None
        args: dict[str, Any] = {"since": since}
        if channels:
            args["channels"] = channels
        if mode == 5:
            args = {}  # no since: the events after resume_point
        return args, channels

    async with contextlib.AsyncExitStack() as stack:

        async def long_lived(j: int) -> tuple[int, list[str] | None, Pump]:
            r = rng(f"race{j}")
            at = r.randint(0, budget * 3 // 4)
            await wait_for(lambda: senders.acked >= at or not senders.running, 60)
            ws = await stack.enter_async_context(client(daemon.url, token=tokens[j % 4]))
            top = senders.top
            args, channels = subscribe_args(r, j % 7, near=False)
            reply = await ws.ok("subscribe", **args)
            since = args.get("since", reply["resume_point"])
            assert since >= (top if "since" not in args else 0)
            pump = Pump(ws)
            stack.push_async_callback(pump.stop)
            return since, channels, pump

        async def roamer(j: int) -> list[tuple[int, list[str] | None, list[dict[str, Any]]]]:
            r = rng(f"roam{j}")
            done = []
            k = 0
            while senders.running:
                await asyncio.sleep(r.uniform(0, 0.1) * UNIT)
                async with client(daemon.url, token=tokens[j % 4]) as ws:
                    args, channels = subscribe_args(r, (j + k) % 7, near=True)
                    reply = await ws.ok("subscribe", **args)
                    since = args.get("since", reply["resume_point"])
                    # read past what was committed when we subscribed: past the handover
                    target = senders.top + r.randint(1, 60)
                    while (not ws.events or ws.events[-1]["seq"] < target) and senders.running:
                        with contextlib.suppress(TimeoutError):
                            await ws.next_event(timeout=0.2)
                    if ws.events:
                        done.append((since, channels, list(ws.events)))
                k += 1
            return done

        longs = [asyncio.ensure_future(long_lived(j)) for j in range(n_long)]
        roams = [asyncio.ensure_future(roamer(j)) for j in range(n_roamers)]
        try:
            def finished() -> bool:
                senders.check()
                for t in longs + roams:
                    if t.done():
                        t.result()
                return not senders.running and all(t.done() for t in longs + roams)
            await wait_for(finished, 120, what="the senders' budget")
        finally:
            await senders.finish()
        results = [await t for t in longs]
        short = [rnd for t in roams for rnd in await t]
        assert len(short) >= n_roamers, "the roamers had time for a round each"

        async with client(daemon.url, token=tokens[0]) as ws:
            marks = [(await ws.ok("send", channel=c["id"], body="end"))["message"]["seq"]
                     for c in chans]
        log = await stored_log(daemon.url, tokens[1], marks[-1])
        assert [e["seq"] for e in log[-3:]] == marks
        assert len(log) == 3 + senders.acked + 3, "the log holds every acked send once"

        def expected(since: int, channels: list[str] | None, upto: int) -> list[dict[str, Any]]:
            return [e for e in log if since < e["seq"] <= upto
                    and (channels is None or e["channel"]["id"] in channels)]

        for j, (since, channels, events) in enumerate(short):
            assert_same_stream(events, expected(since, channels, events[-1]["seq"]),
                               f"round {j} (since={since}, channels={channels})")
        for j, (since, channels, pump) in enumerate(results):
            want = expected(since, channels, marks[-1])
            await pump.until(want[-1]["seq"])
            assert_same_stream(pump.ws.events, want,
                               f"subscriber {j} (since={since}, channels={channels})")


async def test_boot_snapshot_consistent_under_concurrent_creates(daemon):
    """boot's channels are exactly those that exist at resume_point, even while others
    create and delete channels."""
    tokens, _ = await _setup(daemon.url, 2)
    stop = asyncio.Event()

    async def churn(i: int) -> None:
        r = rng(f"churn{i}")
        async with client(daemon.url, token=tokens[i]) as ws:
            mine: list[str] = []
            k = 0
            while not stop.is_set():
                if mine and r.random() < 0.4:
                    await ws.ok("delete_channel", channel=mine.pop(r.randrange(len(mine))))
                else:
                    ch = await ws.ok("create_channel", name=f"churn{i}-{k}")
                    mine.append(ch["channel"]["id"])
                    k += 1

    tasks = [asyncio.ensure_future(churn(i)) for i in range(2)]
    boots = []
    try:
        async with client(daemon.url, token=tokens[0]) as ws:
            for _ in range(15):
                boots.append(await ws.ok("boot"))
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    async with client(daemon.url, token=tokens[0]) as ws:
        last = (await ws.ok("create_channel", name="last"))["channel"]
        final = await ws.ok("boot")
    log = await stored_log(daemon.url, tokens[0], final["resume_point"])
    assert log[-1]["channel"] == last
    for b in [*boots, final]:
        live: dict[str, dict[str, Any]] = {}
        for e in log:
            if e["seq"] > b["resume_point"]:
                break
            if e["kind"] == "channel.created":
                live[e["channel"]["id"]] = e["channel"]
            elif e["kind"] == "channel.deleted":
                live.pop(e["channel"]["id"], None)
        assert sorted(map(plain_channel, b["channels"]), key=lambda c: c["id"]) == \
            sorted(live.values(), key=lambda c: c["id"]), b["resume_point"]


async def test_resume_exactly_at_each_point(daemon):
    """Resume from every seq of a small log: exactly the suffix, each time."""
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        ids = []
        for i in range(8):
            ids.append((await ws.ok("send", channel=ch, body=f"{i}"))["message"]["id"])
        await ws.ok("delete_message", message=ids[3])
        last = (await ws.ok("send", channel=ch, body="last"))["message"]["seq"]
        log = await stored_log(daemon.url, ws.me["token"], last)
        epoch = (await ws.ok("boot"))["epoch"]
        for since in range(0, last + 1):
            ws.events.clear()
            await ws.ok("subscribe", since=since, epoch=epoch)
            want = [e for e in log if e["seq"] > since]
            if want:
                await ws.events_until(last)
            await ws.ok("ping")
            assert ws.events == want, since


async def test_resubscribe_cycles_on_one_connection(daemon):
    """subscribe (with a replay) / unsubscribe / subscribe ... on one connection, quickly."""
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        for i in range(60):
            await ws.send_raw(json.dumps({"op": "send", "ref": i, "channel": ch, "body": f"{i}"}))
        last = 0
        for _ in range(60):
            last = (await ws.recv())["message"]["seq"]
        log = await stored_log(daemon.url, ws.me["token"], last)
        for k in range(30):
            ws.events.clear()
            await ws.ok("subscribe", since=k % 7)
            if k % 3 == 0:
                # read the whole replay this time
                await ws.events_until(last)
                assert ws.events == [e for e in log if e["seq"] > k % 7]
            await ws.ok("unsubscribe")
        ws.events.clear()
        await ws.ok("subscribe", since=0)
        assert await ws.events_until(last) == log


async def test_abrupt_disconnects_do_not_hurt_the_server(daemon):
    """Connections that vanish mid-replay or mid-command leave the daemon healthy."""
    async with client(daemon.url, "alice") as ws:
        token = ws.me["token"]
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        for i in range(0, 200, 50):
            for k in range(50):
                await ws.send_raw(json.dumps({"op": "send", "ref": i + k, "channel": ch,
                                              "body": "x" * 1000}))
            for _ in range(50):
                assert (await ws.recv())["type"] == "ok"
    for _ in range(10):
        async with WS.connect(daemon.url, max_queue=None) as c:
            await c.ok("auth", token=token)
            await c.send_raw(json.dumps({"op": "subscribe", "since": 0}))
            await c.send_raw(json.dumps({"op": "send", "channel": ch, "body": "y"}))
            c.conn.transport.abort()
    async with client(daemon.url, token=token) as ws:
        hist = (await ws.ok("history", channel=ch, limit=500))["messages"]
        assert len(hist) >= 200
        assert len({m["id"] for m in hist}) == len(hist)
        await ws.ok("ping")
