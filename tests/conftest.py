from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from .pg import pg_server, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from .support import Daemon

MakeDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A fresh daemon on an ephemeral port with its own sqlite file."""
    d = Daemon(tmp_path / "chatd.db")
    await d.start()
    try:
        yield d
    finally:
        await d.kill()
        _show_tracebacks(d)


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[MakeDaemon]:
    """A factory for daemons with extra flags: ``d = await make_daemon("--event-ttl", "1")``."""
    started: list[Daemon] = []

    async def make(*args: str, db: Path | None = None, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(db or tmp_path / f"chatd{len(started)}.db", args, env)
        await d.start()
        started.append(d)
        return d

    yield make
    for d in started:
        await d.kill()
        _show_tracebacks(d)


def _show_tracebacks(d: Daemon) -> None:
    """Print the daemon's log when it logged a traceback (pytest shows it on failure)."""
    if any("Traceback" in line for line in d.log):
        print("".join(d.log))
