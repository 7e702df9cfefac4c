"""The storage interface: what the daemon asks of a store, whatever the backend.

Writes are *operations* (small frozen dataclasses below). The group-commit
writer (:mod:`chatd.writer`) hands a store a list of them; the store applies the
whole list in one transaction, assigns each event the next seq from the one
global counter inside that transaction, and returns one result per operation
(a value, or the :class:`~chatd.exceptions.ProtocolError` that operation raised,
which rolls back that operation only) plus the committed events in seq order.

Reads (history, boot, replay, users and tokens) may run concurrently with the
writer on their own connections and must each see one committed snapshot.

:class:`chatd.sqlite_store.SqliteStore` is the embedded implementation; a
PostgreSQL store would implement the same :class:`Store` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import wire
from .exceptions import ProtocolError

# ----------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class CreateUser:
    """Create a user unless the name key exists; either way return the stored user."""

    name: str
    key: str
    pw_hash: str


@dataclass(frozen=True, slots=True)
class IssueToken:
    user_id: str
    token_hash: bytes
    expires_ms: int


@dataclass(frozen=True, slots=True)
class RevokeToken:
    token_hash: bytes


@dataclass(frozen=True, slots=True)
class CreateChannel:
    user: wire.User
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class DeleteChannel:
    user: wire.User
    channel_id: str


@dataclass(frozen=True, slots=True)
class SendMessage:
    user: wire.User
    channel_id: str
    body: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    user: wire.User
    message_id: str


@dataclass(frozen=True, slots=True)
class Expire:
    """One bounded round of expiry; cutoffs are absolute times in ms."""

    message_before_ms: int
    channel_idle_before_ms: int
    event_before_ms: int
    nonce_before_ms: int
    token_before_ms: int
    limit: int


Operation = (
    CreateUser | IssueToken | RevokeToken | CreateChannel | DeleteChannel | SendMessage
    | DeleteMessage | Expire
)

# -------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class StoredUser:
    id: str
    name: str
    pw_hash: str
    created: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    message: wire.Message
    channel: wire.Channel


@dataclass(frozen=True, slots=True)
class Expired:
    messages: int = 0
    channels: int = 0
    events: int = 0
    horizon: int = 0
    more: bool = False


@dataclass(frozen=True, slots=True)
class Published:
    """A committed event: its seq, its channel (for filters) and its encoded frame."""

    seq: int
    channel_id: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of a replay read, and the snapshot it was read from."""

    events: list[tuple[int, bytes]]
    #: the global position of the snapshot: every matching event <= upto was considered.
    upto: int
    horizon: int


Result = object | ProtocolError


class Store(Protocol):
    epoch: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(
        self, ops: list[Operation], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        """Apply ``ops`` in one transaction (from the event loop)."""
        ...

    async def run_on_writer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the store's writing thread; it may call :meth:`apply_here`."""
        ...

    def apply_here(
        self, ops: list[Operation], now_ms: int
    ) -> tuple[list[Result], list[Published]]:
        """:meth:`apply`, called on the writing thread, inside :meth:`run_on_writer`."""
        ...

    async def position(self) -> tuple[int, int]:
        """(current seq, horizon) from one snapshot."""
        ...

    async def user_by_name(self, key: str) -> StoredUser | None: ...

    async def user_by_token(self, token_hash: bytes, now_ms: int) -> wire.User | None: ...

    async def boot(self) -> tuple[int, list[wire.Channel]]: ...

    async def history(
        self, channel_id: str, before: int | None, limit: int
    ) -> tuple[list[wire.Message], bool]: ...

    async def read_events(
        self, after: int, channels: frozenset[str] | None, limit: int
    ) -> Batch: ...
