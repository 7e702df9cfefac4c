"""The rows that sends add, held for a bulk write: the part of a
:class:`~chatd.storage.WriteTx` that every SQL backend shares.

A send adds an event, a message, maybe a nonce, and moves its channel's
activity time. Written one statement each, a batch of sends costs a few
statements per send; held here, it costs one bulk write per table when the
backend next runs another statement or commits (which :mod:`chatd.storage`
allows, with its one exception at :meth:`~chatd.storage.WriteTx.nonces`).
"""

from __future__ import annotations

from .search import index_text

#: (seq, at_ms, channel_id, frame, message_id, restricted (0/1), only_user)
EventRow = tuple[int, int, str, bytes, str | None, int, str | None]
#: (seq, id, channel_id, sender_id, sender_name, at_ms, body, words for search)
MessageInsert = tuple[int, str, str, str, str, int, str, str]
#: (user_id, nonce, message_id, seq, at_ms, channel_id, channel_name)
NonceInsert = tuple[str, str, str, int, int, str, str]


class SendBuffer:
    """insert_event, insert_message, insert_nonce and touch_channel of a WriteTx.

    The backend writes ``_events``, ``_messages``, ``_nonces`` and ``_active``
    (channel id -> time of its newest message) and clears them, before any other
    statement and at commit; :meth:`_drop_buffers` forgets them (a savepoint
    rolled back).
    """

    def __init__(self) -> None:
        self._events: list[EventRow] = []
        self._messages: list[MessageInsert] = []
        self._nonces: list[NonceInsert] = []
        self._active: dict[str, int] = {}

    def _buffered(self) -> bool:
        return bool(self._events or self._messages or self._nonces or self._active)

    def _drop_buffers(self) -> None:
        self._events.clear()
        self._messages.clear()
        self._nonces.clear()
        self._active.clear()

    def insert_event(
        self, seq: int, at_ms: int, channel_id: str, frame: bytes, message_id: str | None,
        restricted: bool = False, only_user: str | None = None,
    ) -> None:
        self._events.append((seq, at_ms, channel_id, frame, message_id, int(restricted),
                             only_user))

    def insert_message(
        self, seq: int, message_id: str, channel_id: str, sender_id: str, sender_name: str,
        at_ms: int, body: str,
    ) -> None:
        # The search index's words are computed here, on the writing thread, and
        # written with the message row: one bulk statement for both.
        self._messages.append((seq, message_id, channel_id, sender_id, sender_name, at_ms, body,
                               index_text(body)))

    def insert_nonce(
        self, user_id: str, nonce: str, message_id: str, seq: int, at_ms: int,
        channel_id: str, channel_name: str,
    ) -> None:
        self._nonces.append((user_id, nonce, message_id, seq, at_ms, channel_id, channel_name))

    def touch_channel(self, channel_id: str, at_ms: int) -> None:
        self._active[channel_id] = at_ms
