"""MEMBERSHIP: what private channels cost, measured in-process on the real code.

Three figures, each from the real store and hub, without WebSocket clients (the
socket path is the same as for public events, measured by S2 and S3):

* **fanout choice** (:meth:`chatd.fanout.Hub.publish`): 1,000 subscribers of
  1,000 users, batches of 10 events of which 10 % belong to private channels of
  10 members. Deliveries/s of the hub's work (choosing recipients, joining and
  writing frames to in-memory sinks), next to the same load all public; and
  the cost of one private event with 1,000 and with 10,000 other connections,
  which must not grow with them.
* **filtered replay** (:meth:`chatd.store.Store.read_events`, the catch-up
  read): a reader that may see half of 200,000 stored events (the other half
  are in a private channel it is not in), pages of 1,000 from seq 0 on sqlite.
  Target >= 100,000 events/s.
* **boot** (:meth:`chatd.store.Store.boot`): a user who sees 200 channels over a
  100,000-message history, with read positions: p50/p99 of boot (target <=
  20 ms).

Run: ``python -m bench.membership [--events N]``; also ``python -m bench --only
MEMBERSHIP`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chatd import wire
from chatd.fanout import Hub
from chatd.ops import (
    AddMemberOp,
    CreateChannelOp,
    CreateUserOp,
    EventPage,
    MarkReadOp,
    Published,
    SendOp,
    StoredUser,
)
from chatd.sink import text_frame
from chatd.store import open_store

from .scenarios import Bench, Row, fanout_round, log, verdict
from .workers import Pool, split

TITLE = "private channels: fanout choice, filtered replay, boot (in-process)"
SECTION = "MEMBERSHIP"


class _Sink:
    """Counts what the hub writes; never buffered (a reader that keeps up)."""

    __slots__ = ("bytes", "open", "writes")

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0
        self.open = True

    def write(self, frames: bytes) -> None:
        self.writes += 1
        self.bytes += len(frames)

    def send(self, payload: bytes) -> None:
        self.write(text_frame(payload))

    def buffered(self) -> int:
        return 0

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        self.open = False


async def _no_replay(after: int, channels: object, limit: int, user_id: str) -> EventPage:
    return EventPage([], after, 0)


def _frame(seq: int, channel: str) -> bytes:
    return wire.encode(wire.Event(seq, "2026-12-01T00:00:00.000Z", "message.sent",
                                  wire.Channel(channel, "c"), wire.User("U1", "u"),
                                  wire.EventMessage("M" + str(seq), "x" * 40)))


async def fanout(
    n: int = 1000, batches: int = 2000, private_share: float = 0.1
) -> dict[str, float]:
    """Deliveries/s of Hub.publish for a mix, and for the same load all public."""
    out: dict[str, float] = {}
    for label, share in (("public", 0.0), ("mix", private_share)):
        hub = Hub(0, _no_replay)
        sinks = [_Sink() for _ in range(n)]
        for i, s in enumerate(sinks):
            hub.subscribe(s, None, None, f"U{i}")
        groups = [frozenset(f"U{j}" for j in range(g * 10, g * 10 + 10)) for g in range(n // 10)]
        seq = 0
        deliveries = 0
        plan: list[list[Published]] = []
        for b in range(batches):
            batch = []
            for k in range(10):
                seq += 1
                if share and (b * 10 + k) % round(1 / share) == 0:
                    g = groups[(b * 10 + k) % len(groups)]
                    batch.append(Published(seq, "Cpriv", _frame(seq, "Cpriv"), g))
                    deliveries += len(g)
                else:
                    batch.append(Published(seq, "Cpub", _frame(seq, "Cpub")))
                    deliveries += n
            plan.append(batch)
        t0 = time.perf_counter()
        for batch in plan:
            hub.publish(batch)
        wall = time.perf_counter() - t0
        out[f"{label}_deliveries_per_s"] = deliveries / wall
        out[f"{label}_us_per_event"] = wall / (batches * 10) * 1e6
    for others in (1000, 10_000):
        hub = Hub(0, _no_replay)
        for i in range(others):
            hub.subscribe(_Sink(), None, None, f"U{i}")
        members = frozenset(f"M{j}" for j in range(10))
        for m in members:
            hub.subscribe(_Sink(), None, None, m)
        rounds = 20_000
        events = [Published(s + 1, "Cpriv", _frame(s + 1, "Cpriv"), members)
                  for s in range(rounds)]
        t0 = time.perf_counter()
        for e in events:
            hub.publish([e])
        out[f"private_event_us_with_{others}_others"] = (
            (time.perf_counter() - t0) / rounds * 1e6)
    return out


async def _fill(db: str, events: int) -> tuple[list[StoredUser], list[str]]:
    store = open_store(db)
    await store.open()
    try:
        (alice, bob), _ = await store.apply(
            [CreateUserOp("alice", "alice", "h"), CreateUserOp("bob", "bob", "h")], 1000)
        a = wire.User(alice.id, alice.name)
        (public, private), _ = await store.apply(
            [CreateChannelOp(a, "public", "public"),
             CreateChannelOp(a, "private", "private", private=True)], 1000)
        channels = [public.id, private.id]
        for start in range(0, events, 2000):
            ops = [SendOp(a, channels[i % 2], f"message {start + i} words here", None)
                   for i in range(min(2000, events - start))]
            await store.apply(ops, 2000)  # type: ignore[arg-type]
        return [alice, bob], channels
    finally:
        await store.close()


async def filtered_replay(events: int = 200_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="chatd-bench-members-") as tmp:
        db = str(Path(tmp) / "m.db")
        (_, bob), _ = await _fill(db, events)
        store = open_store(db)
        await store.open()
        try:
            runs = []
            for _ in range(3):
                after, seen = 0, 0
                t0 = time.perf_counter()
                while True:
                    page = await store.read_events(after, None, 1000, bob.id)
                    seen += len(page.events)
                    if not page.more:
                        break
                    after = page.scanned
                runs.append((seen, time.perf_counter() - t0))
        finally:
            await store.close()
    seen, wall = sorted(runs, key=lambda r: r[1])[1]
    return {"visible_events": seen, "stored_events": events, "seconds": wall,
            "visible_events_per_s": seen / wall, "scanned_events_per_s": events / wall}


async def boot_time(channels: int = 200, messages: int = 100_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="chatd-bench-boot-") as tmp:
        store = open_store(str(Path(tmp) / "b.db"))
        await store.open()
        try:
            (alice, bob), _ = await store.apply(
                [CreateUserOp("alice", "alice", "h"), CreateUserOp("bob", "bob", "h")], 1000)
            a = wire.User(alice.id, alice.name)
            b = wire.User(bob.id, bob.name)
            made, _ = await store.apply(
                [CreateChannelOp(a, f"c{i}", f"c{i}", private=i % 2 == 1)
                 for i in range(channels)], 1000)
            ids = [c.id for c in made]  # type: ignore[attr-defined]
            await store.apply([AddMemberOp(a, c, bob.id) for c in ids[1::2]], 1000)
            for start in range(0, messages, 2000):
                await store.apply([SendOp(a if i % 3 else b, ids[(start + i) % channels],
                                          f"m{start + i}", None)
                                   for i in range(min(2000, messages - start))], 2000)
            # bob has read about half of every channel
            seq, _ = await store.position()
            await store.apply([MarkReadOp(b, c, seq // 2) for c in ids], 3000)
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                _, _, seen = await store.boot(bob.id)
                times.append(time.perf_counter() - t0)
            assert len(seen) == channels
            unread = sum(c.unread for c in seen)
        finally:
            await store.close()
    times.sort()
    return {"channels": channels, "messages": messages, "unread_total": unread,
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[int(len(times) * 0.99) - 1] * 1000}


async def run(events: int = 200_000) -> dict[str, dict[str, float]]:
    return {"fanout": await fanout(), "filtered_replay": await filtered_replay(events),
            "boot": await boot_time()}


def report(results: dict[str, dict[str, float]]) -> list[str]:
    f, r, b = results["fanout"], results["filtered_replay"], results["boot"]
    return [
        f"fanout choice, 1,000 subscribers, batches of 10: all public "
        f"{f['public_deliveries_per_s']:,.0f} deliveries/s ({f['public_us_per_event']:.1f} µs"
        f"/event); 10 % private (10 members) {f['mix_deliveries_per_s']:,.0f} deliveries/s "
        f"({f['mix_us_per_event']:.1f} µs/event)",
        f"one private event (10 members): {f['private_event_us_with_1000_others']:.1f} µs with "
        f"1,000 other connections, {f['private_event_us_with_10000_others']:.1f} µs with 10,000",
        f"filtered replay (sqlite): {r['visible_events']:,.0f} of {r['stored_events']:,.0f} "
        f"events visible in {r['seconds']:.2f} s: {r['visible_events_per_s']:,.0f} visible "
        f"events/s ({r['scanned_events_per_s']:,.0f} scanned/s); target >= 100,000: "
        + ("PASS" if r["visible_events_per_s"] >= 100_000 else "MISS"),
        f"boot, {b['channels']} channels over {b['messages']:,} messages ({b['unread_total']:,}"
        f" unread): p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms; target p99 <= 20 ms: "
        + ("PASS" if b["p99_ms"] <= 20 else "MISS"),
    ]


async def _members(host: str, port: int, token: str, n: int, size: int
                   ) -> tuple[list[str], list[str], list[str]]:
    """``n`` users (tokens), and private channels of ``size`` members each made by
    the bench user (who sends); returns the tokens, each user's channel, and the
    channels."""
    import msgspec
    import websockets

    async with websockets.connect(f"ws://{host}:{port}/ws", compression=None,
                                  max_size=None) as ws:
        ref = 0

        async def ok(op: str, **args: object) -> dict[str, object]:
            nonlocal ref
            ref += 1
            await ws.send(msgspec.json.encode({"op": op, "ref": ref, **args}).decode())
            while True:
                reply = msgspec.json.decode(await ws.recv())
                if reply.get("ref") == ref:
                    if reply.get("type") != "ok":
                        raise RuntimeError(f"{op}: {reply}")
                    return reply  # type: ignore[no-any-return]

        tokens, ids = [], []
        for i in range(n):
            r = await ok("login", name=f"member{i}", password="bench-password-1")
            tokens.append(str(r["token"]))
            ids.append(str(r["user"]["id"]))  # type: ignore[index]
        await ok("auth", token=token)
        channels, mine = [], []
        for g in range(0, n, size):
            made = await ok("create_channel", name=f"private{g}", private=True)
            cid = str(made["channel"]["id"])  # type: ignore[index]
            channels.append(cid)
            for user_id in ids[g:g + size]:
                await ok("add_member", channel=cid, user=user_id)
                mine.append(cid)
    return tokens, mine, channels


def run_s2mix(b: Bench, n: int = 1000, rate: int = 200, size: int = 10,
              every: int = 10) -> list[Row]:
    """S2 over WebSocket with ``n`` subscribers of ``n`` users: the same load all
    public, then with every ``every``-th message in one of the private channels of
    ``size`` members (each subscriber is in one). Every subscriber is checked for
    exactly the public events and its own channel's, in order."""
    duration = b.sizes.s2_duration
    with b.daemon("s2mix") as (d, params):
        tokens, mine, channels = asyncio.run(
            _members(d.host, d.port, params["token"], n, size))
        per = split(n, b.sizes.sub_workers)
        sub_params, at = [], 0
        for k in per:
            sub_params.append({**params, "n": k, "tokens": tokens[at:at + k],
                               "mine": mine[at:at + k]})
            at += k
        with Pool("paced", [params]) as public, \
                Pool("paced", [{**params, "private": channels, "every": every}]) as mixed, \
                Pool("subs", sub_params) as subs:
            public.gather(60, "ready")
            mixed.gather(60, "ready")
            subs.gather(300, "ready")
            base = fanout_round(b, d, public, subs, n, rate, duration,
                                f"S2 N={n} @{rate}/s, all public, {n} users")
            mix = fanout_round(b, d, mixed, subs, n, rate, duration,
                               f"S2-mix N={n} @{rate}/s, 1 in {every} private ({size} members)")
    for row in (base, mix):
        p99 = row.detail["p99_ms"]
        row.target = "p99 <= 100 ms, each subscriber exactly its events, in order"
        row.status = verdict(p99 is not None and p99 <= 100
                             and row.detail["all_delivered_in_order"])
        row.section = SECTION
    return [base, mix]


def rows(quick: bool = False) -> list[Row]:
    """The MEMBERSHIP section of ``python -m bench``."""
    results = asyncio.run(run(20_000 if quick else 200_000))
    lines = report(results)
    for line in lines:
        log("MEMBERSHIP: " + line)
    f, r, b = results["fanout"], results["filtered_replay"], results["boot"]
    return [
        Row("S2-mix hub, 1,000 subs, 10 % private", f["mix_deliveries_per_s"], "deliveries/s",
            note=lines[0] + "; " + lines[1], detail=f, section=SECTION),
        Row("S3 filtered replay (store read)", r["visible_events_per_s"], "events/s",
            ">= 100,000 events/s", verdict(r["visible_events_per_s"] >= 100_000),
            note=lines[2], detail=r, section=SECTION),
        Row("boot, 200 channels / 100k messages", b["p99_ms"], "ms p99", "<= 20 ms",
            verdict(b["p99_ms"] <= 20), note=lines[3], detail=b, section=SECTION),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    args = p.parse_args()
    for line in report(asyncio.run(run(args.events))):
        print(line, flush=True)


if __name__ == "__main__":
    main()
