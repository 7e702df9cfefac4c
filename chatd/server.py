"""The daemon: one port serving the WebSocket endpoint and a few HTTP paths.

:class:`App` holds what the connections share (config, store, writer, hub,
metrics, clock); :func:`serve` runs it until a stop is requested, then drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import mimetypes
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources

import msgspec
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import __version__
from .config import Config
from .connection import CLOSE_POLICY, Session
from .ephemeral import Ephemeral
from .expiry import run_expiry
from .fanout import Hub
from .feed import LocalFeed, TailFeed
from .limits import Buckets, ConnectionCounter
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .ops import Published
from .sink import WebSocketSink
from .store import Store, open_store
from .writer import Writer

log = logging.getLogger("chatd.server")

CLOSE_GOING_AWAY = 1001

PLACEHOLDER_PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>chatd</title>
<h1>chatd</h1><p>The WebSocket endpoint is <code>/ws</code>.</p>
"""


@dataclass
class App:
    config: Config
    store: Store
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    ready: bool = False
    sessions: set[Session] = field(default_factory=set)

    def __post_init__(self) -> None:
        cfg = self.config
        self.user_buckets = Buckets(cfg.user_rate, cfg.user_burst, self.clock)
        self.name_throttle = Buckets(
            cfg.login_failures / cfg.login_window, cfg.login_failures, self.clock
        )
        self.address_throttle = Buckets(
            cfg.login_failures_per_address / cfg.login_window,
            cfg.login_failures_per_address,
            self.clock,
        )
        self.connections = ConnectionCounter(
            cfg.max_connections, cfg.max_connections_per_address
        )
        self.hub = Hub(
            0,
            self.store.read_events,
            buffer_limit=self.config.send_buffer_limit,
            slow_timeout=self.config.slow_reader_timeout,
            page_size=self.config.replay_batch,
            on_slow_close=self.metrics.slow_closed.inc,
            ephemeral_delay=cfg.ephemeral_flush,
        )
        self.ephemeral = Ephemeral(cfg, self.store, self.hub, self.clock)
        self.feed: LocalFeed | TailFeed
        if self.store.backend.shared:
            # Other nodes commit too: every node reads the one stream by seq.
            self.feed = TailFeed(
                self.store.tail_events, self._publish, cursor=0,
                poll_interval=cfg.tail_poll_interval, page_size=cfg.replay_batch,
            )
        else:
            self.feed = LocalFeed(self._publish)
        self._background: list[asyncio.Task[None]] = []
        self.writer = Writer(
            self.store,
            self.feed,
            max_batch=self.config.max_commit_batch,
            clock=self.clock,
            on_batch=self.metrics.batch,
            inline=self.config.inline_commit,
        )
        self.metrics.bind(
            subscribers=lambda: self.hub.subscribers,
            lagging=lambda: self.hub.lagging,
            seq=lambda: self.hub.last_seq,
        )

    def _publish(self, events: list[Published]) -> None:
        self.metrics.events.inc(len(events))
        self.hub.publish(events)

    async def start(self) -> None:
        await self.store.open()
        seq, _ = await self.store.position()
        self.hub.last_seq = seq
        if isinstance(self.feed, TailFeed):
            self.feed.cursor = seq
            self.feed.start()
            self._background.append(asyncio.create_task(
                self.store.backend.listen(self.feed.wake, self.ephemeral.notice)))
        await self.ephemeral.start()
        self._background.append(asyncio.create_task(self._check_tokens()))
        self.writer.start()

    async def _check_tokens(self) -> None:
        """Close (4001) every connection whose token has ended anywhere.

        A logout ends its token on this node's connections at once; this catches
        the rest: a logout, password change or deactivation on another node, a
        token ended in the database by other means, or an expired one once the
        expiry task has deleted it. One query per interval for all the
        node's connections, so a lost notification cannot leave a session open.
        """
        while True:
            await asyncio.sleep(self.config.token_check_interval)
            using = [(s, s.token_hash) for s in self.sessions if s.token_hash is not None]
            if not using:
                continue
            try:
                # Whether each token still exists, not whether it expired: a connection
                # outlives its token's expiry until the expiry task deletes the token.
                live = await self.store.live_tokens({h for _, h in using if h is not None}, 0)
            except Exception as exc:  # the database is away: try again next time
                log.warning("token check failed: %s", exc)
                continue
            for session, token_hash in using:
                # Still the token that was checked: a new login meanwhile is not ended.
                if session.token_hash == token_hash and token_hash not in live:
                    session.end("the token was ended")

    @property
    def healthy(self) -> bool:
        """Serving: started, not draining, and the database answers (as far as known)."""
        database = not isinstance(self.feed, TailFeed) or self.feed.healthy
        return self.ready and not self.draining and database

    async def stop(self) -> None:
        """After the writer closed: stop following the stream, close the store."""
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if isinstance(self.feed, TailFeed):
            await self.feed.stop()
        await self.ephemeral.stop()
        await self.store.close()

    async def handle(self, conn: ServerConnection) -> None:
        # The handshake is over; its headers (~4 KiB a connection) are not needed
        # any more. (The request object itself must stay: websockets tests it.)
        if conn.request is not None:
            conn.request.headers = _NO_HEADERS
        if conn.response is not None:
            conn.response.headers = _NO_HEADERS
        peer = _peer(conn)
        address = _address(conn)
        refused = self.connections.add(address)
        if refused is not None:
            log.warning("refused %s: %s", peer, refused, extra={"event": "refused", "peer": peer})
            await conn.close(CLOSE_POLICY, refused)
            return
        session = Session(self, WebSocketSink(conn), address)
        self.sessions.add(session)
        self.metrics.connections.inc()
        log.info("open %s", peer, extra={"event": "open", "peer": peer})
        try:
            await session.run(conn)
        finally:
            self.connections.remove(address)
            self.sessions.discard(session)
            self.metrics.connections.dec()
            user = session.user.name if session.user else None
            log.info(
                "close %s user=%s code=%s reason=%r", peer, user, conn.close_code,
                conn.close_reason,
                extra={"event": "close", "peer": peer, "user": user,
                       "code": conn.close_code, "reason": conn.close_reason},
            )

    # ------------------------------------------------------------------ HTTP

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            host = request.headers.get("Host")
            if origin is not None and not self.origin_allowed(origin, host):
                return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n")
            if self.draining:
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"shutting down\n")
            refused = self.connections.refusal(_address(conn))
            if refused is not None:
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, refused.encode() + b"\n")
            return None
        if path == "/healthz":
            if self.healthy:
                body = msgspec.json.encode({"status": "ok", "seq": self.hub.last_seq})
                return _response(HTTPStatus.OK, body, "application/json")
            status = (
                "draining" if self.draining else "starting" if not self.ready
                else "database unreachable"
            )
            body = msgspec.json.encode({"status": status, "seq": self.hub.last_seq})
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")
        if path == "/metrics":
            if not self.metrics_allowed(request.headers.get("Authorization")):
                response = _response(HTTPStatus.UNAUTHORIZED, b"metrics need a bearer token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="chatd metrics"'
                return response
            return _response(HTTPStatus.OK, self.metrics.render(), METRICS_CONTENT_TYPE)
        if path in ("/", "/index.html"):
            page = _static("index.html") or PLACEHOLDER_PAGE
            response = _response(HTTPStatus.OK, page, "text/html; charset=utf-8")
            response.headers["Content-Security-Policy"] = page_policy(
                request.headers.get("Host"))
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
            return response
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            data = _static(name)
            if data is not None:
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype.endswith("javascript"):
                    ctype += "; charset=utf-8"
                return _response(HTTPStatus.OK, data, ctype)
        return _response(HTTPStatus.NOT_FOUND, b"not found\n")

    def metrics_allowed(self, authorization: str | None) -> bool:
        token = self.config.metrics_token
        if not token:
            return True
        given = (authorization or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        allowed = self.config.allow_origins
        if not allowed:
            allowed = (f"http://{host}", f"https://{host}") if host else ()
        return "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}


_NO_HEADERS = Headers()
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def page_policy(host: str | None) -> str:
    """The page's Content-Security-Policy: its own scripts, styles and WebSocket only.

    ``connect-src`` names the WebSocket of the host the page was loaded from
    (``'self'`` covers ws: only in newer browsers); a Host header that is not a
    plain host[:port] gets ``'self'`` alone.
    """
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _address(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return str(addr[0]) if addr else "?"


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def _response(
    status: HTTPStatus, body: bytes, ctype: str = "text/plain; charset=utf-8"
) -> Response:
    headers = Headers(
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


_WEB = resources.files("chatd") / "web"


def _static(name: str) -> bytes | None:
    """A file shipped in chatd/web, or None; names with path parts are refused."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        return (_WEB / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


# ------------------------------------------------------------------ lifecycle


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def serve(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Future[None] | None = None,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Run the daemon until ``stop`` resolves or SIGINT/SIGTERM arrives, then drain."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _resolve, stop)
        except (NotImplementedError, RuntimeError):
            pass

    store = open_store(config.db, search_index_batch=config.search_index_batch)
    app = App(config, store, clock=clock)
    await app.start()
    server: Server = await ws_serve(
        app.handle,
        config.host,
        config.port,
        process_request=app.process_request,
        max_size=config.max_frame,
        # permessage-deflate costs ~64 KiB per connection; chat frames are small.
        compression=None,
        server_header=f"chatd/{__version__}",
        close_timeout=5,
    )
    expiry = asyncio.create_task(run_expiry(config, app.writer, clock, app.metrics))
    app.ready = True
    host, port = server.sockets[0].getsockname()[:2]
    if on_listening is not None:
        on_listening(host, port)
    try:
        await stop
    finally:
        await _drain(app, server, expiry)


async def _drain(app: App, server: Server, expiry: asyncio.Task[None]) -> None:
    """Finish what was started, then close.

    The listener stays open while draining so that load balancers can read
    ``/healthz`` (503 now); WebSocket handshakes get 503 and commands on open
    connections get ``unavailable``. In-flight commands finish (up to
    ``drain_timeout``), the writer commits everything pending, and only then are
    clients closed with 1001, so every ok that was sent is durable.
    """
    log.info("draining")
    app.draining = True
    expiry.cancel()
    deadline = time.monotonic() + app.config.drain_timeout
    inflight = [t for s in app.sessions for t in s.tasks()]
    if inflight:
        await asyncio.wait(inflight, timeout=app.config.drain_timeout)
    await app.writer.close()
    sessions = list(app.sessions)
    closing = [
        asyncio.create_task(s.sink.close(
            CLOSE_GOING_AWAY, "server shutting down",
            grace=max(0.1, deadline - time.monotonic()),
        ))
        for s in sessions
    ]
    if closing:
        await asyncio.wait(closing)
    # The listener (and /healthz's 503) stays until every client is gone.
    server.close(close_connections=False)
    try:
        await asyncio.wait_for(server.wait_closed(), 1.0)
    except TimeoutError:
        log.warning("some connection handlers did not finish in time")
    await app.stop()
    log.info("stopped")
