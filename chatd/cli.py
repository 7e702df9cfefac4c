"""The ``chatd`` command: ``chatd serve`` runs the daemon; ``chatd migrate``,
``backup`` and ``export`` work on its database (:mod:`chatd.dbtools`); client
commands come from :mod:`chatd.clientcli`. Every ``serve`` flag can also come from an
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
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from . import __version__, admincli, clientcli
from .config import Config, Flag, flags, parse_duration, parse_size
from .exceptions import StartupError

DEFAULTS = Config()


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


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


#: Per flag kind: how its environment variable is parsed (ValueError when it cannot
#: be), argparse's type= for the command line, and the metavar in --help.
_ENV_PARSE: dict[str, Callable[[str], Any]] = {
    "duration": parse_duration, "size": parse_size, "int": int, "float": float,
    "bool": _bool, "str": str, "choice": str, "origins": _origins,
}
_ARG_TYPE: dict[str, Callable[[str], Any]] = {
    "duration": _duration, "size": _size, "int": int, "float": float,
}
_METAVAR = {"duration": "DURATION", "size": "BYTES", "int": "N", "float": "N",
            "origins": "ORIGIN"}


class _ServeFlag:
    """A Config field's ``chatd serve`` flag: its option, env variable and values."""

    def __init__(self, field: str, flag: Flag) -> None:
        self.field = field
        self.flag = flag
        name = flag.name or field.replace("_", "-")
        self.option = "--" + name
        self.env = "CHATD_" + name.upper().replace("-", "_")

    def from_env(self) -> Any:
        """The value of its environment variable, or the Config default without one."""
        default = getattr(DEFAULTS, self.field)
        raw = os.environ.get(self.env)
        if raw is None or raw == "":
            return default
        try:
            value = _ENV_PARSE[self.flag.kind](raw)
            if self.flag.choices and value not in self.flag.choices:
                raise ValueError(f"{raw!r} is not one of {', '.join(self.flag.choices)}")
        except ValueError as exc:
            raise SystemExit(f"chatd: {self.env}: {exc}") from None
        return value

    def help(self) -> str:
        fl, default = self.flag, getattr(DEFAULTS, self.field)
        if fl.hidden:
            return argparse.SUPPRESS
        if fl.kind == "origins":
            return f"{fl.help} (env {self.env}, comma-separated)"
        if fl.kind == "bool":
            return f"{fl.help} (env {self.env}=true|false; default {'on' if default else 'off'})"
        shown = (_human(default) if fl.kind == "duration"
                 else f"{default:g}" if fl.kind == "float" else str(default))
        return f"{fl.help} (env {self.env}; default {shown})"

    def add_to(self, p: argparse.ArgumentParser) -> None:
        kind = self.flag.kind
        kw: dict[str, Any] = {"dest": self.field, "help": self.help()}
        metavar = self.flag.metavar or _METAVAR.get(kind)
        if metavar:
            kw["metavar"] = metavar
        if kind == "bool":
            kw.update(action=argparse.BooleanOptionalAction, default=self.from_env())
        elif kind == "origins":
            # Appended to, so the environment is read in config_from_args: a flag on
            # the command line replaces the env list instead of adding to it.
            kw.update(action="append", default=None)
        else:
            kw.update(type=_ARG_TYPE.get(kind), default=self.from_env(),
                      choices=self.flag.choices or None)
        p.add_argument(self.option, **kw)


SERVE_FLAGS = [_ServeFlag(name, fl) for name, fl in flags()]


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
    for f in SERVE_FLAGS:
        f.add_to(p)
    p.set_defaults(func=run_serve)
    return p


def add_db_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``chatd migrate``, ``backup`` and ``export``: the database, without a daemon
    (:mod:`chatd.dbtools`)."""
    db = argparse.ArgumentParser(add_help=False)
    env_db = os.environ.get("CHATD_DB") or DEFAULTS.db
    db.add_argument("--db", default=env_db,
                    help="sqlite database file or postgresql:// URL "
                    f"(env CHATD_DB; default {DEFAULTS.db})")

    def add(name: str, text: str, more: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[db], help=text, description=text + more)

    p = add("migrate", "upgrade the database's schema to this chatd's version",
            ". chatd serve does the same at start; this needs no daemon and prints what it "
            "applied (or 'up to date'). A database newer than this chatd is refused.")
    p.set_defaults(func=lambda a: _tools().run_migrate(a.db))
    p = add("backup", "copy a sqlite database, also while chatd serves it",
            " (sqlite's online backup API; written to a temporary file, checked, renamed "
            "to OUT); prints the copy's epoch and seq. PostgreSQL: use pg_dump.")
    p.add_argument("out", metavar="OUT", help="the backup file to write")
    p.set_defaults(func=lambda a: _tools().run_backup(a.db, a.out))
    p = add("export", "write users, channels and messages as JSON lines",
            ": one line per user (no secrets), then each channel and its messages in seq "
            "order, from one snapshot.")
    p.add_argument("--channel", metavar="ID", help="only this channel (and the users)")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=lambda a: _tools().run_export(a.db, a.channel, a.out))


def _tools() -> Any:
    from . import dbtools

    return dbtools


def config_from_args(args: argparse.Namespace) -> Config:
    values = {}
    for f in SERVE_FLAGS:
        value = getattr(args, f.field)
        if f.flag.kind == "origins":
            value = f.from_env() if value is None else tuple(value)
        values[f.field] = value
    return Config(**values)


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


def shown_db(db: str) -> str:
    """``--db`` for the log: a file as an absolute path, a URL without its password."""
    if "://" not in db:
        return os.path.abspath(db)
    parts = urllib.parse.urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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
            shown, port, shown, port, shown_db(config.db), loop,
            extra={"event": "listening", "host": host, "port": port,
                   "db": shown_db(config.db)},
        )

    try:
        _loop_runner(config.loop)(_run(config, listening))
    except ImportError as exc:
        log.error("cannot serve: --loop %s: %s", config.loop, exc)
        return 1
    except KeyboardInterrupt:
        pass
    except (OSError, StartupError) as exc:
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
        "`chatd serve` runs it; migrate, backup and export work on its database; "
        "the other commands are a client for it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = add_serve(sub)
    add_db_tools(sub)
    clientcli.register(sub)
    admincli.register(sub)
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
