"""Operator commands on top of :mod:`chatd.client`: login, channels, send, tail, ...

Every command takes ``--url`` (env ``CHATD_URL``). ``chatd login`` saves the
token in ``$XDG_CONFIG_HOME/chatd/tokens.json`` (or ``~/.config/chatd/``), mode
0600, keyed by URL; the other commands log in with it. Output goes to stdout,
one line per item; failures print one line ``chatd: ...`` on stderr and exit 1
(2 for usage errors, 130 on Ctrl-C, except ``tail`` which exits 0).

One-shot commands give up on an unreachable server after a few quick retries;
``tail`` reconnects for ever (delays capped at 5 s) and resumes where it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from . import wire
from .client import DEFAULT_URL, Client, Reset, backoff
from .config import parse_duration
from .exceptions import ChatdError, ProtocolError, Unauthorized
from .validate import name_key

TOKENS_FILE = "tokens.json"

# One-shot commands: a few quick retries cover a server that is just starting.
ONE_SHOT_DELAYS: Callable[[], Iterable[float]] = partial(backoff, first=0.2, cap=1.0, attempts=3)
TAIL_DELAYS: Callable[[], Iterable[float]] = partial(backoff, first=0.1, cap=5.0)


class CliError(Exception):
    """A failure with a message fit for the one line on stderr."""


# ------------------------------------------------------------------ token store


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/chatd``, or ``~/.config/chatd`` when it is unset or relative
    (the XDG spec says to ignore a relative one)."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "chatd"


class TokenStore:
    """Saved logins, one per server URL, in a JSON file only the user can read.

    ``{"ws://host:port/ws": {"token": ..., "user": {"id": ..., "name": ...}}}``.
    Written to a temporary file created 0600 and renamed over the old one, so a
    crash never leaves a half-written file and the token is never readable by
    others, not even for a moment.
    """

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {self.path}: {exc}") from None
        return data if isinstance(data, dict) else {}

    def get(self, url: str) -> dict[str, Any] | None:
        entry = self.load().get(url)
        return entry if isinstance(entry, dict) and isinstance(entry.get("token"), str) else None

    def put(self, url: str, token: str, user: wire.User) -> None:
        data = self.load()
        data[url] = {"token": token, "user": {"id": user.id, "name": user.name}}
        self._save(data)

    def remove(self, url: str) -> bool:
        data = self.load()
        if data.pop(url, None) is None:
            return False
        self._save(data)
        return True

    def _save(self, data: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    fd = -1
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.write("\n")
            finally:
                if fd >= 0:
                    os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CliError(f"cannot save the token in {self.path}: {exc}") from None


# ------------------------------------------------------------------ formatting

# Bodies and names come from other users: control characters (ESC above all)
# must not reach the operator's terminal, and newlines would break one-line output.
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {
    0x7F: "\\x7f", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\",
}


def escape(text: str) -> str:
    out = text.translate(_ESCAPES)
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in out):
        out = "".join(
            f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
            for c in out
        )
    return out


def format_event(event: wire.Event) -> str:
    """The human one-line form of an event: ``seq at #channel what``."""
    head = f"{event.seq} {event.at} #{escape(event.channel.name)}"
    if event.kind in ("message.sent", "message.edited"):
        sender = escape(event.sender.name) if event.sender else "?"
        body = escape(event.message.body or "") if event.message else ""
        edited = " (edited)" if event.message and event.message.edited_at else ""
        return f"{head} <{sender}> {body}{edited}"
    if event.kind == "message.deleted":
        mid = event.message.id if event.message else "?"
        return f"{head} message {mid} deleted"
    if event.kind == "channel.created":
        return f"{head} channel created"
    if event.kind == "channel.deleted":
        return f"{head} channel deleted"
    if event.kind in ("member.added", "member.removed") and event.user is not None:
        return f"{head} {_member_change(event.kind, event.user, event.by)}"
    if event.kind == "read.updated":
        return f"{head} read up to {event.read_seq} ({event.unread} unread)"
    return f"{head} {event.kind}"


def format_message(message: wire.Message) -> str:
    edited = " (edited)" if message.edited_at else ""
    return (f"{message.seq} {message.at} <{escape(message.sender.name)}> "
            f"{escape(message.body)}{edited}")


_C = TypeVar("_C", wire.Channel, wire.BootChannel)


def resolve_channel(channels: Sequence[_C], ref: str) -> _C:
    """A channel by id, else by name compared the way the server compares names."""
    for channel in channels:
        if channel.id == ref:
            return channel
    key = name_key(unicodedata.normalize("NFC", ref).strip())
    for channel in channels:
        if name_key(channel.name) == key:
            return channel
    raise CliError(f"no channel named {ref!r} (see 'chatd channels')")


# ------------------------------------------------------------------ commands


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to the ``chatd`` parser. Each sets ``func``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("CHATD_URL") or DEFAULT_URL,
        help="server WebSocket URL (env CHATD_URL; default %(default)s)",
    )
    common.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="how long to wait for the server (default %(default)s)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log connection events on stderr"
    )

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = subparsers.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = add("login", cmd_login, "log in (signing up if the server allows) and save the token")
    p.add_argument("--name", required=True, help="user name")
    p.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from stdin instead of asking for it",
    )
    add("logout", cmd_logout, "end the saved token on the server and forget it")
    add("channels", cmd_channels, "list the channels you can see: id, name, kind")
    p = add("create-channel", cmd_create_channel, "create a channel")
    p.add_argument("name")
    p.add_argument("--private", action="store_true",
                   help="only its members see it (you are the first; add others with add-member)")
    p = add("send", cmd_send, "send a message")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    p.add_argument("text", metavar="TEXT")
    p = add("edit", cmd_edit, "replace the text of one of your messages")
    p.add_argument("message", metavar="MESSAGE", help="message id (chatd history shows it)")
    p.add_argument("text", metavar="TEXT")
    p = add("history", cmd_history, "print the latest messages of a channel, oldest first")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    p.add_argument("--limit", type=int, default=100, help="how many (1 to 500)")
    p.add_argument("--before", type=int, metavar="SEQ", help="only messages before this seq")
    p.add_argument("--json", action="store_true", help="print each message as JSON")
    p = add("search", cmd_search, "find messages by their words, newest first")
    p.add_argument("query", metavar="WORDS",
                   help='the words; "quoted words" must be together; the last word may be'
                   " the beginning of one")
    p.add_argument("--channel", metavar="NAME", help="only this channel (name or id)")
    p.add_argument("--limit", type=int, default=20, help="how many (1 to 100)")
    p.add_argument("--before", type=int, metavar="SEQ", help="only messages before this seq")
    p.add_argument("--json", action="store_true", help="print each hit as JSON")
    p = add("tail", cmd_tail, "print events as they happen; reconnects and resumes by itself")
    p.add_argument("--since", type=int, metavar="SEQ", help="start after this seq (default: now)")
    p.add_argument(
        "--channel", action="append", metavar="NAME", dest="channels",
        help="only this channel (name or id); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print each event's wire object")
    add("users", cmd_users, "list the users: id, name, role, state")
    p = add("passwd", cmd_passwd, "change your password (asks for the current and the new one)")
    p.add_argument(
        "--password-stdin", action="store_true",
        help="read the current and the new password from two lines of stdin",
    )
    p = add("invite", cmd_invite, "invites for closed sign-up (admins): create, list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("invite", nargs="?", metavar="ID", help="the invite to revoke")
    p.add_argument("--uses", type=int, default=1, help="accounts it may make (default 1)")
    p.add_argument("--ttl", default="7d", help="how long it is valid (default 7d)")
    for name, text in (("set-role", "make a user an admin or a member (admins)"),
                       ("deactivate", "deactivate a user (admins)"),
                       ("reactivate", "reactivate a user (admins)")):
        p = add(name, cmd_account, text)
        p.set_defaults(account_action=name)
        p.add_argument("name", help="user name")
        if name == "set-role":
            p.add_argument("role", choices=["admin", "member"])
    _register_members(add)


def _run(
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    *,
    interrupted: int = 130,
) -> int:
    if args.verbose:
        logging.basicConfig(format="chatd: %(message)s", stream=sys.stderr)
        logging.getLogger("chatd.client").setLevel(logging.INFO)
    else:
        # The command prints its own one-line error; the client's log would repeat it.
        logging.getLogger("chatd.client").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(body(args))
    except KeyboardInterrupt:
        return interrupted
    except CliError as exc:
        _fail(str(exc))
    except Unauthorized as exc:
        if getattr(args, "func", None) is cmd_login:
            _fail(f"login refused: {exc.message}")
        else:
            _fail(
                f"the saved token for {args.url} was refused ({exc.message}); "
                "log in again with 'chatd login --name NAME'"
            )
    except ProtocolError as exc:
        _fail(f"{exc.code}: {exc.message}")
    except ChatdError as exc:
        _fail(str(exc) or type(exc).__name__)
    except BrokenPipeError:
        # The reader went away (``| head``): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1


def _fail(message: str) -> None:
    print(f"chatd: {message}", file=sys.stderr)


def _store() -> TokenStore:
    return TokenStore(config_dir() / TOKENS_FILE)


def _client(args: argparse.Namespace, delays: Callable[[], Iterable[float]]) -> Client:
    saved = _store().get(args.url)
    if saved is None:
        raise CliError(f"not logged in to {args.url}; run 'chatd login --name NAME' first")
    return Client(args.url, token=saved["token"], timeout=args.timeout, reconnect_delays=delays)


def _print(line: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(line + "\n")
    out.flush()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.read()
        # Only the line end a shell or `echo` adds; other white space may be meant.
        password = password.removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass(f"password for {args.name}: ")
        except EOFError:
            raise CliError("no password given (use --password-stdin to pipe it)") from None
    if not password:
        raise CliError("empty password")
    return password


def cmd_login(args: argparse.Namespace) -> int:
    return _run(args, _login)


async def _login(args: argparse.Namespace) -> int:
    # Read before connecting, so that a slow typist does not hold a connection;
    # blocking is fine here, nothing else runs yet.
    password = _read_password(args)
    client = Client(
        args.url, name=args.name, password=password, timeout=args.timeout,
        reconnect_delays=ONE_SHOT_DELAYS,
    )
    async with client:
        assert client.token is not None and client.user is not None
        _store().put(args.url, client.token, client.user)
        _print(f"logged in to {args.url} as {client.user.name} ({client.user.id})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    return _run(args, _logout)


async def _logout(args: argparse.Namespace) -> int:
    client = _client(args, ONE_SHOT_DELAYS)
    try:
        async with client:
            await client.logout()
    except Unauthorized:
        pass  # already ended on the server: forgetting it is all that is left
    _store().remove(args.url)
    _print(f"logged out of {args.url}")
    return 0


def cmd_channels(args: argparse.Namespace) -> int:
    return _run(args, _channels)


async def _channels(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        boot = await client.boot()
    for channel in boot.channels:
        _print(_channel_line(channel))
    return 0


def _channel_line(channel: wire.Channel | wire.BootChannel) -> str:
    """``id, name, kind``: the kind column marks the private and dm channels."""
    return f"{channel.id}\t{escape(channel.name)}\t{channel.kind}"


def cmd_create_channel(args: argparse.Namespace) -> int:
    return _run(args, _create_channel)


async def _create_channel(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        ok = await client.create_channel(args.name, private=args.private)
    _print(_channel_line(ok.channel))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    return _run(args, _send)


async def _send(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = resolve_channel((await client.boot()).channels, args.channel)
        ok = await client.send(channel.id, args.text)
    _print(f"sent {ok.message.id} (seq {ok.message.seq}) to #{escape(ok.channel.name)}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    return _run(args, _history)


async def _history(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 500:
        raise CliError("--limit must be between 1 and 500")
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = resolve_channel((await client.boot()).channels, args.channel)
        ok = await client.history(channel.id, before=args.before, limit=args.limit)
    for message in ok.messages:
        _print(wire.encode(message).decode() if args.json else format_message(message))
    if ok.more and ok.messages and not args.json:
        _print(f"(older messages exist: --before {ok.messages[0].seq})", sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    return _run(args, _search)


async def _search(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100:
        raise CliError("--limit must be between 1 and 100")
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel_id = None
        if args.channel is not None:
            channel_id = resolve_channel((await client.boot()).channels, args.channel).id
        ok = await client.search(args.query, channel_id, before=args.before, limit=args.limit)
    for hit in ok.messages:
        _print(wire.encode(hit).decode() if args.json
               else f"#{escape(hit.channel.name)} {format_message(hit)}")
    if ok.more and ok.messages and not args.json:
        _print(f"(older matches exist: --before {ok.messages[-1].seq})", sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    return _run(args, _tail, interrupted=0)


async def _tail(args: argparse.Namespace) -> int:
    async with _client(args, TAIL_DELAYS) as client:
        channel_ids = None
        if args.channels:
            known = (await client.boot()).channels
            channel_ids = [resolve_channel(known, ref).id for ref in args.channels]
        async for item in client.events(since=args.since, channels=channel_ids):
            if isinstance(item, Reset):
                _print(
                    f"chatd: the server no longer has the events after our position "
                    f"(horizon {item.gap.horizon}); some were missed; continuing after seq "
                    f"{item.boot.resume_point}",
                    sys.stderr,
                )
            elif not isinstance(item, wire.Event):
                continue  # an ephemeral frame: tail does not ask for them
            elif args.json:
                _print(wire.encode(item).decode())
            else:
                _print(format_event(item))
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    return _run(args, _users)


def _account_line(user: wire.Account) -> str:
    state = "active" if user.active else "inactive"
    return f"{user.id}\t{escape(user.name)}\t{user.role}\t{state}"


async def _users(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        ok = await client.users()
    for user in ok.users:
        _print(_account_line(user))
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    return _run(args, _passwd)


async def _passwd(args: argparse.Namespace) -> int:
    if args.password_stdin:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise CliError("--password-stdin: give the current and the new password, a line each")
        current, new = lines[0], lines[1]
    else:
        try:
            current = getpass.getpass("current password: ")
            new = getpass.getpass("new password: ")
            if getpass.getpass("new password again: ") != new:
                raise CliError("the new passwords differ")
        except EOFError:
            raise CliError("no password given (use --password-stdin to pipe them)") from None
    async with _client(args, ONE_SHOT_DELAYS) as client:
        await client.change_password(current, new)
    _print("password changed; your other sessions are logged out")
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    return _run(args, _invite)


async def _invite(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        if args.action == "create":
            try:
                ttl = int(parse_duration(args.ttl))
            except ValueError as exc:
                raise CliError(f"--ttl: {exc}") from None
            invite = (await client.create_invite(args.uses, ttl)).invite
            _print(f"{invite.id}\t{invite.code}\t{invite.uses_left} use(s) until "
                   f"{invite.expires_at}")
            # The link carries the code in its fragment: browsers never send that.
            page = args.url.replace("ws://", "http://").replace("wss://", "https://")
            _print(f"link: {page.removesuffix('/ws')}/#invite={invite.code}")
        elif args.action == "list":
            for invite in (await client.list_invites()).invites:
                _print(f"{invite.id}\t{invite.uses_left} use(s) until {invite.expires_at}"
                       f"\tby {escape(invite.created_by.name)}")
        else:
            if not args.invite:
                raise CliError("revoke: which invite? (chatd invite list)")
            await client.revoke_invite(args.invite)
            _print(f"revoked {args.invite}")
    return 0


def cmd_account(args: argparse.Namespace) -> int:
    return _run(args, _account)


async def _account(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        key = name_key(args.name.strip())
        found = [u for u in (await client.users()).users if name_key(u.name) == key]
        if not found:
            raise CliError(f"no user named {args.name!r} (see 'chatd users')")
        user = found[0]
        if args.account_action == "set-role":
            ok = await client.set_role(user.id, args.role)
        elif args.account_action == "reactivate":
            ok = await client.reactivate_user(user.id)
        else:
            ok = await client.deactivate_user(user.id)
    _print(_account_line(ok.user))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    return _run(args, _edit)


async def _edit(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        ok = await client.edit_message(args.message, args.text)
    _print(f"edited {ok.message.id} (seq {ok.message.seq}) in #{escape(ok.channel.name)}")
    return 0


# ------------------------------------------------ membership, dms, read positions


def _member_change(kind: str, user: wire.User, by: wire.User | None) -> str:
    who = escape(user.name)
    if kind == "member.added":
        return f"{who} added" + (f" by {escape(by.name)}" if by is not None else "")
    if by is None or by.id == user.id:
        return f"{who} left"
    return f"{who} removed by {escape(by.name)}"


def _register_members(add: Callable[[str, Callable[[argparse.Namespace], int], str], Any]) -> None:
    p = add("dm", cmd_dm, "send a direct message to a user (opens the conversation on first use)")
    p.add_argument("user", metavar="USER", help="user name (chatd users lists them)")
    p.add_argument("text", metavar="TEXT")
    p = add("members", cmd_members, "list the members of a private or dm channel: id, name")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    p = add("add-member", cmd_add_member, "add a user to a private channel you are a member of")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    p.add_argument("user", metavar="USER", help="user name")
    p = add("remove-member", cmd_remove_member,
            "remove a user from a private channel (its creator or an admin)")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    p.add_argument("user", metavar="USER", help="user name")
    p = add("leave", cmd_leave, "leave a private channel (it disappears from your list)")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")
    add("unread", cmd_unread, "list the channels you can see with their unread counts: "
        "name, kind, unread")
    p = add("read", cmd_read, "mark a channel read up to now")
    p.add_argument("channel", metavar="CHANNEL", help="channel name or id")


async def _user_by_name(client: Client, name: str) -> wire.Account:
    """A user by name, compared the way the server compares names."""
    key = name_key(unicodedata.normalize("NFC", name).strip())
    for user in (await client.users()).users:
        if name_key(user.name) == key:
            return user
    raise CliError(f"no user named {name!r} (see 'chatd users')")


async def _channel_by_ref(client: Client, ref: str) -> wire.BootChannel:
    return resolve_channel((await client.boot()).channels, ref)


def cmd_dm(args: argparse.Namespace) -> int:
    return _run(args, _dm)


async def _dm(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        user = await _user_by_name(client, args.user)
        channel = (await client.open_dm(user.id)).channel
        ok = await client.send(channel.id, args.text)
    _print(f"sent {ok.message.id} (seq {ok.message.seq}) to #{escape(channel.name)}")
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    return _run(args, _members)


async def _members(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = await _channel_by_ref(client, args.channel)
        if channel.kind == "public":
            raise CliError(f"#{escape(channel.name)} is public: every user sees it")
        ok = await client.members(channel.id)
    creator = ok.creator.id if ok.creator else None
    for member in ok.members:
        mark = "\tcreator" if member.id == creator else ""
        _print(f"{member.id}\t{escape(member.name)}{mark}")
    return 0


def cmd_add_member(args: argparse.Namespace) -> int:
    return _run(args, _add_member)


async def _add_member(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = await _channel_by_ref(client, args.channel)
        user = await _user_by_name(client, args.user)
        ok = await client.add_member(channel.id, user.id)
    _print(f"added {escape(ok.user.name)} to #{escape(ok.channel.name)}")
    return 0


def cmd_remove_member(args: argparse.Namespace) -> int:
    return _run(args, _remove_member)


async def _remove_member(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = await _channel_by_ref(client, args.channel)
        user = await _user_by_name(client, args.user)
        ok = await client.remove_member(channel.id, user.id)
    _print(f"removed {escape(ok.user.name)} from #{escape(ok.channel.name)}")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    return _run(args, _leave)


async def _leave(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        channel = await _channel_by_ref(client, args.channel)
        ok = await client.leave(channel.id)
    _print(f"left #{escape(ok.channel.name)}")
    return 0


def cmd_unread(args: argparse.Namespace) -> int:
    return _run(args, _unread)


async def _unread(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        boot = await client.boot()
    for channel in boot.channels:
        _print(f"{escape(channel.name)}\t{channel.kind}\t{channel.unread}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    return _run(args, _read)


async def _read(args: argparse.Namespace) -> int:
    async with _client(args, ONE_SHOT_DELAYS) as client:
        boot = await client.boot()
        channel = resolve_channel(boot.channels, args.channel)
        # Up to the snapshot's position: everything the user could have been shown.
        ok = await client.mark_read(channel.id, boot.resume_point)
    _print(f"#{escape(ok.channel.name)} read up to seq {ok.read_seq}; {ok.unread} unread")
    return 0
