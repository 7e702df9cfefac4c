"""``python -m bench.store_batches --db DB``: the store's write path alone.

One store on ``--db`` (a sqlite path or a postgresql:// URL, as ``chatd serve``
takes it) applies batches of ``--batch`` sends, each with a nonce, one after the
other for ``--seconds``, as the group-commit writer would under load; prints
batches/s, sends/s and this process's CPU time per batch (``--no-nonces``:
sends without one). On PostgreSQL it then traces a few batches on the
writing connection (libpq's protocol trace) and prints the round trips per
batch: each time the client waits for the server after sending is one.

``--breakdown`` (sqlite) also splits the writing thread's CPU time
(``time.thread_time``: user and kernel, the fsync's included) per send by
statement: each ``execute``/``executemany`` on the writing connection is timed
by the table it writes, and what is left of the transaction is the rules'
Python (checks, the event's frame, ids), with the search words
(:func:`chatd.search.index_text`) apart. The timing costs a little CPU itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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


#: (what a statement writes, how its SQL starts), first match wins
_STATEMENTS = (
    ("events insert", "INSERT INTO events"),
    ("messages insert", "INSERT INTO messages"),
    ("search index insert (FTS5)", "INSERT INTO message_words"),
    ("nonces insert", "INSERT INTO nonces"),
    ("COMMIT (FTS5 segment, WAL frames, fsync)", "COMMIT"),
    ("BEGIN", "BEGIN"),
)


class _TimedConnection:
    """The writing connection, with each statement's thread CPU time added to ``spent``."""

    def __init__(self, conn: Any, spent: dict[str, float]) -> None:
        self._conn, self._spent = conn, spent

    def _timed(self, method: Callable[..., Any], sql: str, *args: Any) -> Any:
        name = next((n for n, head in _STATEMENTS if sql.startswith(head)), "other statements")
        t = time.thread_time()
        try:
            return method(sql, *args)
        finally:
            self._spent[name] += time.thread_time() - t

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(self._conn.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed(self._conn.executemany, sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextmanager
def _breakdown(store: Store, spent: dict[str, float]) -> Iterator[None]:
    """Time the writing thread's work on a sqlite store: statements, the words, the rest."""
    from chatd import sendbuffer

    backend: Any = store.backend
    conn, write_here = backend._w, backend.write_here
    words: Callable[[str], str] = getattr(sendbuffer, "index_text")  # noqa: B009

    def timed_write_here(fn: Callable[[Any], Any]) -> Any:
        t = time.thread_time()
        try:
            return write_here(fn)
        finally:
            spent["transaction"] += time.thread_time() - t

    def timed_words(body: str) -> str:
        t = time.thread_time()
        try:
            return words(body)
        finally:
            spent["search words (index_text)"] += time.thread_time() - t

    backend._w = _TimedConnection(conn, spent)
    backend.write_here = timed_write_here
    setattr(sendbuffer, "index_text", timed_words)  # noqa: B010
    try:
        yield
    finally:
        backend._w = conn
        setattr(sendbuffer, "index_text", words)  # noqa: B010
        del backend.write_here


def _per_send(spent: dict[str, float], sends: int) -> dict[str, float]:
    """µs of the writing thread per send, by part; the transaction's rest is the rules."""
    total = spent.pop("transaction")
    parts = dict(sorted(spent.items(), key=lambda kv: -kv[1]))
    parts["rules (Python: checks, event frame, ids)"] = total - sum(parts.values())
    parts["all of the transaction"] = total
    return {name: round(us * 1e6 / sends, 1) for name, us in parts.items()}


async def run(db: str, seconds: float, batch: int, nonces: bool,
              breakdown: bool = False, index_batch: int = 0) -> dict[str, Any]:
    store = open_store(db, search_index_batch=index_batch)
    await store.open()
    spent: dict[str, float] = defaultdict(float)
    try:
        me, channel = await _setup(store)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        with _breakdown(store, spent) if breakdown else nullcontext():
            while (elapsed := time.perf_counter() - start) < seconds:
                await store.apply(_ops(me, channel, batch, n, nonces), 1000 + n)
                n += 1
        cpu = time.process_time() - cpu
        out: dict[str, Any] = {
            "db": "postgresql" if "://" in db else "sqlite", "batch": batch, "nonces": nonces,
            "batches_per_s": round(n / elapsed, 1), "sends_per_s": round(n * batch / elapsed),
            "chatd_cpu_ms_per_batch": round(cpu * 1000 / n, 2),
        }
        if breakdown:
            out["writer_us_per_send"] = _per_send(spent, n * batch)
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
    p.add_argument("--search-index-batch", type=int, default=0, metavar="N",
                   help="sqlite: let the search index trail by up to N messages (chatd serve's)")
    p.add_argument("--breakdown", action="store_true",
                   help="sqlite: the writing thread's CPU per send, by statement")
    args = p.parse_args()
    if args.breakdown and "://" in args.db:
        p.error("--breakdown times sqlite's writing connection")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.fspath(Path(tmp) / "bench.db")
        out = asyncio.run(run(db, args.seconds, args.batch, not args.no_nonces, args.breakdown,
                              args.search_index_batch))
        parts = out.pop("writer_us_per_send", None)
        print(out)
        for name, us in (parts or {}).items():
            print(f"  {name:<44} {us:7.1f} µs per send")


if __name__ == "__main__":
    main()
