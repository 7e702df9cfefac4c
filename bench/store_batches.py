"""``python -m bench.store_batches --db DB``: the store's write path alone.

One store on ``--db`` (a sqlite path or a postgresql:// URL, as ``chatd serve``
takes it) applies batches of ``--batch`` sends, each with a nonce, one after the
other for ``--seconds``, as the group-commit writer would under load; prints
batches/s, sends/s, this process's CPU time per batch and the wall time of a
batch's ``apply`` (p50, p99, max: the hand-off to the writing thread, the
transaction and its fsync; ``--no-nonces``: sends without one). The search
index trails as ``chatd serve``'s does, by default. On PostgreSQL it then
traces a few batches on the writing connection (libpq's protocol trace) and
prints the round trips per batch: each time the client waits for the server
after sending is one.

``--breakdown`` (sqlite) also splits the writing thread's CPU time
(``time.thread_time``: user and kernel, the fsync's included) per send by
statement: each ``execute``/``executemany`` on the writing connection is timed
by the table it writes, and what is left of the transaction is the rules'
Python (checks, the event's frame, ids), with the search words
(:func:`chatd.search.index_text`) apart. The timing costs a little CPU itself.

``--frames`` (sqlite), after the timed run: the WAL frames 64 more batches
write per commit, by the b-tree of each frame's page (``dbstat``), with
automatic checkpoints off while they are counted. Each frame is a page to
write and sync; unlike time, this count does not move between runs.
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
from chatd.config import Config
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


async def _frames(store: Store, me: wire.User, channel: wire.Channel, batch: int, n: int,
                  nonces: bool, commits: int = 64) -> dict[str, float]:
    """WAL frames per commit of ``commits`` more batches, by b-tree (sqlite)."""
    import sqlite3
    import struct
    from collections import Counter

    backend: Any = store.backend

    def checkpoint(auto: int) -> None:
        backend._w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        backend._w.execute(f"PRAGMA wal_autocheckpoint = {auto}").fetchall()

    await store.run_on_writer(lambda: checkpoint(0))
    for i in range(commits):
        await store.apply(_ops(me, channel, batch, n + i, nonces), 1000 + n + i)

    def read_wal() -> bytes:
        # on the writing thread: nothing writes meanwhile
        wal = Path(backend.path + "-wal").read_bytes()
        checkpoint(1000)
        return wal

    wal = await store.run_on_writer(read_wal)
    pages = [struct.unpack(">I", wal[off:off + 4])[0]  # a frame header: its page first
             for off in range(32, len(wal) - 23, 24 + 4096)]
    conn = sqlite3.connect(backend.path)
    try:
        names = dict(conn.execute("SELECT pageno, name || ' ' || pagetype FROM dbstat"))
    finally:
        conn.close()
    count = Counter("page 1 (the header)" if p == 1 else names.get(p, "freed") for p in pages)
    out = {name: round(k / commits, 2) for name, k in count.most_common()}
    return {"all": round(len(pages) / commits, 2), **out}


def _quantiles(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {f"p{q}": round(s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000, 3)
            for q in (50, 99)} | {"max": round(s[-1] * 1000, 3)}


async def run(db: str, seconds: float, batch: int, nonces: bool,
              breakdown: bool = False, index_batch: int = 0,
              frames: bool = False) -> dict[str, Any]:
    store = open_store(db, search_index_batch=index_batch)
    await store.open()
    spent: dict[str, float] = defaultdict(float)
    try:
        me, channel = await _setup(store)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        walls: list[float] = []
        with _breakdown(store, spent) if breakdown else nullcontext():
            while (elapsed := time.perf_counter() - start) < seconds:
                sends = _ops(me, channel, batch, n, nonces)
                t = time.perf_counter()
                await store.apply(sends, 1000 + n)
                walls.append(time.perf_counter() - t)
                n += 1
        cpu = time.process_time() - cpu
        out: dict[str, Any] = {
            "db": "postgresql" if "://" in db else "sqlite", "batch": batch, "nonces": nonces,
            "batches_per_s": round(n / elapsed, 1), "sends_per_s": round(n * batch / elapsed),
            "chatd_cpu_ms_per_batch": round(cpu * 1000 / n, 2),
            "apply_wall_ms": _quantiles(walls),
        }
        if breakdown:
            out["writer_us_per_send"] = _per_send(spent, n * batch)
        writer = getattr(store.backend, "_w", None)
        if writer is not None and hasattr(writer, "pgconn"):
            ops = [_ops(me, channel, batch, n + 1 + i, nonces) for i in range(20)]
            out["round_trips_per_batch"] = await _traced(store, writer, ops)
        if frames:
            out["wal_frames_per_commit"] = await _frames(store, me, channel, batch, n, nonces)
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
    p.add_argument("--search-index-batch", type=int, default=Config().search_index_batch,
                   metavar="N", help="sqlite: let the search index trail by up to N messages"
                   " (default: chatd serve's; 0: each message's entry in its transaction)")
    p.add_argument("--breakdown", action="store_true",
                   help="sqlite: the writing thread's CPU per send, by statement")
    p.add_argument("--frames", action="store_true",
                   help="sqlite: then the WAL frames per commit, by b-tree")
    args = p.parse_args()
    if (args.breakdown or args.frames) and "://" in args.db:
        p.error("--breakdown and --frames read sqlite's writing connection")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.fspath(Path(tmp) / "bench.db")
        out = asyncio.run(run(db, args.seconds, args.batch, not args.no_nonces, args.breakdown,
                              args.search_index_batch, args.frames))
        parts = out.pop("writer_us_per_send", None)
        frames = out.pop("wal_frames_per_commit", None)
        print(out)
        for name, us in (parts or {}).items():
            print(f"  {name:<44} {us:7.1f} µs per send")
        for name, k in (frames or {}).items():
            print(f"  {name:<44} {k:7.2f} WAL frames per commit")


if __name__ == "__main__":
    main()
