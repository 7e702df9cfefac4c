"""``python -m bench.search``: search over a large store (issue 14).

Fills a store with ``--messages`` messages (default 1,000,000) through the
store itself, in batches of ``--batch`` sends (so the index is built by the
write path it is kept by), in ``--channels`` channels. Bodies are 3 to 14 words
drawn from a Zipf-like vocabulary of ``--vocabulary`` words, so that some
words are in half the messages and most are rare. Then runs ``--queries``
searches of each kind, one at a time, through :meth:`chatd.store.Store.search`
(what the ``search`` command runs, without the WebSocket):

* one-word: a word of the vocabulary (as typed: also a prefix);
* two-word: two words of one stored body (the second also a prefix);
* phrase: two consecutive words of one stored body, in quotes;
* prefix: the first 2 letters of a word;
* in-channel: a one-word query in the first channel only (1/channels of the
  messages).

and prints p50/p99 latency for each, and the index's size on disk (sqlite:
the FTS5 tables and the ``words`` column, from ``dbstat``). ``--db`` may name a
PostgreSQL URL (``--postgres``: a throwaway local one); ``--reuse`` queries a
``--db`` filled by an earlier run. Part of ``make bench``, never of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from chatd import wire
from chatd.ops import CreateChannelOp, CreateUserOp, SendOp
from chatd.store import Store, open_store

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 10))))
    return sorted(words)


class Bodies:
    """Bodies from a Zipf-like distribution over the vocabulary (weight 1/rank)."""

    def __init__(self, vocab: list[str], seed: int) -> None:
        self.vocab = vocab
        self.rng = random.Random(seed)
        self.weights = [1 / (rank + 1) for rank in range(len(vocab))]
        self.cum = list(_accumulate(self.weights))

    def words(self, k: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=k)

    def body(self) -> str:
        return " ".join(self.words(self.rng.randint(3, 14)))


def _accumulate(xs: list[float]) -> list[float]:
    total, out = 0.0, []
    for x in xs:
        total += x
        out.append(total)
    return out


async def fill(store: Store, n: int, batch: int, channels: int, bodies: Bodies
               ) -> tuple[wire.User, list[str]]:
    (user,), _ = await store.apply([CreateUserOp("bench", "bench", "h")], 1)
    me = wire.User(user.id, user.name)  # type: ignore[union-attr]
    ids = []
    for i in range(channels):
        (channel,), _ = await store.apply([CreateChannelOp(me, f"c{i}", f"c{i}")], 1)
        ids.append(channel.id)  # type: ignore[union-attr]
    start, done = time.perf_counter(), 0
    while done < n:
        k = min(batch, n - done)
        ops = [SendOp(me, ids[(done + j) % channels], bodies.body(), None) for j in range(k)]
        await store.apply(ops, 1_700_000_000_000 + done)  # type: ignore[arg-type]
        done += k
        if done % (batch * 50) == 0:
            rate = done / (time.perf_counter() - start)
            print(f"  {done:,} messages, {rate:,.0f}/s", flush=True)
    return me, ids


def index_size(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        fts = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'message_words%'").fetchone()[0]
        words = conn.execute("SELECT sum(length(words) + 1) FROM messages").fetchone()[0]
        total = conn.execute("SELECT sum(pgsize) FROM dbstat").fetchone()[0]
        messages = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN ('messages', 'messages_channel',"
            " 'sqlite_autoindex_messages_1')").fetchone()[0]
    finally:
        conn.close()
    mib = 1 << 20
    return {"fts5_tables_mib": round(fts / mib, 1),
            "words_column_mib_approx": round(words / mib, 1),
            "messages_table_and_indexes_mib": round(messages / mib, 1),
            "database_mib": round(total / mib, 1)}


async def pg_index_size(store: Store) -> dict[str, Any]:
    async with store.backend.reader() as snap:
        conn = snap.conn  # type: ignore[attr-defined]
        cur = await conn.execute(
            "SELECT pg_relation_size('messages_words'), pg_total_relation_size('messages'),"
            " (SELECT sum(pg_column_size(words)) FROM messages)")
        gin, total, column = await cur.fetchone()
    mib = 1 << 20
    return {"gin_index_mib": round(gin / mib, 1), "words_column_mib": round(column / mib, 1),
            "messages_total_mib": round(total / mib, 1)}


def _percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "max_ms": round(ms[-1], 2)}


async def queries(store: Store, me: wire.User, bodies: Bodies, n: int, seed: int,
                  channel: str | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = bodies.vocab
    # typed queries: a mix of frequent and rare words, as the Zipf draw makes them
    sample = Bodies(vocab, seed + 1)
    kinds: dict[str, list[str]] = {"one-word": [], "two-word": [], "phrase": [], "prefix": [],
                                   "in-channel": []}
    for _ in range(n):
        w = sample.words(3)
        kinds["one-word"].append(w[0])
        kinds["two-word"].append(f"{w[0]} {w[1]}")
        kinds["phrase"].append(f'"{w[0]} {w[1]}"')
        kinds["prefix"].append(rng.choice(vocab)[:2])
        kinds["in-channel"].append(w[2])
    out: dict[str, Any] = {}
    for kind, qs in kinds.items():
        times, hits = [], 0
        for q in qs:
            t0 = time.perf_counter()
            where = channel if kind == "in-channel" else None
            found, _ = await store.search(me.id, q, where, None, 20)
            times.append((time.perf_counter() - t0) * 1000)
            hits += len(found)
        out[kind] = {**_percentiles(times), "mean_hits": round(hits / len(qs), 1)}
    return out


async def run(args: argparse.Namespace, db: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    bodies = Bodies(vocabulary(args.vocabulary, rng), args.seed)
    store = open_store(db)
    await store.open()
    try:
        result: dict[str, Any] = {"db": "postgresql" if "://" in db else "sqlite",
                                  "messages": args.messages}
        if args.reuse:
            async with store.backend.reader() as snap:
                (user_row,) = await snap.users()
                channel = (await snap.channels())[0][0]
            me = wire.User(user_row[0], user_row[1])
        else:
            t0 = time.perf_counter()
            me, channels = await fill(store, args.messages, args.batch, args.channels, bodies)
            channel = channels[0]
            result["fill_s"] = round(time.perf_counter() - t0, 1)
            if "://" in db:
                # What autovacuum does after such a fill, on its own schedule: without
                # the words' statistics the planner walks every message for a rare word.
                async with store.backend.reader() as snap:
                    await snap.conn.execute("ANALYZE messages")  # type: ignore[attr-defined]
        result["queries"] = await queries(store, me, bodies, args.queries, args.seed + 7,
                                          channel)
        if "://" in db:
            result["index"] = await pg_index_size(store)
    finally:
        await store.close()
    if "://" not in db:
        result["index"] = index_size(db)
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search",
                                description=__doc__.splitlines()[0])
    p.add_argument("--db", default="", help="sqlite path or postgresql:// URL"
                   " (default: a new temporary sqlite file)")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--channels", type=int, default=50)
    p.add_argument("--vocabulary", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=300, help="of each kind")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--reuse", action="store_true", help="--db is already filled: only query")
    p.add_argument("--postgres", action="store_true",
                   help="on a throwaway local PostgreSQL (tests/pg_cluster.py, durable settings)"
                   " instead of --db")
    args = p.parse_args()
    if args.postgres:
        from tests.pg_cluster import DURABLE, local_cluster

        with local_cluster(DURABLE) as server:
            print(asyncio.run(run(args, server.create_database()[1])), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.fspath(Path(tmp) / "search.db")
        print(asyncio.run(run(args, db)), flush=True)


if __name__ == "__main__":
    main()
