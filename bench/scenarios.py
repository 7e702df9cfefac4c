"""The scenarios: each starts its own daemon on a fresh database, drives it from
worker processes, and returns result rows (see :class:`Row`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import websockets

from .daemon import REPO, Daemon, EchoServer, machine_busy, tree_cpu
from .stats import hist_percentiles, merge, ms, percentile
from .workers import Pool, split

KIB = 1024


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``--quick`` picks the small set."""

    s1_ks: tuple[int, ...] = (1, 16, 64)
    s1_duration: float = 10.0
    #: one ceiling slice; S1 runs one before each K and one after the last.
    ceiling_duration: float = 2.0
    s2_settings: tuple[tuple[int, int], ...] = ((100, 200), (1000, 20))
    s2_duration: float = 10.0
    #: about x1.4 a step: the figure is at most ~30 % under the true maximum.
    s2max_rates: tuple[int, ...] = (50, 70, 100, 140, 200, 280, 400, 560, 800, 1100, 1600)
    s2max_duration: float = 5.0
    s3_events: int = 50_000
    s3_runs: int = 5
    s4_ns: tuple[int, ...] = (1000, 5000)
    sender_workers: int = 2
    sub_workers: int = 4
    body: int = 64
    #: NODES: S1's K (split over the nodes) and S2's (N subscribers, msg/s a sender)
    nodes_k: int = 64
    nodes_s2: tuple[int, int] = (100, 200)


FULL = Sizes()
QUICK = Sizes(
    s1_duration=2.0, ceiling_duration=1.0, s2_settings=((100, 200), (300, 20)),
    s2_duration=2.0, s2max_rates=(100, 200, 400), s2max_duration=2.0, s3_events=20_000,
    s3_runs=1, s4_ns=(200, 1000),
)


@dataclass
class Row:
    """One line of the report: a figure, its target, PASS/MISS, and details."""

    scenario: str
    figure: float
    unit: str
    target: str = ""
    status: str = ""  # PASS, MISS, or "" when the row has no target
    ratio: float | None = None  # of the sqlite ceiling measured in the same run
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    #: a group of rows with a table of its own ("NODES"); "" for the main table
    section: str = ""

    def json(self) -> str:
        out = {"scenario": self.scenario, "figure": _round(self.figure), "unit": self.unit,
               "target": self.target, "status": self.status,
               "ceiling_ratio": None if self.ratio is None else round(self.ratio, 3),
               "note": self.note, **({"section": self.section} if self.section else {}),
               **self.detail}
        return msgspec.json.encode(_finite(out)).decode()


def _round(x: float) -> float:
    return x if math.isnan(x) else round(x, 1)


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------- context


@dataclass
class Bench:
    tmp: Path
    sizes: Sizes
    client: str = "lean"
    loop: str = "auto"
    profile_dir: Path | None = None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ceilings: list[float] = field(default_factory=list)
    _n: int = 0

    @contextlib.contextmanager
    def daemon(self, name: str) -> Iterator[tuple[Daemon, dict[str, Any]]]:
        """A fresh daemon on a new sqlite file, one logged-in user and one channel;
        profiled if asked."""
        self._n += 1
        db = self.tmp / f"{self._n:02d}-{name}.db"
        try:
            with self.nodes(name, db, 1) as (ds, params):
                yield ds[0], params[0]
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(db) + suffix).unlink()

    @contextlib.contextmanager
    def nodes(
        self, name: str, db: str | Path, n: int
    ) -> Iterator[tuple[list[Daemon], list[dict[str, Any]]]]:
        """``n`` daemons on one database (several: a PostgreSQL URL), one user
        logged in and one channel created on the first; the workers' params for
        each. Daemons are named ``name-A``, ``name-B``... (``name`` if one)."""
        with contextlib.ExitStack() as stack:
            names = [name] if n == 1 else [f"{name}-{chr(65 + i)}" for i in range(n)]
            ds = [stack.enter_context(self._running(x, db)) for x in names]
            common = asyncio.run(setup(ds[0].host, ds[0].port))
            yield ds, [{**common, "host": d.host, "port": d.port, "client": self.client,
                        "loop": self.loop, "body": self.sizes.body} for d in ds]

    @contextlib.contextmanager
    def _running(self, name: str, db: str | Path) -> Iterator[Daemon]:
        """One daemon, profiled if asked; after it stops, whether it died and what
        it logged are recorded."""
        d = Daemon(db)
        d.start()
        spy = self._spy(d, name)
        try:
            yield d
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
            alive = d.alive()
            rc = d.stop()
            if not alive:
                self.failures.append(f"{name}: the daemon died (exit {rc})")
            if d.errors:
                log(f"{name}: daemon logged {len(d.errors)} warning/error lines, first: "
                    + " | ".join(d.errors[:5]))
                self.warnings += [f"{name}: {line}" for line in d.errors[:10]]

    def _spy(self, d: Daemon, name: str) -> subprocess.Popen[bytes] | None:
        if self.profile_dir is None:
            return None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            log("--profile: py-spy not found (pip install py-spy); not profiling")
            return None
        out = self.profile_dir / f"{name}.txt"
        log(f"profiling the daemon with py-spy into {out}")
        return subprocess.Popen(
            [exe, "record", "--pid", str(d.pid), "--format", "raw", "--rate", "250",
             "--threads", "--nonblocking", *os.environ.get("CHATD_PYSPY_ARGS", "").split(),
             "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


async def setup(host: str, port: int) -> dict[str, Any]:
    """Log in once (one scrypt) and create the channel; workers reuse the token."""
    async with websockets.connect(f"ws://{host}:{port}/ws", compression=None) as ws:

        async def ok(op: str, **args: Any) -> dict[str, Any]:
            await ws.send(msgspec.json.encode({"op": op, "ref": op, **args}).decode())
            while True:
                reply: dict[str, Any] = msgspec.json.decode(await ws.recv())
                if reply.get("ref") == op:
                    if reply.get("type") != "ok":
                        raise RuntimeError(f"setup {op}: {reply}")
                    return reply

        login = await ok("login", name="bench", password="bench-password-1")
        channel = await ok("create_channel", name="bench")
    return {"token": login["token"], "channel": channel["channel"]["id"]}


class Window:
    """CPU used by the daemons (summed), by the PostgreSQL server if ``postgres``
    (its postmaster's pid) and by the whole machine over a stretch of wall time."""

    def __init__(self, *ds: Daemon, postgres: int | None = None) -> None:
        self.ds = ds
        self.postgres = postgres
        self.t0, self.d0, self.p0, self.m0 = self._now()
        self.t1, self.d1, self.p1, self.m1 = self.t0, self.d0, self.p0, self.m0

    def _now(self) -> tuple[float, float, float, float]:
        pg = 0.0 if self.postgres is None else tree_cpu(self.postgres)
        return time.time(), sum(d.cpu() for d in self.ds), pg, machine_busy()

    def end(self) -> Window:
        self.t1, self.d1, self.p1, self.m1 = self._now()
        return self

    def detail(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        """Daemon CPU next to each load-generator process's CPU (and PostgreSQL's),
        as cores busy, and what the rest of the machine used meanwhile (other jobs
        share it)."""
        wall = max(1e-9, self.t1 - self.t0)
        gen = [round(w["cpu"] / w["wall"], 2) if w["wall"] > 0 else None for w in workers]
        daemon = (self.d1 - self.d0) / wall
        loadgen = sum(w["cpu"] for w in workers) / wall
        pg = (self.p1 - self.p0) / wall
        machine = (self.m1 - self.m0) / wall
        out = {"daemon_cpu_s": round(self.d1 - self.d0, 3),
               "daemon_cores": round(daemon, 2), "loadgen_cores": gen,
               "loadgen_cores_total": round(loadgen, 2),
               "machine_busy_cores": round(machine, 2),
               "other_cores": round(max(0.0, machine - daemon - loadgen - pg), 2)}
        if self.postgres is not None:
            out.update(postgres_cpu_s=round(self.p1 - self.p0, 3), postgres_cores=round(pg, 2))
        return out


def daemon_cost(detail: dict[str, Any], units: float, name: str, who: str = "daemon") -> str:
    """Daemon CPU per unit of work (µs): steadier than a rate on a shared machine,
    since other jobs slow the daemon down but hardly change what each unit costs."""
    cpu = detail["daemon_cpu_s"]
    if not units or cpu < 0.1:  # /proc counts CPU in 10 ms ticks
        detail[f"daemon_us_per_{name}"] = None
        return f"{who} CPU per {name}: window too short to tell"
    us = 1e6 * cpu / units
    detail[f"daemon_us_per_{name}"] = round(us, 1)
    note = f"{who} {us:.1f} µs CPU per {name}"
    if "postgres_cpu_s" in detail:
        pg = 1e6 * detail["postgres_cpu_s"] / units
        detail[f"postgres_us_per_{name}"] = round(pg, 1)
        note += f", PostgreSQL {pg:.1f} µs"
    return note


def cpu_note(detail: dict[str, Any], who: str = "daemon") -> str:
    gen = [g for g in detail["loadgen_cores"] if g is not None]
    busiest = max(gen) if gen else float("nan")
    pg = (f", PostgreSQL {detail['postgres_cores']:.2f}" if "postgres_cores" in detail
          else "")
    return (f"{who} {detail['daemon_cores']:.2f} cores{pg}, load gen "
            f"{detail['loadgen_cores_total']:.2f} (busiest process {busiest:.2f}), "
            f"other jobs {detail['other_cores']:.2f}")


def wait_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


# ------------------------------------------------------------------ ceiling


def ceiling_slice(b: Bench) -> float:
    """Raw sqlite3 for ``ceiling_duration`` s: events + messages rows and the meta
    seq update, 100 rows per transaction, WAL + synchronous=FULL, on the same file
    system as the daemon's database. Returns rows/s."""
    path = b.tmp / f"ceiling-{len(b.ceilings)}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript((REPO / "schema.sql").read_text())
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                         [("schema_version", "1"), ("epoch", "bench"), ("seq", "0"),
                          ("horizon", "0")])
        body = "c " + "x" * (b.sizes.body - 2)
        cid, uid = "C" + "c" * 19, "U" + "u" * 19
        seq = rows = 0
        t0 = time.perf_counter()
        deadline = t0 + b.sizes.ceiling_duration
        while time.perf_counter() < deadline:
            events, messages = [], []
            for _ in range(100):
                seq += 1
                mid = f"M{seq:019d}"
                frame = (
                    f'{{"type":"event","seq":{seq},"at":"2026-01-01T00:00:00.000Z",'
                    f'"kind":"message.sent","channel":{{"id":"{cid}","name":"bench"}},'
                    f'"sender":{{"id":"{uid}","name":"bench"}},'
                    f'"message":{{"id":"{mid}","body":"{body}"}}}}'
                ).encode()
                events.append((seq, 1_700_000_000_000, cid, frame))
                messages.append((seq, mid, cid, uid, "bench", 1_700_000_000_000, body))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO events(seq, at_ms, channel_id, frame) VALUES (?,?,?,?)", events)
            conn.executemany(
                "INSERT INTO messages(seq, id, channel_id, sender_id, sender_name, at_ms, body)"
                " VALUES (?,?,?,?,?,?,?)", messages)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            conn.execute("COMMIT")
            rows += 100
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + suffix).unlink()
    rate = rows / elapsed
    b.ceilings.append(rate)
    return rate


def ceiling_row(b: Bench, with_s1: bool = True) -> Row:
    """The ceiling slices of this run, summarised by their median."""
    slices = sorted(b.ceilings)
    figure = slices[len(slices) // 2] if slices else math.nan
    return Row("ceiling", figure, "rows/s",
               note=f"raw sqlite3, 100 rows a transaction, WAL + synchronous=FULL; median of "
               f"{len(slices)} slices of {b.sizes.ceiling_duration:g} s "
               f"({', '.join(f'{x:,.0f}' for x in b.ceilings)})"
               + ("; each S1 row is quoted against the mean of the slices just before and "
                  "after it" if with_s1 else ""),
               detail={"slices_rows_per_s": [round(x) for x in b.ceilings]})


# ----------------------------------------------------------------------- S1


def run_s1(b: Bench) -> list[Row]:
    sz = b.sizes
    rows: list[Row] = []
    with b.daemon("s1") as (d, params):
        per = split(max(sz.s1_ks), sz.sender_workers)
        with Pool("senders", [{**params, "conns": n} for n in per]) as pool:
            pool.gather(120, "ready")
            before = ceiling_slice(b)
            for k in sz.s1_ks:
                m0 = d.metrics()
                rate, lat, detail = _s1_round(b, pool, [d], k)
                detail.update(_commit_stats(m0, d.metrics(), sz.s1_duration))
                p50, p99 = percentile(lat, 50), percentile(lat, 99)
                after = ceiling_slice(b)
                around = (before + after) / 2
                detail["ceiling_rows_per_s"] = round(around)
                cost = daemon_cost(detail, len(lat), "ack")
                row = Row(f"S1 K={k}", rate, "msg/s", detail=detail, ratio=rate / around,
                          note=f"p50 {ms(p50)} ms, p99 {ms(p99)} ms; {cost}; "
                          + cpu_note(detail) + f"; ceiling around it {around:,.0f} rows/s")
                if k == max(sz.s1_ks):
                    row.target = ">= 40% of ceiling, p99 ack <= 50 ms"
                    row.status = verdict(rate / around >= 0.40 and p99 <= 0.050)
                rows.append(row)
                before = after
                log(f"S1 K={k}: {rate:.0f} msg/s, p50 {ms(p50)} ms, p99 {ms(p99)} ms")
    floor = s1_floor(b, max(sz.s1_ks), before)
    top = rows[-1]
    if floor.figure > 0:
        top.detail["floor_ratio"] = round(top.figure / floor.figure, 3)
        top.note += f"; {100 * top.figure / floor.figure:.0f} % of its floor (next row)"
    rows.append(floor)
    return rows


def s1_floor(b: Bench, k: int, ceiling: float) -> Row:
    """The same closed-loop load against ``bench.echo``, which answers and stores
    nothing: what the WebSocket library, the event loop and the kernel cost per
    ack here, with the same load generator. chatd cannot go faster than this."""
    sz = b.sizes
    echo = EchoServer()
    echo.start()
    try:
        params = {"host": echo.host, "port": echo.port, "client": b.client, "loop": b.loop,
                  "body": sz.body, "token": "-", "channel": "-"}
        per = split(k, sz.sender_workers)
        with Pool("senders", [{**params, "conns": n} for n in per]) as pool:
            pool.gather(120, "ready")
            rate, lat, detail = _s1_round(b, pool, [echo], k)
    finally:
        echo.stop()
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    cost = daemon_cost(detail, len(lat), "ack", who="echo server")
    log(f"S1 floor K={k}: {rate:.0f} msg/s")
    return Row(f"S1 floor K={k}", rate, "msg/s", detail=detail,
               ratio=rate / ceiling,
               note=f"the same load against bench/echo.py (websockets, answers every send "
               f"with an ok, stores nothing); p50 {ms(p50)} ms, p99 {ms(p99)} ms; {cost}; "
               + cpu_note(detail, who="echo server"))


def _s1_round(
    b: Bench, pool: Pool, servers: list[Daemon], k: int, postgres: int | None = None,
    label: str = "",
) -> tuple[float, list[float], dict[str, Any]]:
    """k of the pool's connections send in a closed loop for s1_duration:
    (acks/s, sorted latencies, CPU detail: ``servers`` summed, and PostgreSQL's
    if ``postgres`` is its postmaster's pid)."""
    sz = b.sizes
    use = split(k, sz.sender_workers)
    t_start = time.time() + 0.5
    for w, u in zip(pool.workers, use, strict=True):
        w.send("go", u, t_start, sz.s1_duration)
    wait_until(t_start)
    win = Window(*servers, postgres=postgres)
    wait_until(t_start + sz.s1_duration)
    win.end()
    results = pool.gather(sz.s1_duration + 120, "done")
    active = [r for r, u in zip(results, use, strict=True) if u]
    for r in results:
        for e in r["errors"]:
            b.failures.append(f"{label or f'S1 K={k}'}: {e}")
    lat = sorted(x for r in results for x in r["latencies"])
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    detail = {"k": k, "acks": len(lat), "p50_ms": ms(p50), "p99_ms": ms(p99),
              "max_ms": ms(lat[-1]) if lat else None, **win.detail(active)}
    return len(lat) / sz.s1_duration, lat, detail


def _commit_stats(m0: dict[str, float], m1: dict[str, float], wall: float) -> dict[str, Any]:
    """Group commit from the daemon's own metrics: mean batch size, mean commit time,
    and the share of the wall time the writer spent committing (1.0: always busy)."""
    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    commits = delta("chatd_commit_batch_size_count")
    if not commits:
        return {}
    return {
        "commits": int(commits),
        "commits_per_s": round(commits / wall, 1),
        "mean_batch": round(delta("chatd_commit_batch_size_sum") / commits, 1),
        "mean_commit_ms": round(1000 * delta("chatd_commit_seconds_sum")
                                / max(1.0, delta("chatd_commit_seconds_count")), 2),
        "writer_busy": round(delta("chatd_commit_seconds_sum") / wall, 2),
    }


# ----------------------------------------------------------------------- S2


def fanout_round(
    b: Bench, d: Daemon | list[Daemon], sender: Pool, subs: Pool, n: int, rate: int,
    duration: float, label: str, postgres: int | None = None,
) -> Row:
    """Each of the ``sender`` pool's senders at ``rate`` for ``duration`` to ``n``
    subscribers; checks delivery. Several senders (and daemons, whose CPU is
    summed: nodes of one database) make one stream: every subscriber must see
    all their acknowledged seqs, in seq order.

    A subscriber that saw events out of order, or that is still open and has not
    seen every acknowledged event a minute after the last ack, is a correctness
    failure. One the server closed (4000, too slow) only fails the round.
    """
    ds = d if isinstance(d, list) else [d]
    subs.broadcast("round")
    subs.gather(60, "ok")
    t_start = time.time() + 0.3
    sender.broadcast("go", t_start, duration, rate)
    wait_until(t_start)
    win = Window(*ds, postgres=postgres)
    wait_until(t_start + duration)
    win.end()
    senders = sender.gather(duration + 120, "done")
    expected = sorted(seq for sent in senders for seq in sent["acked"])
    # S2-mix: the seqs sent to private channels, by channel (their members only)
    private: dict[str, list[int]] = {}
    for sent in senders:
        for channel, seqs in sent.get("acked_private", {}).items():
            private.setdefault(channel, []).extend(seqs)
    acked_private = sum(len(s) for s in private.values())
    for sent in senders:
        for e in sent["errors"]:
            b.failures.append(f"{label}: sender: {e}")
    sent_n = sum(sent["sent"] for sent in senders)
    if private:
        subs.broadcast("check", expected, 60.0, private)
    else:
        subs.broadcast("check", expected, 60.0)
    checks = subs.gather(180, "done")
    hist = merge(c["hist"] for c in checks)
    p50, p99 = hist_percentiles(hist, (50, 99))
    worst = max((c["max_latency"] for c in checks), default=math.nan)
    deliveries = sum(c["deliveries"] for c in checks)
    last_rx = max((c["last_rx"] for c in checks), default=0.0)
    window = max(duration, last_rx - t_start)
    per_s = deliveries / window
    complete = sum(c["complete"] for c in checks)
    closed = sum(c["closed"] for c in checks)
    ordered = all(c["ordered"] for c in checks)
    problems = [f for c in checks for f in c["failures"]]
    for c in checks:
        problems += [f"unparsable event {x}" for x in c["bad_frames"]]
    all_in_order = complete == n and ordered and len(expected) + acked_private == sent_n
    if not ordered or complete + closed < n:
        for p in problems[:5]:
            b.failures.append(f"{label}: {p}")
        if not problems:
            b.failures.append(f"{label}: events out of order")
    cpu = win.detail([*checks, *senders])
    achieved = sum(sent["sent"] / sent["send_wall"] for sent in senders if sent["send_wall"])
    detail = {
        "subscribers": n, "rate": rate * len(senders), "senders": len(senders),
        "achieved_rate": round(achieved, 1),
        "sent": sent_n, "acked": len(expected) + acked_private,
        "acked_private": acked_private, "deliveries": deliveries,
        "expected_deliveries": len(expected) * n,
        "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(worst),
        "complete_subscribers": complete, "closed_4000": closed,
        "ephemeral_frames": sum(c.get("ephemeral", 0) for c in checks),
        "all_delivered_in_order": all_in_order, "problems": problems[:5], **cpu,
    }
    cross = merge(c["hist_cross"] for c in checks)
    cross_note = ""
    if cross:
        c50, c99 = hist_percentiles(cross, (50, 99))
        detail.update(cross_deliveries=sum(cross.values()), cross_p50_ms=ms(c50),
                      cross_p99_ms=ms(c99),
                      cross_max_ms=ms(max(c["max_cross"] for c in checks)))
        cross_note = (f"; cross-node ({sum(cross.values())} deliveries): p50 {ms(c50)} ms, "
                      f"p99 {ms(c99)} ms, max {detail['cross_max_ms']} ms")
    # The CPU window is the sending window: count the deliveries it carried.
    who = "daemons (summed)" if len(ds) > 1 else "daemon"
    cost = daemon_cost(detail, per_s * duration, "delivery", who=who)
    note = (f"p50 {ms(p50)} ms, p99 {ms(p99)} ms, max {ms(worst)} ms{cross_note}; "
            f"{complete}/{n} complete and in order; {cost}; " + cpu_note(cpu, who=who))
    log(f"{label}: {per_s:.0f} deliveries/s; {note}")
    return Row(label, per_s, "deliveries/s", note=note, detail=detail)


def run_s2(b: Bench, only: set[str]) -> list[Row]:
    sz = b.sizes
    rows: list[Row] = []
    with b.daemon("s2") as (d, params), Pool("paced", [params]) as sender:
        sender.gather(60, "ready")
        for i, (n, rate) in enumerate(sz.s2_settings):
            last = i == len(sz.s2_settings) - 1
            if "S2" not in only and not last:
                continue
            per = split(n, sz.sub_workers)
            with Pool("subs", [{**params, "n": k} for k in per]) as subs:
                t0 = time.time()
                subs.gather(300, "ready")
                log(f"S2: {n} subscribers connected in {time.time() - t0:.1f} s")
                row = fanout_round(b, d, sender, subs, n, rate, sz.s2_duration,
                                   f"S2 N={n} @{rate}/s")
                p99 = row.detail["p99_ms"]
                row.target = "p99 <= 100 ms, all delivered in order"
                row.status = verdict(p99 is not None and p99 <= 100
                                     and row.detail["all_delivered_in_order"])
                if "S2" in only:
                    rows.append(row)
                if last and "S2-MAX" in only:
                    rows.append(run_s2max(b, d, sender, subs, n, row))
    return rows


def run_s2max(b: Bench, d: Daemon, sender: Pool, subs: Pool, n: int, first: Row) -> Row:
    """Raise the rate step by step; report the highest rate whose p99 <= 100 ms.

    Other jobs on the machine only ever make a step look worse, so a step that
    misses gets a second try, and the ladder stops only after two rates in a row
    missed twice each.
    """
    sz = b.sizes

    def good(row: Row) -> bool:
        dt = row.detail
        return (dt["p99_ms"] is not None and dt["p99_ms"] <= 100
                and dt["all_delivered_in_order"]
                and dt["achieved_rate"] >= 0.9 * dt["rate"])

    best = first if good(first) else None
    ladder = [(first.detail["rate"], round(first.figure), first.detail["p99_ms"], good(first))]
    misses = 0 if best is not None else 1
    for rate in sz.s2max_rates:
        if misses >= 2:
            break
        for attempt in (1, 2):
            row = fanout_round(b, d, sender, subs, n, rate, sz.s2max_duration,
                               f"S2-max N={n} @{rate}/s" + (" (retry)" if attempt > 1 else ""))
            ok = good(row)
            ladder.append((rate, round(row.figure), row.detail["p99_ms"], ok))
            if ok:
                break
        if ok:
            misses = 0
            best = row
        else:
            misses += 1
    figure = best.figure if best is not None else 0.0
    rate = best.detail["rate"] if best is not None else 0
    steps = ", ".join(f"{r}/s: p99 {p} ms" + ("" if ok else " (miss)")
                      for r, _, p, ok in ladder)
    return Row(f"S2-max N={n}", figure, "deliveries/s", ">= 50,000 deliveries/s",
               verdict(figure >= 50_000),
               note=f"best rate {rate} msg/s with p99 <= 100 ms"
               + (f" ({best.detail['daemon_us_per_delivery']} µs daemon CPU per delivery)"
                  if best else "") + f"; ladder: {steps}",
               detail={"best_rate": rate, "ladder": ladder,
                       **({k: best.detail[k] for k in (
                           "p50_ms", "p99_ms", "max_ms", "daemon_cores", "loadgen_cores",
                           "loadgen_cores_total", "other_cores", "daemon_us_per_delivery")}
                          if best else {})})


# ----------------------------------------------------------------------- S3


def run_s3(b: Bench) -> list[Row]:
    sz = b.sizes
    conns, window = 4, 64
    with b.daemon("s3") as (d, params):
        per_conn = sz.s3_events // conns
        with Pool("fill", [{**params, "conns": conns // 2}] * 2) as fill:
            fill.gather(60, "ready")
            fill.broadcast("go", per_conn, window)
            win = Window(d)
            filled = fill.gather(900, "done")
            win.end()
            wall = win.t1 - win.t0
        acked = sum(f["acked"] for f in filled)
        last_seq = max(f["max_seq"] for f in filled)
        for f in filled:
            b.failures += [f"S3 fill: {e}" for e in f["errors"]]
        fill_cpu = win.detail(filled)
        log(f"S3: stored {acked} messages in {wall:.1f} s ({acked / wall:.0f} msg/s pipelined)")
        runs = []
        with Pool("replay", [params]) as replay:
            replay.gather(60, "ready")
            for _ in range(sz.s3_runs):
                win = Window(d)
                replay.broadcast("go", 0, last_seq)
                (r,) = replay.gather(600, "done")
                # The window includes the replay worker's connect and auth: a little
                # longer than the replay itself, so cores read a little low.
                r["cpu_window"] = win.end().detail([r])
                runs.append(r)
                for e in r["errors"]:
                    b.failures.append(f"S3 replay: {e}")
                if not r["ordered"] or r["events"] != acked + 1:
                    b.failures.append(f"S3 replay: {r['events']} events (expected {acked + 1},"
                                      f" one channel.created and {acked} messages),"
                                      f" ordered={r['ordered']}")
    rates = sorted(r["events"] / r["elapsed"] for r in runs if r["elapsed"] > 0)
    figure = rates[len(rates) // 2] if rates else math.nan
    mid = min(runs, key=lambda r: abs(r["events"] / r["elapsed"] - figure)
              if r["elapsed"] > 0 else math.inf)
    cpu = mid["cpu_window"]
    detail = {"events": mid["events"], "seconds": round(mid["elapsed"], 3),
              "runs_events_per_s": [round(x) for x in rates], **cpu,
              "fill_msgs_per_s": round(acked / wall), "fill_window": window,
              "fill_conns": conns, "fill_daemon_cores": fill_cpu["daemon_cores"]}
    cost = daemon_cost(detail, mid["events"], "event")
    note = (f"median of {len(rates)}: {mid['events']} events in {mid['elapsed']:.2f} s; "
            f"{cost}; " + cpu_note(cpu) + f"; fill {acked / wall:.0f} msg/s pipelined")
    log(f"S3: replay {figure:.0f} events/s ({note})")
    return [Row("S3 replay", figure, "events/s", ">= 50,000 events/s",
                verdict(figure >= 50_000), note=note, detail=detail)]


# ----------------------------------------------------------------------- S4


def run_s4(b: Bench) -> list[Row]:
    sz = b.sizes
    rows: list[Row] = []
    with b.daemon("s4") as (d, params):
        time.sleep(0.5)
        before = d.rss()
        have = 0
        pool: Pool | None = None
        try:
            for n in sz.s4_ns:
                add = split(n - have, sz.sub_workers)
                t0 = time.time()
                if pool is None:
                    pool = Pool("subs", [{**params, "n": k} for k in add])
                else:
                    for w, k in zip(pool.workers, add, strict=True):
                        w.send("add", k)
                counts = pool.gather(600, "ready")
                have = sum(counts)
                took = time.time() - t0
                time.sleep(1.0)
                after = d.rss()
                per = (after - before) / have
                detail = {"connections": have, "rss_before_mib": round(before / 2**20, 1),
                          "rss_after_mib": round(after / 2**20, 1),
                          "bytes_per_conn": round(per), "connect_seconds": round(took, 1)}
                note = (f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB for {have} "
                        f"subscribed idle connections (opened in {took:.1f} s)")
                log(f"S4 N={have}: {per / KIB:.1f} KiB per connection; {note}")
                rows.append(Row(f"S4 N={have}", per / KIB, "KiB/conn", "<= 16 KiB/conn",
                                verdict(per <= 16 * KIB), note=note, detail=detail))
        finally:
            if pool is not None:
                pool.__exit__()
    return rows
