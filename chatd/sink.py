"""The one place that touches a WebSocket connection's transport.

Sessions and the fanout write frames through a :class:`Sink`: write bytes that
are already WebSocket frames, send one text message, ask how much is unsent,
close. :class:`WebSocketSink` is the real one over a ``websockets``
connection; tests give a :class:`chatd.connection.Session` an in-memory sink
and feed it text frames, so reply order, barriers, limits and timeouts are
tested without a socket (the way ``websockets`` tests its sans-I/O protocol).

Why write to the transport directly instead of ``await conn.send()``: events
are framed once for every subscriber (:func:`text_frame`), and every write is
synchronous, so the order in which chatd writes is the order on the wire. Like
``websockets.broadcast`` this applies no backpressure; callers watch
:meth:`Sink.buffered` themselves.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

from websockets.asyncio.connection import Connection
from websockets.protocol import State


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one WebSocket text frame from a server: FIN, opcode 1, unmasked.

    Valid because chatd negotiates no extension (compression is off): with one,
    frames would differ per connection.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Sink(Protocol):
    def write(self, frames: bytes) -> None:
        """Queue ready-made frames without waiting; nothing once closing has started."""
        ...

    def send(self, payload: bytes) -> None:
        """Queue one text message (a JSON frame) without waiting."""
        ...

    def buffered(self) -> int:
        """Bytes written and not yet sent to the peer."""
        ...

    @property
    def open(self) -> bool: ...

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        """Close with ``code``, or cut the connection after ``grace`` seconds."""
        ...


class WebSocketSink:
    """:class:`Sink` over a ``websockets`` connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def write(self, frames: bytes) -> None:
        # websockets' own send path holds no bytes between calls (every send
        # writes through to the transport) and chatd never fragments, so frames
        # written here cannot interleave with its own (pings, the close frame).
        if self.conn.protocol.state is State.OPEN:
            self.conn.transport.write(frames)

    def send(self, payload: bytes) -> None:
        self.write(text_frame(payload))

    def buffered(self) -> int:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()

    @property
    def open(self) -> bool:
        return self.conn.state is State.OPEN

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        # close() first waits for the send buffer to drain, and only then does its
        # own timeout start: a peer that does not read would hold it forever.
        try:
            await asyncio.wait_for(self.conn.close(code, reason), grace)
        except TimeoutError:
            if self.conn.transport is not None:
                self.conn.transport.abort()
