"""chatd.client against a real daemon, through a proxy that breaks connections.

The central property: whatever happens to the connection or the daemon, the
application sees each event exactly once, in seq order, and each ``send`` call
stores exactly one message. Outages are made by SIGKILL and SIGTERM of the
daemon and by a TCP proxy that aborts connections at random. Waits are bounded
by generous multiples of UNIT and only guard against hangs; no assertion
depends on how fast anything happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import msgspec
import pytest
import websockets

from chatd import wire
from chatd.client import Client, ConnectionLost, Reset, StreamPosition, backoff, new_nonce
from chatd.exceptions import (
    BadRequest,
    ClientClosed,
    CommandTimeout,
    Conflict,
    ConnectFailed,
    Forbidden,
    NotFound,
    ResumeGap,
    Unauthorized,
)

from .conftest import MakeDaemon
from .proxy import Proxy
from .support import UNIT, WS, Daemon

PASSWORD = "pw-secret-1"
WORKER_SENDS = 75


def fast() -> Iterable[float]:
    """Reconnect quickly in tests; unbounded attempts like the default."""
    return backoff(first=0.02, cap=0.2)


def client(url: str, name: str = "alice", **kw: Any) -> Client:
    kw.setdefault("timeout", 30 * UNIT)
    kw.setdefault("reconnect_delays", fast)
    return Client(url, name=name, password=PASSWORD, **kw)


class Tail:
    """Runs ``client.events()`` in a task and records what the application sees."""

    def __init__(self, c: Client, **kw: Any):
        self.items: list[wire.Event | Reset] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(c, kw))

    async def _run(self, c: Client, kw: dict[str, Any]) -> None:
        try:
            async for item in c.events(**kw):
                self.items.append(item)
                self._changed.set()
        except Exception as exc:
            self.error = exc
            self._changed.set()

    @property
    def events(self) -> list[wire.Event]:
        return [i for i in self.items if isinstance(i, wire.Event)]

    async def wait(self, done: Callable[[], bool], within: float = 30) -> None:
        async with asyncio.timeout(within * UNIT):
            while not done():
                if self.error is not None:
                    raise self.error
                self._changed.clear()
                await self._changed.wait()

    async def until_seq(self, seq: int) -> None:
        await self.wait(lambda: bool(self.events) and self.events[-1].seq >= seq)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def replay(url: str, since: int) -> list[dict[str, Any]]:
    """Ground truth: every retained event after ``since``, straight from the server."""
    async with WS.connect(url) as ws:
        await ws.login("auditor")
        await ws.ok("subscribe", since=since)
        now = (await ws.ok("boot"))["resume_point"]
        return await ws.events_until(now) if now > since else []


def as_dict(event: wire.Event) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(wire.encode(event))
    return decoded


async def next_item(stream: AsyncGenerator[wire.Event | Reset, None]) -> wire.Event | Reset:
    return await anext(stream)


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    """Poll a plain attribute that has no event to wait on."""
    async with asyncio.timeout(within * UNIT):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ pure pieces


def test_backoff_is_exponential_full_jitter_and_bounded() -> None:
    ceilings = list(backoff(first=0.1, cap=1.0, factor=2.0, attempts=6, rng=lambda: 1.0))
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    halves = list(backoff(first=0.1, cap=1.0, attempts=3, rng=lambda: 0.5))
    assert halves == pytest.approx([0.05, 0.1, 0.2])
    rng = random.Random(1)
    delays = list(backoff(first=0.1, cap=5.0, attempts=3000, rng=rng.random))
    assert len(delays) == 3000  # no float overflow after a long outage
    assert all(0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 2900  # jittered, not a fixed schedule
    assert next(backoff(attempts=0), None) is None


def test_nonce_fits_the_protocol() -> None:
    nonces = {new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(0 < len(n) <= 64 for n in nonces)


def test_stream_position_bookkeeping() -> None:
    def ev(seq: int) -> wire.Event:
        return wire.Event(seq=seq, at="2026-01-01T00:00:00.000Z", kind="channel.created",
                          channel=wire.Channel(id="C1", name="c"))

    pos = StreamPosition()
    assert pos.subscribe() == wire.Subscribe()  # from now
    pos.subscribed(wire.SubscribeOk(ref=1, epoch="E1", resume_point=10))
    assert (pos.epoch, pos.seq) == ("E1", 10)
    assert not pos.accept(ev(10))
    assert pos.accept(ev(12)) and pos.accept(ev(15))
    assert not pos.accept(ev(13))  # a replay of a replaced subscription
    assert pos.duplicates == 2
    assert pos.subscribe(["C1"]) == wire.Subscribe(since=15, epoch="E1", channels=["C1"])
    # A later subscribe ok keeps the position: the server resumes from it.
    pos.subscribed(wire.SubscribeOk(ref=2, epoch="E1", resume_point=20))
    assert pos.seq == 15
    # A new database: the resume point may be far below the old position.
    boot = wire.BootOk(ref=3, user=wire.User(id="U1", name="a"), epoch="E2", resume_point=3,
                       channels=[])
    pos.reset(boot)
    assert (pos.epoch, pos.seq) == ("E2", 3)
    assert pos.accept(ev(4))


# ------------------------------------------------------------------ commands


async def test_commands_return_typed_replies_and_errors(daemon: Daemon) -> None:
    async with client(daemon.url) as alice, client(daemon.url, "bob") as bob:
        assert alice.user is not None and alice.user.name == "alice"
        assert isinstance(await alice.ping(), wire.Ok)
        created = await alice.create_channel("general")
        assert isinstance(created, wire.ChannelOk) and created.channel.name == "general"
        cid = created.channel.id
        boot = await bob.boot()
        assert isinstance(boot, wire.BootOk)
        assert [c.id for c in boot.channels] == [cid]
        sent = await alice.send(cid, "hello")
        assert isinstance(sent, wire.SendOk)
        assert sent.message.body == "hello" and sent.message.sender.name == "alice"
        assert sent.message.seq > boot.resume_point
        again = await alice.send(cid, "second")
        page = await bob.history(cid, limit=1)
        assert isinstance(page, wire.HistoryOk)
        assert [m.id for m in page.messages] == [again.message.id] and page.more
        older = await bob.history(cid, before=again.message.seq)
        assert [m.body for m in older.messages] == ["hello"] and not older.more

        with pytest.raises(Conflict):
            await bob.create_channel("GENERAL")
        with pytest.raises(NotFound):
            await alice.send("Cnosuchchannel", "x")
        with pytest.raises(BadRequest):
            await alice.send(cid, "")
        with pytest.raises(Forbidden):
            await bob.delete_message(sent.message.id)
        deleted = await alice.delete_message(sent.message.id)
        assert isinstance(deleted, wire.DeleteMessageOk) and deleted.message.id == sent.message.id
        with pytest.raises(Forbidden):
            await bob.delete_channel(cid)
        gone = await alice.delete_channel(cid)
        assert gone.channel.id == cid
        # The connection survives error replies.
        assert isinstance(await bob.ping(), wire.Ok)


async def test_login_token_and_logout(daemon: Daemon) -> None:
    async with client(daemon.url, "carol"):  # open sign-up
        pass
    with pytest.raises(Unauthorized):
        async with Client(daemon.url, name="carol", password="another-password"):
            pass
    async with client(daemon.url) as alice:
        token = alice.token
    assert token is not None
    async with Client(daemon.url, token=token) as again:
        assert again.user is not None and again.user.name == "alice"
        await again.logout()
        with pytest.raises(ClientClosed):
            await again.ping()
    with pytest.raises(Unauthorized):
        async with Client(daemon.url, token=token):
            pass
    # A refused token falls back to the password when there is one.
    async with Client(daemon.url, token=token, name="alice", password=PASSWORD) as fallback:
        assert fallback.token not in (None, token)


async def test_send_with_same_nonce_stores_once(daemon: Daemon) -> None:
    async with client(daemon.url) as alice:
        cid = (await alice.create_channel("general")).channel.id
        first = await alice.send(cid, "once", nonce="n-1")
        second = await alice.send(cid, "once", nonce="n-1")
        assert second.message.id == first.message.id
        assert second.message.seq == first.message.seq
        assert len((await alice.history(cid)).messages) == 1


async def test_close_fails_pending_commands_and_waits_time_out(daemon: Daemon) -> None:
    c = client(daemon.url, timeout=30 * UNIT)
    await c.connect()
    cid = (await c.create_channel("general")).channel.id
    await daemon.kill()
    pending = asyncio.create_task(c.send(cid, "never"))
    stream = Tail(c)
    await asyncio.sleep(0.2 * UNIT)
    assert not pending.done()
    await c.close()
    with pytest.raises(ClientClosed):
        await pending
    await stream.wait(lambda: stream.error is not None, within=10)
    assert isinstance(stream.error, ClientClosed)
    with pytest.raises(ClientClosed):
        await c.ping()

    await daemon.start()
    async with client(daemon.url, timeout=0.3, connect_timeout=30 * UNIT) as short:
        await daemon.kill()
        with pytest.raises(CommandTimeout):
            await short.send(cid, "never")


async def test_gives_up_when_the_retry_policy_runs_out(daemon: Daemon) -> None:
    def twice() -> list[float]:
        return [0.01, 0.01]

    c = client(daemon.url, reconnect_delays=twice)
    async with c:
        stream = Tail(c)
        await daemon.kill()
        await stream.wait(lambda: stream.error is not None)
        assert isinstance(stream.error, ConnectFailed)
        with pytest.raises(ClientClosed) as info:
            await c.boot()
        assert isinstance(info.value.__cause__, ConnectFailed)


async def test_connect_fails_with_a_clear_error() -> None:
    # Nothing listens on port 1: refused at once.
    with pytest.raises(ConnectFailed, match=r"gave up connecting to .*(refused|failed)"):
        async with client("ws://127.0.0.1:1/ws", reconnect_delays=lambda: [0.01] * 3):
            pass
    async with Proxy(1) as proxy:  # accepted, then cut: the handshake never completes
        with pytest.raises(ConnectFailed, match="within"):
            async with client(proxy.url, connect_timeout=0.3 * UNIT):
                pass


async def test_create_channel_is_not_repeated_after_a_drop(daemon: Daemon) -> None:
    """A non-idempotent command caught by a cut fails with ConnectionLost, or
    succeeds if its reply got through; it is never answered with a bogus conflict."""
    async with Proxy(daemon.port) as proxy, client(proxy.url) as alice:
        outcomes: list[str] = []
        for i in range(30):
            task = asyncio.create_task(alice.create_channel(f"c{i}"))
            await asyncio.sleep(0)
            proxy.cut()
            try:
                await task
                outcomes.append("ok")
            except ConnectionLost:
                outcomes.append("lost")
        assert "lost" in outcomes
        # Queued, not yet written commands are sent after the reconnect.
        proxy.block()
        await until(lambda: not alice.connected)
        task = asyncio.create_task(alice.create_channel("after"))
        await asyncio.sleep(0.1 * UNIT)
        proxy.unblock()
        assert (await task).channel.name == "after"


# ------------------------------------------------------------------ the stream


async def test_events_exactly_once_across_kills_restarts_and_random_cuts(
    daemon: Daemon,
) -> None:
    async with Proxy(daemon.port, seed=7) as proxy:
        async with client(proxy.url) as alice, client(proxy.url, "bob") as bob:
            cid = (await alice.create_channel("general")).channel.id
            start = (await bob.boot()).resume_point
            tail = Tail(bob, since=start)
            sent: list[wire.SendOk] = []

            async def sender(worker: int, count: int) -> None:
                for i in range(count):
                    sent.append(await alice.send(cid, f"w{worker}-{i}"))

            proxy.start_chaos(0.02 * UNIT, 0.2 * UNIT)
            senders = [asyncio.create_task(sender(w, WORKER_SENDS)) for w in range(4)]
            await asyncio.sleep(0.5 * UNIT)
            await daemon.kill()  # crash: the sends in flight go on after the restart
            # Sends issued while nothing is listening complete after the restart.
            outage = [asyncio.create_task(alice.send(cid, f"outage-{i}")) for i in range(10)]
            await asyncio.sleep(0.3 * UNIT)
            await daemon.start(daemon.port)
            await asyncio.sleep(0.5 * UNIT)
            # A clean shutdown: the daemon closes with 1001 before exiting.
            await daemon.terminate(signal.SIGTERM)
            await daemon.start(daemon.port)
            await asyncio.gather(*senders)
            sent += await asyncio.gather(*outage)
            proxy.stop_chaos()
            await tail.until_seq(max(s.message.seq for s in sent))
            await tail.stop()

            assert proxy.cuts > 0
            history = await bob.history(cid, limit=500)

    # Each send stored exactly one message, the one its ok names.
    bodies = [m.body for m in history.messages]
    expected = [f"w{w}-{i}" for w in range(4) for i in range(WORKER_SENDS)]
    assert sorted(bodies) == sorted(expected + [f"outage-{i}" for i in range(10)])
    assert {m.id for m in history.messages} == {s.message.id for s in sent}
    # The application saw every event once, in order, as the server stored them.
    seen = tail.events
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs))
    truth = await replay(daemon.url, start)
    truth = [e for e in truth if e["seq"] <= seqs[-1]]
    assert [as_dict(e) for e in seen] == truth
    assert {e.message.id for e in seen if e.message} == {s.message.id for s in sent}
    assert not any(isinstance(i, Reset) for i in tail.items)


async def test_slow_consumer_overflow_resubscribes_without_loss(daemon: Daemon) -> None:
    async with client(daemon.url) as alice, client(daemon.url, "bob", max_queued_events=4) as bob:
        cid = (await alice.create_channel("general")).channel.id
        stream = bob.events(since=(await bob.boot()).resume_point)
        first = asyncio.create_task(next_item(stream))
        sent = [await alice.send(cid, f"m{i}") for i in range(30)]
        got = [await asyncio.wait_for(first, 10 * UNIT)]
        # Nothing was consumed while the 30 arrived: the queue overflowed.
        while len(got) < 30:
            got.append(await asyncio.wait_for(anext(stream), 10 * UNIT))
        await stream.aclose()
        assert [e.seq for e in got if isinstance(e, wire.Event)] == [s.message.seq for s in sent]
        # The stream can be started again on the same client.
        again = bob.events(since=(await bob.boot()).resume_point)
        nxt = asyncio.create_task(next_item(again))
        late = await alice.send(cid, "late")
        item = await asyncio.wait_for(nxt, 10 * UNIT)
        assert isinstance(item, wire.Event) and item.seq == late.message.seq
        await again.aclose()


async def _wait_for_gap(url: str, since: int) -> None:
    """Until the server's horizon has passed ``since`` (expiry runs every 0.1 s)."""
    async with asyncio.timeout(20 * UNIT):
        while True:
            try:
                async with WS.connect(url) as ws:
                    await ws.login("auditor")
                    # Each subscribe replaces the last; expiry runs every 0.1 s.
                    while (  # noqa: ASYNC110
                        await ws.request("subscribe", since=since)
                    ).get("code") != "resume_gap":
                        await asyncio.sleep(0.1)
                    return
            except websockets.ConnectionClosed:
                # The horizon passed while a subscription that started just before
                # was catching up: the server closed it with 4000. That is the gap too;
                # ask again on a new connection to see resume_gap itself.
                continue


async def test_resume_gap_yields_reset_with_a_fresh_snapshot(make_daemon: MakeDaemon) -> None:
    d = await make_daemon("--event-ttl", "0.3", "--expire-interval", "0.1")
    async with Proxy(d.port) as proxy:
        async with client(d.url) as alice, client(proxy.url, "bob") as bob:
            # From the current position: an older one may have expired already.
            tail = Tail(bob, since=(await bob.boot()).resume_point)
            first = await alice.create_channel("first")
            await tail.wait(lambda: len(tail.items) == 1)
            seen = tail.events[0].seq
            assert tail.events[0].channel.id == first.channel.id
            proxy.block()
            second = await alice.create_channel("second")
            await _wait_for_gap(d.url, seen)
            proxy.unblock()
            await tail.wait(lambda: any(isinstance(i, Reset) for i in tail.items))
            reset = next(i for i in tail.items if isinstance(i, Reset))
            assert isinstance(reset.gap, ResumeGap)
            assert {c.name for c in reset.boot.channels} == {"first", "second"}
            # The stream goes on after the snapshot's resume point.
            after = await alice.send(second.channel.id, "after the gap")
            await tail.until_seq(after.message.seq)
            tail_after = tail.items[tail.items.index(reset) + 1 :]
            assert all(isinstance(e, wire.Event) for e in tail_after)
            assert [e.seq for e in tail_after if isinstance(e, wire.Event)][-1] == after.message.seq
            assert all(
                e.seq > reset.boot.resume_point for e in tail_after if isinstance(e, wire.Event)
            )
            await tail.stop()

            # Asked to, the stream raises instead.
            strict = Tail(bob, since=0, epoch=reset.boot.epoch, on_gap="raise")
            await strict.wait(lambda: strict.error is not None)
            assert isinstance(strict.error, ResumeGap)
            assert strict.error.horizon is not None and strict.error.horizon > 0


async def test_a_replaced_database_is_a_gap(make_daemon: MakeDaemon, tmp_path: Any) -> None:
    d = await make_daemon()
    async with client(d.url) as alice:
        await alice.create_channel("old")
        tail = Tail(alice, since=0)
        await tail.until_seq(1)
        await d.kill()
        d.db = tmp_path / "new.db"  # a new epoch behind the same URL
        await d.start(d.port)
        await tail.wait(lambda: any(isinstance(i, Reset) for i in tail.items))
        reset = tail.items[-1]
        assert isinstance(reset, Reset) and reset.boot.channels == []
        await tail.stop()

