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
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

UNIT = float(os.environ.get("CHATD_TEST_UNIT", "1.0"))
LISTEN_RE = re.compile(r"serving on ws://(?P<host>[^\s:]+):(?P<port>\d+)/ws")


class Daemon:
    """``chatd serve`` on an ephemeral port and a sqlite file; restartable on the same file."""

    def __init__(self, db: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.db = db
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            sys.executable, "-m", "chatd", "serve",
            "--db", str(self.db), "--port", str(port), *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        loop = asyncio.get_running_loop()
        assert self.proc.stderr is not None
        stderr = self.proc.stderr
        try:
            while True:
                line = await asyncio.wait_for(
                    loop.run_in_executor(None, stderr.readline), 20 * UNIT
                )
                if not line:
                    raise RuntimeError("chatd exited before listening:\n" + "".join(self.log))
                text = line.decode(errors="replace")
                self.log.append(text)
                m = LISTEN_RE.search(text)
                if m:
                    self.port = int(m.group("port"))
                    break
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        loop = asyncio.get_running_loop()
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        stderr = proc.stderr
        while True:
            line = await loop.run_in_executor(None, stderr.readline)
            if not line:
                return
            self.log.append(line.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL: the crash of PROTOCOL.md guarantee 1."""
        await self._stop(signal.SIGKILL)

    async def terminate(self, sig: int = signal.SIGTERM) -> int:
        return await self._stop(sig)

    async def _stop(self, sig: int) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        loop = asyncio.get_running_loop()
        rc = await asyncio.wait_for(loop.run_in_executor(None, proc.wait), 30 * UNIT)
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 5 * UNIT)
        self.proc = None
        return rc

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
