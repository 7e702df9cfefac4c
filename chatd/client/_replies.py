"""Which reply answers which command, and how a server frame becomes a typed reply
or an exception.

Every decoder is built here once, at import, and reused for every frame (msgspec's
performance advice: a top-level ``msgspec.json.decode(raw, type=...)`` pays a
setup cost on each call that a reused ``Decoder`` pays once).

A frame is decoded once, as the tagged union ``Event | Error | Ok``: an event or
an error frame comes out complete. An ``ok`` frame cannot: its fields depend on
the command it answers, which only its ``ref`` tells. So the union gives the
``ref`` of an ``ok`` (the rest of the frame is scanned, not built), and the
decoder of the matching command reads the frame again. Events, the frames that
come by the thousand, pay one pass; replies pay two, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from .. import wire
from ..exceptions import ChatdError, ClientError, error_from_code

C = TypeVar("C", bound=wire.Command)
T = TypeVar("T", bound=wire.Ok)


class Op(Generic[C, T]):
    """One command of the protocol and the reply type that answers it."""

    __slots__ = ("_decoder", "command", "name", "reply")

    def __init__(self, command: type[C], reply: type[T]) -> None:
        self.command = command
        self.reply = reply
        self.name = str(command.__struct_config__.tag)  # the wire ``op``
        self._decoder = msgspec.json.Decoder(reply)

    def decode(self, raw: str | bytes) -> T:
        """The reply from an ``ok`` frame; raises ``msgspec.MsgspecError``."""
        return self._decoder.decode(raw)

    def __repr__(self) -> str:
        return f"Op({self.name} -> {self.reply.__name__})"


# The reply table. login and auth are written only by the handshake.
LOGIN = Op(wire.Login, wire.LoginOk)
AUTH = Op(wire.Auth, wire.AuthOk)
LOGOUT = Op(wire.Logout, wire.Ok)
PING = Op(wire.Ping, wire.Ok)
BOOT = Op(wire.Boot, wire.BootOk)
CREATE_CHANNEL = Op(wire.CreateChannel, wire.ChannelOk)
DELETE_CHANNEL = Op(wire.DeleteChannel, wire.ChannelOk)
SEND = Op(wire.Send, wire.SendOk)
DELETE_MESSAGE = Op(wire.DeleteMessage, wire.DeleteMessageOk)
EDIT_MESSAGE = Op(wire.EditMessage, wire.SendOk)
HISTORY = Op(wire.History, wire.HistoryOk)
SEARCH = Op(wire.Search, wire.SearchOk)
SUBSCRIBE = Op(wire.Subscribe, wire.SubscribeOk)
UNSUBSCRIBE = Op(wire.Unsubscribe, wire.Ok)
CHANGE_PASSWORD = Op(wire.ChangePassword, wire.Ok)
USERS = Op(wire.Users, wire.UsersOk)
CREATE_INVITE = Op(wire.CreateInvite, wire.InviteOk)
LIST_INVITES = Op(wire.ListInvites, wire.InvitesOk)
REVOKE_INVITE = Op(wire.RevokeInvite, wire.Ok)
SET_ROLE = Op(wire.SetRole, wire.AccountOk)
DEACTIVATE_USER = Op(wire.DeactivateUser, wire.AccountOk)
REACTIVATE_USER = Op(wire.ReactivateUser, wire.AccountOk)
TYPING = Op(wire.Typing, wire.Ok)
OPEN_DM = Op(wire.OpenDm, wire.OpenDmOk)
ADD_MEMBER = Op(wire.AddMember, wire.MemberOk)
REMOVE_MEMBER = Op(wire.RemoveMember, wire.MemberOk)
MEMBERS = Op(wire.Members, wire.MembersOk)
MARK_READ = Op(wire.MarkRead, wire.MarkReadOk)


@dataclass(frozen=True, slots=True)
class BadEvent:
    """An ``event`` frame that does not decode as :class:`wire.Event`."""

    error: msgspec.MsgspecError


@dataclass(frozen=True, slots=True)
class Malformed:
    """Any other frame that has a ``type`` but does not decode as that type's
    Struct (or whose type is unknown); ``ref`` is whatever the frame carried."""

    type: str
    ref: Any
    error: msgspec.MsgspecError


#: A typing or presence notice (PROTOCOL.md "Ephemeral frames").
Ephemeral = wire.EphemeralTyping | wire.EphemeralPresence


@dataclass(frozen=True, slots=True)
class OtherEphemeral:
    """An ``ephemeral`` frame of a kind this client does not know, or malformed:
    skipped (PROTOCOL.md: clients ignore ephemeral kinds they do not know)."""

    kind: object


Frame = wire.Event | BadEvent | wire.Error | wire.Ok | Malformed | Ephemeral | OtherEphemeral
#: The frames that belong to the event stream rather than to a command.
EVENT_FRAMES = (wire.Event, BadEvent)

_frames: msgspec.json.Decoder[wire.Event | wire.Error | wire.Ok] = msgspec.json.Decoder(
    wire.Event | wire.Error | wire.Ok
)
_heads = msgspec.json.Decoder(wire.Head)


class _Kind(msgspec.Struct):
    kind: object = None


_kinds = msgspec.json.Decoder(_Kind)
# Both are tagged "ephemeral", so no one union can hold them: the kind picks.
_ephemerals: dict[object, msgspec.json.Decoder[Any]] = {
    "typing": msgspec.json.Decoder(wire.EphemeralTyping),
    "presence": msgspec.json.Decoder(wire.EphemeralPresence),
}


def _ephemeral(raw: str | bytes) -> Ephemeral | OtherEphemeral:
    kind = _kinds.decode(raw).kind
    decoder = _ephemerals.get(kind)
    if decoder is None:
        return OtherEphemeral(kind)
    try:
        frame: Ephemeral = decoder.decode(raw)
    except msgspec.ValidationError:
        return OtherEphemeral(kind)
    return frame


def read_frame(raw: str | bytes) -> Frame:
    """Decode a server frame; raises ``msgspec.MsgspecError`` when not even its
    ``type`` can be read.

    Only a frame that fails the union is decoded a second time, as a
    :class:`wire.Head`, to learn where it belongs: that costs nothing on the
    frames a working server sends.
    """
    try:
        return _frames.decode(raw)
    except msgspec.ValidationError as exc:
        head = _heads.decode(raw)
        if head.type == "event":
            return BadEvent(exc)
        if head.type == "ephemeral":
            return _ephemeral(raw)
        return Malformed(head.type, head.ref, exc)


def reply(
    op: Op[Any, T], frame: wire.Error | wire.Ok | Malformed, raw: str | bytes
) -> T | ChatdError:
    """What a frame whose ``ref`` matched a command of ``op`` answers: the typed
    reply, or the exception to raise to the caller (returned, not raised, so that
    the caller decides: raise it, set it on a future, or retry)."""
    if isinstance(frame, wire.Ok):
        try:
            return op.decode(raw)
        except msgspec.MsgspecError as exc:
            return ClientError(f"malformed reply to {op.name}: {exc}")
    if isinstance(frame, wire.Error):
        return error_from_code(
            frame.code,
            frame.message,
            limit=frame.limit,
            retry_after=frame.retry_after,
            horizon=frame.horizon,
            epoch=frame.epoch,
        )
    if frame.type == "error":
        return ClientError(f"malformed error frame from server ({frame.error}): {raw!r:.200}")
    if frame.type == "ok":
        return ClientError(f"malformed reply to {op.name}: {frame.error}")
    return ClientError(f"unknown frame type {frame.type!r} in reply to {op.name}")
