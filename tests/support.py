"""What the integration tests share: a real daemon in a subprocess and a raw
WebSocket test client. Nothing here mocks the store or the socket.

Every wait is a multiple of UNIT (env ``CHATD_TEST_UNIT``, default 1.0 s), so a
slow machine can scale all of them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from .daemon_process import ServerProcess, serve_command

UNIT = float(os.environ.get("CHATD_TEST_UNIT", "1.0"))


class Daemon(ServerProcess):
    """``chatd serve`` on an ephemeral port and a sqlite file; restartable on the same file.

    The async face of :class:`tests.daemon_process.ServerProcess` (``proc``, ``port``
    and ``log`` come from there): its blocking waits run in a thread, so the event
    loop goes on while the daemon starts or stops.
    """

    def __init__(self, db: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        super().__init__(env)
        self.db = db
        self.args = list(args)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.spawn(serve_command(self.db, port, self.args))
        await asyncio.to_thread(self.wait_listening, 20 * UNIT)

    async def kill(self) -> None:
        """SIGKILL: the crash of PROTOCOL.md guarantee 1."""
        await self.terminate(signal.SIGKILL)

    async def terminate(self, sig: int = signal.SIGTERM) -> int:
        return await asyncio.to_thread(self.stop, sig, 30 * UNIT, 5 * UNIT)

    async def restart(self, same_port: bool = True) -> None:
        await self.kill()
        await self.start(self.port if same_port else 0)


class WS:
    """A raw protocol client for tests: send a command, read frames, match refs."""

    def __init__(self, conn: ClientConnection):
        self.conn = conn
        self._ref = 0
        self.events: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **kw: Any) -> AsyncIterator[WS]:
        async with websockets.connect(url, max_size=None, **kw) as conn:
            yield cls(conn)

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send(data)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout * UNIT)
        frame: dict[str, Any] = json.loads(raw)
        if frame.get("type") == "event":
            self.events.append(frame)
        else:
            self.replies.append(frame)
        return frame

    async def request(self, op: str, timeout: float = 10, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply; events read meanwhile go to .events."""
        self._ref += 1
        ref = f"r{self._ref}"
        await self.conn.send(json.dumps({"op": op, "ref": ref, **args}))
        while True:
            frame = await self.recv(timeout)
            if frame.get("type") != "event" and frame.get("ref") == ref:
                return frame

    async def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = await self.request(op, **args)
        assert reply["type"] == "ok", reply
        return reply

    async def login(self, name: str, password: str = "pw-secret-1") -> dict[str, Any]:
        return await self.ok("login", name=name, password=password)

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            frame = await self.recv(timeout)
            if frame.get("type") == "event":
                return frame

    async def events_until(self, seq: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Read until an event with seq >= ``seq`` has arrived; returns all events so far."""
        while not self.events or self.events[-1]["seq"] < seq:
            await self.next_event(timeout)
        return self.events
