"""The daemon under test: ``python -m chatd serve`` in a subprocess (started by
:mod:`tests.daemon_process`, which the tests use too), and what /proc says about
it (CPU seconds, resident memory)."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from tests.daemon_process import ServerProcess, serve_command

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parent.parent

SERVE_ARGS = [
    "--no-rate-limits", "--max-connections", "0", "--max-connections-per-address", "0",
    "--scrypt-n", "1024",
]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces; fields after it are space separated.
    return stat[stat.rindex(")") + 2:].split()


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads) from /proc/PID/stat."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children, the live ones (found by a scan
    of /proc) and the ones it has reaped (cutime, cstime): the PostgreSQL server,
    whose backends are children of the postmaster."""
    ticks = sum(int(x) for x in _stat(pid)[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except (OSError, ValueError):  # it exited meanwhile
            continue
        if int(fields[1]) == pid:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


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


class Daemon(ServerProcess):
    """One chatd on a database (a sqlite file, or a postgresql:// URL that other
    nodes may share), on an ephemeral port, run from the repository. :attr:`log`
    keeps its startup lines; of the rest (every connection logs its open and
    close at INFO), :attr:`errors` keeps the first warnings, errors and
    traceback lines."""

    def __init__(self, db: str | Path, extra: list[str] | None = None) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        super().__init__({"PYTHONPATH": path}, cwd=REPO, on_line=self._line)
        self.db = db
        self.extra = extra or []
        self.errors: list[str] = []

    def _line(self, line: str) -> None:
        if " INFO " not in line and len(self.errors) < 200:
            self.errors.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self.spawn(self.command())
        self.wait_listening(timeout)

    def command(self) -> list[str]:
        return serve_command(self.db, 0, [*SERVE_ARGS, *self.extra])

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


class EchoServer(Daemon):
    """``python -m bench.echo``: answers every command, stores nothing (S1's floor)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.echo"]
