"""``python -m bench.store_batches --db DB``: the store's write path alone.

One store on ``--db`` (a sqlite path or a postgresql:// URL, as ``chatd serve``
takes it) applies batches of ``--batch`` sends, each with a nonce, one after the
other for ``--seconds``, as the group-commit writer would under load; prints
batches/s, sends/s and this process's CPU time per batch (``--no-nonces``:
sends without one). On PostgreSQL it then traces a few batches on the
writing connection (libpq's protocol trace) and prints the round trips per
batch: each time the client waits for the server after sending is one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from chatd import wire
from chatd.ops import CreateChannelOp, CreateUserOp, Op, SendOp
from chatd.store import Store, open_store


async def _setup(store: Store) -> tuple[wire.User, wire.Channel]:
    (user,), _ = await store.apply([CreateUserOp("bench", "bench", "h")], 1)
    me = wire.User(user.id, user.name)  # type: ignore[union-attr]
    (channel,), _ = await store.apply([CreateChannelOp(me, "bench", "bench")], 1)
    assert isinstance(channel, wire.Channel)
    return me, channel


def _ops(me: wire.User, channel: wire.Channel, batch: int, n: int, nonces: bool) -> list[Op]:
    return [SendOp(me, channel.id, f"message {n}.{k} " + "x" * 40,
                   f"nonce-{n}-{k}" if nonces else None)
            for k in range(batch)]


def _round_trips(trace: str) -> int:
    """Flights from client to server in a libpq trace (F: from the client, B: back)."""
    flights, last = 0, "B"
    for line in trace.splitlines():
        direction = line[:1]
        if direction == "F" and last == "B":
            flights += 1
        if direction in ("F", "B"):
            last = direction
    return flights


async def run(db: str, seconds: float, batch: int, nonces: bool) -> dict[str, Any]:
    store = open_store(db)
    await store.open()
    try:
        me, channel = await _setup(store)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - start) < seconds:
            await store.apply(_ops(me, channel, batch, n, nonces), 1000 + n)
            n += 1
        cpu = time.process_time() - cpu
        out: dict[str, Any] = {
            "db": "postgresql" if "://" in db else "sqlite", "batch": batch, "nonces": nonces,
            "batches_per_s": round(n / elapsed, 1), "sends_per_s": round(n * batch / elapsed),
            "chatd_cpu_ms_per_batch": round(cpu * 1000 / n, 2),
        }
        writer = getattr(store.backend, "_w", None)
        if writer is not None and hasattr(writer, "pgconn"):
            ops = [_ops(me, channel, batch, n + 1 + i, nonces) for i in range(20)]
            out["round_trips_per_batch"] = await _traced(store, writer, ops)
        return out
    finally:
        await store.close()


async def _traced(store: Store, writer: Any, batches: list[list[Op]]) -> float:
    """Round trips per batch on the writing connection while ``batches`` are applied."""
    from psycopg.pq import Trace

    with tempfile.TemporaryFile("w+") as f:
        writer.pgconn.trace(f.fileno())
        writer.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)
        for ops in batches:
            await store.apply(ops, 10**12)
        writer.pgconn.untrace()
        f.seek(0)
        return _round_trips(f.read()) / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store_batches",
                                description=__doc__.splitlines()[0])
    p.add_argument("--db", default="",
                   help="sqlite path or postgresql:// URL (default: a new temporary sqlite file)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-nonces", action="store_true", help="sends without a nonce")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.fspath(Path(tmp) / "bench.db")
        print(asyncio.run(run(db, args.seconds, args.batch, not args.no_nonces)))


if __name__ == "__main__":
    main()
