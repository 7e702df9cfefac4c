"""The daemon's configuration: one typed, immutable object passed in, never global.

Each field of :class:`Config` is also the one definition of its ``chatd serve``
flag: :func:`flag` puts the flag's help text and kind into the field's metadata,
and :mod:`chatd.cli` builds the parser, the ``CHATD_*`` environment variables and
the Config from them. A field made with :func:`no_flag` is set only in code.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]i?[bB]?|[bB])?\s*$")

DAY = 86400.0


def parse_duration(text: str) -> float:
    """Seconds from ``"1.5"``, ``"30s"``, ``"10m"``, ``"2h"`` or ``"90d"``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use seconds, or a number with s/m/h/d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """Bytes from ``"65536"``, ``"64KiB"``, ``"1MiB"``."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size in bytes: {text!r}")
    unit = (m.group(2) or "b")[0].lower()
    return int(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 * 1024}[unit]


#: How a flag's text is parsed and shown: a duration ("90d"), a size ("64KiB"), a
#: number, an on/off switch (--x/--no-x), a string, one of ``choices``, or the
#: repeatable --allow-origin (env: a comma-separated list).
Kind = Literal["duration", "size", "int", "float", "bool", "str", "choice", "origins"]


@dataclass(frozen=True)
class Flag:
    """The ``chatd serve`` flag of a :class:`Config` field (``--message-ttl`` and
    ``CHATD_MESSAGE_TTL`` for ``message_ttl``)."""

    help: str
    kind: Kind
    choices: tuple[str, ...] = ()
    #: accepted but left out of --help (a knob for tests).
    hidden: bool = False
    #: the flag's name without ``--`` when it is not the field's (``allow-origin``).
    name: str = ""
    #: argparse's metavar when the kind's (DURATION, BYTES, N, ORIGIN) does not fit.
    metavar: str | None = None


def flag(default: Any, kind: Kind, help: str, **more: Any) -> Any:
    """A Config field that is also a ``chatd serve`` flag; ``more`` are :class:`Flag`'s."""
    return field(default=default, metadata={"flag": Flag(help=help, kind=kind, **more)})


def no_flag(default: Any) -> Any:
    """A Config field with no flag: only code sets it (tests, an embedding program)."""
    return field(default=default, metadata={"flag": None})


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the daemon can be told. Defaults are PROTOCOL.md's; each field is
    made with :func:`flag` or :func:`no_flag`, in the order of ``chatd serve --help``."""

    db: str = flag("./chatd.db", "str",
                   "sqlite database file (created if missing), or a postgresql:// URL")
    host: str = flag("127.0.0.1", "str", "address to listen on")
    port: int = flag(8765, "int", "TCP port; 0 picks a free one", metavar="PORT")

    # expiry (seconds)
    message_ttl: float = flag(90 * DAY, "duration", "delete messages older than this")
    channel_ttl: float = flag(90 * DAY, "duration",
                              "delete channels with no new message for this long")
    event_ttl: float = flag(7 * DAY, "duration",
                            "drop retained events older than this (moves the horizon)")
    expire_interval: float = flag(60.0, "duration", "how often expiry runs")
    #: rows one expiry transaction touches at most; a long backlog runs as several.
    expire_batch: int = no_flag(2000)

    open_signup: bool = flag(True, "bool", "create unknown users on first login")
    max_frame: int = flag(65536, "size",
                          "largest accepted WebSocket message; larger closes with 1009")
    #: empty means "the server's own origin".
    allow_origins: tuple[str, ...] = flag(
        (), "origins", "browser Origin allowed at the handshake, repeatable; '*' allows any. "
        "Default: the server's own origin", name="allow-origin")

    #: when set, /metrics answers only a request with "Authorization: Bearer TOKEN".
    metrics_token: str = flag(
        "", "str", "a bearer token /metrics requires (Authorization: Bearer TOKEN); "
        "empty: /metrics is open. Prefer the environment variable: ps shows flags",
        metavar="TOKEN")

    token_ttl: float = flag(30 * DAY, "duration", "lifetime of a login token")
    #: how long a send nonce stays idempotent (PROTOCOL.md: at least 24 hours).
    nonce_ttl: float = no_flag(DAY)

    # fanout and slow readers (PROTOCOL.md guarantee 4)
    #: once over the limit, live events stop being written to the connection; it is
    #: then caught up from the store once its buffer has drained.
    send_buffer_limit: int = flag(
        256 * 1024, "size", "unsent bytes per connection before its live events pause and it "
        "is caught up from the store")
    slow_reader_timeout: float = flag(
        30.0, "duration", "close a connection with 4000 when its buffer stays full this long")
    #: events per store read when replaying or catching up.
    replay_batch: int = no_flag(1000)
    #: with a shared database (several nodes), how often the event tail reads the
    #: events table when no notification woke it: the latency bound of a lost one.
    tail_poll_interval: float = no_flag(0.5)
    #: how often each node checks that the tokens of its logged-in connections
    #: still exist: a logout (or an operator's change) on another node, or in
    #: the database directly, reaches this node's connections within this time.
    token_check_interval: float = no_flag(2.0)

    # typing and presence (PROTOCOL.md "Ephemeral frames")
    #: PROTOCOL.md fixes it at one second; a flag only so that tests need no sleeps.
    typing_interval: float = flag(
        1.0, "duration", "forward at most one typing per user and channel this often",
        hidden=True)
    #: how long typing and presence frames are gathered before they are written,
    #: one write per connection (chatd.fanout): fewer writes in a typing storm.
    ephemeral_flush: float = no_flag(0.05)
    presence_heartbeat: float = flag(
        1.0, "duration", "with PostgreSQL: how often each node renews its heartbeat and "
        "re-reads who is online on the other nodes")
    presence_expiry: float = flag(
        5.0, "duration", "with PostgreSQL: a node whose heartbeat is older than this is taken "
        "for dead and its users are announced offline (keep it a few heartbeats long)")

    # shutdown
    drain_timeout: float = flag(
        10.0, "duration", "on SIGTERM/SIGINT, how long in-flight commands may take before exit")

    # commands
    #: commands one connection may have in flight before the server stops reading it.
    max_inflight: int = no_flag(64)
    #: state changes committed in one transaction at most (group commit).
    max_commit_batch: int = no_flag(512)
    inline_commit: bool = flag(
        True, "bool", "with sqlite, commit a lone state change on the event loop's thread "
        "when the writer is idle (no hand-off to the writer thread and back; the loop waits "
        "for that one fsync); --no-inline-commit always uses the writer thread, for disks "
        "whose fsync takes milliseconds")
    search_index_batch: int = flag(
        64, "int", "with sqlite, the search index may trail by up to about N messages, "
        "written together, which spares a lone send ~100 µs of CPU (searches read the "
        "trailing messages directly and still find every committed one; the expiry round "
        "catches up); 0 writes each message's index entry in the message's own transaction")
    #: consecutive bad_request frames before the server closes with 1008.
    max_bad_frames: int = no_flag(20)

    # abuse limits (docs/security.md lists each with its test)
    rate_limits: bool = flag(
        True, "bool", "per-connection and per-user command rate limits; --no-rate-limits "
        "turns them off (login throttling stays on)")
    conn_rate: float = flag(500.0, "float", "commands per second per connection")
    conn_burst: float = flag(1000.0, "float",
                             "commands a connection may send at once above its rate")
    user_rate: float = flag(1000.0, "float",
                            "commands per second per user, over all its connections")
    user_burst: float = flag(2000.0, "float", "commands a user may send at once above its rate")
    login_failures: int = flag(
        10, "int", "failed logins per name within --login-window before logins with that "
        "name are refused with rate_limited")
    login_failures_per_address: int = flag(
        50, "int", "failed logins per client address within --login-window before logins "
        "from it are refused with rate_limited")
    login_window: float = flag(60.0, "duration", "the window of --login-failures")
    max_login_failures_per_conn: int = flag(
        10, "int", "failed login/auth attempts on one connection before it is closed with 1008")
    max_connections: int = flag(10_000, "int", "open connections in total (0: no limit)")
    max_connections_per_address: int = flag(
        1000, "int", "open connections per client address (0: no limit)")
    login_timeout: float = flag(
        30.0, "duration", "close connections that have not logged in after this long (1008)")

    # logging
    log_level: str = flag("info", "choice", "log level",
                          choices=("debug", "info", "warning", "error"))
    log_format: str = flag("text", "choice", "log line format", choices=("text", "json"))

    loop: str = flag(
        "auto", "choice", "event loop: uvloop when installed (pip install 'chatd[speed]'), or "
        "asyncio", choices=("auto", "uvloop", "asyncio"))

    #: scrypt cost parameter n (memory = 128 * n * r bytes); tests may lower it.
    scrypt_n: int = flag(2**14, "int", "scrypt cost parameter n", hidden=True)

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def flags() -> list[tuple[str, Flag]]:
    """(field name, its flag) for every Config field that is a flag, in order."""
    out = []
    for f in dataclasses.fields(Config):
        if "flag" not in f.metadata:
            raise TypeError(f"Config.{f.name}: make it with flag() or no_flag()")
        if f.metadata["flag"] is not None:
            out.append((f.name, f.metadata["flag"]))
    return out
