"""Client connections for the load generator.

Two implementations behind one small interface (:class:`Conn`):

* :class:`LeanConn` (the default): an ``asyncio.Protocol`` that speaks just the
  part of RFC 6455 a chat client needs: the opening handshake, masked text frames
  out (masking with ``websockets``' C ``apply_mask``), unmasked frames in, pong,
  close. A received frame costs a few µs of Python, so a handful of worker
  processes can read 100,000 frames/s on a small machine without becoming the
  bottleneck they would be with a full client.
* :class:`WebsocketsConn`: the ``websockets`` asyncio client (``--client
  websockets``), to compare with, and as a check that the lean client measures
  the same thing.

Both hand every received text message to ``conn.on_message(payload, now)`` where
``now`` is ``time.time()`` taken once per read from the socket, so the receipt
time is the time the bytes came off the socket, not the time the frame was
parsed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

try:  # the C version ships with websockets wheels
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

Handler = Callable[[bytes, float], None]

_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class ProtocolFailure(Exception):
    """The server broke the WebSocket protocol or refused the handshake."""


class Conn:
    """What the workers use: send text, get each received message with its time."""

    on_message: Handler
    close_code: int | None = None
    #: set when the connection is gone (closed by either side or lost).
    closed: asyncio.Event

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.on_message = self._dispatch
        self._ref = 0
        self._waiters: dict[Any, asyncio.Future[dict[str, Any]]] = {}

    def send_text(self, payload: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""

    async def aclose(self) -> None:
        raise NotImplementedError

    # Simple request/reply for setup (auth, subscribe, create_channel): the
    # default handler resolves the waiter of the reply's ref and drops the rest.
    def _dispatch(self, payload: bytes, now: float) -> None:
        frame = _decode_any(payload)
        if frame.get("type") in ("ok", "error"):
            fut = self._waiters.pop(frame.get("ref"), None)
            if fut is not None and not fut.done():
                fut.set_result(frame)

    async def request(self, op: str, *, within: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply (uses the default handler)."""
        self._ref += 1
        ref = f"setup{self._ref}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[ref] = fut
        self.send_text(_encode({"op": op, "ref": ref, **args}))
        closed = asyncio.ensure_future(self.closed.wait())
        either: set[asyncio.Future[Any]] = {fut, closed}
        try:
            done, _ = await asyncio.wait(either, timeout=within,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if fut not in done:
            self._waiters.pop(ref, None)
            why = "closed" if self.closed.is_set() else "timed out"
            raise ProtocolFailure(f"{op}: {why} waiting for the reply (code {self.close_code})")
        return fut.result()

    async def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = await self.request(op, **args)
        if reply.get("type") != "ok":
            raise ProtocolFailure(f"{op}: {reply}")
        return reply


# ------------------------------------------------------------------ lean client


class _LeanProtocol(asyncio.Protocol):
    def __init__(self, owner: LeanConn) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance.
        self.owner._made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost()

    def pause_writing(self) -> None:
        self.owner._paused = True

    def resume_writing(self) -> None:
        self.owner._paused = False
        waiter = self.owner._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class LeanConn(Conn):
    """A minimal RFC 6455 client; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshake_done = False
        self._key = b""
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws",
                      within: float = 30.0) -> LeanConn:
        self = cls()
        loop = asyncio.get_running_loop()
        # Not from connection_made: uvloop may call it after create_connection returns.
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _LeanProtocol(self), host, port), within
        )
        self.transport = transport
        self._key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\n"
            b"Host: " + f"{host}:{port}".encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self._key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nUser-Agent: chatd-bench\r\n\r\n"
        )
        try:
            await asyncio.wait_for(asyncio.shield(self._opened), within)
        except BaseException:
            transport.abort()
            raise
        return self

    # --------------------------------------------------------- protocol events

    def _made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def _lost(self) -> None:
        if not self._opened.done():
            self._opened.set_exception(ProtocolFailure("connection lost during the handshake"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self.closed.set()

    def _fail(self, why: str) -> None:
        if not self._opened.done():
            self._opened.set_exception(ProtocolFailure(why))
        if self.close_code is None:
            self.close_code = 1002
        if self.transport is not None:
            self.transport.abort()

    def _received(self, data: bytes) -> None:
        now = time.time()
        buf = self._buf
        buf += data
        if not self._handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            lines = head.split("\r\n")
            if not lines[0].startswith("HTTP/1.1 101"):
                self._fail(f"handshake refused: {lines[0]!r}")
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                self._fail("handshake: bad Sec-WebSocket-Accept")
                return
            self._handshake_done = True
            self._opened.set_result(None)
        # Frames from a server are never masked (RFC 6455 5.1).
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            if b1 & 0x80:
                self._fail("server sent a masked frame")
                return
            length = b1 & 0x7F
            h = 2
            if length == 126:
                if n - i < 4:
                    break
                length = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            elif length == 127:
                if n - i < 10:
                    break
                length = struct.unpack_from("!Q", buf, i + 2)[0]
                h = 10
            if n - i < h + length:
                break
            start = i + h
            i = start + length
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                # Not hoisted: a handler may install another for the next frame.
                self.on_message(bytes(buf[start:i]), now)
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                self._fragments.append(bytes(buf[start:i]))
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments.clear()
                    self.on_message(whole, now)
            elif opcode == OP_PING:
                self._write(OP_PONG, bytes(buf[start:i]))
            elif opcode == OP_CLOSE:
                payload = bytes(buf[start:i])
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._write(OP_CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()
                del buf[:]
                return
        if i:
            del buf[:i]

    # ----------------------------------------------------------------- writing

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        transport.write(head + mask + apply_mask(payload, mask))

    def send_text(self, payload: bytes) -> None:
        self._write(OP_TEXT, payload)

    async def drain(self) -> None:
        if self._paused and not self.closed.is_set():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    async def aclose(self) -> None:
        if self.transport is None or self.closed.is_set():
            return
        self._write(OP_CLOSE, struct.pack("!H", 1000))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        if not self.closed.is_set():
            self.transport.abort()


# ------------------------------------------------------------ websockets client


class WebsocketsConn(Conn):
    """The ``websockets`` asyncio client behind the same interface."""

    def __init__(self, conn: ClientConnection) -> None:
        super().__init__()
        self.conn = conn
        self._reader = asyncio.create_task(self._read())
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws",
                      within: float = 30.0) -> WebsocketsConn:
        conn = await websockets.connect(
            f"ws://{host}:{port}{path}", max_size=None, compression=None,
            open_timeout=within, user_agent_header="chatd-bench",
        )
        return cls(conn)

    async def _read(self) -> None:
        try:
            async for message in self.conn:
                data = message.encode() if isinstance(message, str) else message
                self.on_message(data, time.time())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.conn.close_code
            self.closed.set()

    def send_text(self, payload: bytes) -> None:
        # send() is a coroutine; the frame is written when the task first runs.
        task = asyncio.ensure_future(self._send(payload))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, payload: bytes) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.conn.send(payload, text=True)

    async def drain(self) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending))

    async def aclose(self) -> None:
        await self.conn.close()
        await self._reader


CLIENTS: dict[str, type[LeanConn] | type[WebsocketsConn]] = {
    "lean": LeanConn,
    "websockets": WebsocketsConn,
}


async def connect(kind: str, host: str, port: int) -> Conn:
    conn: Conn = await CLIENTS[kind].connect(host, port)
    return conn
