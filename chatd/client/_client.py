"""The :class:`Client`: one background task owns the connection; commands are
matched to their replies by ``ref``.

The parts live beside it: :mod:`._reconnect` runs the connect-and-retry loop,
:mod:`._resend` holds the commands not answered yet and decides what a drop does
to them, :mod:`._replies` types the frames, :mod:`._stream` feeds ``events()``.
What stays here is the state that must change in one synchronous step when a
connection drops or the client stops, so that nothing is written in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Literal, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .. import wire
from ..exceptions import (
    ChatdError,
    ClientClosed,
    ClientError,
    CommandTimeout,
    ConnectFailed,
    ResumeGap,
    Unauthorized,
    Unavailable,
)
from ._reconnect import Reconnector, backoff, close_quietly, describe
from ._replies import (
    ADD_MEMBER,
    AUTH,
    BOOT,
    CHANGE_PASSWORD,
    CREATE_CHANNEL,
    CREATE_INVITE,
    DEACTIVATE_USER,
    DELETE_CHANNEL,
    DELETE_MESSAGE,
    EDIT_MESSAGE,
    EVENT_FRAMES,
    HISTORY,
    LIST_INVITES,
    LOGIN,
    LOGOUT,
    MARK_READ,
    MEMBERS,
    OPEN_DM,
    PING,
    REACTIVATE_USER,
    REMOVE_MEMBER,
    REVOKE_INVITE,
    SEARCH,
    SEND,
    SET_ROLE,
    SUBSCRIBE,
    TYPING,
    UNSUBSCRIBE,
    USERS,
    Ephemeral,
    Op,
    OtherEphemeral,
    read_frame,
    reply,
)
from ._resend import Outbox, Pending, new_nonce
from ._stream import Reset, StreamPosition, Subscription, patiently

#: the server ended the token (logout elsewhere, password change, deactivation)
CLOSE_TOKEN_ENDED = 4001

# One logger for the whole client package: the name applications and clientcli configure.
log = logging.getLogger("chatd.client")

DEFAULT_URL = "ws://127.0.0.1:8765/ws"

#: Largest frame accepted from the server. A full ``history`` page (500 bodies of
#: 4,096 characters, each up to 6 bytes once JSON-escaped) is about 13 MB.
MAX_REPLY_BYTES = 64 * 2**20

C = TypeVar("C", bound=wire.Command)
T = TypeVar("T", bound=wire.Ok)



class Client:
    """A chatd connection that survives restarts of the server and of the network.

    Give either ``name`` and ``password`` (``login``, which also signs the user
    up when the server allows it) or a ``token`` from an earlier login (``auth``).
    With both, an expired token falls back to the password.

    ``timeout`` bounds every command, reconnects included. ``connect_timeout``
    (default: ``timeout``) bounds the first connection made by ``async with``,
    and each step of every connection attempt (handshake, login, resubscribe).
    ``reconnect_delays`` is a factory of delay iterables, called afresh for each
    outage (default :func:`backoff`: unbounded attempts, delays capped at 10 s);
    when an iterable runs out the client gives up with ``ConnectFailed``.
    ``max_queued_events`` bounds the events read but not yet consumed: past it
    the client stops queueing and later resubscribes from its position, so a slow
    consumer costs replays from the server's storage rather than memory here.
    Other keyword arguments go to :func:`websockets.asyncio.client.connect`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        name: str | None = None,
        password: str | None = None,
        token: str | None = None,
        invite: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        reconnect_delays: Callable[[], Iterable[float]] = backoff,
        max_queued_events: int = 10_000,
        **connect_options: Any,
    ) -> None:
        if token is None and (name is None or password is None):
            raise ValueError("Client needs token= or both name= and password=")
        self.url = url
        self._name = name
        self._password = password
        #: an invite code for a server with closed sign-up (used by the first login)
        self._invite = invite
        self._token = token
        self.user: wire.User | None = None
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._max_queued = max(1, max_queued_events)
        options = {
            "open_timeout": self._connect_timeout,
            "close_timeout": min(timeout, 2.0),
            "max_size": MAX_REPLY_BYTES,
            **connect_options,
        }
        self._reconnector = Reconnector(url, reconnect_delays, options)

        self._outbox = Outbox()
        #: why the server ended this client's token (close 4001), if it did
        self._token_ended: str | None = None
        self._conn: ClientConnection | None = None
        self._ready = False  # logged in, resubscribed and flushed: commands go out directly
        self._closed = False
        self._fatal_error: BaseException | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._unsubscribing: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and log in; raises ``ConnectFailed`` or the login error.

        Retries per ``reconnect_delays`` for at most ``connect_timeout`` seconds,
        so that a client started together with its server waits for it briefly.
        """
        if self._task is not None:
            raise ClientError("connect() was already called")
        self._first = asyncio.get_running_loop().create_future()
        # Retrieve the outcome even when nobody waits for it any more.
        self._first.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._task = asyncio.create_task(self._run(), name=f"chatd client {self.url}")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self._connect_timeout)
        except TimeoutError:
            error = self._reconnector.last_error
            await self.close()
            raise ConnectFailed(
                f"cannot connect to {self.url} within {self._connect_timeout:g} s: "
                f"{describe(error)}"
            ) from error
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection; commands still waiting fail with ``ClientClosed``."""
        if not self._closed:
            self._stop(None)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in list(self._background):
            t.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await close_quietly(conn)

    @property
    def token(self) -> str | None:
        """The bearer token in use (from ``login``, or as given)."""
        return self._token

    @property
    def connected(self) -> bool:
        return self._ready

    @property
    def position(self) -> tuple[str | None, int | None] | None:
        """(epoch, seq) of the running event stream, or None without one."""
        sub = self._sub
        return None if sub is None else (sub.pos.epoch, sub.pos.seq)

    # ---------------------------------------------------------------- commands

    async def boot(self) -> wire.BootOk:
        return await self._call(BOOT, wire.Boot)

    async def ping(self) -> wire.Ok:
        return await self._call(PING, wire.Ping)

    async def create_channel(self, name: str, private: bool = False) -> wire.ChannelOk:
        """A public channel, or with ``private=True`` one only its members see
        (this user is its first member)."""
        cmd = wire.CreateChannel(name=name, private=private)
        return await self._call(CREATE_CHANNEL, lambda: cmd)

    async def delete_channel(self, channel_id: str) -> wire.ChannelOk:
        cmd = wire.DeleteChannel(channel=channel_id)
        return await self._call(DELETE_CHANNEL, lambda: cmd)

    async def send(self, channel_id: str, body: str, *, nonce: str | None = None) -> wire.SendOk:
        """Post ``body``; stores it exactly once even when connections drop meanwhile.

        The nonce makes the server answer a repeat with the first ``ok``. Pass your
        own to retry safely after a ``CommandTimeout`` or ``ConnectionLost``.
        """
        cmd = wire.Send(channel=channel_id, body=body, nonce=nonce or new_nonce())
        return await self._call(SEND, lambda: cmd)

    async def delete_message(self, message_id: str) -> wire.DeleteMessageOk:
        cmd = wire.DeleteMessage(message=message_id)
        return await self._call(DELETE_MESSAGE, lambda: cmd)

    async def edit_message(self, message_id: str, body: str) -> wire.SendOk:
        """Replace the body of one of this user's messages (only the latest is kept)."""
        cmd = wire.EditMessage(message=message_id, body=body)
        return await self._call(EDIT_MESSAGE, lambda: cmd)

    async def history(
        self, channel_id: str, before: int | None = None, limit: int = 100
    ) -> wire.HistoryOk:
        cmd = wire.History(channel=channel_id, before=before, limit=limit)
        return await self._call(HISTORY, lambda: cmd)

    async def typing(self, channel_id: str) -> wire.Ok:
        """Tell the others that this user is typing in the channel. The server
        forwards at most one a second per channel; call it every few seconds
        while the user types, not on every key."""
        cmd = wire.Typing(channel=channel_id)
        return await self._call(TYPING, lambda: cmd)

    # ---------------------------------------------------------------- membership, read positions

    async def open_dm(self, user_id: str) -> wire.OpenDmOk:
        """The direct-message channel with ``user_id``, made on first use.

        ``created`` says whether this call made it; a call repeated after a
        dropped connection may say False for a channel that it did make.
        """
        cmd = wire.OpenDm(user=user_id)
        return await self._call(OPEN_DM, lambda: cmd)

    async def add_member(self, channel_id: str, user_id: str) -> wire.MemberOk:
        """Add a user to a private channel this user is a member of."""
        cmd = wire.AddMember(channel=channel_id, user=user_id)
        return await self._call(ADD_MEMBER, lambda: cmd)

    async def remove_member(self, channel_id: str, user_id: str) -> wire.MemberOk:
        """Remove a member of a private channel (oneself, or anyone as its
        creator or an admin)."""
        cmd = wire.RemoveMember(channel=channel_id, user=user_id)
        return await self._call(REMOVE_MEMBER, lambda: cmd)

    async def leave(self, channel_id: str) -> wire.MemberOk:
        """Leave a private channel: ``remove_member`` of this client's own user."""
        self._check_open()
        if self.user is None:
            # Only before the first login has completed; commands wait for it, this cannot.
            raise ClientError("leave() needs the logged-in user: call it after connect()")
        return await self.remove_member(channel_id, self.user.id)

    async def members(self, channel_id: str) -> wire.MembersOk:
        """The current members of a private or dm channel (a public one is BadRequest)."""
        cmd = wire.Members(channel=channel_id)
        return await self._call(MEMBERS, lambda: cmd)

    async def mark_read(self, channel_id: str, seq: int) -> wire.MarkReadOk:
        """Move this user's read position in a channel forward to ``seq``
        (never back); the reply has the position and unread count after it."""
        cmd = wire.MarkRead(channel=channel_id, seq=seq)
        return await self._call(MARK_READ, lambda: cmd)

    async def search(
        self, query: str, channel: str | None = None, before: int | None = None,
        limit: int | None = None,
    ) -> wire.SearchOk:
        """Messages whose current body has every word of ``query``, newest first:
        in the channels this user can see, or in the channel with id ``channel``;
        ``before`` a seq to page back; ``limit`` 1 to 100 (the server's default, 20,
        when None)."""
        cmd = wire.Search(query=query, channel=channel, before=before)
        if limit is not None:
            cmd.limit = limit
        return await self._call(SEARCH, lambda: cmd)

    # ---------------------------------------------------------------- accounts

    async def users(self) -> wire.UsersOk:
        return await self._call(USERS, wire.Users)

    async def change_password(self, password: str, new_password: str) -> wire.Ok:
        """Change this user's password; the server ends every other token of it
        (their connections close with 4001) and keeps this client's. A client
        made with a password logs in with ``new_password`` from now on."""
        cmd = wire.ChangePassword(password=password, new_password=new_password)
        ok = await self._call(CHANGE_PASSWORD, lambda: cmd)
        if self._password is not None:
            self._password = new_password
        return ok

    async def create_invite(self, uses: int = 1, ttl: int = 604_800) -> wire.InviteOk:
        """An invite for ``uses`` accounts, valid ``ttl`` seconds (admin only)."""
        cmd = wire.CreateInvite(uses=uses, ttl=ttl)
        return await self._call(CREATE_INVITE, lambda: cmd)

    async def list_invites(self) -> wire.InvitesOk:
        return await self._call(LIST_INVITES, wire.ListInvites)

    async def revoke_invite(self, invite_id: str) -> wire.Ok:
        cmd = wire.RevokeInvite(invite=invite_id)
        return await self._call(REVOKE_INVITE, lambda: cmd)

    async def set_role(self, user_id: str, role: str) -> wire.AccountOk:
        cmd = wire.SetRole(user=user_id, role=role)  # type: ignore[arg-type]
        return await self._call(SET_ROLE, lambda: cmd)

    async def deactivate_user(self, user_id: str) -> wire.AccountOk:
        cmd = wire.DeactivateUser(user=user_id)
        return await self._call(DEACTIVATE_USER, lambda: cmd)

    async def reactivate_user(self, user_id: str) -> wire.AccountOk:
        cmd = wire.ReactivateUser(user=user_id)
        return await self._call(REACTIVATE_USER, lambda: cmd)

    async def logout(self) -> wire.Ok:
        """End this client's token on the server, then close the client."""
        ok = await self._call(LOGOUT, wire.Logout)
        self._token = None
        await self.close()
        return ok

    # ---------------------------------------------------------------- events

    async def events(
        self,
        *,
        since: int | None = None,
        epoch: str | None = None,
        channels: Sequence[str] | None = None,
        on_gap: Literal["reset", "raise"] = "reset",
        ephemeral: bool = False,
    ) -> AsyncGenerator[wire.Event | Ephemeral | Reset, None]:
        """Every event after ``since`` (default: from now), exactly once, in seq order.

        Pass the ``epoch`` that ``since`` belongs to, so that a replaced database
        is noticed. ``channels`` (ids) restricts the stream. When the server can
        no longer resume from our position, a :class:`Reset` is yielded and the
        stream continues from its snapshot, or with ``on_gap="raise"``
        :class:`~chatd.exceptions.ResumeGap` is raised. One stream per client.

        With ``ephemeral=True`` the stream also yields the typing and presence
        frames (:class:`wire.EphemeralTyping`, :class:`wire.EphemeralPresence`)
        where they arrive among the events. They have no seq and are best
        effort: none is replayed after a reconnect, and they are dropped, not
        queued, while ``max_queued_events`` are waiting for the consumer. Kinds
        this client does not know are skipped.

        Ends with ``ClientClosed`` when the client is closed, or with the error
        that made it give up (``ConnectFailed``, ``Unauthorized``). Leaving the
        loop early ends the subscription; ``aclose()`` does it at once.
        """
        self._check_open()
        if self._sub is not None:
            raise ClientError("this client already has an events() stream")
        if self._unsubscribing is not None:
            # Not written yet (it writes in its first step): it must not land
            # after the subscribe below and end the new stream.
            self._unsubscribing.cancel()
            self._unsubscribing = None
        sub = Subscription(
            StreamPosition(epoch=epoch, seq=since),
            list(channels) if channels else None,
            self._max_queued,
            on_gap,
            ephemeral,
        )
        self._sub = sub

        def subscribe() -> Awaitable[ResumeGap | None]:
            return self._subscribe(sub)

        def boot() -> Awaitable[wire.BootOk]:
            return patiently(self.boot)

        try:
            while True:
                yield await sub.next_item(subscribe, boot)
        finally:
            # No await here: this also runs when the generator is finalised.
            if self._sub is sub:
                self._sub = None
                sub.end()
                if self._ready and not self._closed:
                    self._unsubscribing = self._spawn(self._unsubscribe())

    async def _subscribe(self, sub: Subscription) -> ResumeGap | None:
        def on_ok(ok: wire.SubscribeOk) -> None:
            if self._sub is sub:
                sub.subscribed(ok)

        def call() -> Awaitable[wire.SubscribeOk]:
            # Built when written, not now: a subscribe repeated after a reconnect
            # must start from the position reached by then.
            return self._call(SUBSCRIBE, sub.command, on_ok=on_ok)

        try:
            await patiently(call)
        except ResumeGap as gap:
            return gap
        return None

    async def _unsubscribe(self) -> None:
        with contextlib.suppress(ChatdError):
            await self._call(UNSUBSCRIBE, wire.Unsubscribe)

    # ---------------------------------------------------------------- command plumbing

    def _check_open(self) -> None:
        if self._task is None and not self._closed:
            raise ClientError("not connected: use 'async with Client(...)' or connect()")
        if self._closed:
            raise ClientClosed("the client is closed") from self._fatal_error

    async def _call(
        self,
        op: Op[C, T],
        build: Callable[[], C],
        *,
        on_ok: Callable[[T], None] | None = None,
    ) -> T:
        self._check_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = Pending(op, build, future, on_ok)
        self._outbox.track(entry)
        try:
            async with asyncio.timeout(self._timeout):
                await self._submit(entry)
                return await future
        except TimeoutError:
            raise CommandTimeout(
                f"no reply to {op.name} within {self._timeout:g} s"
                + (f" (last error: {describe(entry.last_error)})" if entry.last_error else "")
            ) from entry.last_error
        finally:
            future.cancel()  # a no-op when answered; marks it abandoned otherwise

    async def _submit(self, entry: Pending) -> None:
        if entry.future.done():
            return
        conn = self._conn
        if self._ready and conn is not None:
            await self._write(conn, entry)
        else:
            self._outbox.wait(entry)

    async def _write(self, conn: ClientConnection, entry: Pending) -> bool:
        """Write one command; False if the connection is gone (the drop handler
        then deals with the entry, which is registered before the write)."""
        ref = self._outbox.next_ref()
        cmd = msgspec.structs.replace(entry.build(), ref=ref)
        self._outbox.written(ref, entry)
        try:
            await conn.send(wire.encode(cmd), text=True)
        except ConnectionClosed:
            return False
        return True

    def _retry_later(self, entry: Pending, error: Unavailable) -> None:
        delay = entry.retry_delay(error)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self._spawn(self._submit(entry)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---------------------------------------------------------------- connection task

    async def _run(self) -> None:
        try:
            error = await self._reconnector.run(self._handshake, self._session)
        except Exception as exc:  # a bug here must not leave callers hanging
            log.exception("chatd client task failed")
            error = ClientError(f"client task failed: {exc!r}")
        self._fatal(error)

    async def _handshake(self, conn: ClientConnection) -> None:
        if self._token is not None:
            try:
                auth = await self._direct(conn, wire.Auth(token=self._token), AUTH)
                self.user = auth.user
            except Unauthorized:
                if self._password is None:
                    raise
                log.info("token refused; logging in again as %s", self._name)
                self._token = None
        if self._token is None:
            if self._name is None or self._password is None:
                raise Unauthorized(f"token: {self._token_ended or 'refused'}; log in again")
            login = await self._direct(
                conn, wire.Login(name=self._name, password=self._password, invite=self._invite),
                LOGIN
            )
            self._token = login.token
            self.user = login.user
        sub = self._sub
        if sub is not None and sub.live:
            try:
                ok = await self._direct(conn, sub.command(), SUBSCRIBE)
            except ResumeGap as gap:
                sub.lost(gap)
            else:
                sub.subscribed(ok)

    async def _direct(self, conn: ClientConnection, cmd: C, op: Op[C, T]) -> T:
        """One command during the handshake, before the reader runs: nothing else
        is in flight and no subscription is active, so the next reply is ours."""
        ref = self._outbox.next_ref()
        await conn.send(wire.encode(msgspec.structs.replace(cmd, ref=ref)), text=True)
        async with asyncio.timeout(self._connect_timeout):
            while True:
                raw = await conn.recv()
                try:
                    frame = read_frame(raw)
                except msgspec.MsgspecError as exc:
                    raise ClientError(f"malformed reply to {op.name}: {exc}") from exc
                if isinstance(frame, (wire.EphemeralTyping, wire.EphemeralPresence,
                                      OtherEphemeral)):
                    continue  # live only: nothing waits for them during a handshake
                if isinstance(frame, EVENT_FRAMES) or frame.ref != ref:
                    log.warning("unexpected frame during login: %r", raw[:200])
                    continue
                result = reply(op, frame, raw)
                if isinstance(result, ChatdError):
                    raise result
                return result

    async def _session(self, conn: ClientConnection) -> None:
        self._conn = conn
        reader = asyncio.create_task(self._read(conn))
        try:
            # Waiting commands go out in their original order before new ones
            # may bypass the queue.
            while not reader.done():
                entry = self._outbox.next_waiting()
                if entry is None:
                    self._ready = True
                    break
                if not await self._write(conn, entry):
                    break
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            await reader
        finally:
            reader.cancel()
            self._dropped(conn)
            await close_quietly(conn)

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for raw in conn:
                self._dispatch(raw)
        except ConnectionClosed:
            pass

    def _dropped(self, conn: ClientConnection) -> None:
        """Everything a lost connection invalidates; synchronous, so that no
        command can be written in between to the dead connection."""
        self._ready = False
        if self._conn is conn:
            self._conn = None
        if self._sub is not None:
            self._sub.active = False
        if not self._closed:
            reason = f" {conn.close_reason}" if conn.close_reason else ""
            log.info("connection to %s closed (code %s%s)", self.url, conn.close_code, reason)
        if conn.close_code == CLOSE_TOKEN_ENDED:
            # The server ended the token: never present it again. With a password
            # the reconnect logs in afresh; without one the client gives up.
            self._token = None
            self._token_ended = conn.close_reason or "the token was ended"
        self._outbox.dropped(conn.close_code)

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = read_frame(raw)
        except msgspec.MsgspecError:
            log.error("undecodable frame from server: %r", raw[:200])
            return
        if isinstance(frame, EVENT_FRAMES):
            sub = self._sub
            if sub is not None and sub.active:
                sub.take(frame, raw)
            return
        if isinstance(frame, OtherEphemeral):
            return
        if isinstance(frame, (wire.EphemeralTyping, wire.EphemeralPresence)):
            sub = self._sub
            if sub is not None and sub.active:
                sub.take_ephemeral(frame)
            return
        entry = self._outbox.answered(frame.ref)
        if entry is None:
            log.warning("server frame with no matching command: %r", raw[:200])
            return
        result = reply(entry.op, frame, raw)
        if isinstance(result, ChatdError):
            if isinstance(result, Unavailable) and entry.idempotent:
                self._retry_later(entry, result)
            elif not entry.future.done():
                entry.future.set_exception(result)
            return
        if entry.on_ok is not None:
            entry.on_ok(result)
        if not entry.future.done():
            entry.future.set_result(result)

    def _stop(self, fatal: BaseException | None) -> None:
        """Fail everything that waits: with ``fatal``, or ClientClosed on close()."""
        self._closed = True
        self._ready = False
        self._fatal_error = fatal
        self._outbox.fail_all(lambda: fatal or ClientClosed("the client was closed"))
        if self._sub is not None:
            self._sub.stop(fatal or ClientClosed("the client was closed"))
        if self._first is not None and not self._first.done():
            self._first.set_exception(fatal or ClientClosed("the client was closed"))

    def _fatal(self, error: BaseException) -> None:
        log.error("chatd client for %s stopped: %s", self.url, describe(error))
        self._stop(error)

