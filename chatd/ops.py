"""What the daemon asks the store to do, and what it gets back.

Writes are *operations*: small frozen dataclasses named ``*Op`` so they are
never confused with the wire commands of :mod:`chatd.wire` that ask for them.
The group-commit writer (:mod:`chatd.writer`) hands the store a list of them;
:mod:`chatd.rules` decides what each one means and which events it emits, and
the whole list is applied in one transaction. Each operation gets one
:data:`Result`: a value, or the :class:`~chatd.exceptions.ProtocolError` that
refused it (which undoes that operation only).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .exceptions import ProtocolError

# ----------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class CreateUserOp:
    """Create a user unless the name key exists; either way return the stored user.

    The first account of a database is an admin. With ``invite`` (a code's
    hash), a new account uses up one use of that invite, and is refused
    (unauthorized) when it is unknown, expired or used up; with ``need_invite``
    and no invite, a new account is refused. An existing name uses nothing.
    """

    name: str
    key: str
    pw_hash: str
    invite: bytes | None = None
    need_invite: bool = False
    #: the operator's ``chatd user add`` chooses the role itself
    role: str | None = None


@dataclass(frozen=True, slots=True)
class ChangePasswordOp:
    """Set a user's password hash and end every token of it but ``keep``."""

    user_id: str
    pw_hash: str
    keep: bytes | None


@dataclass(frozen=True, slots=True)
class SetRoleOp:
    #: None: the operator on the server's machine (``chatd user``), no admin check
    actor: wire.User | None
    user_id: str
    role: str


@dataclass(frozen=True, slots=True)
class SetActiveOp:
    """Deactivate (ending every token of the user) or reactivate a user."""

    #: None: the operator on the server's machine (``chatd user``), no admin check
    actor: wire.User | None
    user_id: str
    active: bool


@dataclass(frozen=True, slots=True)
class CreateInviteOp:
    actor: wire.User
    invite_id: str
    code_hash: bytes
    uses: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class RevokeInviteOp:
    actor: wire.User
    invite_id: str


@dataclass(frozen=True, slots=True)
class IssueTokenOp:
    user_id: str
    token_hash: bytes
    expires_ms: int


@dataclass(frozen=True, slots=True)
class RevokeTokenOp:
    token_hash: bytes


@dataclass(frozen=True, slots=True)
class CreateChannelOp:
    user: wire.User
    name: str
    key: str
    #: a private channel: only its members see it; its creator is the first
    private: bool = False


@dataclass(frozen=True, slots=True)
class OpenDmOp:
    """The dm channel of ``user`` and ``other_id`` (one per pair), made if missing."""

    user: wire.User
    other_id: str


@dataclass(frozen=True, slots=True)
class AddMemberOp:
    user: wire.User
    channel_id: str
    member_id: str


@dataclass(frozen=True, slots=True)
class RemoveMemberOp:
    user: wire.User
    channel_id: str
    member_id: str


@dataclass(frozen=True, slots=True)
class MarkReadOp:
    """Move the user's read position of a channel forward to ``seq``."""

    user: wire.User
    channel_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class DeleteChannelOp:
    user: wire.User
    channel_id: str


@dataclass(frozen=True, slots=True)
class SendOp:
    user: wire.User
    channel_id: str
    body: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class EditMessageOp:
    user: wire.User
    message_id: str
    body: str


@dataclass(frozen=True, slots=True)
class DeleteMessageOp:
    user: wire.User
    message_id: str


@dataclass(frozen=True, slots=True)
class ExpireOp:
    """One bounded round of expiry; cutoffs are absolute times in ms."""

    message_before_ms: int
    channel_idle_before_ms: int
    event_before_ms: int
    nonce_before_ms: int
    token_before_ms: int
    limit: int


Op = (
    CreateUserOp | IssueTokenOp | RevokeTokenOp | CreateChannelOp | DeleteChannelOp | SendOp
    | DeleteMessageOp | EditMessageOp | ExpireOp | ChangePasswordOp | SetRoleOp | SetActiveOp
    | CreateInviteOp | RevokeInviteOp | OpenDmOp | AddMemberOp | RemoveMemberOp | MarkReadOp
)

# -------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class StoredUser:
    id: str
    name: str
    pw_hash: str
    role: str = "member"
    active: bool = True
    created: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    message: wire.Message
    channel: wire.Channel


@dataclass(frozen=True, slots=True)
class DmOpened:
    channel: wire.Channel
    created: bool


@dataclass(frozen=True, slots=True)
class MemberChanged:
    channel: wire.Channel
    user: wire.User


@dataclass(frozen=True, slots=True)
class ReadPosition:
    channel: wire.Channel
    read_seq: int
    unread: int


@dataclass(frozen=True, slots=True)
class Expired:
    messages: int = 0
    channels: int = 0
    events: int = 0
    horizon: int = 0
    more: bool = False


Result = object | ProtocolError


@dataclass(frozen=True, slots=True)
class Published:
    """A committed event: its seq, its channel (for filters), its encoded frame,
    and who may receive it (PROTOCOL.md "Who sees what"), decided when it was
    committed so that fanout never decodes a frame to choose recipients."""

    seq: int
    channel_id: str
    frame: bytes
    #: the user ids that may receive it; None: every user (a public channel's event)
    audience: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class TailPage:
    """A page of every event, with audiences, as a node tailing a shared database
    reads it; ``upto`` as in :class:`EventPage`."""

    events: list[Published]
    upto: int
    more: bool


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of a replay read, and the snapshot it was read from.

    Not to be confused with a commit batch (the operations the writer commits
    together): a page is what a subscriber catching up reads at a time.
    """

    events: list[tuple[int, bytes]]
    #: the global position of the snapshot: every matching event <= upto was considered.
    upto: int
    horizon: int
    #: the page was cut at the read limit; every event <= ``scanned`` was considered
    #: (the last one read, visible to this reader or not): read on from there.
    more: bool = False
    scanned: int = 0
