"""TYPING: a typing storm. ``N`` subscribers made with ``ephemeral: true``,
``typers`` users each sending ``typing`` in the one channel every ``period``
seconds, while a sender posts messages at ``rate``. The figures: the daemon's
CPU (process CPU time over wall time) and the delivery latency of the messages
(p99 target 100 ms), that is whether typing traffic crowds out the events.

With ``period`` 1 s every typing is forwarded (the protocol's most: one per
user and channel per second), so the daemon writes ``typers`` x N ephemeral
frames a second; the web page sends one every 3 s, a third of that.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import websockets

from .daemon import Daemon
from .scenarios import Bench, Row, fanout_round, log, verdict, wait_until
from .workers import Pool, split

TITLE = "typing storm: ephemeral subscribers, users typing continuously, messages sent"


async def make_users(host: str, port: int, n: int) -> list[str]:
    """``n`` users (login creates them): their tokens."""
    tokens: list[str] = []
    async with websockets.connect(f"ws://{host}:{port}/ws", compression=None) as ws:
        for i in range(n):
            await ws.send(msgspec.json.encode(
                {"op": "login", "ref": i, "name": f"typer{i}",
                 "password": "bench-password-1"}).decode())
            while True:
                reply: dict[str, Any] = msgspec.json.decode(await ws.recv())
                if reply.get("ref") == i:
                    break
            if reply.get("type") != "ok":
                raise RuntimeError(f"login typer{i}: {reply}")
            tokens.append(reply["token"])
    return tokens


def run_typing(b: Bench, n: int = 1000, typers: int = 100, period: float = 1.0,
               rate: int = 20, duration: float | None = None) -> list[Row]:
    duration = duration or b.sizes.s2_duration
    label = f"TYPING N={n} typers={typers}/{period:g}s @{rate}/s"
    with b.daemon("typing") as (d, params):
        tokens = asyncio.run(make_users(d.host, d.port, typers))
        typer_params = [{**params, "tokens": tokens[i::2], "period": period} for i in range(2)]
        with Pool("paced", [params]) as sender, Pool("typers", typer_params) as typing, \
                Pool("subs", [{**params, "n": k, "ephemeral": True}
                              for k in split(n, b.sizes.sub_workers)]) as subs:
            sender.gather(60, "ready")
            typing.gather(120, "ready")
            t0 = time.time()
            subs.gather(300, "ready")
            log(f"{label}: {n} subscribers connected in {time.time() - t0:.1f} s")
            # The same load without typing first: on a shared machine only the
            # difference between the two rows says what typing costs.
            base = fanout_round(b, d, sender, subs, n, rate, duration,
                                f"TYPING N={n} no typers @{rate}/s")
            # The typers start first and stop after: they cover the measured window.
            t_start = time.time() + 0.2
            typing.broadcast("go", t_start, duration + 2.0)
            wait_until(t_start + 0.5)
            row = fanout_round(b, d, sender, subs, n, rate, duration, label)
            typed = typing.gather(duration + 60, "done")
    base.figure, base.unit = base.detail["daemon_cores"], "daemon cores"
    base.target = "baseline for the row below"
    return [base, _typing_row(b, d, row, typed, n, typers, period)]


def _typing_row(b: Bench, d: Daemon, row: Row, typed: list[dict[str, Any]], n: int,
                typers: int, period: float) -> Row:
    sent = sum(t["sent"] for t in typed)
    bad = sum(t["other"] for t in typed)
    if bad:
        b.failures.append(f"{row.scenario}: {bad} typing commands were not answered ok")
    p99 = row.detail["p99_ms"]
    cores = row.detail["daemon_cores"]
    row.detail.update(typers=typers, typing_period_s=period, typing_sent=sent,
                      typing_not_ok=bad)
    row.figure = cores
    row.unit = "daemon cores"
    row.target = "message p99 <= 100 ms, all delivered in order"
    row.status = verdict(p99 is not None and p99 <= 100 and row.detail["all_delivered_in_order"])
    frames = row.detail["ephemeral_frames"]
    row.note = (f"{sent} typing sent, {frames} ephemeral frames received by the "
                f"subscribers; " + row.note)
    return row
