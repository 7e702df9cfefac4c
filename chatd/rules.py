"""What each operation means, once for every storage backend.

Who may do what, nonce replay, the cascade of a channel delete, what expiry
removes, and which events a change emits and how they are framed: all of it is
here, written against the row interface of :mod:`chatd.storage`. A backend
stores rows; it never decides.

A commit batch (:meth:`Rules.apply`) runs in one backend transaction. Each event
gets the next seq from the counter read at the start of that transaction, is
encoded to its wire frame once, stored, and returned as
:class:`~chatd.ops.Published` in seq order.

Fast path and careful path: every operation raises its refusal
(:class:`~chatd.exceptions.ProtocolError`: not_found, forbidden, conflict)
*before* it writes anything, so a refused operation needs no savepoint to undo
it. Any other exception (a bug, a constraint, the disk) aborts the whole
transaction; the batch is then applied again with a savepoint around each
operation, so only the failing one fails.

Caches, and what keeps them true with several writers (other nodes on one
PostgreSQL, or ``chatd`` commands writing while the daemon runs): the channel
rows the send path reads and the time of the newest event are kept between
batches, tagged with the counter value they were read at. Every change to a
channel row (create, delete) emits an event, and so moves the counter; every
batch reads the counter first, under the transaction's lock. So a cache is used
only while the counter is still the value it was read at, that is while no
other writer has committed an event since; otherwise it is dropped and read
again. A failed transaction drops it too.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any

import msgspec

from . import visibility, wire
from .crypto import new_id, new_ordered_id
from .exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalError,
    NotFound,
    ProtocolError,
    Unauthorized,
    Unavailable,
)
from .ops import (
    AddMemberOp,
    ChangePasswordOp,
    CreateChannelOp,
    CreateInviteOp,
    CreateUserOp,
    DeleteChannelOp,
    DeleteMessageOp,
    DmOpened,
    EditMessageOp,
    EventPage,
    Expired,
    ExpireOp,
    IssueTokenOp,
    MarkReadOp,
    MemberChanged,
    Op,
    OpenDmOp,
    Published,
    ReadPosition,
    RemoveMemberOp,
    Result,
    RevokeInviteOp,
    RevokeTokenOp,
    SendOp,
    Sent,
    SetActiveOp,
    SetRoleOp,
    StoredUser,
    TailPage,
)
from .search import Query, matches
from .storage import (
    AccountRow,
    Backend,
    ChannelRow,
    NonceRow,
    SearchRow,
    Snapshot,
    UserRow,
    WriteTx,
)

log = logging.getLogger("chatd.rules")

#: stored frames are decoded only to rewrite them (an edit)
_event_decoder = msgspec.json.Decoder(wire.Event)

#: a send moves its channel's stored activity time (channels.active_ms) only
#: when that is at least this much older. Each move costs the send's commit two
#: more pages (the row and its index); expiry finds a channel's true last message
#: by itself (WriteTx.idle_channels), so the stored time only narrows its search.
TOUCH_EVERY_MS = 60_000


class _Commit:
    """The rules' state of one transaction: the seq so far, the time, the events."""

    __slots__ = ("at", "at_ms", "earlier", "encoder", "events", "nonces", "seq", "tx")

    def __init__(self, tx: WriteTx, seq: int, at_ms: int, encoder: msgspec.json.Encoder) -> None:
        self.tx = tx
        self.seq = seq
        self.at_ms = at_ms
        self.at = wire.format_at(at_ms)
        self.encoder = encoder
        self.events: list[Published] = []
        #: (user id, nonce) -> result, for a retry that lands in the same batch as the first.
        self.nonces: dict[tuple[str, str], Sent] = {}
        #: the batch's nonces that earlier transactions used, read once up front.
        self.earlier: dict[tuple[str, str], NonceRow] = {}

    def emit(
        self,
        kind: wire.EventKind,
        channel: wire.Channel,
        audience: frozenset[str] | None,
        sender: wire.User | None = None,
        message: wire.EventMessage | None = None,
        carries: str | None = None,
        *,
        user: wire.User | None = None,
        by: wire.User | None = None,
        read: tuple[int, int] | None = None,
    ) -> int:
        """Store and publish the next event; returns its seq.

        ``audience``: who may receive it (None: everyone; see
        :mod:`chatd.visibility`); ``carries``: the id of the message whose body
        it carries (message.edited; a message.sent is found by its seq);
        ``read``: (read_seq, unread) of a read.updated, an account event for
        ``audience``'s one user.
        """
        self.seq += 1
        event = wire.Event(self.seq, self.at, kind, channel, sender, message, user, by)
        only_user = None
        if read is not None:
            event.read_seq, event.unread = read
            assert audience is not None and len(audience) == 1
            (only_user,) = audience
        frame = self.encoder.encode(event)
        self.tx.insert_event(self.seq, self.at_ms, channel.id, frame, carries,
                             channel.kind != "public", only_user)
        self.events.append(Published(self.seq, channel.id, frame, audience))
        return self.seq

    def delete_messages(self, chan: _Chan, rows: list[tuple[str, int]]) -> None:
        """Delete messages (id, seq) of one channel: a message.deleted each, bodies gone.

        The message.sent event carries the body, so the backend drops it with the
        message: a replay after this never shows the body again.
        """
        for message_id, _ in rows:
            self.emit("message.deleted", chan.channel, chan.members,
                      message=wire.EventMessage(message_id))
        self.tx.delete_messages(rows)

    def delete_channel(self, chan: _Chan) -> int:
        """message.deleted for each remaining message, then channel.deleted (to
        who could see it); the members' intervals close with it."""
        rows = self.tx.channel_messages(chan.channel.id)
        self.delete_messages(chan, rows)
        seq = self.emit("channel.deleted", chan.channel, chan.members)
        self.tx.delete_channel(chan.channel.id)
        if chan.members is not None:
            self.tx.end_members(chan.channel.id, seq)
        return len(rows)


class _Chan:
    """A channel as the write rules cache it: the wire object, its creator, and
    its current members (None for a public channel: everyone)."""

    __slots__ = ("channel", "creator", "members")

    def __init__(self, channel: wire.Channel, creator: str, members: frozenset[str] | None):
        self.channel = channel
        self.creator = creator
        self.members = members

    def sees(self, user_id: str) -> bool:
        return self.members is None or user_id in self.members


class Rules:
    """The write rules and their caches; used on the backend's writing thread only."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        # Seeded once: message ids need unpredictable tails, not a syscall per send.
        self._rng = random.Random(os.urandom(16))
        #: channel id -> the channel, its creator and members; valid while the
        #: counter is _valid_at (every membership change emits an event too).
        self._channels: dict[str, _Chan] = {}
        #: at_ms of the newest event, valid likewise.
        self._last_at = 0
        #: the counter value the caches were read at; -1: read them again.
        self._valid_at = -1
        #: channel id -> the activity time this process last stored for it; if
        #: stale, a send just stores again (see TOUCH_EVERY_MS).
        self._touched: dict[str, int] = {}

    def forget(self) -> None:
        """Drop the caches (after a failed transaction, or to be safe)."""
        self._channels.clear()
        self._touched.clear()
        self._valid_at = -1

    def apply(
        self, backend: Backend, ops: list[Op], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        """Apply ``ops`` in one transaction on the writing thread; see the module doc."""
        try:
            return backend.write_here(lambda tx: self._batch(tx, ops, now_ms, careful=False))
        except Unavailable:
            # The database is out of reach: no operation can succeed alone either.
            self.forget()
            raise
        except Exception:
            self.forget()
            log.warning("batch of %d failed; retrying one operation at a time", len(ops))
        try:
            return backend.write_here(lambda tx: self._batch(tx, ops, now_ms, careful=True))
        except BaseException:
            self.forget()
            raise

    def _batch(
        self, tx: WriteTx, ops: list[Op], now_ms: int, *, careful: bool
    ) -> tuple[list[Result], list[Published]]:
        start = tx.counter()
        if start != self._valid_at:
            self._channels.clear()
            self._last_at = tx.last_event_at()
        # Timestamps never go backwards along the sequence, even if the clock does.
        c = _Commit(tx, start, max(now_ms, self._last_at), self._encoder)
        keys = [(op.user.id, op.nonce) for op in ops if type(op) is SendOp and op.nonce is not None]
        if keys:
            c.earlier = tx.nonces(keys)
        results: list[Result] = []
        for op in ops:
            if careful:
                results.append(self._carefully(c, op))
                continue
            try:
                results.append(_APPLY[type(op)](self, c, op))
            except ProtocolError as exc:
                results.append(exc)
        if c.seq != start:
            tx.set_counter(c.seq)
            self._last_at = c.at_ms
        # If the commit that follows fails, apply() forgets this.
        self._valid_at = c.seq
        return results, c.events

    def _carefully(self, c: _Commit, op: Op) -> Result:
        tx = c.tx
        seq, n_events, nonces = c.seq, len(c.events), dict(c.nonces)
        tx.savepoint()
        try:
            result = _APPLY[type(op)](self, c, op)
            tx.release_savepoint()
            return result
        except Exception as exc:
            tx.rollback_savepoint()
            c.seq, c.nonces = seq, nonces
            del c.events[n_events:]
            self._channels.clear()
            if isinstance(exc, ProtocolError):
                return exc
            log.exception("store: %s failed", type(op).__name__)
            return InternalError("internal error")

    # ------------------------------------------------------------ the rules

    def _channel(self, tx: WriteTx, channel_id: str) -> _Chan:
        """The channel, from the cache or the backend; not_found if it does not exist."""
        found = self._channels.get(channel_id)
        if found is None:
            row = tx.channel(channel_id)
            if row is None:
                raise NotFound(no_channel(channel_id))
            cid, name, creator, kind = row
            members = None if kind == "public" else frozenset(tx.channel_members(cid))
            found = self._channels[channel_id] = _Chan(wire.Channel(cid, name, kind), creator,
                                                       members)
        return found

    def _visible(self, tx: WriteTx, channel_id: str, user_id: str) -> _Chan:
        """The channel if the user can see it; otherwise not_found, worded exactly as
        for an id that does not exist (no existence leak)."""
        chan = self._channel(tx, channel_id)
        if not chan.sees(user_id):
            raise NotFound(no_channel(channel_id))
        return chan

    def _message_channel(self, tx: WriteTx, message_id: str, user_id: str, channel_id: str
                         ) -> _Chan:
        """The channel of a message the user names; not_found as for an unknown
        message when the user cannot see it."""
        chan = self._channel(tx, channel_id)
        if not chan.sees(user_id):
            raise NotFound(no_message(message_id))
        return chan

    def _set_members(self, chan: _Chan, members: frozenset[str]) -> None:
        self._channels[chan.channel.id] = _Chan(chan.channel, chan.creator, members)

    def _create_user(self, c: _Commit, op: CreateUserOp) -> StoredUser:
        tx = c.tx
        row = tx.user_by_key(op.key)
        if row:
            return stored_user(row)
        invite = None
        if op.invite is not None:
            invite = tx.invite_by_code(op.invite)
            if invite is None or invite[1] <= c.at_ms or invite[2] <= 0:
                raise Unauthorized("invite: unknown, expired, revoked or used up")
        elif op.need_invite:
            raise Unauthorized("name: no such user, and sign-up needs an invite")
        # The first account of a database is its admin.
        role = op.role or ("member" if tx.any_user() else "admin")
        if invite is not None:
            tx.use_invite(invite[0])
        user_id = new_id("U")
        tx.insert_user(user_id, op.name, op.key, op.pw_hash, c.at_ms, role, c.seq)
        return StoredUser(user_id, op.name, op.pw_hash, role, True, created=True)

    # ------------------------------------------------------------ accounts

    def _admin(self, tx: WriteTx, user: wire.User | None, what: str) -> None:
        """Refuse ``what`` unless ``user`` is an active admin, as of this transaction
        (None is the operator on the server's machine: always allowed)."""
        if user is not None and not is_admin(tx.user(user.id)):
            raise Forbidden(f"{what}: only an admin may do this")

    def _account(self, tx: WriteTx, user_id: str) -> AccountRow:
        row = tx.user(user_id)
        if row is None:
            raise NotFound(f"user: no user {user_id!r}")
        return row

    def _change_password(self, c: _Commit, op: ChangePasswordOp) -> None:
        self._account(c.tx, op.user_id)
        c.tx.set_password(op.user_id, op.pw_hash)
        c.tx.delete_user_tokens(op.user_id, op.keep)

    def _set_role(self, c: _Commit, op: SetRoleOp) -> wire.Account:
        self._admin(c.tx, op.actor, "set_role")
        user_id, name, role, active = self._account(c.tx, op.user_id)
        if role == "admin" and op.role != "admin" and active and c.tx.active_admins() <= 1:
            raise Conflict("role: this would leave no active admin")
        if op.role != role:
            c.tx.set_role(user_id, op.role)
        return wire.Account(user_id, name, op.role, bool(active))

    def _set_active(self, c: _Commit, op: SetActiveOp) -> wire.Account:
        self._admin(c.tx, op.actor, "deactivate_user" if not op.active else "reactivate_user")
        user_id, name, role, active = self._account(c.tx, op.user_id)
        if not op.active and role == "admin" and active and c.tx.active_admins() <= 1:
            raise Conflict("user: this would leave no active admin")
        if bool(active) != op.active:
            c.tx.set_active(user_id, op.active)
        if not op.active:
            c.tx.delete_user_tokens(user_id, None)
        return wire.Account(user_id, name, role, op.active)

    def _create_invite(self, c: _Commit, op: CreateInviteOp) -> wire.Invite:
        self._admin(c.tx, op.actor, "create_invite")
        c.tx.insert_invite(op.invite_id, op.code_hash, op.actor.id, c.at_ms, op.expires_ms,
                           op.uses)
        return wire.Invite(id=op.invite_id, expires_at=wire.format_at(op.expires_ms),
                           uses_left=op.uses, created_by=op.actor)

    def _revoke_invite(self, c: _Commit, op: RevokeInviteOp) -> None:
        self._admin(c.tx, op.actor, "revoke_invite")
        if not c.tx.invite_exists(op.invite_id):
            raise NotFound(f"invite: no invite {op.invite_id!r}")
        c.tx.delete_invite(op.invite_id)

    def _issue_token(self, c: _Commit, op: IssueTokenOp) -> None:
        c.tx.insert_token(op.token_hash, op.user_id, c.at_ms, op.expires_ms)

    def _revoke_token(self, c: _Commit, op: RevokeTokenOp) -> None:
        c.tx.delete_token(op.token_hash)

    def _create_channel(self, c: _Commit, op: CreateChannelOp) -> wire.Channel:
        taken = c.tx.channel_name_in_use(op.key)
        if taken is not None:
            raise Conflict(f"name: a channel named {taken!r} exists")
        kind = "private" if op.private else "public"
        channel = wire.Channel(new_id("C"), op.name, kind)
        members = frozenset((op.user.id,)) if op.private else None
        seq = c.emit("channel.created", channel, members)
        c.tx.insert_channel(channel.id, op.name, op.key, op.user.id, seq, c.at_ms, kind)
        if op.private:
            c.tx.add_member(channel.id, op.user.id, seq)
        self._channels[channel.id] = _Chan(channel, op.user.id, members)
        return channel

    def _open_dm(self, c: _Commit, op: OpenDmOp) -> DmOpened:
        tx, me = c.tx, op.user
        row = tx.user(op.other_id)
        if row is None:
            raise NotFound(f"user: no user {op.other_id!r}")
        other = wire.User(row[0], row[1])
        pair = sorted({me.id, other.id})
        # Member ids in the key: one dm per pair, and (upper-case letters) never
        # the casefolded name of a public or private channel.
        key = "DM:" + ":".join(pair)
        users = sorted({me.id: me, other.id: other}.values(), key=lambda u: u.name)
        found = tx.channel_by_key(key)
        if found is not None:
            chan = self._channel(tx, found[0])
            return DmOpened(wire.Channel(chan.channel.id, chan.channel.name, "dm",
                                                members=users), False)
        name = ", ".join(u.name for u in users)
        channel = wire.Channel(new_id("C"), name, "dm", members=users)
        members = frozenset(pair)
        seq = c.emit("channel.created", channel, members)
        plain = wire.Channel(channel.id, name, "dm")
        tx.insert_channel(channel.id, name, key, me.id, seq, c.at_ms, "dm")
        for user_id in pair:
            tx.add_member(channel.id, user_id, seq)
        self._channels[channel.id] = _Chan(plain, me.id, members)
        return DmOpened(channel, True)

    def _member_target(self, c: _Commit, chan: _Chan, user_id: str, what: str
                       ) -> tuple[wire.User, bool]:
        """The user an add_member or remove_member names, and whether it is active."""
        if chan.channel.kind != "private":
            raise BadRequest(f"channel: {what} works on private channels only, not on"
                             f" a {chan.channel.kind} channel")
        row = c.tx.user(user_id)
        if row is None:
            raise NotFound(f"user: no user {user_id!r}")
        return wire.User(row[0], row[1]), bool(row[3])

    def _add_member(self, c: _Commit, op: AddMemberOp) -> MemberChanged:
        chan = self._visible(c.tx, op.channel_id, op.user.id)
        target, active = self._member_target(c, chan, op.member_id, "add_member")
        assert chan.members is not None
        if target.id in chan.members:
            return MemberChanged(chan.channel, target)
        if not active:
            raise BadRequest(f"user: {target.name!r} is deactivated")
        members = chan.members | {target.id}
        seq = c.emit("member.added", chan.channel, members, user=target, by=op.user)
        c.tx.add_member(chan.channel.id, target.id, seq)
        self._set_members(chan, members)
        return MemberChanged(chan.channel, target)

    def _remove_member(self, c: _Commit, op: RemoveMemberOp) -> MemberChanged:
        chan = self._visible(c.tx, op.channel_id, op.user.id)
        target, _ = self._member_target(c, chan, op.member_id, "remove_member")
        assert chan.members is not None
        if target.id not in chan.members:
            raise NotFound(f"user: {target.name!r} is not a member of this channel")
        if (target.id != op.user.id and chan.creator != op.user.id
                and not is_admin(c.tx.user(op.user.id))):
            raise Forbidden("user: only that user, the channel's creator or an admin may"
                            " remove a member")
        # To the members before the removal, the removed user included.
        seq = c.emit("member.removed", chan.channel, chan.members, user=target, by=op.user)
        c.tx.end_member(chan.channel.id, target.id, seq)
        self._set_members(chan, chan.members - {target.id})
        return MemberChanged(chan.channel, target)

    def _mark_read(self, c: _Commit, op: MarkReadOp) -> ReadPosition:
        tx, user_id = c.tx, op.user.id
        chan = self._visible(tx, op.channel_id, user_id)
        if op.seq > c.seq:
            raise BadRequest(f"seq: {op.seq} is above the current stream position {c.seq}")
        channel_id = chan.channel.id
        if chan.members is None:
            start = tx.user_created_seq(user_id)
        else:
            start = tx.member_since(channel_id, user_id) or 0
        current = max(start, tx.read_position(user_id, channel_id) or 0)
        if op.seq <= current:
            return ReadPosition(chan.channel, current, tx.unread(channel_id, user_id, current))
        tx.set_read_position(user_id, channel_id, op.seq)
        unread = tx.unread(channel_id, user_id, op.seq)
        c.emit("read.updated", chan.channel, frozenset((user_id,)), read=(op.seq, unread))
        return ReadPosition(chan.channel, op.seq, unread)

    def _delete_channel(self, c: _Commit, op: DeleteChannelOp) -> wire.Channel:
        chan = self._visible(c.tx, op.channel_id, op.user.id)
        if chan.channel.kind == "dm":
            raise Forbidden("channel: a direct message channel is never deleted by a user")
        if chan.creator != op.user.id and not is_admin(c.tx.user(op.user.id)):
            raise Forbidden("channel: only its creator or an admin may delete it")
        c.delete_channel(chan)
        self._channels.pop(chan.channel.id, None)
        self._touched.pop(chan.channel.id, None)
        return chan.channel

    def _send(self, c: _Commit, op: SendOp) -> Sent:
        if op.nonce is not None:
            first = c.nonces.get((op.user.id, op.nonce))
            if first is not None:
                return first
            row = c.earlier.get((op.user.id, op.nonce))
            if row:
                message_id, seq, at_ms, channel_id, channel_name, body, edited = row
                # The first ok again. If the message was deleted or edited since, its
                # first body is gone for good; the retry carries it, so echo that.
                message = wire.Message(
                    message_id, seq, wire.format_at(at_ms), op.user,
                    body if body is not None and edited is None else op.body,
                )
                return Sent(message, wire.Channel(channel_id, channel_name))
        chan = self._visible(c.tx, op.channel_id, op.user.id)
        channel = chan.channel
        # The event about to be emitted gets c.seq + 1.
        message_id = new_ordered_id("M", c.seq + 1, self._rng)
        # Not marked as carrying the body: a message's message.sent is found by
        # its seq (the message's own), which spares every send an index entry.
        seq = c.emit(
            "message.sent", channel, chan.members, sender=op.user,
            message=wire.EventMessage(message_id, op.body),
        )
        c.tx.insert_message(seq, message_id, channel.id, op.user.id, op.user.name, c.at_ms,
                            op.body)
        if c.at_ms - self._touched.get(channel.id, -TOUCH_EVERY_MS) >= TOUCH_EVERY_MS:
            c.tx.touch_channel(channel.id, c.at_ms)
            self._touched[channel.id] = c.at_ms
        sent = Sent(wire.Message(message_id, seq, c.at, op.user, op.body), channel)
        if op.nonce is not None:
            c.tx.insert_nonce(op.user.id, op.nonce, message_id, seq, c.at_ms, channel.id,
                              channel.name)
            c.nonces[(op.user.id, op.nonce)] = sent
        return sent

    def _edit_message(self, c: _Commit, op: EditMessageOp) -> Sent:
        """Only the latest body is kept: the message row, and every retained event
        that carries the body (its message.sent, earlier message.edited), are
        rewritten, so no later frame shows the old text."""
        tx = c.tx
        row = tx.message_info(op.message_id)
        if row is None:
            raise NotFound(no_message(op.message_id))
        seq, channel_id, sender_id, sender_name, at_ms = row
        chan = self._message_channel(tx, op.message_id, op.user.id, channel_id)
        if sender_id != op.user.id:
            raise Forbidden("message: only its sender may edit it")
        channel = chan.channel
        tx.edit_message(seq, op.body, c.at_ms)
        latest = wire.EventMessage(op.message_id, op.body, c.at)
        for event_seq, frame in tx.message_events(seq, op.message_id):
            event = _event_decoder.decode(frame)
            event.message = latest
            tx.set_event_frame(event_seq, self._encoder.encode(event))
        sender = wire.User(sender_id, sender_name)
        c.emit("message.edited", channel, chan.members, sender=sender, message=latest,
               carries=op.message_id)
        message = wire.Message(op.message_id, seq, wire.format_at(at_ms), sender, op.body,
                               c.at)
        return Sent(message, channel)

    def _delete_message(self, c: _Commit, op: DeleteMessageOp) -> tuple[str, wire.Channel]:
        row = c.tx.message(op.message_id)
        if row is None:
            raise NotFound(no_message(op.message_id))
        seq, channel_id, sender_id = row
        chan = self._message_channel(c.tx, op.message_id, op.user.id, channel_id)
        if sender_id != op.user.id and not is_admin(c.tx.user(op.user.id)):
            raise Forbidden("message: only its sender or an admin may delete it")
        c.delete_messages(chan, [(op.message_id, seq)])
        return op.message_id, chan.channel

    def _expire(self, c: _Commit, op: ExpireOp) -> Expired:
        tx, budget = c.tx, op.limit
        messages = channels = events = 0
        old = tx.messages_before(op.message_before_ms, budget)
        for message_id, seq, channel_id, _ in old:
            c.delete_messages(self._channel(tx, channel_id), [(message_id, seq)])
        messages += len(old)
        budget -= len(old)
        if budget > 0:
            for channel_id, _ in tx.idle_channels(op.channel_idle_before_ms, budget):
                dropped = c.delete_channel(self._channel(tx, channel_id))
                self._channels.pop(channel_id, None)
                self._touched.pop(channel_id, None)
                messages += dropped
                channels += 1
                budget -= 1 + dropped
                if budget <= 0:
                    break
        horizon = tx.horizon()
        if budget > 0:
            # at_ms never decreases along seq, so the expired events are a prefix.
            last = 0
            for seq, at_ms in tx.oldest_events(budget):
                if at_ms >= op.event_before_ms:
                    break
                last = seq
                events += 1
            if last:
                tx.drop_events_through(last)
                if last > horizon:
                    tx.set_horizon(last)
                    horizon = last
                    tx.drop_members_through(horizon)
            budget -= events
        tx.drop_nonces_before(op.nonce_before_ms, op.limit)
        tx.drop_tokens_expired(op.token_before_ms, op.limit)
        tx.drop_invites_done(op.token_before_ms, op.limit)
        # The merges the commits of sends leave out (schema.sql), bounded like the rest.
        tx.tidy_search_index(op.limit)
        return Expired(messages, channels, events, horizon, more=budget <= 0)


_APPLY: dict[type, Callable[[Rules, _Commit, Any], object]] = {
    CreateUserOp: Rules._create_user,
    IssueTokenOp: Rules._issue_token,
    RevokeTokenOp: Rules._revoke_token,
    CreateChannelOp: Rules._create_channel,
    DeleteChannelOp: Rules._delete_channel,
    SendOp: Rules._send,
    DeleteMessageOp: Rules._delete_message,
    EditMessageOp: Rules._edit_message,
    ExpireOp: Rules._expire,
    ChangePasswordOp: Rules._change_password,
    SetRoleOp: Rules._set_role,
    SetActiveOp: Rules._set_active,
    CreateInviteOp: Rules._create_invite,
    RevokeInviteOp: Rules._revoke_invite,
    OpenDmOp: Rules._open_dm,
    AddMemberOp: Rules._add_member,
    RemoveMemberOp: Rules._remove_member,
    MarkReadOp: Rules._mark_read,
}


def no_channel(channel_id: str) -> str:
    """The one wording of not_found for a channel, whether it does not exist or
    the user cannot see it."""
    return f"channel: no channel {channel_id!r}"


def no_message(message_id: str) -> str:
    return f"message: no message {message_id!r}"


def is_admin(row: AccountRow | UserRow | None) -> bool:
    """Whether a user row is an active admin (the role and active are its last two)."""
    return row is not None and row[-2] == "admin" and bool(row[-1])


def stored_user(row: UserRow) -> StoredUser:
    user_id, name, pw_hash, role, active = row
    return StoredUser(user_id, name, pw_hash, role, bool(active))

# ------------------------------------------------------------------- reads


async def visible_channel(snap: Snapshot, channel_id: str, user_id: str) -> wire.Channel:
    """The channel if the user can see it; not_found (one wording) otherwise."""
    row = await _visible_row(snap, channel_id, user_id)
    return wire.Channel(row[0], row[1], row[3])


async def _visible_row(snap: Snapshot, channel_id: str, user_id: str) -> ChannelRow:
    row = await snap.visible_channel(channel_id, user_id)
    if row is None:
        raise NotFound(no_channel(channel_id))
    return row


async def history(
    snap: Snapshot, channel_id: str, user_id: str, before: int | None, limit: int
) -> tuple[list[wire.Message], bool]:
    """The newest ``limit`` messages before ``before``, ascending; and whether more exist."""
    await visible_channel(snap, channel_id, user_id)
    rows = await snap.messages(channel_id, wire.MAX_SEQ if before is None else before, limit + 1)
    messages = [
        wire.Message(mid, seq, wire.format_at(at_ms), wire.User(uid, uname), body,
                     None if edited is None else wire.format_at(edited))
        for mid, seq, at_ms, uid, uname, body, edited in reversed(rows[:limit])
    ]
    return messages, len(rows) > limit


async def search(
    snap: Snapshot, user_id: str, query: Query, channel_id: str | None, before: int | None,
    limit: int,
) -> tuple[list[wire.SearchHit], bool]:
    """The newest ``limit`` messages that match ``query`` (:mod:`chatd.search`),
    with seq < before, that the user may search; and whether more exist.

    The index finds candidates; each is confirmed on its current body, so the
    answer is the protocol's rule exactly, on every backend.
    """
    found: list[SearchRow] = []
    cursor = wire.MAX_SEQ if before is None else before
    page = limit + 1
    while len(found) <= limit:
        rows = await snap.search(user_id, query, channel_id, cursor, page)
        if rows is None:
            raise NotFound(no_channel(channel_id or ""))
        found += [row for row in rows if matches(query, row[5])]
        if len(rows) < page:
            break
        cursor = rows[-1][1]
        # Candidates that were not matches (a phrase's words apart, a long prefix
        # looked up by its start): ask for more at a time, up to a bound.
        page = min(page * 4, 2000)
    hits = [
        wire.SearchHit(mid, seq, wire.format_at(at_ms), wire.User(uid, uname), body,
                       None if edited is None else wire.format_at(edited),
                       channel=wire.Channel(cid, cname, kind))
        for mid, seq, at_ms, uid, uname, body, edited, cid, cname, kind in found[:limit]
    ]
    return hits, len(found) > limit


async def boot(snap: Snapshot, user_id: str) -> tuple[int, wire.Me, list[wire.BootChannel]]:
    """The current position, the user as of it (with its role), and the channels
    it can see, with read positions and unread counts (dm channels with members)."""
    seq, _ = await snap.counter()
    row = await snap.user(user_id)
    if row is None:
        raise Unauthorized("user: no such user")
    me = wire.Me(row[0], row[1], row[3])
    channels = [wire.BootChannel(id=i, name=n, kind=k, read_seq=r, unread=u)
                for i, n, k, r, u in await snap.boot_channels(user_id)]
    if any(c.kind == "dm" for c in channels):
        members: dict[str, list[wire.User]] = {}
        for channel_id, member_id, member_name in await snap.dm_members(user_id):
            members.setdefault(channel_id, []).append(wire.User(member_id, member_name))
        for c in channels:
            if c.kind == "dm":
                c.members = sorted(members.get(c.id, []), key=lambda u: u.name)
    return seq, me, channels


async def members(
    snap: Snapshot, channel_id: str, user_id: str
) -> tuple[list[wire.User], wire.User | None]:
    """The current members of a private or dm channel the user can see, and a
    private channel's creator (None for a dm)."""
    _, _, creator_id, kind = await _visible_row(snap, channel_id, user_id)
    if kind == "public":
        raise BadRequest("channel: a public channel has no member list (everyone sees it)")
    members = [wire.User(i, n) for i, n in await snap.members(channel_id)]
    if kind != "private":
        return members, None
    creator = await snap.user(creator_id)
    return members, None if creator is None else wire.User(creator[0], creator[1])


async def typing_audience(
    snap: Snapshot, channel_id: str, user_id: str
) -> tuple[wire.Channel, frozenset[str] | None]:
    """Who may receive ``user_id``'s typing in a channel: the one place that decides.

    The channel as the frame shows it, and the ids of the users who may see it,
    or None for every user (a public channel). NotFound when the channel does not
    exist or ``user_id`` cannot see it, as for any command that names it.
    """
    channel = await visible_channel(snap, channel_id, user_id)
    if channel.kind == "public":
        return channel, None
    return channel, frozenset(i for i, _ in await snap.members(channel_id))


async def users(snap: Snapshot) -> list[wire.Account]:
    return [wire.Account(i, n, r, bool(a)) for i, n, r, a in await snap.users()]


async def invites(snap: Snapshot, actor: wire.User, now_ms: int) -> list[wire.Invite]:
    """The invites that can still be used; for an admin only."""
    if not is_admin(await snap.user(actor.id)):
        raise Forbidden("list_invites: only an admin may do this")
    return [
        wire.Invite(id=i, expires_at=wire.format_at(expires), uses_left=uses,
                    created_by=wire.User(by, by_name))
        for i, expires, uses, by, by_name in await snap.invites(now_ms)
    ]


async def read_events(
    snap: Snapshot, after: int, channels: frozenset[str] | None, limit: int, user_id: str
) -> EventPage:
    """A page of the retained events after ``after`` that ``user_id`` may see (PROTOCOL.md
    "Who sees what", membership as of each event's seq), and the snapshot's position."""
    upto, horizon = await snap.counter()
    rows = await snap.events(after, upto, channels, limit, user_id)
    intervals = await snap.intervals(user_id, None) if any(r[3] for r in rows) else []
    events = visibility.visible_to(user_id, rows, intervals)
    return EventPage(events, upto, horizon, more=len(rows) >= limit,
                     scanned=rows[-1][0] if rows else after)


async def tail_events(snap: Snapshot, after: int, limit: int) -> TailPage:
    """A page of every retained event after ``after``, each with its audience, for
    the fanout of a node tailing a shared database."""
    upto, _ = await snap.counter()
    rows = await snap.events(after, upto, None, limit)
    restricted = sorted({r[2] for r in rows if r[3] and r[4] is None})
    intervals = await snap.intervals(None, restricted) if restricted else []
    return TailPage(visibility.published(rows, intervals), upto, more=len(rows) >= limit)
