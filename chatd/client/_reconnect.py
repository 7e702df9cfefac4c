"""The reconnect loop: when to try again, which failures are worth it, and how
long to wait in between.

The schedule is injectable (``Client(reconnect_delays=...)``, a factory called
afresh for each outage); the default :func:`backoff` is unbounded, so a client
outlives any outage of its server unless the server refuses it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from ..exceptions import (
    ClientError,
    ConnectFailed,
    ConnectionLost,
    InternalError,
    ProtocolError,
    RateLimited,
    Unavailable,
)

log = logging.getLogger("chatd.client")


def backoff(
    first: float = 0.1,
    cap: float = 10.0,
    factor: float = 2.0,
    attempts: int | None = None,
    *,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Reconnect delays: exponential backoff with full jitter.

    The n-th delay is uniform in ``[0, min(cap, first * factor**n)]``. Full jitter
    spreads the clients that a restarting server dropped all at once, at the
    price of sometimes retrying sooner than the plain exponential schedule.
    ``attempts=None`` retries for ever; a finite number makes the client give up
    with :class:`~chatd.exceptions.ConnectFailed`.
    """
    ceiling = min(cap, first)
    n = 0
    while attempts is None or n < attempts:
        yield rng() * ceiling
        # Grown step by step rather than as factor**n, which overflows a float
        # after a long enough outage.
        ceiling = min(cap, ceiling * factor)
        n += 1


def retryable(exc: BaseException) -> bool:
    """Whether a failure to connect or log in may go away by trying again."""
    if isinstance(exc, InvalidURI):
        return False
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return status >= 500 or status == 429
    if isinstance(exc, Unavailable | RateLimited | InternalError):
        return True
    if isinstance(exc, ProtocolError | ClientError):
        return isinstance(exc, ConnectionLost)
    return isinstance(exc, OSError | TimeoutError | ConnectionClosed | InvalidHandshake)


def describe(exc: BaseException | None) -> str:
    """A failure in one line, for error messages and logs."""
    if exc is None:
        return "no attempt finished"
    if isinstance(exc, ProtocolError):
        return f"{exc.code}: {exc.message}"
    return str(exc) or type(exc).__name__


async def close_quietly(conn: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


class Reconnector:
    """Connects, logs in, serves the connection until it drops, waits, and again.

    It keeps what the loop of one client learns on the way: the last failure (for
    the messages, and the ``retry_after`` of a server that said ``rate_limited``)
    and whether an attempt ever succeeded (the wording of the final error).
    """

    def __init__(
        self, url: str, delays: Callable[[], Iterable[float]], options: Mapping[str, Any]
    ) -> None:
        self.url = url
        self._delays = delays
        self._options = options
        self.last_error: BaseException | None = None
        self._ever_connected = False

    async def run(
        self,
        handshake: Callable[[ClientConnection], Awaitable[None]],
        session: Callable[[ClientConnection], Awaitable[None]],
    ) -> Exception:
        """Loop until a failure is final or the delays run out; returns the error
        that ends the client. ``handshake`` logs a new connection in (raising
        what refused it), ``session`` serves it and returns when it drops.
        Cancelling the task that runs this is how the client stops it."""
        delays = iter(self._delays())
        first = True
        while True:
            if not first:
                delay = next(delays, None)
                if delay is None:
                    what = "reconnecting to" if self._ever_connected else "connecting to"
                    return ConnectFailed(f"gave up {what} {self.url}: {describe(self.last_error)}")
                err = self.last_error
                if isinstance(err, RateLimited) and err.retry_after:
                    delay = max(delay, err.retry_after)
                await asyncio.sleep(delay)
            first = False
            try:
                conn = await connect(self.url, **self._options)
            except Exception as exc:
                if not retryable(exc):
                    error = ConnectFailed(f"cannot connect to {self.url}: {exc}")
                    error.__cause__ = exc
                    return error
                self._failed(exc)
                continue
            try:
                await handshake(conn)
            except Exception as exc:
                await close_quietly(conn)
                if not retryable(exc):
                    return exc
                self._failed(exc)
                continue
            # A new outage starts a new schedule.
            delays = iter(self._delays())
            if self._ever_connected:
                log.info("reconnected to %s", self.url)
            self._ever_connected = True
            await session(conn)

    def _failed(self, exc: Exception) -> None:
        log.debug("connecting to %s failed: %s", self.url, describe(exc))
        self.last_error = exc
