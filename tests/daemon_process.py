"""One server in a subprocess, for the tests and the bench alike: start
``python -m chatd serve`` (or any command that prints chatd's listen line) on an
ephemeral port, wait for "serving on ws://HOST:PORT/ws", keep its log, stop it
with a signal.

It lives in tests/ because the tests need it from a source tree or an sdist
(which ships tests/ but not bench/), and neither belongs in the wheel; the bench
imports it as ``tests.daemon_process`` (the repository root is on sys.path for
``python -m pytest`` and ``python -m bench``). Standard library only, no pytest,
no event loop: :class:`tests.support.Daemon` (async, for the tests) and
:class:`bench.daemon.Daemon` (blocking, for the bench) are its subclasses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LISTEN_RE = re.compile(r"serving on ws://(?P<host>[^\s:]+):(?P<port>\d+)/ws")


def serve_command(db: str | os.PathLike[str], port: int = 0,
                  args: Sequence[str] = ()) -> list[str]:
    """``python -m chatd serve --db DB --port PORT ARGS``; ``db`` goes in as given."""
    return [sys.executable, "-m", "chatd", "serve", "--db", str(db), "--port", str(port),
            *args]


class ServerProcess:
    """A server subprocess and its stderr, read by a thread into :attr:`log`.

    One object can be started again after a stop (same or another command); the
    log runs on across restarts. Lines up to the listen line always go to the log;
    later ones go to ``on_line`` if given (the bench keeps only a few), else too.
    Its stdout is discarded: chatd writes everything to stderr.
    """

    def __init__(self, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.env = dict(env or {})
        self.cwd = cwd
        self.on_line = on_line
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        #: stderr lines, each with its newline.
        self.log: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def spawn(self, command: Sequence[str]) -> None:
        """Start the process; :meth:`wait_listening` waits for its listen line."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        proc = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, cwd=self.cwd,
        )
        self.proc = proc
        self._listening = listening = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(proc, listening),
                                        name=f"stderr of pid {proc.pid}", daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes], listening: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if listening.is_set() and self.on_line is not None:
                self.on_line(line)
                continue
            self.log.append(line)
            m = None if listening.is_set() else LISTEN_RE.search(line)
            if m:
                self.host, self.port = m.group("host"), int(m.group("port"))
                listening.set()

    def wait_listening(self, timeout: float) -> None:
        """Block until the listen line came; when the process exits first, or after
        ``timeout`` seconds, kill it and raise RuntimeError with its log."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            exited = proc.poll() is not None
            if exited and self._reader is not None:
                self._reader.join(5)  # the listen line may be read but not yet seen
                if self._listening.is_set():
                    return
            if exited or time.monotonic() > deadline:
                why = (f"exited with {proc.returncode} before listening" if exited
                       else f"not listening after {timeout:g} s")
                self.stop(signal.SIGKILL)
                command = " ".join(map(str, proc.args))
                raise RuntimeError(f"{command}: {why}:\n" + "".join(self.log))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0,
             read_timeout: float = 5.0) -> int:
        """Send ``sig`` (unless it has exited), wait for the exit and the last of its
        log; SIGKILL it (a line in the log says so) if it outlives ``timeout``.
        Returns its exit status (0 when it was not running)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.log.append(f"[still running {timeout:g} s after signal {sig}: SIGKILL]\n")
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(read_timeout)
        self.proc = None
        return proc.returncode
