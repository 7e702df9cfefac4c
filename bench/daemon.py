"""The daemon under test: ``python -m chatd serve`` in a subprocess, and what
/proc says about it (CPU seconds, resident memory)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

LISTEN_RE = re.compile(r"serving on ws://(?P<host>[^\s:]+):(?P<port>\d+)/ws")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parent.parent

SERVE_ARGS = [
    "--no-rate-limits", "--max-connections", "0", "--max-connections-per-address", "0",
    "--scrypt-n", "1024",
]


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces; fields after it are space separated.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def proc_rss(pid: int) -> int:
    """VmRSS of a process in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Daemon:
    """One chatd on a fresh database file, on an ephemeral port."""

    def __init__(self, db: Path, extra: list[str] | None = None) -> None:
        self.db = db
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.log: list[str] = []
        self.errors: list[str] = []
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
        )
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, cwd=str(REPO),
        )
        assert self.proc.stderr is not None
        found = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                if not found.is_set():
                    self.log.append(line)
                    m = LISTEN_RE.search(line)
                    if m:
                        self.host, self.port = m.group("host"), int(m.group("port"))
                        found.set()
                # Every connection logs its open and close at INFO: keep the rest
                # (warnings, errors and the lines of their tracebacks).
                elif " INFO " not in line:
                    if len(self.errors) < 200:
                        self.errors.append(line)

        self._drain = threading.Thread(target=drain, name="chatd-stderr", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chatd did not start:\n" + "\n".join(self.log[-30:]))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "chatd", "serve", "--db", str(self.db), "--port", "0",
                *SERVE_ARGS, *self.extra]

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)

    def metrics(self) -> dict[str, float]:
        """The daemon's /metrics as {sample name with labels: value}."""
        url = f"http://{self.host}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drain is not None:
            self._drain.join(5)
        self.proc = None
        return proc.returncode


class EchoServer(Daemon):
    """``python -m bench.echo``: answers every command, stores nothing (S1's floor)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.echo"]
