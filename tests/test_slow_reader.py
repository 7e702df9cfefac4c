"""Slow readers (PROTOCOL.md guarantee 4; issue 4 "Slow readers").

Four subscribers that never read (raw sockets with a 4 KiB SO_RCVBUF, so the
daemon's own write buffer really fills up) and two prompt subscribers are
subscribed while four sender connections produce 50,000 events (pipelined
sends of ~600-byte events, ``--no-rate-limits``). Meanwhile the test samples the
daemon's RSS from /proc/PID/status and its ``chatd_lagging_subscribers`` gauge.

* Memory: the daemon's peak RSS stays under baseline + 64 MiB (RSS_BOUND). The
  stream is ~30 MB per subscriber, so a daemon that queued it for the four
  non-readers would need ~120 MB more; a bounded one needs about
  4 x (--send-buffer-limit + one replay batch), a few MiB.
* The slow path is really taken: the lagging gauge is >= 1 during the run.
* The prompt subscribers receive every event, in order; their end-to-end latency
  (send written by the test -> event read by the test) is measured and printed,
  never asserted on (the machine is shared).
* With ``--slow-reader-timeout 10m`` the slow subscriber, once it reads again,
  receives every event in order (caught up from the store), without being closed.
* With ``--slow-reader-timeout 1`` it is closed (close 4000, or for a client that
  does not read, just the end of the TCP connection) and, resuming with its last
  (epoch, seq), gets the rest without loss or duplicate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import statistics
import struct
import time
from typing import Any

import pytest
import websockets

from .helpers import http_get
from .support import UNIT, WS, Daemon

EVENTS = 50_000
SENDERS = 4
WINDOW = 200  # sends in flight per sender connection
SLOW = 4  # subscribers that never read
PROMPT = 2
PAD = "p" * 420  # with the JSON around it, ~600 bytes per event frame
RSS_BOUND = 64 * 1024 * 1024
#: a connection that does not read is ended by the server this long after its
#: --slow-reader-timeout at most: the close handshake timeout (5 s) and a margin.
DROP_AFTER_TIMEOUT = 5 + 5 * UNIT


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RawSubscriber:
    """A WebSocket client on a bare non-blocking socket: nothing is read from the
    kernel unless :meth:`frame` is called, and the kernel buffer is tiny."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.loop = asyncio.get_running_loop()
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 4096) -> RawSubscriber:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        self = cls(sock)
        await self.loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await self.loop.sock_sendall(sock, (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            await self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    async def _fill(self) -> None:
        chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), 60 * UNIT)
        if not chunk:
            raise EOFError
        self.buf += chunk

    async def send(self, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack("!H", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.loop.sock_sendall(self.sock, head + mask + masked)

    async def frame(self) -> dict[str, Any] | None:
        """The next text frame as JSON; None on a close frame (sets close_code)."""
        while True:
            while len(self.buf) < 2:
                await self._fill()
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                while len(self.buf) < 4:
                    await self._fill()
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                while len(self.buf) < 10:
                    await self._fill()
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            while len(self.buf) < off + n:
                await self._fill()
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            opcode = b0 & 0x0F
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return None
            if opcode == 0x1:
                return json.loads(payload)  # type: ignore[no-any-return]

    async def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.send(obj)
        r = await self.frame()
        assert r is not None and r.get("ref") == obj["ref"], r
        return r

    async def read_events_until(self, seq: int) -> None:
        """Read until event ``seq``; stops quietly when the server ends the connection."""
        while not self.events or self.events[-1]["seq"] < seq:
            f = await self.frame()
            if f is None:
                return
            if f.get("type") == "event":
                self.events.append(f)

    def close(self) -> None:
        self.sock.close()


class Prompt:
    """A subscriber that reads all the time and notes when each event arrived."""

    def __init__(self, ws: WS) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.latency: list[float] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        conn = self.ws.conn
        while True:
            frame = json.loads(await conn.recv())
            now = time.monotonic()
            if frame.get("type") == "event":
                self.events.append(frame)
                if frame["kind"] == "message.sent":
                    self.latency.append(now - float(frame["message"]["body"].split(" ")[1]))

    async def until(self, seq: int) -> None:
        deadline = time.monotonic() + 300 * UNIT
        while not self.events or self.events[-1]["seq"] < seq:
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"prompt subscriber stuck at {self.events[-1:]}"
            await asyncio.sleep(0.05)


async def produce(d: Daemon, token: str, channel: str,
                  state: dict[str, int]) -> list[tuple[int, str]]:
    """EVENTS sends over SENDERS pipelined connections; the acked (seq, id) pairs.
    ``state["senders"]`` counts the sender connections open."""
    acked: list[tuple[int, str]] = []

    async def sender(j: int, count: int) -> None:
        async with websockets.connect(d.url, max_size=None) as conn:
            state["senders"] += 1
            try:
                await send_all(conn, j, count)
            finally:
                state["senders"] -= 1

    async def send_all(conn: websockets.ClientConnection, j: int, count: int) -> None:
        await conn.send(json.dumps({"op": "auth", "ref": "a", "token": token}))
        assert json.loads(await conn.recv())["type"] == "ok"
        done = 0
        while done < count:
            n = min(WINDOW, count - done)
            for k in range(done, done + n):
                await conn.send(json.dumps({
                    "op": "send", "ref": k, "channel": channel,
                    "body": f"{j}:{k} {time.monotonic():.6f} {PAD}"}))
            for k in range(done, done + n):
                r = json.loads(await conn.recv())
                assert r["type"] == "ok" and r["ref"] == k, r
                acked.append((r["message"]["seq"], r["message"]["id"]))
            done += n

    per = EVENTS // SENDERS
    await asyncio.gather(*(sender(j, per) for j in range(SENDERS)))
    assert len(acked) == EVENTS
    return sorted(acked)


async def metric(d: Daemon, name: str) -> float:
    _, _, body = await http_get(d.http + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def wait_until(cond: Any, within: float) -> None:
    """Poll ``cond`` every 0.1 s for up to ``within`` seconds (no failure on timeout)."""
    for _ in range(int(within * 10)):
        if cond():
            return
        await asyncio.sleep(0.1)


def pairs(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["seq"], e["message"]["id"]) for e in events]


def same(got: list[tuple[int, str]], want: list[tuple[int, str]], what: str) -> None:
    if got == want:
        return
    seqs = [s for s, _ in got]
    dups = len(seqs) - len(set(seqs))
    missing = sorted(set(want) - set(got))
    disorder = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    raise AssertionError(f"{what}: {len(got)} events, want {len(want)}; {dups} duplicates, "
                         f"{len(missing)} missing (first {missing[:5]}), {disorder} out of order")


def ms(xs: list[float], q: float) -> str:
    return f"{statistics.quantiles(xs, n=100)[int(q) - 1] * 1000:.0f}" if len(xs) > 2 else "?"


async def test_client_that_never_reads_its_replies_is_bounded(make_daemon):
    """The other kind of slow reader: a client that pipelines commands with large
    replies (``history`` of 128 messages of 4,096 emoji, ~2 MiB per reply) and
    never reads them. The daemon must not hold more than RSS_BOUND for it (a
    daemon that runs all 64 in-flight commands and buffers every reply holds
    ~128 MiB), other clients stay served (ping latency printed), and the
    connection is ended by the server after --slow-reader-timeout."""
    d = await make_daemon("--no-rate-limits", "--scrypt-n", "1024",
                          "--slow-reader-timeout", "2")
    async with WS.connect(d.url) as ws:
        token = (await ws.login("hoarder"))["token"]
        ch = (await ws.ok("create_channel", name="big"))["channel"]["id"]
        body = "\U0001f600" * 4096  # 16 KiB of UTF-8
        for i in range(128):
            await ws.send_raw(json.dumps({"op": "send", "ref": i, "channel": ch, "body": body}))
        for _ in range(128):
            assert (await ws.recv(60))["type"] == "ok"
        one = len(json.dumps(await ws.ok("history", channel=ch, limit=500),
                             ensure_ascii=False).encode())

    pid = d.proc.pid
    await asyncio.sleep(0.3)
    baseline = peak = rss(pid)
    hoarder = await RawSubscriber.open(d.port)
    assert (await hoarder.request({"op": "auth", "ref": "a", "token": token}))["type"] == "ok"
    for i in range(64):
        await hoarder.send({"op": "history", "ref": i, "channel": ch, "limit": 500})
    pings: list[float] = []
    gone_after = None
    async with WS.connect(d.url) as other:
        await other.ok("auth", token=token)
        started = time.monotonic()
        while time.monotonic() - started < 2 + DROP_AFTER_TIMEOUT + 20:
            peak = max(peak, rss(pid))
            t = time.monotonic()
            assert (await other.request("ping", timeout=60))["type"] == "ok"
            pings.append(time.monotonic() - t)
            if await metric(d, "chatd_connections") <= 1:  # only `other` is left
                gone_after = time.monotonic() - started
                break
            await asyncio.sleep(0.05)
    peak = max(peak, rss(pid))
    # Now read what reached the client: a close frame 4000 or the TCP end, if the
    # server ended the connection.
    replies, ended = 0, "still open"
    try:
        while (f := await hoarder.frame()) is not None:
            replies += f.get("type") == "ok"
        ended = f"close frame {hoarder.close_code}"
    except (EOFError, ConnectionError) as exc:
        ended = f"TCP end ({type(exc).__name__})"
    except TimeoutError:
        pass
    hoarder.close()
    print(f"\nnon-reading client with 64 history requests of {one / 2**20:.1f} MiB each: daemon "
          f"RSS +{(peak - baseline) / 2**20:.1f} MiB (bound +{RSS_BOUND / 2**20:.0f} MiB); "
          f"dropped by the server after: {gone_after} s; when read, {replies} replies, then "
          f"{ended}; other client's ping p50 {ms(pings, 50)} ms, max {max(pings) * 1000:.0f} ms")
    problems = []
    if peak - baseline > RSS_BOUND:
        problems.append(
            f"one client that never reads made the daemon hold "
            f"{(peak - baseline) / 2**20:.0f} MiB (bound {RSS_BOUND / 2**20:.0f} MiB; "
            f"--send-buffer-limit 256 KiB): the replies of all in-flight commands are buffered")
    if gone_after is None or gone_after > 2 + DROP_AFTER_TIMEOUT:
        problems.append(
            f"the server ended the connection of a client that does not read after "
            f"{gone_after} s, not within --slow-reader-timeout 2 s + {DROP_AFTER_TIMEOUT:.0f} s")
    elif not ended.startswith(("close frame 4000", "TCP end")):
        problems.append(f"the non-reader's connection ended with {ended}")
    assert not problems, problems


@pytest.mark.parametrize("mode", ["long-timeout", "short-timeout"])
async def test_slow_reader_bounded_memory_prompt_others_no_loss(make_daemon, mode):
    timeout = "10m" if mode == "long-timeout" else "1"
    d = await make_daemon("--no-rate-limits", "--scrypt-n", "1024",
                          "--slow-reader-timeout", timeout)
    async with WS.connect(d.url) as ws:
        token = (await ws.login("producer"))["token"]
        channel = (await ws.ok("create_channel", name="firehose"))["channel"]["id"]

    slow = []
    for _ in range(SLOW):
        s = await RawSubscriber.open(d.port)
        assert (await s.request({"op": "auth", "ref": "a", "token": token}))["type"] == "ok"
        sub = await s.request({"op": "subscribe", "ref": "s"})
        assert sub["type"] == "ok", sub
        slow.append(s)
    epoch, start = sub["epoch"], sub["resume_point"]

    async with contextlib.AsyncExitStack() as stack:
        prompt = []
        for _ in range(PROMPT):
            ws = await stack.enter_async_context(WS.connect(d.url))
            await ws.ok("auth", token=token)
            await ws.ok("subscribe")
            prompt.append(Prompt(ws))

        pid = d.proc.pid
        await asyncio.sleep(0.5)
        baseline = rss(pid)
        peak = baseline
        sampling = True
        state = {"senders": 0}
        #: (time, lagging gauge, non-reading subscribers still connected)
        samples: list[tuple[float, int, int]] = []

        async def sample_rss() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss(pid))
                await asyncio.sleep(0.05)

        async def sample_metrics() -> None:
            while sampling:
                lagging = int(await metric(d, "chatd_lagging_subscribers"))
                conns = int(await metric(d, "chatd_connections"))
                samples.append((time.monotonic(), lagging, conns - PROMPT - state["senders"]))
                await asyncio.sleep(0.1)

        samplers = [asyncio.ensure_future(sample_rss()),
                    asyncio.ensure_future(sample_metrics())]
        started = time.monotonic()
        want = await produce(d, token, channel, state)
        produced_in = time.monotonic() - started
        final = want[-1][0]
        for p in prompt:
            await p.until(final)
        caught_up_in = time.monotonic() - started
        if mode == "short-timeout":  # watch until the non-readers are gone (or 30 s)
            await wait_until(lambda: samples[-1][2] <= 0, 30 * UNIT)
        sampling = False
        await asyncio.gather(*samplers)
        peak = max(peak, rss(pid))
        lagging_max = max(lag for _, lag, _ in samples)
        t_lag = next((t for t, lag, _ in samples if lag >= 1), None)

        lat = [x for p in prompt for x in p.latency]
        print(f"\n[{mode}] {EVENTS} events produced in {produced_in:.1f} s "
              f"({EVENTS / produced_in:.0f}/s); prompt subscribers had all of them after "
              f"{caught_up_in:.1f} s; their latency p50 {ms(lat, 50)} ms, p99 {ms(lat, 99)} ms, "
              f"max {max(lat) * 1000:.0f} ms")
        print(f"[{mode}] daemon RSS baseline {baseline / 2**20:.1f} MiB, peak "
              f"{peak / 2**20:.1f} MiB (+{(peak - baseline) / 2**20:.1f} MiB; bound "
              f"+{RSS_BOUND / 2**20:.0f} MiB); lagging subscribers seen: {lagging_max}")

        for p in prompt:
            p.task.cancel()
        for i, p in enumerate(prompt):
            same(pairs([e for e in p.events if e["seq"] <= final]), want, f"prompt {i}")
        assert lagging_max >= 1, "no subscriber was ever lagging: the buffers never filled"
        assert peak - baseline <= RSS_BOUND, (
            f"RSS grew by {(peak - baseline) / 2**20:.1f} MiB with {SLOW} non-reading "
            f"subscribers (bound {RSS_BOUND / 2**20:.0f} MiB)")

        # Closed with 4000 "after --slow-reader-timeout": the server must end the
        # connections of the subscribers that still do not read, by itself.
        problems = []
        assert t_lag is not None
        if mode == "short-timeout":
            t_gone = next((t for t, _, left in samples if t > t_lag and left <= 0), None)
            delay = None if t_gone is None else t_gone - t_lag
            print(f"[{mode}] the {SLOW} non-reading subscribers were disconnected by the server "
                  f"{delay and round(delay, 1)} s after the first of them started lagging")
            if delay is None or delay > 1 + DROP_AFTER_TIMEOUT:
                problems.append(
                    f"non-reading subscribers were disconnected {delay} s after they started "
                    f"lagging, not within --slow-reader-timeout 1 s + {DROP_AFTER_TIMEOUT:.0f} s"
                    f" (the close waits for the peer to read; the keepalive ping ends it)")
        else:
            # (The senders' connections may still be closing on the server side.)
            for _ in range(50):
                open_now = await metric(d, "chatd_connections") - PROMPT
                if open_now <= SLOW:
                    break
                await asyncio.sleep(0.1)
            assert open_now == SLOW, f"{open_now} of {SLOW} still open with a 10m timeout"

    # The slow one reads again.
    reader = slow[0]
    t0 = time.monotonic()
    try:
        await reader.read_events_until(final)
    except (EOFError, ConnectionError, TimeoutError):
        pass
    first = [e for e in reader.events if e["kind"] == "message.sent"]
    got = [e["seq"] for e in reader.events]
    assert all(a < b for a, b in itertools.pairwise(got)), "out of order or duplicate"
    assert not got or got[0] > start
    if mode == "long-timeout":
        assert reader.close_code is None, f"closed with {reader.close_code} despite 10m timeout"
        same(pairs(first), want, "the slow subscriber, caught up from the store")
        print(f"[{mode}] the slow subscriber read all {len(first)} events in order in "
              f"{time.monotonic() - t0:.1f} s")
    else:
        last = got[-1] if got else start
        assert last < final, "the slow subscriber was never closed"
        assert reader.close_code in (None, 4000), reader.close_code
        # Resume with the last (epoch, seq) seen.
        async with WS.connect(d.url) as ws:
            await ws.ok("auth", token=token)
            r = await ws.ok("subscribe", since=last, epoch=epoch)
            assert r["epoch"] == epoch
            rest = await ws.events_until(final, timeout=120)
        same(pairs(first + [e for e in rest if e["seq"] <= final]), want,
             "the slow subscriber after it was closed and resumed")
        print(f"[{mode}] the slow subscriber had {len(first)} events when the server ended the "
              f"connection (close frame: {reader.close_code}); resumed from seq {last} and got "
              f"the other {len(rest)}")
    for s in slow:
        s.close()
    assert not problems, problems
