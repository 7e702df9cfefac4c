"""One WebSocket connection: decode commands, run them, reply in order.

Commands run concurrently (several sends from one connection can share a group
commit) but their replies are written in the order the commands arrived: each
command takes a slot in ``_slots`` and a slot is written only when every slot
before it has been. Commands that change what later commands may do (login,
auth, logout) or that order replies against events (subscribe, unsubscribe)
are barriers: the connection stops reading, lets every earlier command finish,
runs the barrier, and only then reads on.

A session does no I/O of its own: it reads text frames from any async iterable
and writes through a :class:`~chatd.sink.Sink`, synchronously, so the order in
which it writes is the order on the wire. What it needs from the daemon is named
by :class:`Services`; ``tests/unit`` runs sessions over an in-memory sink.

A ``send`` from a logged-in connection, the command that dominates load, takes
a lighter road than the others: its slot is the writer's future itself
(:class:`_SendSlot`) and its reply is framed when that slot is written, instead
of a task per command running :meth:`Session._reply`. Same checks, same replies,
same metrics; a few microseconds less per send, which at 10,000 sends/s on one
core is a few per cent.

Backpressure: with ``max_inflight`` commands in flight, or more than
``send_buffer_limit`` bytes unsent, the connection stops reading until that
clears, so a client that never reads its replies cannot make the server buffer
without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
from websockets.exceptions import ConnectionClosed

from . import crypto, validate, wire
from .config import Config
from .ephemeral import Ephemeral
from .exceptions import (
    BadRequest,
    InternalError,
    ProtocolError,
    RateLimited,
    ResumeGap,
    Unauthorized,
    Unavailable,
)
from .fanout import CLOSE_TOO_SLOW, Hub, Subscription
from .limits import Buckets, TokenBucket
from .metrics import Metrics
from .ops import (
    AddMemberOp,
    ChangePasswordOp,
    CreateChannelOp,
    CreateInviteOp,
    CreateUserOp,
    DeleteChannelOp,
    DeleteMessageOp,
    EditMessageOp,
    IssueTokenOp,
    MarkReadOp,
    MemberChanged,
    OpenDmOp,
    ReadPosition,
    RemoveMemberOp,
    RevokeInviteOp,
    RevokeTokenOp,
    SendOp,
    Sent,
    SetActiveOp,
    SetRoleOp,
    StoredUser,
)
from .sink import Sink
from .store import Store
from .writer import Writer

log = logging.getLogger("chatd.connection")

#: a handler returns its ok reply, or None when it has written the reply itself.
Handler = Callable[["Session", Any], Awaitable[msgspec.Struct | None]]
BARRIERS = (wire.Login, wire.Auth, wire.Logout, wire.Subscribe, wire.Unsubscribe)
CLOSE_POLICY = 1008
#: the token was ended (logout elsewhere, password change, deactivation)
CLOSE_TOKEN_ENDED = 4001


class _BadRequestFrame(bytes):
    """A bad_request reply, told apart when it is written (see ``_count_frame``)."""

    __slots__ = ()


class _SendSlot:
    """A send waiting for its commit: the writer's future and what its reply needs."""

    __slots__ = ("fut", "ref", "started")

    def __init__(self, fut: asyncio.Future[Sent], ref: wire.Ref, started: float) -> None:
        self.fut = fut
        self.ref = ref
        self.started = started


class Services(Protocol):
    """What a session needs from the daemon (:class:`chatd.server.App` has it all)."""

    config: Config
    metrics: Metrics
    store: Store
    writer: Writer
    hub: Hub
    #: typing and presence
    ephemeral: Ephemeral
    draining: bool
    #: every open session, to end the others that use a token on logout.
    sessions: set[Session]
    user_buckets: Buckets
    name_throttle: Buckets
    address_throttle: Buckets

    def clock(self) -> float:
        """Seconds since the epoch (injected, so tests control time)."""
        ...


class Session:
    __slots__ = (
        "_auth_failures", "_bad_frames", "_bucket", "_counted", "_ever_logged_in", "_reads",
        "_slots",
        "_timer", "address", "app", "sink", "sub", "token_hash", "user",
    )

    def __init__(self, app: Services, sink: Sink, address: str = "?") -> None:
        self.app = app
        self.sink = sink
        self.address = address
        cfg = app.config
        self._bucket = TokenBucket.full(cfg.conn_rate, cfg.conn_burst, app.clock())
        self._auth_failures = 0
        self._reads = asyncio.Lock()
        self._ever_logged_in = False
        self._timer: asyncio.TimerHandle | None = None
        self.user: wire.User | None = None
        #: the user this connection counts for in presence (see _count_as)
        self._counted: wire.User | None = None
        self.token_hash: bytes | None = None
        self.sub: Subscription | None = None
        # A list, not a deque: at most max_inflight entries, and an idle connection
        # should not carry a deque's 500-byte block.
        self._slots: list[bytes | asyncio.Task[bytes | None] | _SendSlot] = []
        self._bad_frames = 0

    # ----------------------------------------------------------- the read loop

    async def run(self, frames: AsyncIterable[str | bytes]) -> None:
        """Read commands from ``frames`` until it ends or the connection closes."""
        cfg = self.app.config
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(cfg.login_timeout, self._login_timeout)
        try:
            async for data in frames:
                cmd = self._decode(data)
                if cmd is None:
                    continue
                if cfg.rate_limits and self._limited(cmd):
                    continue
                if type(cmd) is wire.Send and self.user is not None and not self.app.draining:
                    self._send_fast(cmd)
                elif isinstance(cmd, BARRIERS):
                    await self._settle()
                    frame = await self._reply(cmd)
                    self._count_frame(bad=type(frame) is _BadRequestFrame)
                    if frame is not None:
                        self.sink.send(frame)
                    if self._auth_failures >= cfg.max_login_failures_per_conn:
                        await self.sink.close(CLOSE_POLICY, "too many failed logins")
                        return
                else:
                    # loop.create_task: asyncio.create_task looks the loop up each time.
                    task = loop.create_task(self._reply(cmd))
                    task.add_done_callback(self._flush)
                    self._slots.append(task)
                while len(self._slots) >= cfg.max_inflight:
                    await asyncio.wait([self._head()])
                    self._flush()
                if self.sink.buffered() > cfg.send_buffer_limit:
                    await self._wait_for_reader()
        except ConnectionClosed:
            pass
        finally:
            self._end()
            # Not through _set_user: self.user stays, the server logs who closed.
            self._count_as(None)

    def _logged_in_once(self) -> None:
        self._ever_logged_in = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _login_timeout(self) -> None:
        if not self._ever_logged_in:
            self.app.hub.close_later(self.sink, CLOSE_POLICY, "no login within the timeout")

    def _limited(self, cmd: wire.Command) -> bool:
        """Apply the command rate limits; True after replying rate_limited."""
        wait = self._bucket.take(self.app.clock())
        if not wait and self.user is not None:
            wait = self.app.user_buckets.take(self.user.id)
        if not wait:
            return False
        retry_after = math.ceil(wait * 1000) / 1000
        op = str(type(cmd).__struct_config__.tag)
        self.app.metrics.command(op, RateLimited.code)
        self._slots.append(
            wire.encode(
                wire.Error(
                    cmd.ref, RateLimited.code,
                    f"{op}: over the command rate limit; retry after {retry_after} s",
                    retry_after=retry_after,
                )
            )
        )
        self._flush()
        return True

    def _decode(self, data: str | bytes) -> wire.Command | None:
        """The command in ``data``, or None after replying ``bad_request``."""
        if not isinstance(data, str):
            self._bad(None, "frame: binary frames are not accepted; send JSON text")
            return None
        try:
            cmd: wire.Command = wire.command_decoder.decode(data)
        except msgspec.ValidationError as exc:
            self._bad(_salvage_ref(data), f"invalid command: {exc}")
            return None
        except msgspec.DecodeError as exc:
            self._bad(None, f"frame: not valid JSON text: {exc}")
            return None
        except RecursionError:
            self._bad(None, "frame: JSON nested too deeply")
            return None
        return cmd

    def _bad(self, ref: wire.Ref, message: str) -> None:
        self.app.metrics.command("?", BadRequest.code)
        self._slots.append(_BadRequestFrame(wire.encode(wire.Error(ref, BadRequest.code, message))))
        self._flush()

    def _count_frame(self, *, bad: bool) -> None:
        """Close with 1008 after max_bad_frames bad_request replies in a row.

        Called as each reply is written, so "in a row" is in the order of the
        commands, whichever of them finished first.
        """
        if not bad:
            self._bad_frames = 0
            return
        self._bad_frames += 1
        if self._bad_frames == self.app.config.max_bad_frames:
            self.app.hub.close_later(self.sink, CLOSE_POLICY, "too many bad frames")

    async def _reply(self, cmd: wire.Command) -> bytes | None:
        """Run one command; its reply frame, ok or error. Never raises."""
        op = str(type(cmd).__struct_config__.tag)
        started = time.perf_counter()
        try:
            if self.app.draining:
                raise Unavailable("the server is shutting down; reconnect later")
            if self.user is None and type(cmd) in wire.NEEDS_LOGIN:
                raise Unauthorized(f"{op}: log in first (login or auth)")
            reply = await _HANDLERS[type(cmd)](self, cmd)
        except ProtocolError as exc:
            return self._error_frame(op, cmd.ref, exc)
        except Exception:
            return self._internal_frame(op, cmd.ref)
        self.app.metrics.command(op, "ok")
        if isinstance(cmd, wire.Send):
            self.app.metrics.send_latency.observe(time.perf_counter() - started)
        return None if reply is None else wire.encode(reply)

    def _head(self) -> asyncio.Future[Any]:
        head = self._slots[0]
        assert not isinstance(head, bytes)
        return head.fut if isinstance(head, _SendSlot) else head

    def _send_fast(self, cmd: wire.Send) -> None:
        """Submit a send; its slot is written by :meth:`_flush` once committed."""
        started = time.perf_counter()
        try:
            fut = self.app.writer.enqueue(self._send_op(cmd))
        except ProtocolError as exc:
            self._slots.append(self._error_frame("send", cmd.ref, exc))
            self._flush()
            return
        fut.add_done_callback(self._flush)
        self._slots.append(_SendSlot(fut, cmd.ref, started))

    def _send_reply(self, slot: _SendSlot) -> bytes:
        """The reply to a committed (or refused) send, as :meth:`_reply` makes it."""
        try:
            sent = slot.fut.result()
        except ProtocolError as exc:
            return self._error_frame("send", slot.ref, exc)
        except Exception:
            return self._internal_frame("send", slot.ref)
        metrics = self.app.metrics
        metrics.command("send", "ok")
        metrics.send_latency.observe(time.perf_counter() - slot.started)
        return wire.encode(wire.SendOk(slot.ref, sent.message, sent.channel))

    def _error_frame(self, op: str, ref: wire.Ref, exc: ProtocolError) -> bytes:
        self.app.metrics.command(op, exc.code)
        frame = wire.encode(wire.Error(ref, exc.code, exc.message, **exc.details))
        return _BadRequestFrame(frame) if isinstance(exc, BadRequest) else frame

    def _internal_frame(self, op: str, ref: wire.Ref) -> bytes:
        """The reply to a command that raised something unexpected (logged here)."""
        log.exception("internal error in %s", op)
        self.app.metrics.command(op, InternalError.code)
        return wire.encode(wire.Error(ref, InternalError.code, "internal error"))

    def _flush(self, _: object = None) -> None:
        """Write every finished reply at the head of the line, in order."""
        slots = self._slots
        while slots:
            head = slots[0]
            if isinstance(head, bytes):
                frame: bytes | None = head
                # A rate_limited reply neither counts as bad nor resets the count.
                if type(head) is _BadRequestFrame:
                    self._count_frame(bad=True)
            elif isinstance(head, _SendSlot):
                if not head.fut.done():
                    return
                frame = self._send_reply(head)
                self._count_frame(bad=type(frame) is _BadRequestFrame)
            elif head.done() and not head.cancelled():
                frame = head.result()
                self._count_frame(bad=type(frame) is _BadRequestFrame)
            else:
                return
            del slots[0]
            if frame is not None:
                self.sink.send(frame)

    async def _settle(self) -> None:
        """Wait until every earlier command has replied."""
        while self._slots:
            await asyncio.wait([self._head()])
            self._flush()

    def tasks(self) -> list[asyncio.Future[Any]]:
        """Commands in flight (for the drain on shutdown)."""
        return [slot.fut if isinstance(slot, _SendSlot) else slot
                for slot in self._slots if not isinstance(slot, bytes)]

    async def _wait_for_reader(self) -> None:
        cfg = self.app.config
        deadline = time.monotonic() + cfg.slow_reader_timeout
        while self.sink.buffered() > cfg.send_buffer_limit // 2:
            if time.monotonic() > deadline:
                await self.sink.close(CLOSE_TOO_SLOW, "read too slowly")
                return
            await asyncio.sleep(0.02)

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sub is not None:
            self.app.hub.unsubscribe(self.sub)
            self.sub = None
        for slot in self._slots:
            if isinstance(slot, asyncio.Task):
                slot.cancel()
        self._slots.clear()

    # -------------------------------------------------------------- commands

    def _me(self) -> wire.User:
        assert self.user is not None
        return self.user

    async def _login(self, cmd: wire.Login) -> wire.LoginOk:
        app = self.app
        name, key = validate.name("name", cmd.name)
        password = validate.password(cmd.password)
        wait = max(app.name_throttle.wait(key), app.address_throttle.wait(self.address))
        if wait:
            raise RateLimited(
                "name: too many failed logins; retry later",
                retry_after=math.ceil(wait * 1000) / 1000,
            )
        invite = None if cmd.invite is None else validate.text("invite", cmd.invite, 256)
        user = await app.store.user_by_name(key)
        if user is None:
            # With open sign-up an invite is not needed, and not used up either.
            closed = not app.config.open_signup
            if closed and invite is None:
                self._failed_login(key)
                raise Unauthorized("name: no such user, and sign-up needs an invite")
            pw_hash = await asyncio.to_thread(crypto.hash_password, password, n=app.config.scrypt_n)
            op = CreateUserOp(name, key, pw_hash,
                              crypto.token_hash(invite) if closed and invite else None,
                              need_invite=closed)
            try:
                user = await app.writer.submit(op)
            except Unauthorized:
                self._failed_login(key)
                raise
            assert isinstance(user, StoredUser)
            if user.created:
                return await self._logged_in(cmd.ref, user)
        if not await asyncio.to_thread(crypto.verify_password, password, user.pw_hash):
            self._failed_login(key)
            raise Unauthorized("password: wrong name or password")
        if not user.active:
            raise Unauthorized("name: this account is deactivated")
        return await self._logged_in(cmd.ref, user)

    def _failed_login(self, key: str | None) -> None:
        self._auth_failures += 1
        self.app.address_throttle.take(self.address)
        if key is not None:
            self.app.name_throttle.take(key)

    async def _logged_in(self, ref: wire.Ref, user: StoredUser) -> wire.LoginOk:
        token = crypto.new_token()
        token_hash = crypto.token_hash(token)
        expires = int((self.app.clock() + self.app.config.token_ttl) * 1000)
        await self.app.writer.submit(IssueTokenOp(user.id, token_hash, expires))
        me = wire.User(user.id, user.name)
        self._set_user(me, token_hash)
        self._logged_in_once()
        return wire.LoginOk(ref, me, token)

    async def _auth(self, cmd: wire.Auth) -> wire.AuthOk:
        token = validate.text("token", cmd.token, validate.TOKEN_MAX)
        token_hash = crypto.token_hash(token)
        user = await self.app.store.user_by_token(token_hash, int(self.app.clock() * 1000))
        if user is None:
            self._failed_login(None)
            raise Unauthorized("token: unknown or expired")
        self._set_user(user, token_hash)
        self._logged_in_once()
        return wire.AuthOk(cmd.ref, user)

    async def _logout(self, cmd: wire.Logout) -> wire.Ok:
        token_hash = self.token_hash
        if token_hash is not None:
            await self.app.writer.submit(RevokeTokenOp(token_hash))
            # The token is over: so is every other connection logged in with it.
            self._end_others(lambda s: s.token_hash == token_hash, "logged out elsewhere")
        self.log_out()
        return wire.Ok(cmd.ref)

    def _end_others(self, which: Callable[[Session], bool], reason: str) -> None:
        """Close this node's other sessions that ``which`` picks with 4001 (their
        token ended); other nodes do the same within their token check."""
        for other in list(self.app.sessions):
            if other is not self and which(other):
                other.end(reason)

    def end(self, reason: str) -> None:
        """The token ended: log out at once, close with 4001 (do not reconnect with it)."""
        self.log_out()
        self.app.hub.close_later(self.sink, CLOSE_TOKEN_ENDED, reason)

    def log_out(self) -> None:
        self._stop_subscription()
        self._set_user(None, None)

    def _set_user(self, user: wire.User | None, token_hash: bytes | None) -> None:
        """Log this connection in as ``user`` (None: out), and count it for presence."""
        self.user, self.token_hash = user, token_hash
        self._count_as(user)

    def _count_as(self, user: wire.User | None) -> None:
        """Count this connection as ``user``'s for presence (None: as nobody's); once,
        however often it is told, also after the connection ended."""
        old, self._counted = self._counted, user
        presence = self.app.ephemeral
        # The new user first: logging in again as the same user must not flap.
        if user is not None:
            presence.connected(user)
        if old is not None:
            presence.disconnected(old)

    async def _ping(self, cmd: wire.Ping) -> wire.Ok:
        return wire.Ok(cmd.ref)

    @asynccontextmanager
    async def _read_slot(self) -> AsyncIterator[None]:
        """Reads of one connection run one at a time, each once the replies before it
        have drained below the buffer limit: a client that pipelines large reads and
        does not read the replies holds at most one reply beyond the limit."""
        async with self._reads:
            await asyncio.sleep(0)  # let the previous read's reply be written first
            if self.sink.buffered() > self.app.config.send_buffer_limit:
                await self._wait_for_reader()
            yield

    async def _boot(self, cmd: wire.Boot) -> wire.BootOk:
        async with self._read_slot():
            resume_point, me, channels = await self.app.store.boot(self._me().id)
        return wire.BootOk(cmd.ref, me, self.app.store.epoch, resume_point, channels,
                           self.app.ephemeral.online())

    # -------------------------------------------------------------- accounts

    async def _change_password(self, cmd: wire.ChangePassword) -> wire.Ok:
        app, me = self.app, self._me()
        password = validate.password(cmd.password)
        new_password = validate.password(cmd.new_password, "new_password")
        user = await app.store.user(me.id)
        if user is None or not await asyncio.to_thread(
            crypto.verify_password, password, user.pw_hash
        ):
            self._failed_login(validate.name_key(me.name))
            raise Unauthorized("password: wrong password")
        pw_hash = await asyncio.to_thread(crypto.hash_password, new_password,
                                          n=app.config.scrypt_n)
        keep = self.token_hash
        await app.writer.submit(ChangePasswordOp(me.id, pw_hash, keep))
        self._end_others(lambda s: s.user is not None and s.user.id == me.id
                         and s.token_hash != keep, "the password was changed")
        return wire.Ok(cmd.ref)

    async def _users(self, cmd: wire.Users) -> wire.UsersOk:
        async with self._read_slot():
            return wire.UsersOk(cmd.ref, await self.app.store.users())

    async def _create_invite(self, cmd: wire.CreateInvite) -> wire.InviteOk:
        code = crypto.new_token()
        expires = int((self.app.clock() + cmd.ttl) * 1000)
        invite: wire.Invite = await self.app.writer.submit(CreateInviteOp(
            self._me(), crypto.new_id("I"), crypto.token_hash(code), cmd.uses, expires))
        # The code exists only in this reply: the database has its hash.
        return wire.InviteOk(cmd.ref, msgspec.structs.replace(invite, code=code))

    async def _list_invites(self, cmd: wire.ListInvites) -> wire.InvitesOk:
        now_ms = int(self.app.clock() * 1000)
        async with self._read_slot():
            return wire.InvitesOk(cmd.ref, await self.app.store.invites(self._me(), now_ms))

    async def _revoke_invite(self, cmd: wire.RevokeInvite) -> wire.Ok:
        invite_id = validate.text("invite", cmd.invite)
        await self.app.writer.submit(RevokeInviteOp(self._me(), invite_id))
        return wire.Ok(cmd.ref)

    async def _set_role(self, cmd: wire.SetRole) -> wire.AccountOk:
        user_id = validate.text("user", cmd.user)
        account = await self.app.writer.submit(SetRoleOp(self._me(), user_id, cmd.role))
        return wire.AccountOk(cmd.ref, account)

    async def _deactivate_user(self, cmd: wire.DeactivateUser) -> wire.AccountOk:
        user_id = validate.text("user", cmd.user)
        account = await self.app.writer.submit(SetActiveOp(self._me(), user_id, False))
        self._end_others(lambda s: s.user is not None and s.user.id == user_id,
                         "the account was deactivated")
        if self.user is not None and self.user.id == user_id:
            self.end("the account was deactivated")
        return wire.AccountOk(cmd.ref, account)

    async def _reactivate_user(self, cmd: wire.ReactivateUser) -> wire.AccountOk:
        user_id = validate.text("user", cmd.user)
        account = await self.app.writer.submit(SetActiveOp(self._me(), user_id, True))
        return wire.AccountOk(cmd.ref, account)

    async def _create_channel(self, cmd: wire.CreateChannel) -> wire.ChannelOk:
        name, key = validate.name("name", cmd.name)
        channel = await self.app.writer.submit(
            CreateChannelOp(self._me(), name, key, cmd.private))
        return wire.ChannelOk(cmd.ref, channel)

    async def _open_dm(self, cmd: wire.OpenDm) -> wire.OpenDmOk:
        user_id = validate.text("user", cmd.user)
        opened = await self.app.writer.submit(OpenDmOp(self._me(), user_id))
        return wire.OpenDmOk(cmd.ref, opened.channel, opened.created)

    async def _add_member(self, cmd: wire.AddMember) -> wire.MemberOk:
        channel_id = validate.text("channel", cmd.channel)
        user_id = validate.text("user", cmd.user)
        done: MemberChanged = await self.app.writer.submit(
            AddMemberOp(self._me(), channel_id, user_id))
        return wire.MemberOk(cmd.ref, done.channel, done.user)

    async def _remove_member(self, cmd: wire.RemoveMember) -> wire.MemberOk:
        channel_id = validate.text("channel", cmd.channel)
        user_id = validate.text("user", cmd.user)
        done: MemberChanged = await self.app.writer.submit(
            RemoveMemberOp(self._me(), channel_id, user_id))
        return wire.MemberOk(cmd.ref, done.channel, done.user)

    async def _members(self, cmd: wire.Members) -> wire.MembersOk:
        channel_id = validate.text("channel", cmd.channel)
        async with self._read_slot():
            members, creator = await self.app.store.members(channel_id, self._me().id)
        reply = wire.MembersOk(cmd.ref, members)
        if creator is not None:
            reply.creator = creator
        return reply

    async def _mark_read(self, cmd: wire.MarkRead) -> wire.MarkReadOk:
        channel_id = validate.text("channel", cmd.channel)
        done: ReadPosition = await self.app.writer.submit(
            MarkReadOp(self._me(), channel_id, cmd.seq))
        return wire.MarkReadOk(cmd.ref, done.channel, done.read_seq, done.unread)

    async def _delete_channel(self, cmd: wire.DeleteChannel) -> wire.ChannelOk:
        channel_id = validate.text("channel", cmd.channel)
        channel = await self.app.writer.submit(DeleteChannelOp(self._me(), channel_id))
        return wire.ChannelOk(cmd.ref, channel)

    async def _send(self, cmd: wire.Send) -> wire.SendOk:
        # A logged-in connection's send takes _send_fast; _reply only gets the
        # ones it refuses before calling this (not logged in, shutting down).
        sent: Sent = await self.app.writer.submit(self._send_op(cmd))
        return wire.SendOk(cmd.ref, sent.message, sent.channel)

    def _send_op(self, cmd: wire.Send) -> SendOp:
        channel_id = validate.text("channel", cmd.channel)
        body = validate.body(cmd.body)
        nonce = None if cmd.nonce is None else validate.text("nonce", cmd.nonce)
        return SendOp(self._me(), channel_id, body, nonce)

    async def _edit_message(self, cmd: wire.EditMessage) -> wire.SendOk:
        message_id = validate.text("message", cmd.message)
        body = validate.body(cmd.body)
        sent: Sent = await self.app.writer.submit(EditMessageOp(self._me(), message_id, body))
        return wire.SendOk(cmd.ref, sent.message, sent.channel)

    async def _delete_message(self, cmd: wire.DeleteMessage) -> wire.DeleteMessageOk:
        message_id = validate.text("message", cmd.message)
        mid, channel = await self.app.writer.submit(DeleteMessageOp(self._me(), message_id))
        return wire.DeleteMessageOk(cmd.ref, wire.MessageRef(mid), channel)

    async def _history(self, cmd: wire.History) -> wire.HistoryOk:
        channel_id = validate.text("channel", cmd.channel)
        async with self._read_slot():
            messages, more = await self.app.store.history(
                channel_id, cmd.before, cmd.limit, self._me().id)
        return wire.HistoryOk(cmd.ref, messages, more)

    async def _search(self, cmd: wire.Search) -> wire.SearchOk:
        channel_id = None if cmd.channel is None else validate.text("channel", cmd.channel)
        async with self._read_slot():
            hits, more = await self.app.store.search(
                self._me().id, cmd.query, channel_id, cmd.before, cmd.limit)
        return wire.SearchOk(cmd.ref, hits, more)

    async def _subscribe(self, cmd: wire.Subscribe) -> None:
        app = self.app
        epoch = app.store.epoch
        channels = None
        if cmd.channels is not None:
            channels = frozenset(validate.text("channels", c) for c in cmd.channels)
        self._stop_subscription()
        if cmd.epoch is not None and cmd.epoch != epoch:
            _, horizon = await app.store.position()
            raise ResumeGap(
                f"epoch: this server's history is {epoch!r}; boot again",
                horizon=horizon, epoch=epoch,
            )
        if cmd.since is None:
            resume_point = app.hub.last_seq
        else:
            resume_point, horizon = await app.store.position()
            if cmd.since < horizon or cmd.since > resume_point:
                raise ResumeGap(
                    f"since: {cmd.since} is outside the retained history"
                    f" ({horizon}..{resume_point}); boot again",
                    horizon=horizon, epoch=epoch,
                )
        # The ok goes out before the subscription starts, so before its first event.
        self.sink.send(wire.encode(wire.SubscribeOk(cmd.ref, epoch, resume_point)))
        self.sub = app.hub.subscribe(self.sink, channels, cmd.since,
                                     self._me().id, cmd.ephemeral)
        return None

    async def _unsubscribe(self, cmd: wire.Unsubscribe) -> wire.Ok:
        self._stop_subscription()
        return wire.Ok(cmd.ref)

    async def _typing(self, cmd: wire.Typing) -> wire.Ok:
        channel_id = validate.text("channel", cmd.channel)
        await self.app.ephemeral.typing(self.sink, self._me(), channel_id)
        return wire.Ok(cmd.ref)

    def _stop_subscription(self) -> None:
        if self.sub is not None:
            self.app.hub.unsubscribe(self.sub)
            self.sub = None


# One table for all sessions: per-session bound methods would cost memory per connection.
_HANDLERS: dict[type[wire.Command], Handler] = {
    wire.Login: Session._login,
    wire.Auth: Session._auth,
    wire.Logout: Session._logout,
    wire.Ping: Session._ping,
    wire.Boot: Session._boot,
    wire.CreateChannel: Session._create_channel,
    wire.DeleteChannel: Session._delete_channel,
    wire.OpenDm: Session._open_dm,
    wire.AddMember: Session._add_member,
    wire.RemoveMember: Session._remove_member,
    wire.Members: Session._members,
    wire.MarkRead: Session._mark_read,
    wire.Send: Session._send,
    wire.DeleteMessage: Session._delete_message,
    wire.EditMessage: Session._edit_message,
    wire.History: Session._history,
    wire.Search: Session._search,
    wire.Subscribe: Session._subscribe,
    wire.Unsubscribe: Session._unsubscribe,
    wire.ChangePassword: Session._change_password,
    wire.Users: Session._users,
    wire.CreateInvite: Session._create_invite,
    wire.ListInvites: Session._list_invites,
    wire.RevokeInvite: Session._revoke_invite,
    wire.SetRole: Session._set_role,
    wire.DeactivateUser: Session._deactivate_user,
    wire.ReactivateUser: Session._reactivate_user,
    wire.Typing: Session._typing,
}


def _salvage_ref(data: str) -> wire.Ref:
    """The ``ref`` of a frame that failed validation, if the ref itself is valid."""
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    ref = obj.get("ref") if isinstance(obj, dict) else None
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int) or (isinstance(ref, str) and len(ref) <= 64):
        return ref
    return None
