"""What becomes of a command when its connection drops: the resend policy, and
the ledger of commands not answered yet that applies it.

A reply comes on the connection that carried its command. When that connection
drops first, the client cannot know whether the server acted on the command.
Commands whose effect is idempotent are written again on the next connection:
``send`` carries a nonce, fixed when the call is made, with which the server
answers a repeat with the first ``ok``; ``boot``, ``history``, ``ping``,
``subscribe`` and ``unsubscribe`` only read, or set state of the connection;
``open_dm``, ``add_member`` and ``mark_read`` end where once did.
The others (``create_channel``, ``delete_channel``, ``delete_message``,
``remove_member``, ``logout``) fail with :class:`~chatd.exceptions.ConnectionLost`: written again,
``create_channel`` would answer ``conflict`` and ``delete_*`` ``not_found`` for
a change that did happen. The caller gets "outcome unknown" and can look (boot,
history) instead of getting a wrong answer.

``unavailable`` (a draining or overloaded server) follows the same split: an
idempotent command is retried after a jittered delay, any other is raised.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .. import wire
from ..exceptions import ConnectionLost, Unavailable
from ._replies import Op

#: Whether a command is written again after a drop (True) or fails with
#: ConnectionLost (False). login and auth are absent: only the handshake writes
#: them, and it starts over on each connection.
IDEMPOTENT: Mapping[type[wire.Command], bool] = MappingProxyType(
    {
        wire.Send: True,
        wire.Boot: True,
        wire.History: True,
        wire.Search: True,
        wire.Ping: True,
        wire.Subscribe: True,
        wire.Unsubscribe: True,
        wire.CreateChannel: False,
        wire.DeleteChannel: False,
        wire.DeleteMessage: False,
        # Twice would make two message.edited events.
        wire.EditMessage: False,
        wire.Logout: False,
        wire.Users: True,
        wire.ListInvites: True,
        # Setting a role or the active flag twice ends where once did.
        wire.SetRole: True,
        wire.DeactivateUser: True,
        wire.ReactivateUser: True,
        # A second would find the old password wrong, a second invite, a missing one.
        wire.ChangePassword: False,
        wire.CreateInvite: False,
        wire.RevokeInvite: False,
        # At most one a second is forwarded anyway: a repeat is harmless.
        wire.Typing: True,
        # One dm per pair: a repeat answers the same channel (with created=False).
        wire.OpenDm: True,
        # Adding a member again answers ok and emits nothing.
        wire.AddMember: True,
        # A repeat would answer not_found for a removal that did happen.
        wire.RemoveMember: False,
        wire.Members: True,
        # The read position only moves forward: a repeat is a no-op.
        wire.MarkRead: True,
    }
)

# Close codes after which the frames in flight are not written again: the server
# refused one of them (too big, or a policy violation), and repeating it would
# only loop.
NO_RESEND_CODES = frozenset({1008, 1009})


def new_nonce() -> str:
    """A random ``send`` nonce: 144 bits, 24 URL-safe characters (the limit is 64)."""
    return secrets.token_urlsafe(18)


@dataclass(eq=False)
class Pending:
    """One command call, from ``_call`` until its future is done."""

    op: Op[Any, Any]
    build: Callable[[], wire.Command]
    future: asyncio.Future[Any]
    on_ok: Callable[[Any], None] | None = None
    # Safe to write again when the connection dropped before the reply. A
    # command missing from IDEMPOTENT fails here, at its first call.
    idempotent: bool = field(init=False)
    retries: int = 0
    last_error: BaseException | None = None

    def __post_init__(self) -> None:
        self.idempotent = IDEMPOTENT[self.op.command]

    def retry_delay(self, error: Unavailable) -> float:
        """When to write an idempotent command again after ``unavailable``:
        jittered, growing with each refusal, at most 2 s."""
        self.retries += 1
        self.last_error = error
        return random.random() * min(2.0, 0.05 * 2.0 ** min(self.retries, 6))


class Outbox:
    """Every command not answered yet, and where it stands: waiting for a
    connection, or written on the current one under its ``ref``."""

    def __init__(self) -> None:
        self._refs = itertools.count(1)
        self._entries: set[Pending] = set()
        self._waiting: deque[Pending] = deque()
        self._written: dict[int, Pending] = {}

    def track(self, entry: Pending) -> None:
        self._entries.add(entry)
        entry.future.add_done_callback(lambda _: self._entries.discard(entry))

    def wait(self, entry: Pending) -> None:
        """Hold ``entry`` until a connection is ready."""
        self._waiting.append(entry)

    def next_waiting(self) -> Pending | None:
        """The oldest waiting command still wanted, or None."""
        while self._waiting:
            entry = self._waiting.popleft()
            if not entry.future.done():
                return entry
        return None

    def next_ref(self) -> int:
        return next(self._refs)

    def written(self, ref: int, entry: Pending) -> None:
        self._written[ref] = entry

    def answered(self, ref: object) -> Pending | None:
        """The command a reply's ``ref`` answers, no longer in flight."""
        # bool is an int subclass: a "ref": true must not match ref 1.
        return self._written.pop(ref, None) if type(ref) is int else None

    def dropped(self, close_code: int | None) -> None:
        """Apply the policy to the commands the dropped connection carried:
        idempotent ones wait again, ahead of the rest and in their order; the
        others fail with ConnectionLost."""
        written, self._written = self._written, {}
        again: list[Pending] = []
        for entry in written.values():
            if entry.future.done():
                continue
            if entry.idempotent and close_code not in NO_RESEND_CODES:
                again.append(entry)
            else:
                entry.future.set_exception(
                    ConnectionLost(
                        f"connection closed (code {close_code}) before the reply to "
                        f"{entry.op.name}; it may or may not have taken effect"
                    )
                )
        self._waiting.extendleft(reversed(again))

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail every command still waiting, each with ``error()``."""
        for entry in list(self._entries):
            if not entry.future.done():
                entry.future.set_exception(error())
        self._entries.clear()
        self._waiting.clear()
