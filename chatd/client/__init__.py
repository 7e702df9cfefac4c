"""An asyncio client for chatd that hides reconnects.

::

    async with Client(url, name="alice", password="...") as client:
        boot = await client.boot()
        ok = await client.send(boot.channels[0].id, "hello")
        async for item in client.events():
            if isinstance(item, Reset):      # the server no longer had our position
                rebuild_state(item.boot)
            else:
                handle(item)                 # a wire.Event, each exactly once, in seq order

``events(ephemeral=True)`` also yields the typing and presence frames
(``wire.EphemeralTyping``, ``wire.EphemeralPresence``) among the events: live
only, best effort, no seq; ``typing(channel_id)`` sends one.

One WebSocket connection carries both the commands and the event stream. A
background task owns it: it (re)connects with exponential backoff and full
jitter, logs in (``login`` once, then ``auth`` with the token), resubscribes the
event stream from its last (epoch, seq), and then writes the commands that
waited for it. Replies are matched to commands by ``ref``.

What survives a dropped connection, and what does not:

* Commands not yet written wait for the next connection (up to their timeout).
* Commands whose effect is idempotent (``send`` with its nonce, ``boot``,
  ``history``, ``ping``, ``subscribe``, ``open_dm``, ``add_member``,
  ``members``, ``mark_read``) are written again on the next connection when the
  old one dropped before their reply.
* ``create_channel``, ``delete_channel``, ``delete_message``, ``remove_member``
  (and so ``leave``) and ``logout`` are not repeated: their outcome is unknown, so they fail with
  :class:`ConnectionLost` instead of answering ``conflict`` or ``not_found`` for
  a change that did happen.
* ``unavailable`` (a draining or overloaded server) makes idempotent commands
  retry after a jittered delay; every other error frame is raised to the caller
  as its :mod:`chatd.exceptions` class. ``rate_limited`` is raised, not hidden,
  so that the caller sees the back-pressure.

Every command waits at most ``timeout`` seconds in total, reconnects included.

The modules behind it: ``_client`` the :class:`Client`; ``_replies`` which
reply answers which command, and the decoding of server frames; ``_resend``
what a dropped connection does to each command; ``_reconnect`` the reconnect
loop, :func:`backoff` and the retry policy; ``_stream`` :class:`StreamPosition`,
:class:`Reset` and the queue behind ``events()``.
"""

from __future__ import annotations

from ..exceptions import ConnectionLost
from ._client import DEFAULT_URL, Client
from ._client import MAX_REPLY_BYTES as MAX_REPLY_BYTES  # importable, as before; not in __all__
from ._reconnect import backoff
from ._replies import Ephemeral
from ._resend import new_nonce
from ._stream import Reset, StreamPosition

__all__ = [
    "DEFAULT_URL",
    "Client",
    "ConnectionLost",
    "Ephemeral",
    "Reset",
    "StreamPosition",
    "backoff",
    "new_nonce",
]
