"""The ``chatd`` command: ``chatd serve`` runs the daemon; client commands come
from :mod:`chatd.clientcli`. Every ``serve`` flag can also come from an
environment variable ``CHATD_<FLAG>`` (``--max-frame`` is ``CHATD_MAX_FRAME``);
a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from . import __version__, clientcli
from .config import Config, parse_duration, parse_size

DEFAULTS = Config()


def _env(name: str, default: Any, parse: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get("CHATD_" + name.upper().replace("-", "_"))
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SystemExit(f"chatd: CHATD_{name.upper().replace('-', '_')}: {exc}") from None


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def add_serve(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="run the chat daemon",
        description="Run the chat daemon: WebSocket at /ws, web page at /, /healthz, /metrics. "
        "Every flag can also be set as an environment variable CHATD_<FLAG> "
        "(e.g. CHATD_DB, CHATD_MAX_FRAME); the command line wins. Durations are "
        "seconds (floats allowed) or a number with s, m, h or d.",
    )
    d = DEFAULTS

    def dur(flag: str, default: float, text: str) -> None:
        name = flag.removeprefix("--")
        p.add_argument(
            flag, type=_duration, metavar="DURATION",
            default=_env(name, default, parse_duration),
            help=f"{text} (env CHATD_{name.upper().replace('-', '_')}; default {_human(default)})",
        )

    def num(flag: str, kind: Callable[[str], Any], default: float, text: str) -> None:
        name = flag.removeprefix("--")
        env = "CHATD_" + name.upper().replace("-", "_")
        p.add_argument(
            flag, type=kind, metavar="N", default=_env(name, default, kind),
            help=f"{text} (env {env}; default {default:g})",
        )

    p.add_argument("--db", default=_env("db", d.db),
                   help=f"sqlite database file, created if missing (env CHATD_DB; default {d.db})")
    p.add_argument("--host", default=_env("host", d.host),
                   help=f"address to listen on (env CHATD_HOST; default {d.host})")
    p.add_argument("--port", type=int, default=_env("port", d.port, int),
                   help=f"TCP port; 0 picks a free one (env CHATD_PORT; default {d.port})")
    dur("--message-ttl", d.message_ttl, "delete messages older than this")
    dur("--channel-ttl", d.channel_ttl, "delete channels with no new message for this long")
    dur("--event-ttl", d.event_ttl, "drop retained events older than this (moves the horizon)")
    dur("--expire-interval", d.expire_interval, "how often expiry runs")
    p.add_argument(
        "--open-signup", action=argparse.BooleanOptionalAction,
        default=_env("open_signup", d.open_signup, _bool),
        help="create unknown users on first login (env CHATD_OPEN_SIGNUP=true|false; "
        "default on)",
    )
    p.add_argument("--max-frame", type=_size, metavar="BYTES",
                   default=_env("max_frame", d.max_frame, parse_size),
                   help="largest accepted WebSocket message; larger closes with 1009 "
                   f"(env CHATD_MAX_FRAME; default {d.max_frame})")
    p.add_argument(
        "--allow-origin", action="append", metavar="ORIGIN", dest="allow_origin",
        default=None,
        help="browser Origin allowed at the handshake, repeatable; '*' allows any. Default: "
        "the server's own origin (env CHATD_ALLOW_ORIGIN, comma-separated)",
    )
    dur("--token-ttl", d.token_ttl, "lifetime of a login token")
    p.add_argument("--send-buffer-limit", type=_size, metavar="BYTES",
                   default=_env("send_buffer_limit", d.send_buffer_limit, parse_size),
                   help="unsent bytes per connection before its live events pause and it is "
                   "caught up from the store (env CHATD_SEND_BUFFER_LIMIT; default "
                   f"{d.send_buffer_limit})")
    dur("--slow-reader-timeout", d.slow_reader_timeout,
        "close a connection with 4000 when its buffer stays full this long")
    dur("--drain-timeout", d.drain_timeout,
        "on SIGTERM/SIGINT, how long in-flight commands may take before exit")
    p.add_argument(
        "--rate-limits", action=argparse.BooleanOptionalAction,
        default=_env("rate_limits", d.rate_limits, _bool),
        help="per-connection and per-user command rate limits; --no-rate-limits turns them "
        "off (login throttling stays on) (env CHATD_RATE_LIMITS; default on)",
    )
    num("--conn-rate", float, d.conn_rate, "commands per second per connection")
    num("--conn-burst", float, d.conn_burst,
        "commands a connection may send at once above its rate")
    num("--user-rate", float, d.user_rate,
        "commands per second per user, over all its connections")
    num("--user-burst", float, d.user_burst, "commands a user may send at once above its rate")
    num("--login-failures", int, d.login_failures,
        "failed logins per name within --login-window before logins with that name are "
        "refused with rate_limited")
    num("--login-failures-per-address", int, d.login_failures_per_address,
        "failed logins per client address within --login-window before logins from it "
        "are refused with rate_limited")
    dur("--login-window", d.login_window, "the window of --login-failures")
    num("--max-login-failures-per-conn", int, d.max_login_failures_per_conn,
        "failed login/auth attempts on one connection before it is closed with 1008")
    num("--max-connections", int, d.max_connections, "open connections in total (0: no limit)")
    num("--max-connections-per-address", int, d.max_connections_per_address,
        "open connections per client address (0: no limit)")
    dur("--login-timeout", d.login_timeout,
        "close connections that have not logged in after this long (1008)")
    p.add_argument("--log-level", default=_env("log_level", d.log_level),
                   choices=["debug", "info", "warning", "error"],
                   help="log level (env CHATD_LOG_LEVEL; default info)")
    p.add_argument("--log-format", default=_env("log_format", d.log_format),
                   choices=["text", "json"],
                   help="log line format (env CHATD_LOG_FORMAT; default text)")
    p.add_argument("--loop", default=_env("loop", d.loop), choices=["auto", "uvloop", "asyncio"],
                   help="event loop: uvloop when installed (pip install 'chatd[speed]'), or "
                   "asyncio (env CHATD_LOOP; default auto)")
    p.add_argument("--scrypt-n", type=int, default=_env("scrypt_n", d.scrypt_n, int),
                   help=argparse.SUPPRESS)
    p.set_defaults(func=run_serve)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    origins = args.allow_origin
    if origins is None:
        env = os.environ.get("CHATD_ALLOW_ORIGIN", "")
        origins = [o.strip() for o in env.split(",") if o.strip()]
    return Config(
        db=args.db,
        host=args.host,
        port=args.port,
        message_ttl=args.message_ttl,
        channel_ttl=args.channel_ttl,
        event_ttl=args.event_ttl,
        expire_interval=args.expire_interval,
        open_signup=args.open_signup,
        max_frame=args.max_frame,
        allow_origins=tuple(origins),
        token_ttl=args.token_ttl,
        send_buffer_limit=args.send_buffer_limit,
        slow_reader_timeout=args.slow_reader_timeout,
        drain_timeout=args.drain_timeout,
        rate_limits=args.rate_limits,
        conn_rate=args.conn_rate,
        conn_burst=args.conn_burst,
        user_rate=args.user_rate,
        user_burst=args.user_burst,
        login_failures=args.login_failures,
        login_failures_per_address=args.login_failures_per_address,
        login_window=args.login_window,
        max_login_failures_per_conn=args.max_login_failures_per_conn,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        login_timeout=args.login_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
        loop=args.loop,
        scrypt_n=args.scrypt_n,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured ``extra`` fields are kept as keys."""

    _STANDARD = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every failed handshake at INFO/ERROR; keep it to warnings.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(config.log_level, config.log_format)
    log = logging.getLogger("chatd")
    # The address line is printed whatever the level: without it nobody knows the port.
    listen_log = logging.getLogger("chatd.listen")
    listen_log.setLevel(logging.INFO)

    def listening(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        listen_log.info(
            "serving on ws://%s:%d/ws (web page http://%s:%d/) with db %s (loop: %s)",
            shown, port, shown, port, os.path.abspath(config.db), loop,
            extra={"event": "listening", "host": host, "port": port,
                   "db": os.path.abspath(config.db)},
        )

    try:
        _loop_runner(config.loop)(_run(config, listening))
    except ImportError as exc:
        log.error("cannot serve: --loop %s: %s", config.loop, exc)
        return 1
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def _loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio.run, or uvloop's when asked for or (with "auto") installed."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return run


async def _run(config: Config, listening: Callable[[str, int], None]) -> None:
    from .server import serve

    await serve(config, on_listening=listening)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd",
        description="chatd: a self-hosted realtime chat daemon. "
        "`chatd serve` runs it; the other commands are a client for it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = add_serve(sub)
    clientcli.register(sub)
    flags = [f for a in serve._actions if a.option_strings and a.help != argparse.SUPPRESS
             for f in a.option_strings if f not in ("-h", "--help")]
    parser.epilog = textwrap.fill(
        "flags of `chatd serve` (each also from env CHATD_<FLAG>; `chatd serve --help` "
        "explains each): " + " ".join(flags),
        width=78, break_on_hyphens=False, break_long_words=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        sys.exit(2)
    sys.exit(func(args))
