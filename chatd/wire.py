"""The wire format of PROTOCOL.md as msgspec Structs: the one definition that the
server, the client library and the tests share.

Commands are a tagged union on ``op``; server frames are tagged on ``type``. A
decoder for commands is built once and reused. New fields only ever get
defaults, so old peers keep decoding. Field-level rules that msgspec can check
(types, ``ref`` length, ``limit`` range) live here and produce errors that name
the path (``$.limit``); rules that need a distinct error code (``too_large``
for a body or name) live in :mod:`chatd.validate`.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

MAX_SEQ = 2**63 - 1

Ref = Annotated[str, Meta(max_length=64)] | int | None
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
Nonce = Annotated[str, Meta(min_length=1, max_length=64)]
Limit = Annotated[int, Meta(ge=1, le=500)]
Role = Literal["admin", "member"]
InviteUses = Annotated[int, Meta(ge=1, le=1000)]
InviteTtl = Annotated[int, Meta(ge=60, le=2_592_000)]
#: a search query: at most 1,000 characters (docs/protocol.md), so that one
#: query is a bounded amount of matching work
SearchQuery = Annotated[str, Meta(max_length=1000)]
SearchLimit = Annotated[int, Meta(ge=1, le=100)]

# --------------------------------------------------------------------- commands


class Command(Struct, tag_field="op", kw_only=True, omit_defaults=True):
    ref: Ref = None


class Login(Command, tag="login"):
    name: str
    password: str
    #: an invite code: with open sign-up off, a new name needs one.
    invite: str | None = None


class Auth(Command, tag="auth"):
    token: str


class Logout(Command, tag="logout"):
    pass


class Ping(Command, tag="ping"):
    pass


class Boot(Command, tag="boot"):
    pass


class CreateChannel(Command, tag="create_channel"):
    name: str
    private: bool = False


class DeleteChannel(Command, tag="delete_channel"):
    channel: str


class OpenDm(Command, tag="open_dm"):
    user: str


class AddMember(Command, tag="add_member"):
    channel: str
    user: str


class RemoveMember(Command, tag="remove_member"):
    channel: str
    user: str


class Members(Command, tag="members"):
    channel: str


class MarkRead(Command, tag="mark_read"):
    channel: str
    seq: Seq


class Send(Command, tag="send"):
    channel: str
    body: str
    nonce: Nonce | None = None


class DeleteMessage(Command, tag="delete_message"):
    message: str


class EditMessage(Command, tag="edit_message"):
    message: str
    body: str


class History(Command, tag="history"):
    channel: str
    before: Seq | None = None
    limit: Limit = 100


class Search(Command, tag="search"):
    query: SearchQuery
    channel: str | None = None
    before: Seq | None = None
    limit: SearchLimit = 20


class Subscribe(Command, tag="subscribe"):
    since: Seq | None = None
    epoch: str | None = None
    channels: list[str] | None = None
    #: also deliver the ``ephemeral`` frames (typing, presence); events only without it.
    ephemeral: bool = False



class Unsubscribe(Command, tag="unsubscribe"):
    pass


class ChangePassword(Command, tag="change_password"):
    password: str
    new_password: str


class Users(Command, tag="users"):
    pass


class CreateInvite(Command, tag="create_invite"):
    uses: InviteUses = 1
    ttl: InviteTtl = 604_800


class ListInvites(Command, tag="list_invites"):
    pass


class RevokeInvite(Command, tag="revoke_invite"):
    invite: str


class SetRole(Command, tag="set_role"):
    user: str
    role: Role


class DeactivateUser(Command, tag="deactivate_user"):
    user: str


class ReactivateUser(Command, tag="reactivate_user"):
    user: str


class Typing(Command, tag="typing"):
    channel: str


AnyCommand = (
    Login
    | Auth
    | Logout
    | Ping
    | Boot
    | CreateChannel
    | DeleteChannel
    | OpenDm
    | AddMember
    | RemoveMember
    | Members
    | MarkRead
    | Send
    | DeleteMessage
    | EditMessage
    | History
    | Search
    | Subscribe
    | Unsubscribe
    | ChangePassword
    | Users
    | CreateInvite
    | ListInvites
    | RevokeInvite
    | SetRole
    | DeactivateUser
    | ReactivateUser
    | Typing
)

#: Commands that need a logged-in connection.
NEEDS_LOGIN: frozenset[type[Command]] = frozenset(
    {Logout, Boot, CreateChannel, DeleteChannel, OpenDm, AddMember, RemoveMember, Members,
     MarkRead, Send, DeleteMessage, EditMessage, History, Search,
     Subscribe,
     Unsubscribe, ChangePassword, Users, CreateInvite, ListInvites, RevokeInvite, SetRole,
     DeactivateUser, ReactivateUser, Typing}
)

# --------------------------------------------------------------- shared objects


class User(Struct):
    id: str
    name: str


class Me(Struct):
    """The logged-in user as ``boot`` shows it: with its role."""

    id: str
    name: str
    role: str


class Account(Struct):
    """A user as the ``users`` command and the admin commands show it."""

    id: str
    name: str
    role: str
    active: bool


class Invite(Struct, kw_only=True, omit_defaults=True):
    """An invite; ``code`` only in the reply to ``create_invite``."""

    id: str
    code: str | None = None
    expires_at: str
    uses_left: int
    created_by: User


ChannelKind = Literal["public", "private", "dm"]


class Channel(Struct):
    """A channel on the wire: always with its ``kind`` (no omit_defaults here, so
    ``"kind":"public"`` is written too; the default is there so that frames
    stored before schema version 4, which have none and were all public, still
    decode). ``members`` only where the contract shows a dm's members (its
    ``channel.created``, ``open_dm``'s reply): UNSET is never written."""

    id: str
    name: str
    kind: str = "public"
    members: list[User] | UnsetType = UNSET


class BootChannel(Struct, kw_only=True, omit_defaults=True):
    """A channel in ``boot``: with the user's read position and unread count
    (dm channels also with their members)."""

    id: str
    name: str
    kind: str
    read_seq: int
    unread: int
    members: list[User] | None = None


class Message(Struct, omit_defaults=True):
    id: str
    seq: int
    at: str
    sender: User
    body: str
    #: the time of the latest edit; absent for a message never edited
    edited_at: str | None = None


class SearchHit(Message, kw_only=True):
    """A message found by ``search``: the message, and the channel it is in."""

    channel: Channel


class MessageRef(Struct):
    id: str


class EventMessage(Struct, omit_defaults=True):
    """``message`` inside an event: ``{id, body}`` when sent, ``{id, body, edited_at}``
    when edited (and in a replayed message.sent of an edited message), ``{id}``
    when deleted."""

    id: str
    body: str | None = None
    edited_at: str | None = None


# --------------------------------------------------------------- server frames

EventKind = Literal[
    "channel.created", "channel.deleted", "message.sent", "message.edited", "message.deleted",
    "member.added", "member.removed", "read.updated",
]


class Event(Struct, tag_field="type", tag="event", omit_defaults=True):
    seq: int
    at: str
    # str, not EventKind: a client must still decode kinds added in later versions.
    kind: str
    channel: Channel
    sender: User | None = None
    message: EventMessage | None = None
    #: member.added / member.removed: who, and by whom
    user: User | None = None
    by: User | None = None
    #: read.updated
    read_seq: int | None = None
    unread: int | None = None


class Error(Struct, tag_field="type", tag="error", omit_defaults=True):
    # ref has no default so it is always written, as null when unknown.
    ref: Ref
    code: str
    message: str
    limit: int | None = None
    retry_after: float | None = None
    horizon: int | None = None
    epoch: str | None = None


class Ok(Struct, tag_field="type", tag="ok"):
    """The reply to logout, ping and unsubscribe; the base of the others."""

    ref: Ref


class LoginOk(Ok, tag="ok"):
    user: User
    token: str


class AuthOk(Ok, tag="ok"):
    user: User


class BootOk(Ok, tag="ok"):
    user: Me
    epoch: str
    resume_point: int
    channels: list[BootChannel]
    #: the ids of the users online now (on any node)
    online: list[str] = []


class ChannelOk(Ok, tag="ok"):
    """The reply to create_channel and delete_channel."""

    channel: Channel


class OpenDmOk(Ok, tag="ok"):
    channel: Channel
    created: bool


class MemberOk(Ok, tag="ok"):
    """The reply to add_member and remove_member."""

    channel: Channel
    user: User


class MembersOk(Ok, tag="ok"):
    members: list[User]
    #: a private channel's creator (who may remove anyone), member or not; not
    #: for a dm (docs/protocol.md: the contract is silent)
    creator: User | UnsetType = UNSET


class MarkReadOk(Ok, tag="ok"):
    channel: Channel
    read_seq: int
    unread: int


class SendOk(Ok, tag="ok"):
    message: Message
    channel: Channel


class DeleteMessageOk(Ok, tag="ok"):
    message: MessageRef
    channel: Channel


class HistoryOk(Ok, tag="ok"):
    messages: list[Message]
    more: bool


class SearchOk(Ok, tag="ok"):
    messages: list[SearchHit]
    more: bool


class SubscribeOk(Ok, tag="ok"):
    epoch: str
    resume_point: int


class UsersOk(Ok, tag="ok"):
    users: list[Account]


class AccountOk(Ok, tag="ok"):
    """The reply to set_role, deactivate_user and reactivate_user."""

    user: Account


class InviteOk(Ok, tag="ok"):
    invite: Invite


class InvitesOk(Ok, tag="ok"):
    invites: list[Invite]


class EphemeralTyping(Struct, tag_field="type", tag="ephemeral", kw_only=True):
    """``user`` is typing in ``channel``: a live-only notice, no seq, never stored."""

    kind: Literal["typing"] = "typing"
    channel: Channel
    user: User


class EphemeralPresence(Struct, tag_field="type", tag="ephemeral", kw_only=True):
    """``user`` came online (a first connection logged in) or went offline (its last
    one ended), on any node."""

    kind: Literal["presence"] = "presence"
    user: User
    online: bool


class Head(Struct):
    """The first look at a server frame: which kind it is and which command it answers."""

    type: str
    ref: Any = None
    seq: int | None = None


# --------------------------------------------------------------- codecs

command_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)
encoder = msgspec.json.Encoder()
encode = encoder.encode


def format_at(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-27T23:03:14.123Z``."""
    return f"{_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _second(s: int) -> str:
    # strftime was 3 % of a lone send's ack; commits come many to the second.
    return f"{datetime.fromtimestamp(s, UTC):%Y-%m-%dT%H:%M:%S}"


def parse_at(text: str) -> int:
    """The inverse of :func:`format_at`, in milliseconds."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
