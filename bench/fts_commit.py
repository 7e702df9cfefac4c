"""``python -m bench.fts_commit``: what the search index adds to one commit.

On a new sqlite file with chatd's schema (``schema.sql``: WAL, synchronous
FULL, the FTS5 table as chatd declares it), commits ``--batch`` messages at a
time, ``--commits`` times, as plain ``sqlite3`` statements with no chatd code
around them: once with the messages alone, once with their search index rows
too (the same ``index_text`` words). Prints the CPU time (user and kernel, so
the fsync's share too) per commit of each, and the difference: the floor of
what the index costs a commit, whatever chatd's own code does.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from chatd.search import index_text
from chatd.sqlite_store import MESSAGE_WORDS_INSERT, schema_sql


def _commits(path: Path, batch: int, commits: int, index: bool) -> float:
    """CPU seconds per commit of ``batch`` messages (and their index rows)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema_sql())
        seq = 0
        cpu = time.process_time()
        for _ in range(commits):
            rows = []
            for _ in range(batch):
                seq += 1
                body = f"{seq}|{1764600000 + seq / 1000:.3f}|" + "x" * 80
                rows.append((seq, f"M{seq:020d}", "c", "u", "sender", seq, body,
                             index_text(body)))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages(seq, id, channel_id, sender_id, sender_name, at_ms, body,"
                " words) VALUES (?,?,?,?,?,?,?,?)", rows)
            if index:
                conn.executemany(MESSAGE_WORDS_INSERT, [(r[0], r[7]) for r in rows])
            conn.execute("COMMIT")
        return (time.process_time() - cpu) / commits
    finally:
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fts_commit",
                                description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1, help="messages per commit")
    p.add_argument("--commits", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds; the best is kept")
    args = p.parse_args()
    best: dict[bool, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for index in (False, True):
                path = Path(tmp) / f"{r}-{index}.db"
                spent = _commits(path, args.batch, args.commits, index)
                best[index] = min(best.get(index, spent), spent)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    without, with_index = best[False] * 1e6, best[True] * 1e6
    print(f"commits of {args.batch} message(s), CPU per commit (best of {args.rounds}):"
          f" without the search index {without:.0f} µs, with it {with_index:.0f} µs,"
          f" the index's share {with_index - without:.0f} µs"
          f" ({(with_index - without) / args.batch:.1f} µs per message)")


if __name__ == "__main__":
    main()
