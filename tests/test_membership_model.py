"""A model-based test of the per-user stream (issue 13, PROTOCOL.md "Who sees what").

A seeded random walk of thousands of steps: users create public and private
channels and dms, add and remove members, send, edit and delete messages and
channels, and mark channels read, each step one command over real WebSocket to
the real daemon. A small pure model (:class:`Model`) applies the contract's
rules to the same steps and knows, for every event, its seq and who may see it.
Meanwhile each user has two subscribers: a *steady* one that stays connected
from the start, and a *resumer* that drops and resumes from its last seq at
random. At the end:

* each steady stream equals, event for event, what the model says that user may
  see, as it happened (bodies as they were then);
* each resumer's stream is strictly increasing, has no event the user may not
  see, and has every event still retained (no gap, no duplicate, no leak);
* a replay from 0 equals the model's view of the retained log (deleted
  messages' bodies gone, edited bodies latest);
* each user's boot lists exactly the channels it can see, with the model's read
  positions and unread counts; history of every channel matches too.

Every reply is checked against the model as the walk goes: the seq of each
event, refusals (not_found for what a user cannot see, forbidden, bad_request).
The walk runs on sqlite, on PostgreSQL, and on sqlite with the daemon killed
(SIGKILL) and restarted in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import MakeDaemon
from .helpers import assert_strictly_increasing, client, plain_channel, stored_log
from .support import WS

USERS = 5


@dataclass
class Chan:
    id: str
    name: str
    kind: str
    creator: int
    #: current members (private, dm); None: public
    members: set[int] | None
    #: member index -> seq its current interval began (read positions start there)
    since: dict[int, int] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class Msg:
    id: str
    channel: str
    sender: int
    seq: int
    bodies: list[str]
    deleted: bool = False


@dataclass
class Ev:
    seq: int
    kind: str
    channel: str
    #: who may see it; None: every user
    audience: frozenset[int] | None
    message: str | None = None
    body: str | None = None
    user: int | None = None
    read: tuple[int, int] | None = None


class Model:
    """The contract's rules over the walk's steps, with nothing of the server's code."""

    def __init__(self, ids: list[str], seq: int) -> None:
        self.ids = ids
        self.index = {uid: i for i, uid in enumerate(ids)}
        self.seq = seq
        self.channels: dict[str, Chan] = {}
        self.messages: dict[str, Msg] = {}
        self.events: list[Ev] = []
        self.reads: dict[tuple[int, str], int] = {}

    def emit(self, kind: str, chan: Chan, audience: frozenset[int] | None, **kw: Any) -> int:
        self.seq += 1
        self.events.append(Ev(self.seq, kind, chan.id, audience, **kw))
        return self.seq

    def sees(self, u: int, chan: Chan) -> bool:
        return not chan.deleted and (chan.members is None or u in chan.members)

    @staticmethod
    def audience(chan: Chan) -> frozenset[int] | None:
        return None if chan.members is None else frozenset(chan.members)

    def start(self, u: int, chan: Chan) -> int:
        return 0 if chan.members is None else chan.since[u]

    def read_seq(self, u: int, chan: Chan) -> int:
        return max(self.start(u, chan), self.reads.get((u, chan.id), 0))

    def unread(self, u: int, chan: Chan, after: int) -> int:
        return sum(1 for m in self.messages.values()
                   if m.channel == chan.id and not m.deleted and m.sender != u and m.seq > after)

    def live(self, u: int) -> list[tuple[Any, ...]]:
        return [_key(e, e.body) for e in self.events if e.audience is None or u in e.audience]

    def replay(self, u: int) -> list[tuple[Any, ...]]:
        out = []
        for e in self.events:
            if e.audience is not None and u not in e.audience:
                continue
            body = e.body
            if e.message is not None and e.kind in ("message.sent", "message.edited"):
                m = self.messages[e.message]
                if m.deleted:
                    continue
                body = m.bodies[-1]
            out.append(_key(e, body))
        return out


def _key(e: Ev, body: str | None) -> tuple[Any, ...]:
    return (e.seq, e.kind, e.channel, e.message, body, e.user, e.read)


def _wire_key(ids: list[str], e: dict[str, Any]) -> tuple[Any, ...]:
    message = e.get("message") or {}
    user = e.get("user")
    read = (e["read_seq"], e["unread"]) if e["kind"] == "read.updated" else None
    return (e["seq"], e["kind"], e["channel"]["id"], message.get("id"), message.get("body"),
            None if user is None else ids.index(user["id"]), read)


class Subscriber:
    """A subscription that reads in the background; may drop and resume from its last seq."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.events: list[dict[str, Any]] = []
        self._stack: contextlib.AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: WS | None = None
        self.error: BaseException | None = None

    @property
    def last(self) -> int:
        return self.events[-1]["seq"] if self.events else 0

    async def connect(self, since: int | None) -> None:
        self._stack = contextlib.AsyncExitStack()
        ws: WS = await self._stack.enter_async_context(client(self.url, token=self.token))
        self._ws = ws
        args = {} if since is None else {"since": since}
        await ws.ok("subscribe", **args)
        ws.events = self.events  # keep one list across connections
        self._task = asyncio.ensure_future(self._pump(ws))

    async def _pump(self, ws: WS) -> None:
        try:
            while True:
                await ws.recv(timeout=600)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    async def drop(self) -> None:
        """Cut the connection (no closing handshake), as a network failure would."""
        if self._ws is not None and self._ws.conn.transport is not None:
            self._ws.conn.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stack.aclose(), 5)
        self._task = self._stack = self._ws = None
        self.error = None

    async def resume(self) -> None:
        await self.drop()
        await self.connect(self.last)

    async def until(self, seq: int) -> None:
        for _ in range(3000):
            if self.last >= seq:
                return
            if self.error is not None:
                raise AssertionError(f"subscriber failed: {self.error!r}")
            await asyncio.sleep(0.01)
        raise AssertionError(f"subscriber stuck at {self.last}, waiting for {seq}")


class Walk:
    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.r = random.Random(seed)
        self.stack = contextlib.AsyncExitStack()
        self.cmd: list[WS] = []
        self.tokens: list[str] = []
        self.steady: list[Subscriber] = []
        self.resumers: list[Subscriber] = []
        self.n = 0

    async def open(self) -> None:
        for i in range(USERS):
            ws = await self.stack.enter_async_context(client(self.url, f"u{i}"))
            self.cmd.append(ws)
            self.tokens.append(ws.me["token"])
        ids = [ws.me["user"]["id"] for ws in self.cmd]
        boot = await self.cmd[0].ok("boot")
        self.m = Model(ids, boot["resume_point"])
        for i in range(USERS):
            steady, resumer = Subscriber(self.url, self.tokens[i]), Subscriber(self.url,
                                                                                self.tokens[i])
            await steady.connect(None)
            await resumer.connect(0)
            self.steady.append(steady)
            self.resumers.append(resumer)

    async def reconnect(self, url: str) -> None:
        """After a restart: new command connections; every subscriber resumes."""
        self.url = url
        await self.stack.aclose()
        self.stack = contextlib.AsyncExitStack()
        self.cmd = [await self.stack.enter_async_context(client(url, token=t))
                    for t in self.tokens]
        for s in (*self.steady, *self.resumers):
            s.url = url
            await s.resume()

    async def close(self) -> None:
        for s in (*self.steady, *self.resumers):
            await s.drop()
        await self.stack.aclose()

    # ------------------------------------------------------------------ steps

    async def request(self, u: int, op: str, **args: Any) -> dict[str, Any]:
        self.n += 1
        return await self.cmd[u].request(op, **args)

    def expect(self, reply: dict[str, Any], code: str | None, what: str) -> None:
        if code is None:
            assert reply["type"] == "ok", (what, reply)
        else:
            assert reply["type"] == "error" and reply["code"] == code, (what, code, reply)

    def pick_channel(self, kinds: tuple[str, ...]) -> Chan | None:
        live = [c for c in self.m.channels.values() if not c.deleted and c.kind in kinds]
        return self.r.choice(live) if live else None

    async def create(self, u: int, private: bool) -> None:
        name = f"c{self.n}"
        reply = await self.request(u, "create_channel", name=name, private=private)
        self.expect(reply, None, "create_channel")
        cid = reply["channel"]["id"]
        kind = "private" if private else "public"
        assert reply["channel"] == {"id": cid, "name": name, "kind": kind}
        chan = Chan(cid, name, kind, u, {u} if private else None)
        self.m.channels[cid] = chan
        seq = self.m.emit("channel.created", chan, self.m.audience(chan))
        if private:
            chan.since[u] = seq

    async def open_dm(self, u: int) -> None:
        v = self.r.randrange(USERS)
        reply = await self.request(u, "open_dm", user=self.m.ids[v])
        self.expect(reply, None, "open_dm")
        cid = reply["channel"]["id"]
        pair = sorted({u, v})
        assert reply["channel"]["kind"] == "dm"
        assert reply["channel"]["name"] == ", ".join(f"u{i}" for i in pair)
        assert [x["id"] for x in reply["channel"]["members"]] == [self.m.ids[i] for i in pair]
        if cid in self.m.channels:
            assert reply["created"] is False
            return
        assert reply["created"] is True
        chan = Chan(cid, reply["channel"]["name"], "dm", u, set(pair))
        self.m.channels[cid] = chan
        seq = self.m.emit("channel.created", chan, self.m.audience(chan))
        for i in pair:
            chan.since[i] = seq

    async def add_member(self, u: int) -> None:
        chan = self.pick_channel(("private",) if self.r.random() < 0.95 else ("dm", "public"))
        if chan is None:
            return
        v = self.r.randrange(USERS)
        reply = await self.request(u, "add_member", channel=chan.id, user=self.m.ids[v])
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "add_member, hidden")
            assert reply["message"] == f"channel: no channel {chan.id!r}"
            return
        if chan.kind != "private":
            self.expect(reply, "bad_request", "add_member on " + chan.kind)
            return
        self.expect(reply, None, "add_member")
        assert chan.members is not None
        if v in chan.members:
            return
        chan.members.add(v)
        seq = self.m.emit("member.added", chan, self.m.audience(chan), user=v)
        chan.since[v] = seq

    async def remove_member(self, u: int) -> None:
        chan = self.pick_channel(("private",) if self.r.random() < 0.95 else ("dm", "public"))
        if chan is None:
            return
        pool = sorted(chan.members or set()) or [u]
        v = self.r.choice(pool) if self.r.random() < 0.6 else u
        reply = await self.request(u, "remove_member", channel=chan.id, user=self.m.ids[v])
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "remove_member, hidden")
            return
        if chan.kind != "private":
            self.expect(reply, "bad_request", "remove_member on " + chan.kind)
            return
        assert chan.members is not None
        if v not in chan.members:
            self.expect(reply, "not_found", "remove_member of a non-member")
            return
        if v != u and chan.creator != u and u != 0:
            self.expect(reply, "forbidden", "remove_member by a plain member")
            return
        self.expect(reply, None, "remove_member")
        self.m.emit("member.removed", chan, self.m.audience(chan), user=v)
        chan.members.discard(v)
        del chan.since[v]

    async def send(self, u: int) -> None:
        chan = self.pick_channel(("public", "private", "dm"))
        if chan is None:
            return
        body = f"b{self.n}-{self.r.randrange(1000)}"
        reply = await self.request(u, "send", channel=chan.id, body=body)
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "send, hidden")
            assert reply["message"] == f"channel: no channel {chan.id!r}"
            return
        self.expect(reply, None, "send")
        mid = reply["message"]["id"]
        seq = self.m.emit("message.sent", chan, self.m.audience(chan), message=mid, body=body)
        assert reply["message"]["seq"] == seq, "the model and the server count seqs alike"
        self.m.messages[mid] = Msg(mid, chan.id, u, seq, [body])

    def pick_message(self) -> Msg | None:
        live = [m for m in self.m.messages.values() if not m.deleted]
        return self.r.choice(live) if live else None

    async def edit(self, u: int) -> None:
        msg = self.pick_message()
        if msg is None:
            return
        if self.r.random() < 0.6:
            u = msg.sender
        body = f"e{self.n}"
        reply = await self.request(u, "edit_message", message=msg.id, body=body)
        chan = self.m.channels[msg.channel]
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "edit, hidden")
            assert reply["message"] == f"message: no message {msg.id!r}"
            return
        if u != msg.sender:
            self.expect(reply, "forbidden", "edit by another")
            return
        self.expect(reply, None, "edit")
        msg.bodies.append(body)
        self.m.emit("message.edited", chan, self.m.audience(chan), message=msg.id, body=body)

    async def delete_message(self, u: int) -> None:
        msg = self.pick_message()
        if msg is None:
            return
        if self.r.random() < 0.5:
            u = msg.sender
        reply = await self.request(u, "delete_message", message=msg.id)
        chan = self.m.channels[msg.channel]
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "delete_message, hidden")
            return
        if u != msg.sender and u != 0:
            self.expect(reply, "forbidden", "delete_message by another")
            return
        self.expect(reply, None, "delete_message")
        msg.deleted = True
        self.m.emit("message.deleted", chan, self.m.audience(chan), message=msg.id)

    async def delete_channel(self, u: int) -> None:
        chan = self.pick_channel(("public", "private", "dm"))
        if chan is None:
            return
        if self.r.random() < 0.5:
            u = chan.creator
        reply = await self.request(u, "delete_channel", channel=chan.id)
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "delete_channel, hidden")
            return
        if chan.kind == "dm" or (u != chan.creator and u != 0):
            self.expect(reply, "forbidden", "delete_channel")
            return
        self.expect(reply, None, "delete_channel")
        audience = self.m.audience(chan)
        for msg in sorted(self.m.messages.values(), key=lambda m: m.seq):
            if msg.channel == chan.id and not msg.deleted:
                msg.deleted = True
                self.m.emit("message.deleted", chan, audience, message=msg.id)
        self.m.emit("channel.deleted", chan, audience)
        chan.deleted = True
        for key in [k for k in self.m.reads if k[1] == chan.id]:
            del self.m.reads[key]

    async def mark_read(self, u: int) -> None:
        chan = self.pick_channel(("public", "private", "dm"))
        if chan is None:
            return
        seq = self.r.randrange(self.m.seq + 1) if self.r.random() < 0.3 else self.m.seq
        if self.r.random() < 0.03:
            seq = self.m.seq + 3
        reply = await self.request(u, "mark_read", channel=chan.id, seq=seq)
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "mark_read, hidden")
            return
        if seq > self.m.seq:
            self.expect(reply, "bad_request", "mark_read beyond the stream")
            return
        self.expect(reply, None, "mark_read")
        current = self.m.read_seq(u, chan)
        if seq <= current:
            assert (reply["read_seq"], reply["unread"]) == (
                current, self.m.unread(u, chan, current)), ("mark_read, no move", reply)
            return
        self.m.reads[(u, chan.id)] = seq
        unread = self.m.unread(u, chan, seq)
        assert (reply["read_seq"], reply["unread"]) == (seq, unread), reply
        self.m.emit("read.updated", chan, frozenset((u,)), read=(seq, unread))

    async def history(self, u: int) -> None:
        chan = self.pick_channel(("public", "private", "dm"))
        if chan is None:
            return
        reply = await self.request(u, "history", channel=chan.id, limit=500)
        if not self.m.sees(u, chan):
            self.expect(reply, "not_found", "history, hidden")
            return
        self.expect(reply, None, "history")
        want = [(m.id, m.bodies[-1]) for m in sorted(self.m.messages.values(),
                                                       key=lambda m: m.seq)
                if m.channel == chan.id and not m.deleted][-500:]
        assert [(m["id"], m["body"]) for m in reply["messages"]] == want

    async def step(self) -> None:
        u = self.r.randrange(USERS)
        roll = self.r.random()
        for limit, action in STEPS:
            if roll < limit:
                await action(self, u)
                return
        sub = self.r.choice(self.resumers)
        await sub.resume()

    # ---------------------------------------------------------------- checks

    async def check(self, *, steady_exact: bool) -> None:
        ids = self.m.ids
        # A public channel everyone sees: its event is the last of every stream.
        await self.create(0, private=False)
        end = self.m.seq
        for i in range(USERS):
            live = self.m.live(i)
            replay = self.m.replay(i)
            allowed = {k[0]: k for k in live}
            retained = {k[0] for k in replay}
            for name, sub in (("steady", self.steady[i]), ("resumer", self.resumers[i])):
                await sub.until(end)
                got = [_wire_key(ids, e) for e in sub.events]
                assert_strictly_increasing(sub.events)
                if name == "steady" and steady_exact:
                    assert got == live, f"u{i}'s live stream differs from the model"
                    continue
                for k in got:
                    want = allowed.get(k[0])
                    assert want is not None, f"u{i} ({name}) got seq {k[0]} it may not see: {k}"
                    assert k[:4] + k[5:] == want[:4] + want[5:], (k, want)
                    if k[3] is not None and k[4] is not None:
                        assert k[4] in self.m.messages[k[3]].bodies, k
                missing = retained - {k[0] for k in got}
                assert not missing, f"u{i} ({name}) missed retained events {sorted(missing)}"
            log = await stored_log(self.url, self.tokens[i], end)
            assert [_wire_key(ids, e) for e in log] == replay, f"u{i}'s replay from 0"
            boot = await self.cmd[i].ok("boot")
            want_channels = [
                {"id": c.id, "name": c.name, "kind": c.kind,
                 "read_seq": self.m.read_seq(i, c),
                 "unread": self.m.unread(i, c, self.m.read_seq(i, c))}
                for c in self.m.channels.values() if self.m.sees(i, c)]
            got_channels = [plain_channel(c) | {"read_seq": c["read_seq"],
                                                "unread": c["unread"]}
                            for c in boot["channels"]]
            for c in got_channels:
                c.pop("members", None)
            assert got_channels == want_channels, f"u{i}'s boot"
        for u in range(USERS):
            for c in list(self.m.channels.values()):
                if c.deleted:
                    continue
                reply = await self.cmd[u].request("history", channel=c.id, limit=500)
                if not self.m.sees(u, c):
                    assert reply["code"] == "not_found", reply
                    continue
                want = [(m.id, m.bodies[-1]) for m in sorted(self.m.messages.values(),
                                                               key=lambda m: m.seq)
                        if m.channel == c.id and not m.deleted][-500:]
                assert [(m["id"], m["body"]) for m in reply["messages"]] == want


STEPS = [
    (0.36, Walk.send),
    (0.41, lambda w, u: w.create(u, private=True)),
    (0.42, lambda w, u: w.create(u, private=False)),
    (0.46, Walk.open_dm),
    (0.55, Walk.add_member),
    (0.62, Walk.remove_member),
    (0.69, Walk.edit),
    (0.74, Walk.delete_message),
    (0.76, Walk.delete_channel),
    (0.86, Walk.mark_read),
    (0.90, Walk.history),
]


async def _walk(url: str, seed: int, steps: int) -> Walk:
    walk = Walk(url, seed)
    await walk.open()
    await walk.create(0, private=False)
    for _ in range(steps):
        await walk.step()
    return walk


@pytest.mark.parametrize("seed", [1, 2])
async def test_each_user_gets_exactly_what_it_may_see(make_daemon: MakeDaemon, seed: int) -> None:
    d = await make_daemon()
    walk = await _walk(d.url, seed, int(os.environ.get("CHATD_MODEL_STEPS", "1500")))
    try:
        await walk.check(steady_exact=True)
    finally:
        await walk.close()


async def test_the_model_on_postgresql(make_daemon: MakeDaemon, pg_url: str) -> None:
    d = await make_daemon(db=pg_url)  # type: ignore[arg-type]
    walk = await _walk(d.url, 3, 800)
    try:
        await walk.check(steady_exact=True)
    finally:
        await walk.close()


async def test_the_model_across_a_crash(make_daemon: MakeDaemon) -> None:
    """SIGKILL and restart in the middle: every acknowledged step is kept, every
    subscriber resumes, and the streams still match the model."""
    d = await make_daemon()
    walk = await _walk(d.url, 4, 700)
    try:
        await d.kill()
        await d.start()
        await walk.reconnect(d.url)
        for _ in range(700):
            await walk.step()
        await walk.check(steady_exact=False)
    finally:
        await walk.close()


async def test_hidden_is_indistinguishable_from_made_up(make_daemon: MakeDaemon) -> None:
    """A non-member gets not_found, with the same words, from every command naming a
    private channel or a message of one, as for an id that never existed."""
    d = await make_daemon()
    async with client(d.url, "alice") as a, client(d.url, "eve") as e:
        hidden = (await a.ok("create_channel", name="secret", private=True))["channel"]["id"]
        dm = (await a.ok("open_dm", user=a.me["user"]["id"]))["channel"]["id"]
        msg = (await a.ok("send", channel=hidden, body="psst"))["message"]["id"]
        eve = e.me["user"]["id"]
        made_up_c, made_up_m = "C" + "x" * (len(hidden) - 1), "M" + "x" * (len(msg) - 1)

        def by_channel(c: str) -> list[tuple[str, dict[str, Any]]]:
            return [("send", {"channel": c, "body": "hi"}), ("history", {"channel": c}),
                    ("delete_channel", {"channel": c}), ("members", {"channel": c}),
                    ("add_member", {"channel": c, "user": eve}),
                    ("remove_member", {"channel": c, "user": eve}),
                    ("mark_read", {"channel": c, "seq": 0}), ("typing", {"channel": c}),
                    ("search", {"query": "psst", "channel": c})]

        def by_message(m: str) -> list[tuple[str, dict[str, Any]]]:
            return [("edit_message", {"message": m, "body": "x"}),
                    ("delete_message", {"message": m})]

        for real, fake, commands in ((hidden, made_up_c, by_channel),
                                     (dm, made_up_c, by_channel),
                                     (msg, made_up_m, by_message)):
            for (op, args), (_, fake_args) in zip(commands(real), commands(fake), strict=True):
                got = await e.request(op, **args)
                want = await e.request(op, **fake_args)
                assert got["code"] == want["code"] == "not_found", (op, got, want)
                assert got["message"].replace(real, "ID") == want["message"].replace(fake, "ID")
                assert set(got) == set(want), (op, got, want)
        boot = await e.ok("boot")
        assert hidden not in {c["id"] for c in boot["channels"]}
        assert (await e.ok("search", query="psst"))["messages"] == []
        (hit,) = (await a.ok("search", query="psst"))["messages"]
        assert hit["id"] == msg and hit["channel"]["kind"] == "private"
        after = (await e.ok("create_channel", name="after"))["channel"]["id"]
        await e.ok("subscribe", since=0, channels=[hidden, dm, after])
        await a.ok("send", channel=hidden, body="more")
        end = (await e.ok("send", channel=after, body="end"))["message"]["seq"]
        await e.events_until(end)
        assert {ev["channel"]["id"] for ev in e.events} == {after}


async def test_typing_in_a_private_channel_reaches_its_members_only(
        make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    async with client(d.url, "alice") as a, client(d.url, "bob") as b, \
            client(d.url, "eve") as e:
        secret = (await a.ok("create_channel", name="secret", private=True))["channel"]["id"]
        await a.ok("add_member", channel=secret, user=b.me["user"]["id"])
        general = (await a.ok("create_channel", name="general"))["channel"]["id"]
        for ws in (b, e):
            await ws.ok("subscribe", ephemeral=True)
        await a.ok("typing", channel=secret)
        await a.ok("typing", channel=general)
        frames: dict[str, list[str]] = {"b": [], "e": []}
        for name, ws in (("b", b), ("e", e)):
            while len([f for f in frames[name]]) < (2 if name == "b" else 1):
                f = await ws.recv()
                if f.get("type") == "ephemeral" and f.get("kind") == "typing":
                    frames[name].append(f["channel"]["id"])
        assert frames == {"b": [secret, general], "e": [general]}
