"""The daemon's configuration: one typed, immutable object passed in, never global."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

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


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the daemon can be told. Defaults are PROTOCOL.md's."""

    db: str = "./chatd.db"
    host: str = "127.0.0.1"
    port: int = 8765

    # expiry (seconds)
    message_ttl: float = 90 * DAY
    channel_ttl: float = 90 * DAY
    event_ttl: float = 7 * DAY
    expire_interval: float = 60.0
    #: rows one expiry transaction touches at most; a long backlog runs as several.
    expire_batch: int = 2000

    open_signup: bool = True
    max_frame: int = 65536
    #: browser origins allowed at the handshake; empty means "the server's own origin".
    allow_origins: tuple[str, ...] = ()

    #: lifetime of a login token.
    token_ttl: float = 30 * DAY
    #: how long a send nonce stays idempotent (PROTOCOL.md: at least 24 hours).
    nonce_ttl: float = DAY

    # fanout and slow readers (PROTOCOL.md guarantee 4)
    #: bytes a connection may have unsent before live events stop being written to
    #: it; it is then caught up from the store once its buffer has drained.
    send_buffer_limit: int = 256 * 1024
    #: a connection whose buffer stays over the limit this long is closed with 4000.
    slow_reader_timeout: float = 30.0
    #: events per store read when replaying or catching up.
    replay_batch: int = 1000

    # commands
    #: commands one connection may have in flight before the server stops reading it.
    max_inflight: int = 64
    #: state changes committed in one transaction at most (group commit).
    max_commit_batch: int = 512
    #: consecutive bad_request frames before the server closes with 1008.
    max_bad_frames: int = 20

    # abuse limits (docs/security.md lists each with its test)
    #: command rate limits on or off; login throttling stays on either way.
    rate_limits: bool = True
    #: commands per second per connection, and the burst above that rate.
    conn_rate: float = 500.0
    conn_burst: float = 1000.0
    #: commands per second per user over all of its connections, and the burst.
    user_rate: float = 1000.0
    user_burst: float = 2000.0
    #: failed logins per name, and per client address, within login_window before
    #: further logins are refused with rate_limited.
    login_failures: int = 10
    login_failures_per_address: int = 50
    login_window: float = 60.0
    #: failed login/auth attempts on one connection before it is closed with 1008.
    max_login_failures_per_conn: int = 10
    #: open connections in total and per client address (0: no limit).
    max_connections: int = 10_000
    max_connections_per_address: int = 1000
    #: a connection that has not logged in after this long is closed with 1008.
    login_timeout: float = 30.0

    # shutdown
    drain_timeout: float = 10.0

    # logging
    log_level: str = "info"
    log_format: str = "text"

    #: event loop: "auto" (uvloop when installed), "uvloop" or "asyncio".
    loop: str = "auto"

    #: scrypt cost parameter n (memory = 128 * n * r bytes); tests may lower it.
    scrypt_n: int = 2**14

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
