"""Summarise a py-spy profile: ``python -m bench.profile FILE.txt [--top N]``.

FILE is what ``python -m bench --profile DIR`` records (``py-spy record --format
raw --threads``: one collapsed stack and its sample count a line). Prints, per
thread, the functions with the most samples on top of the stack (self) and on
the stack at all (inclusive), as a share of that thread's samples and of all.

``--layers`` sorts the samples of threads at work into layers (:data:`LAYERS`);
a stack waiting (for the GIL, a lock, a queue, epoll or an fsync) is left out.
``--thread main`` keeps the main thread's (the event loop's) samples only.
``bench/peers-layers.sh`` takes its profile with ``--gil --nonblocking``: the
samples of the thread holding the GIL, never pausing the server. A thread that
runs C without the GIL (sqlite) is then not sampled, and uvloop's own C
(callbacks, reads, writes) counts for the innermost Python frame that called
it; that script gives each thread's CPU from /proc for that reason. With
``--per-ack US`` each share is also given in µs.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict


def load(path: str) -> dict[str, Counter[tuple[str, ...]]]:
    """{thread: Counter(stack tuple -> samples)}; stacks are outermost first."""
    out: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            thread = "all"
            if frames and frames[0].startswith("thread ("):
                thread, frames = frames[0], frames[1:]
            elif len(frames) > 1 and frames[1].startswith("thread ("):
                thread, frames = frames[1], frames[2:]
            out[thread][tuple(frames)] += int(count)
    return out


def short(frame: str) -> str:
    """``fn (path/to/file.py:123)`` -> ``fn (file.py:123)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    path, _, line = where.rstrip(")").rpartition(":")
    return f"{name} ({path.rsplit('/', 1)[-1]}:{line})"


def summary(path: str, top: int = 15) -> str:
    threads = load(path)
    grand = sum(sum(c.values()) for c in threads.values()) or 1
    lines = [f"{path}: {grand} samples"]
    for thread, stacks in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(stacks.values())
        selfc: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for frames, n in stacks.items():
            if frames:
                selfc[short(frames[-1])] += n
            for f in {short(f) for f in frames}:
                incl[f] += n
        lines.append(f"\n{thread}: {total} samples ({100 * total / grand:.0f}% of all)")
        lines.append("  self (% of thread):")
        lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in selfc.most_common(top)]
        lines.append("  inclusive (% of thread):")
        lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


#: a stack with a call of one of these is a thread waiting, not working
_WAITING = frozenset({
    "pthread_cond_wait", "pthread_cond_timedwait", "PyThread_acquire_lock",
    "PyThread_acquire_lock_timed", "epoll_wait", "epoll_pwait", "poll", "select", "fdatasync",
    "fsync", "sem_wait", "sem_timedwait", "sem_clockwait", "__futex_abstimed_wait_common",
})

#: (layer, markers): walking a stack from its innermost frame outwards, the first
#: frame that contains a marker names the layer. Frames of libc (a syscall, a
#: memcpy) match nothing, so they count for the code that called them.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # before the rules: a login's password hash runs in chatd/crypto.py
    (LOGINS := "logins (scrypt, left out)", ("_scrypt (", "hash_password (")),
    ("sqlite (C: b-trees, FTS5, WAL frames)",
     ("libsqlite3", "sqlite3", "pysqlite", "(cursor.c", "(connection.c", "(statement.c")),
    ("socket reads and writes (native syscalls)",
     ("UVStream_write", "UVStream__try_write", "UVStream__exec_write", "uv__write",
      "uv__read", "uv__try_write", "sock_send", "sock_recv", "_SelectorSocketTransport")),
    ("metrics", ("chatd/metrics.py", "prometheus_client")),
    ("reply: encode, frame, write", ("chatd/sink.py", "json_encode", "json/encoder", "dumps (",
                                     "Encoder.encode", "chatd/wire.py", "Connection.send (",
                                     "send_text (", "Frame.serialize")),
    ("decode", ("json_decode", "json/decoder", "loads (", "Decoder.decode", "_decode (")),
    ("websockets: read, parse, assemble, recv()", ("websockets/",)),
    ("rules and rows (the writer; floor.py's handler)",
     ("chatd/rules.py", "chatd/sendbuffer.py", "chatd/search.py", "chatd/crypto.py",
      "chatd/store.py", "chatd/sqlite_store.py", "chatd/sqlrows.py", "chatd/ops.py",
      "chatd/visibility.py", "floor.py")),
    ("writer hand-off (queue, thread, futures)",
     ("chatd/writer.py", "chatd/feed.py", "concurrent/futures", "threading.py", "to_thread",
      "futures.py", "_chain_future")),
    ("session: commands and replies in order", ("chatd/connection.py", "chatd/server.py",
                                                "chatd/fanout.py")),
    ("garbage collector", ("gc_collect",)),
    ("event loop (uvloop's C; without --native its reads too)",
     ("loop.c", "uv_run", "uv__", "_asynciomodule", "asyncio/", "uvloop/")),
)
OTHER = "other"


def layer_of(frames: tuple[str, ...]) -> str | None:
    """The layer of one stack (outermost frame first), or None for a waiting thread."""
    if any(f.partition(" (")[0] in _WAITING for f in frames):
        return None
    for frame in reversed(frames):
        for name, markers in LAYERS:
            if any(m in frame for m in markers):
                return name
    return OTHER


def _is_main(frames: tuple[str, ...]) -> bool:
    """Whether a stack is the main thread's: it starts at a script's module code."""
    return bool(frames) and frames[0].startswith("<module>")


def layers(path: str, per_ack: float | None = None, main_only: bool = False) -> str:
    counts: Counter[str] = Counter()
    waiting = 0
    for stacks in load(path).values():
        for frames, n in stacks.items():
            if main_only and not _is_main(frames):
                continue
            name = layer_of(frames)
            if name is None:
                waiting += n
            else:
                counts[name] += n
    # Logins (a password hash each) before the measured window are not the acks' work.
    logins = counts.pop(LOGINS, 0)
    working = sum(counts.values()) or 1
    head = (f"{path}: {working} samples of {'the main thread' if main_only else 'threads'}"
            f" at work ({waiting} waiting, {logins} logging in: left out)")
    lines = [head, f"  {'layer':<48} {'share':>6}" + ("  µs/ack" if per_ack else "")]
    order = [name for name, _ in LAYERS] + [OTHER]
    for name in sorted(counts, key=lambda k: (-counts[k], order.index(k))):
        share = counts[name] / working
        row = f"  {name:<48} {100 * share:5.1f}%"
        if per_ack:
            row += f"  {share * per_ack:6.1f}"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--layers", action="store_true",
                   help="CPU by layer (a profile with native frames)")
    p.add_argument("--per-ack", type=float, default=None, metavar="US",
                   help="with --layers: the run's CPU per ack, to give each layer's share in µs")
    p.add_argument("--thread", choices=["all", "main"], default="all",
                   help="with --layers: every thread's samples, or the main thread's")
    args = p.parse_args()
    if args.layers:
        print(layers(args.file, args.per_ack, args.thread == "main"))
    else:
        print(summary(args.file, args.top))


if __name__ == "__main__":
    main()
