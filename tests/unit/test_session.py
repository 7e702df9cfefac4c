"""chatd/connection.py's Session without a socket: frames in, frames out.

The session runs against the real daemon services (:class:`chatd.server.App`
over a real sqlite file), fed text frames from a queue and writing to an
in-memory sink that decodes what would have gone on the wire. Each test takes
milliseconds; what needs a real socket (handshakes, close codes on the wire,
TCP buffers) stays in the integration tests.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatd.config import Config
from chatd.connection import CLOSE_POLICY, Session
from chatd.server import App
from chatd.store import open_store

_END = object()


class MemorySink:
    """A :class:`chatd.sink.Sink` that keeps what was written, decoded.

    ``unsent`` stands for the bytes a peer has not read yet: a test raises it
    to play a client that stops reading.
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.frames: list[dict[str, Any]] = []
        self.unsent = 0
        self.closed: tuple[int, str] | None = None
        self.changed = asyncio.Event()

    def write(self, frames: bytes) -> None:
        if self.closed is None:
            self.frames += _parse(frames)
            self.changed.set()

    def send(self, payload: bytes) -> None:
        self.frames.append(json.loads(payload))
        self.changed.set()

    def buffered(self) -> int:
        return self.unsent

    @property
    def open(self) -> bool:
        return self.closed is None

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.peer.end()
            self.changed.set()

    # -- for the tests

    def replies(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] != "event"]

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event"]

    async def wait_for(self, test: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not test():
                self.changed.clear()
                await self.changed.wait()


def _parse(data: bytes) -> list[dict[str, Any]]:
    """Server text frames (FIN, opcode 1, unmasked) back to JSON objects."""
    out = []
    while data:
        assert data[0] == 0x81, data[:2]
        n, at = data[1], 2
        if n == 126:
            (n,), at = struct.unpack("!H", data[2:4]), 4
        elif n == 127:
            (n,), at = struct.unpack("!Q", data[2:10]), 10
        out.append(json.loads(data[at:at + n]))
        data = data[at + n:]
    return out


class Peer:
    """The client side: text (or binary) frames for the session to read."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def frame(self, data: str | bytes) -> None:
        self.queue.put_nowait(data)

    def command(self, op: str, ref: Any = None, **args: Any) -> None:
        self.frame(json.dumps({"op": op, "ref": ref, **args}))

    def end(self) -> None:
        self.queue.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while (data := await self.queue.get()) is not _END:
            yield data


class Harness:
    def __init__(self, app: App) -> None:
        self.app = app
        self.peer = Peer()
        self.sink = MemorySink(self.peer)
        self.session = Session(app, self.sink, "192.0.2.1")
        self.task = asyncio.create_task(self.session.run(self.peer))

    async def replies(self, n: int) -> list[dict[str, Any]]:
        await self.sink.wait_for(lambda: len(self.sink.replies()) >= n)
        return self.sink.replies()

    async def login(self, name: str = "alice") -> None:
        self.peer.command("login", "login", name=name, password="pw-secret-1")
        (reply,) = await self.replies(1)
        assert reply["type"] == "ok", reply
        self.sink.frames.clear()


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    apps: list[App] = []
    harnesses: list[Harness] = []

    async def make(**config: Any) -> Harness:
        cfg = Config(db=str(tmp_path / "unit.db"), scrypt_n=1024, **config)
        app = App(cfg, open_store(cfg.db))
        await app.start()
        apps.append(app)
        h = Harness(app)
        harnesses.append(h)
        return h

    yield make
    for h in harnesses:
        h.peer.end()
        await asyncio.wait_for(h.task, 5)
    for app in apps:
        await app.writer.close()
        await app.stop()


async def test_replies_in_command_order_whatever_finishes_first(start: Any) -> None:
    h = await start()
    await h.login()
    h.peer.command("create_channel", "c", name="general")
    (created,) = await h.replies(1)
    channel = created["channel"]["id"]
    # a send waits for a commit; the pings after it are answered at once
    for i in range(20):
        h.peer.command("send", f"s{i}", channel=channel, body=f"m{i}")
        h.peer.command("ping", f"p{i}")
    replies = await h.replies(41)
    assert [r["ref"] for r in replies[1:]] == [
        ref for i in range(20) for ref in (f"s{i}", f"p{i}")]
    seqs = [r["message"]["seq"] for r in replies[1:] if "message" in r]
    assert seqs == sorted(seqs)


async def test_subscribe_is_a_barrier_before_its_events(start: Any) -> None:
    h = await start()
    await h.login()
    h.peer.command("create_channel", "c", name="general")
    (created,) = await h.replies(1)
    for i in range(10):
        h.peer.command("send", f"s{i}", channel=created["channel"]["id"], body=f"m{i}")
    h.peer.command("subscribe", "sub", since=0)
    h.peer.command("ping", "after")
    await h.sink.wait_for(lambda: len(h.sink.events()) >= 11 and len(h.sink.replies()) >= 13)
    order = [f.get("ref") if f["type"] != "event" else f["seq"] for f in h.sink.frames]
    # every send's ok, then the subscribe ok, then the replay; the ping after it
    assert order[:12] == ["c"] + [f"s{i}" for i in range(10)] + ["sub"]
    assert [f["seq"] for f in h.sink.events()] == list(range(1, 12))
    assert order.index("after") > order.index("sub")


async def test_bad_frames_close_after_the_limit_and_a_good_one_resets(start: Any) -> None:
    h = await start(max_bad_frames=5)
    for _ in range(4):
        h.peer.frame("{not json")
    h.peer.command("ping", "good")
    for _ in range(4):
        h.peer.frame(b"\x00binary")
    await h.replies(9)
    assert h.sink.closed is None
    bad = [r for r in h.sink.replies() if r["type"] == "error"]
    assert len(bad) == 8 and {r["code"] for r in bad} == {"bad_request"}
    assert all(r["ref"] is None for r in bad)
    assert any("binary" in r["message"] for r in bad)
    h.peer.command("nope", 7)
    await h.sink.wait_for(lambda: h.sink.closed is not None)
    assert h.sink.closed == (CLOSE_POLICY, "too many bad frames")
    assert h.sink.replies()[-1]["ref"] == 7


async def test_field_errors_name_the_path_and_keep_the_ref(start: Any) -> None:
    h = await start()
    h.peer.command("history", "h1", channel="C1", limit=0)
    h.peer.command("ping", ref=["not", "a", "ref"])
    h.peer.command("boot", "b1")
    r = await h.replies(3)
    assert (r[0]["code"], r[0]["ref"]) == ("bad_request", "h1") and "$.limit" in r[0]["message"]
    assert (r[1]["code"], r[1]["ref"]) == ("bad_request", None)
    assert (r[2]["code"], r[2]["ref"]) == ("unauthorized", "b1")


async def test_rate_limit_answers_retry_after(start: Any) -> None:
    h = await start(conn_rate=0.001, conn_burst=3)
    for i in range(5):
        h.peer.command("ping", i)
    r = await h.replies(5)
    assert [x["type"] for x in r] == ["ok", "ok", "ok", "error", "error"]
    assert r[3]["code"] == "rate_limited" and r[3]["retry_after"] > 0
    assert [x["ref"] for x in r] == [0, 1, 2, 3, 4]


async def test_login_timeout_closes(start: Any) -> None:
    h = await start(login_timeout=0.05)
    await h.sink.wait_for(lambda: h.sink.closed is not None)
    assert h.sink.closed == (CLOSE_POLICY, "no login within the timeout")


async def test_login_in_time_cancels_the_timeout(start: Any) -> None:
    h = await start(login_timeout=0.2)
    await h.login()
    await asyncio.sleep(0.3)
    assert h.sink.closed is None


async def test_failed_logins_close_the_connection(start: Any) -> None:
    h = await start(max_login_failures_per_conn=2)
    await h.login("alice")
    h.peer.command("logout", "out")
    h.peer.command("login", "l1", name="alice", password="wrong-password-1")
    h.peer.command("login", "l2", name="alice", password="wrong-password-2")
    await h.sink.wait_for(lambda: h.sink.closed is not None)
    r = h.sink.replies()
    assert [x["code"] for x in r if x["type"] == "error"] == ["unauthorized", "unauthorized"]
    assert h.sink.closed == (CLOSE_POLICY, "too many failed logins")


async def test_a_peer_that_does_not_read_stops_being_read(start: Any) -> None:
    h = await start(send_buffer_limit=1000, slow_reader_timeout=0.2)
    await h.login()
    h.sink.unsent = 5000  # the peer stopped reading
    h.peer.command("ping", "first")
    h.peer.command("ping", "second")
    await h.replies(1)
    await asyncio.sleep(0.05)
    assert [r["ref"] for r in h.sink.replies()] == ["first"], "not read while over the limit"
    await h.sink.wait_for(lambda: h.sink.closed is not None)
    assert h.sink.closed == (4000, "read too slowly")


async def test_reading_resumes_once_the_peer_catches_up(start: Any) -> None:
    h = await start(send_buffer_limit=1000, slow_reader_timeout=5)
    await h.login()
    h.sink.unsent = 5000
    h.peer.command("ping", "first")
    h.peer.command("ping", "second")
    await h.replies(1)
    h.sink.unsent = 100
    r = await h.replies(2)
    assert [x["ref"] for x in r] == ["first", "second"] and h.sink.closed is None


async def test_draining_answers_unavailable(start: Any) -> None:
    h = await start()
    await h.login()
    h.app.draining = True
    h.peer.command("ping", "p")
    (r,) = await h.replies(1)
    assert (r["code"], r["ref"]) == ("unavailable", "p")


async def test_logout_ends_the_token_on_other_sessions(start: Any) -> None:
    h = await start()
    h.peer.command("login", "l", name="alice", password="pw-secret-1")
    (login,) = await h.replies(1)
    other = Harness(h.app)
    h.app.sessions.update({h.session, other.session})
    other.peer.command("auth", "a", token=login["token"])
    await other.replies(1)
    h.peer.command("logout", "out")
    await h.replies(2)
    await other.sink.wait_for(lambda: other.sink.closed is not None)
    assert other.sink.closed == (4001, "logged out elsewhere")
    assert other.session.user is None
    h.peer.command("boot", "b")
    assert (await h.replies(3))[-1]["code"] == "unauthorized"
    assert h.sink.closed is None, "the connection that logged out stays open"
    await other.task
