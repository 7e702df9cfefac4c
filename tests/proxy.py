"""A small TCP proxy that breaks connections on purpose, for reconnect tests.

::

    async with Proxy(daemon.port) as proxy:
        client = Client(proxy.url, ...)
        proxy.cut()                      # abort every current connection now
        proxy.block()                    # ... and refuse new ones until unblock()
        proxy.start_chaos(0.05, 0.4)     # cut at random intervals until stop_chaos()

It forwards bytes blindly, so it knows nothing of WebSocket frames: a cut lands
anywhere, also inside a frame or between a command and its reply, which is the
point. Cuts abort the TCP connections (RST where the OS does it), like a crash
or a network failure rather than a clean close. The target port is read on each
new connection, so ``proxy.target_port`` may change between daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from types import TracebackType


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, seed: int = 0):
        self.target_host = target_host
        self.target_port = target_port
        self.rng = random.Random(seed)
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections aborted by cut()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked = False
        self._chaos: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def cut(self) -> int:
        """Abort every current connection; returns how many were cut."""
        pairs = list(self._pairs)
        self._pairs.clear()
        for client_w, upstream_w in pairs:
            client_w.transport.abort()
            upstream_w.transport.abort()
        self.cuts += len(pairs)
        return len(pairs)

    def block(self) -> None:
        """Cut everything and refuse (accept then abort) new connections."""
        self._blocked = True
        self.cut()

    def unblock(self) -> None:
        self._blocked = False

    def start_chaos(self, min_interval: float, max_interval: float) -> None:
        """Cut all connections again and again, at random intervals."""
        self.stop_chaos()

        async def chaos() -> None:
            while True:
                await asyncio.sleep(self.rng.uniform(min_interval, max_interval))
                self.cut()

        self._chaos = asyncio.create_task(chaos())

    def stop_chaos(self) -> None:
        if self._chaos is not None:
            self._chaos.cancel()
            self._chaos = None

    async def close(self) -> None:
        self.stop_chaos()
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            # The daemon is down: the client sees its connection end, as it
            # would see a refused one.
            writer.transport.abort()
            return
        if self._blocked:  # blocked while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            # One side ended (its EOF was passed on): give the other a moment to
            # finish, so that a clean WebSocket close stays clean, then end it.
            await asyncio.wait(pumps, timeout=1.0)
        finally:
            self._pairs.discard(pair)
            for task in pumps:
                task.cancel()
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
