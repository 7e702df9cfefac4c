"""Load-generator processes.

Each worker is a separate process (``multiprocessing`` spawn) with its own
asyncio loop and its own client connections. It talks to the bench process over
a pipe: it reports ``("ready", ...)`` once its connections are up, then obeys
commands (``go``, ``round``, ``check``, ``add``, ``close``) and answers each
with a result that carries its own CPU time for the phase (user + system, from
``os.times()``), so the report can show that the load generator was not the
bottleneck.

Roles:

* ``senders``  S1: closed-loop senders, each sends as soon as its previous ok came.
* ``paced``    S2: one sender at a fixed rate, with ``time.time()`` in each body
  (and ``@ORIGIN``, the node it sends to, when its params name one).
* ``subs``     S2/S4: N subscribed connections; per round they record each event's
  seq and end-to-end latency, and check the seqs against the sender's acks. With
  a ``node`` param, events sent to another node (``@ORIGIN``) also go into a
  histogram of their own: cross-node latency.
* ``fill``     S3: pipelined sends to store many events fast.
* ``replay``   S3: subscribe since=0 and time the replay.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import resource
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from .wsclient import Conn, ProtocolFailure, connect

# ---------------------------------------------------------------- frame types


class _SentMsg(msgspec.Struct):
    seq: int = 0


class _Reply(msgspec.Struct):
    type: str
    ref: Any = None
    code: str | None = None
    message: _SentMsg | str | None = None


class _EventMsg(msgspec.Struct):
    body: str | None = None


class _Frame(msgspec.Struct):
    type: str
    seq: int = 0
    ref: Any = None
    code: str | None = None
    message: _EventMsg | str | None = None


decode_reply = msgspec.json.Decoder(_Reply).decode
decode_frame = msgspec.json.Decoder(_Frame).decode
encode = msgspec.json.Encoder().encode

CONNECT_CONCURRENCY = 50


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def padded(prefix: str, size: int) -> str:
    return prefix + "x" * max(0, size - len(prefix))


# ------------------------------------------------------------- the worker side


class Ctl:
    """The worker's end of the control pipe, awaitable from the event loop."""

    def __init__(self, pipe: multiprocessing.connection.Connection) -> None:
        self.pipe = pipe

    async def recv(self) -> tuple[Any, ...]:
        msg: tuple[Any, ...] = await asyncio.get_running_loop().run_in_executor(
            None, self.pipe.recv
        )
        return msg

    def send(self, *msg: Any) -> None:
        self.pipe.send(msg)


async def open_conns(params: dict[str, Any], n: int) -> list[Conn]:
    """n connections logged in with the shared token (auth, not login: no scrypt)."""
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Conn:
        async with sem:
            conn = await connect(params["client"], params["host"], params["port"])
            await conn.ok("auth", token=params["token"])
            return conn

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def close_all(conns: list[Conn]) -> None:
    sem = asyncio.Semaphore(200)

    async def one(conn: Conn) -> None:
        async with sem:
            with contextlib.suppress(Exception):
                await conn.aclose()

    await asyncio.gather(*(one(c) for c in conns))


async def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# ---------------------------------------------------------------- S1: senders


async def role_senders(ctl: Ctl, params: dict[str, Any]) -> None:
    conns = await open_conns(params, params["conns"])
    ctl.send("ready", len(conns))
    channel, body = params["channel"], padded("s1 ", params["body"])
    while True:
        msg = await ctl.recv()
        if msg[0] != "go":
            break
        _, use, t_start, duration = msg
        latencies: list[float] = []
        errors: list[str] = []
        await sleep_until(t_start)
        cpu0, wall0 = cpu_now(), time.time()
        await asyncio.gather(*(
            _closed_loop(c, channel, body, t_start + duration, latencies, errors)
            for c in conns[:use]
        ))
        ctl.send("done", {
            "acks": len(latencies), "latencies": latencies, "errors": errors,
            "cpu": cpu_now() - cpu0, "wall": time.time() - wall0,
        })
    await close_all(conns)


async def _closed_loop(
    conn: Conn, channel: str, body: str, t_end: float, latencies: list[float],
    errors: list[str],
) -> None:
    """Send, wait for the ok, send again, until t_end; latencies of acks before t_end."""
    loop = asyncio.get_running_loop()
    box: list[asyncio.Future[_Reply]] = []

    def on_message(payload: bytes, now: float) -> None:
        reply = decode_reply(payload)
        if reply.type != "event" and box and not box[0].done():
            box[0].set_result(reply)

    conn.on_message = on_message
    ref = 0
    while time.time() < t_end and not conn.closed.is_set():
        ref += 1
        fut: asyncio.Future[_Reply] = loop.create_future()
        box[:] = [fut]
        sent = time.perf_counter()
        conn.send_text(encode({"op": "send", "ref": ref, "channel": channel, "body": body}))
        try:
            reply = await asyncio.wait_for(fut, 60)
        except TimeoutError:
            errors.append("no reply within 60 s")
            return
        acked = time.perf_counter()
        if reply.type != "ok" or reply.ref != ref:
            errors.append(f"unexpected reply {reply}")
            return
        if time.time() <= t_end:
            latencies.append(acked - sent)


# ------------------------------------------------------- S2: the paced sender


async def role_paced(ctl: Ctl, params: dict[str, Any]) -> None:
    (conn,) = await open_conns(params, 1)
    ctl.send("ready", 1)
    channel, size = params["channel"], params["body"]
    origin = f"@{params['origin']} " if params.get("origin") else ""
    # S2-mix: every ``every``-th send goes to the next of the ``private`` channels.
    private: list[str] = params.get("private") or []
    every = int(params.get("every") or 0)
    #: ref -> channel, for the sends to a private channel (their acked seqs are
    #: reported apart: only that channel's members must see them)
    private_refs: dict[int, str] = {}
    acked_private: dict[str, list[int]] = {}
    acked: list[int] = []
    errors: list[str] = []
    replies = sent = 0
    sending = False
    all_replied = asyncio.Event()

    def on_message(payload: bytes, now: float) -> None:
        nonlocal replies
        reply = decode_reply(payload)
        if reply.type == "event":
            return
        replies += 1
        if reply.type == "ok" and isinstance(reply.message, _SentMsg):
            where = private_refs.pop(reply.ref, None) if private_refs else None
            if where is None:
                acked.append(reply.message.seq)
            else:
                acked_private.setdefault(where, []).append(reply.message.seq)
        elif len(errors) < 5:
            errors.append(f"{reply}")
        if not sending and replies >= sent:
            all_replied.set()

    conn.on_message = on_message
    ref = 0
    while True:
        msg = await ctl.recv()
        if msg[0] != "go":
            break
        _, t_start, duration, rate = msg
        acked.clear()
        acked_private.clear()
        private_refs.clear()
        errors.clear()
        all_replied.clear()
        replies = sent = 0
        sending = True
        await sleep_until(t_start)
        cpu0, wall0 = cpu_now(), time.time()
        t_end = t_start + duration
        while True:
            now = time.time()
            if now >= t_end or conn.closed.is_set():
                break
            due = min(int((now - t_start) * rate) + 1, int(duration * rate)) - sent
            for _ in range(due):
                ref += 1
                sent += 1
                body = padded(f"{time.time():.6f} {origin}", size)
                to = channel
                if every and sent % every == 0:
                    to = private[(sent // every) % len(private)]
                    private_refs[ref] = to
                conn.send_text(encode({"op": "send", "ref": ref, "channel": to,
                                       "body": body}))
            await sleep_until(t_start + sent / rate)
        send_wall = time.time() - wall0
        sending = False
        if replies >= sent:
            all_replied.set()
        closed = asyncio.ensure_future(conn.closed.wait())
        replied = asyncio.ensure_future(all_replied.wait())
        await asyncio.wait({closed, replied}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        replied.cancel()
        if replies < sent:
            errors.append(f"{sent - replies} of {sent} sends got no reply")
        ctl.send("done", {
            "sent": sent, "acked": sorted(acked), "errors": list(errors),
            "acked_private": {c: sorted(s) for c, s in acked_private.items()},
            "send_wall": send_wall, "cpu": cpu_now() - cpu0, "wall": time.time() - wall0,
        })
    await conn.aclose()


# ----------------------------------------------------------- S2/S4: subscribers


class _SubState:
    __slots__ = ("conn", "mine", "seqs")

    def __init__(self, conn: Conn, mine: str | None = None) -> None:
        self.conn = conn
        self.seqs = array.array("q")
        #: S2-mix: the private channel this subscriber's user is a member of
        self.mine = mine


class _Round:
    """What one worker's subscribers saw in one round (latencies merge by histogram)."""

    def __init__(self) -> None:
        self.hist: dict[int, int] = {}
        self.max_latency = 0.0
        #: of the events sent to another node than the subscriber's
        self.hist_cross: dict[int, int] = {}
        self.max_cross = 0.0
        self.deliveries = 0
        #: typing and presence frames (subscribers made with "ephemeral")
        self.ephemeral = 0
        self.first_rx = 0.0
        self.last_rx = 0.0
        self.bad_frames: list[str] = []
        self.cpu0 = cpu_now()
        self.wall0 = time.time()


async def role_subs(ctl: Ctl, params: dict[str, Any]) -> None:
    subs: list[_SubState] = []
    rnd = _Round()
    here = f"@{params['node']} " if params.get("node") else ""

    def handler(st: _SubState) -> Callable[[bytes, float], None]:
        conn = st.conn
        fallback = conn._dispatch

        def on_message(payload: bytes, now: float) -> None:
            try:
                frame = decode_frame(payload)
            except msgspec.ValidationError:
                fallback(payload, now)
                return
            if frame.type != "event":
                if frame.type == "ephemeral":
                    rnd.ephemeral += 1
                    return
                fallback(payload, now)
                return
            st.seqs.append(frame.seq)
            r = rnd
            r.deliveries += 1
            if not r.first_rx:
                r.first_rx = now
            r.last_rx = now
            message = frame.message
            if isinstance(message, _EventMsg) and message.body:
                stamp, _, rest = message.body.partition(" ")
                try:
                    latency = now - float(stamp)
                except ValueError:
                    if len(r.bad_frames) < 3:
                        r.bad_frames.append(payload[:200].decode(errors="replace"))
                    return
                key = int(latency * 100_000) if latency > 0 else 0
                r.hist[key] = r.hist.get(key, 0) + 1
                if latency > r.max_latency:
                    r.max_latency = latency
                if here and rest[:1] == "@" and not rest.startswith(here):
                    r.hist_cross[key] = r.hist_cross.get(key, 0) + 1
                    if latency > r.max_cross:
                        r.max_cross = latency

        return on_message

    # S2-mix: one user per subscriber (``tokens``), each in one private channel (``mine``)
    own = list(zip(params.get("tokens") or [], params.get("mine") or [], strict=True))

    async def add(n: int) -> None:
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> None:
            async with sem:
                conn = await connect(params["client"], params["host"], params["port"])
                token, mine = own.pop() if own else (params["token"], None)
                await conn.ok("auth", token=token)
                st = _SubState(conn, mine)
                conn.on_message = handler(st)
                await conn.ok("subscribe", ephemeral=bool(params.get("ephemeral")))
                subs.append(st)

        await asyncio.gather(*(one() for _ in range(n)))

    await add(params["n"])
    ctl.send("ready", len(subs))
    while True:
        msg = await ctl.recv()
        if msg[0] == "add":
            await add(msg[1])
            ctl.send("ready", len(subs))
        elif msg[0] == "round":
            rnd = _Round()
            for st in subs:
                st.seqs = array.array("q")
            ctl.send("ok")
        elif msg[0] == "check":
            ctl.send("done", await _check(subs, rnd, msg[1], within=msg[2],
                                          private=msg[3] if len(msg) > 3 else None))
        else:
            break
    await close_all([st.conn for st in subs])


async def _check(
    subs: list[_SubState], rnd: _Round, expected: list[int], *, within: float,
    private: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Wait (up to ``within`` s) for every subscriber to reach the last expected
    seq, then compare what each saw with the expected seqs (S2-mix: the public
    ones and those of its own private channel, and no other)."""
    private = private or {}
    wants: dict[str | None, array.array[int]] = {None: array.array("q", expected)}
    for st in subs:
        if st.mine not in wants:
            wants[st.mine] = array.array(
                "q", sorted([*expected, *private.get(st.mine or "", [])]))

    def last_of(st: _SubState) -> int:
        want = wants[st.mine]
        return want[-1] if want else 0

    deadline = time.monotonic() + within
    pending = [st for st in subs if last_of(st) and (not st.seqs or st.seqs[-1] < last_of(st))]
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        pending = [
            st for st in pending
            if (not st.seqs or st.seqs[-1] < last_of(st)) and not st.conn.closed.is_set()
        ]
    failures: list[str] = []
    complete = closed = 0
    for i, st in enumerate(subs):
        want = wants[st.mine]
        got = st.seqs
        if got == want:
            complete += 1
            continue
        # Closing a reader that fell too far behind (4000) is the protocol's right;
        # any other way of losing events is a failure.
        if st.conn.closed.is_set() and st.conn.close_code == 4000:
            closed += 1
        if len(failures) < 5:
            failures.append(_describe(i, got, want, st.conn))
    return {
        "subs": len(subs), "complete": complete, "closed": closed, "failures": failures,
        "ordered": all(_increasing(st.seqs) for st in subs),
        "hist": rnd.hist, "max_latency": rnd.max_latency, "deliveries": rnd.deliveries,
        "ephemeral": rnd.ephemeral,
        "hist_cross": rnd.hist_cross, "max_cross": rnd.max_cross,
        "first_rx": rnd.first_rx, "last_rx": rnd.last_rx, "bad_frames": rnd.bad_frames,
        "cpu": cpu_now() - rnd.cpu0, "wall": time.time() - rnd.wall0,
    }


def _increasing(seqs: array.array[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(seqs))


def _describe(i: int, got: array.array[int], want: array.array[int], conn: Conn) -> str:
    got_set, want_set = set(got), set(want)
    missing = len(want_set - got_set)
    extra = len(got_set - want_set)
    dups = len(got) - len(got_set)
    order = "in order" if _increasing(got) else "OUT OF ORDER"
    return (
        f"subscriber {i}: got {len(got)} of {len(want)} events, {missing} missing, "
        f"{extra} unexpected, {dups} duplicated, {order}"
        + (f", connection closed (code {conn.close_code})" if conn.closed.is_set() else "")
    )


# ---------------------------------------------------------------- S3: fill


async def role_fill(ctl: Ctl, params: dict[str, Any]) -> None:
    conns = await open_conns(params, params["conns"])
    ctl.send("ready", len(conns))
    msg = await ctl.recv()
    _, per_conn, window = msg
    channel, body = params["channel"], padded("s3 ", params["body"])
    cpu0, wall0 = cpu_now(), time.time()
    max_seq = 0
    acked = 0
    errors: list[str] = []

    async def fill(conn: Conn) -> None:
        nonlocal max_seq, acked
        done = asyncio.get_running_loop().create_future()
        sent = replied = 0

        def send_one() -> None:
            nonlocal sent
            sent += 1
            conn.send_text(encode({"op": "send", "ref": sent, "channel": channel,
                                   "body": body}))

        def on_message(payload: bytes, now: float) -> None:
            nonlocal replied, max_seq, acked
            reply = decode_reply(payload)
            if reply.type == "event":
                return
            replied += 1
            if reply.type == "ok" and isinstance(reply.message, _SentMsg):
                acked += 1
                max_seq = max(max_seq, reply.message.seq)
            elif len(errors) < 5:
                errors.append(f"{reply}")
            if sent < per_conn:
                send_one()
            elif replied >= per_conn and not done.done():
                done.set_result(None)

        conn.on_message = on_message
        for _ in range(min(window, per_conn)):
            send_one()
        closed = asyncio.ensure_future(conn.closed.wait())
        await asyncio.wait({done, closed}, timeout=300, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not done.done():
            errors.append(f"fill: {replied} of {per_conn} replies (closed {conn.close_code})")

    await asyncio.gather(*(fill(c) for c in conns))
    ctl.send("done", {"acked": acked, "max_seq": max_seq, "errors": errors,
                      "cpu": cpu_now() - cpu0, "wall": time.time() - wall0})
    await ctl.recv()
    await close_all(conns)


# ---------------------------------------------------------------- S3: replay


async def role_replay(ctl: Ctl, params: dict[str, Any]) -> None:
    ctl.send("ready", 0)
    while True:
        msg = await ctl.recv()
        if msg[0] != "go":
            break
        ctl.send("done", await _replay_once(params, msg[1], msg[2]))


async def _replay_once(params: dict[str, Any], since: int, last_seq: int) -> dict[str, Any]:
    """A new connection subscribes with ``since``; time until ``last_seq`` arrives."""
    (conn,) = await open_conns(params, 1)
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    count = 0
    prev = since
    ordered = True
    errors: list[str] = []

    def on_message(payload: bytes, now: float) -> None:
        nonlocal count, prev, ordered
        frame = decode_frame(payload)
        if frame.type != "event":
            if frame.type != "ok" and len(errors) < 5:
                errors.append(payload[:300].decode(errors="replace"))
            return
        count += 1
        if frame.seq <= prev:
            ordered = False
        prev = frame.seq
        if frame.seq >= last_seq and not done.done():
            done.set_result(time.perf_counter())

    conn.on_message = on_message
    cpu0 = cpu_now()
    t0 = time.perf_counter()
    conn.send_text(encode({"op": "subscribe", "ref": "replay", "since": since}))
    closed = asyncio.ensure_future(conn.closed.wait())
    either: set[asyncio.Future[Any]] = {done, closed}
    await asyncio.wait(either, timeout=300, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    elapsed = done.result() - t0 if done.done() else float("nan")
    if not done.done():
        errors.append(f"replay: {count} events, last {prev} < {last_seq}"
                      f" (closed {conn.close_code})")
    result = {"events": count, "elapsed": elapsed, "ordered": ordered, "last": prev,
              "errors": errors, "cpu": cpu_now() - cpu0, "wall": elapsed}
    await conn.aclose()
    return result


# ----------------------------------------------------------- TYPING: typers


async def role_typers(ctl: Ctl, params: dict[str, Any]) -> None:
    """One connection per token (one user each), each sending ``typing`` to the
    channel every ``period`` seconds, staggered, from "go" until its end."""
    conns: list[Conn] = []
    for token in params["tokens"]:
        conn = await connect(params["client"], params["host"], params["port"])
        await conn.ok("auth", token=token)
        conns.append(conn)
    ctl.send("ready", len(conns))
    counts = {"ok": 0, "other": 0, "sent": 0}
    answered = asyncio.Event()

    def on_message(payload: bytes, now: float) -> None:
        reply = decode_reply(payload)
        if reply.type == "ok":
            counts["ok"] += 1
        elif reply.type != "ephemeral" and reply.type != "event":
            counts["other"] += 1
        if counts["ok"] + counts["other"] >= counts["sent"]:
            answered.set()

    for conn in conns:
        conn.on_message = on_message
    channel, period = params["channel"], params["period"]
    while True:
        msg = await ctl.recv()
        if msg[0] != "go":
            break
        _, t_start, duration = msg
        counts.update(ok=0, other=0, sent=0)
        answered.clear()
        sent = 0
        cpu0, wall0 = cpu_now(), time.time()
        n = len(conns)
        frame = encode({"op": "typing", "channel": channel})
        tick = 0
        while time.time() < t_start + duration:
            # Connection i types at t_start + (i / n + k) * period: an even stream.
            i = tick % n
            await sleep_until(t_start + (tick / n) * period)
            if not conns[i].closed.is_set():
                conns[i].send_text(frame)
                sent += 1
            tick += 1
        counts["sent"] = sent
        if counts["ok"] + counts["other"] < sent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 30)
        ctl.send("done", {"sent": sent, "ok": counts["ok"], "other": counts["other"],
                          "cpu": cpu_now() - cpu0, "wall": time.time() - wall0})
    await close_all(conns)


ROLES: dict[str, Callable[[Ctl, dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "typers": role_typers,
    "senders": role_senders,
    "paced": role_paced,
    "subs": role_subs,
    "fill": role_fill,
    "replay": role_replay,
}


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for the workers: uvloop when asked for (or "auto" and it is
    installed: it roughly halves what a received frame costs the load generator),
    else asyncio's own."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def loop_name(kind: str) -> str:
    return "asyncio" if loop_factory(kind) is None else "uvloop"


def worker_main(pipe: multiprocessing.connection.Connection, role: str,
                params: dict[str, Any]) -> None:
    raise_nofile()
    try:
        with asyncio.Runner(loop_factory=loop_factory(params.get("loop", "auto"))) as runner:
            runner.run(ROLES[role](Ctl(pipe), params))
    except BaseException:
        with contextlib.suppress(Exception):
            pipe.send(("crash", traceback.format_exc()))
        raise


# ---------------------------------------------------------------- the bench side


class WorkerCrash(RuntimeError):
    pass


class Worker:
    """The bench process's handle on one worker process."""

    def __init__(self, role: str, params: dict[str, Any], name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, role, params),
                                name=name, daemon=True)
        self.proc.start()
        child.close()

    def send(self, *msg: Any) -> None:
        self.pipe.send(msg)

    def recv(self, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.1):
            if not self.proc.is_alive() and not self.pipe.poll(0):
                raise WorkerCrash(f"{self.name} exited with {self.proc.exitcode}")
            if time.monotonic() > deadline:
                raise WorkerCrash(f"{self.name}: no answer within {timeout:.0f} s")
        try:
            msg: tuple[Any, ...] = self.pipe.recv()
        except EOFError as exc:
            raise WorkerCrash(f"{self.name} exited with {self.proc.exitcode}") from exc
        if msg[0] == "crash":
            raise WorkerCrash(f"{self.name} crashed:\n{msg[1]}")
        return msg

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send("close")
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.pipe.close()


class Pool:
    """Several workers of one role, driven together."""

    def __init__(self, role: str, params: list[dict[str, Any]]) -> None:
        self.workers = [Worker(role, p, f"{role}-{i}") for i, p in enumerate(params)]

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()

    def gather(self, timeout: float, expect: str) -> list[Any]:
        out = []
        for w in self.workers:
            msg = w.recv(timeout)
            if msg[0] != expect:
                raise WorkerCrash(f"{w.name}: expected {expect!r}, got {msg[0]!r}")
            out.append(msg[1] if len(msg) > 1 else None)
        return out

    def broadcast(self, *msg: Any) -> None:
        for w in self.workers:
            w.send(*msg)


def split(total: int, parts: int) -> list[int]:
    """total spread as evenly as possible over parts (earlier parts get the extra)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


__all__ = ["Pool", "ProtocolFailure", "Worker", "WorkerCrash", "raise_nofile", "split"]
