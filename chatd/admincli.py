"""``chatd user …``: the operator's account commands, on the database itself.

They open the database named by ``--db`` (or ``CHATD_DB``) directly, whether or
not a daemon serves it, and apply the same rules as the protocol's commands
(:mod:`chatd.rules`) with the operator as the actor: no admin is needed, which is
how a closed server gets its first admin. A running daemon sees the effect
within its token check (``token_check_interval``, 2 s): a deactivated user's
connections are closed with 4001, as are those of a user whose password was
reset; roles and invites are read from the database at each command anyway.

Passwords are read from the terminal without echo, or from the first line of
standard input when it is not a terminal; never from the command line, where
``ps`` would show them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import crypto, validate, wire
from .config import Config, parse_duration
from .exceptions import ChatdError, ProtocolError
from .ops import ChangePasswordOp, CreateInviteOp, CreateUserOp, Op, SetActiveOp, SetRoleOp
from .store import Store, open_store


class _Usage(Exception):
    """A mistake of the operator's: one line on stderr, exit 2."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``chatd user ACTION``; each sets ``func``."""
    p = subparsers.add_parser(
        "user", help="manage accounts on the database directly (the operator's commands)",
        description="Manage accounts on the database directly, whether or not a daemon "
        "serves it; a running daemon applies the changes within a few seconds.",
    )
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=os.environ.get("CHATD_DB") or Config().db,
                    help="sqlite database file or postgresql:// URL (env CHATD_DB; "
                    "default %(default)s)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions_add = actions.add_parser

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return actions_add(name, help=text, description=text, parents=[db])

    a = action("add", "create a user (asks for its password)")
    a.add_argument("name")
    a.add_argument("--admin", action="store_true", help="make it an admin")
    action("list", "list the users: id, name, role, state")
    a = action("set-role", "make a user an admin or a member")
    a.add_argument("name")
    a.add_argument("role", choices=["admin", "member"])
    a = action("deactivate", "deactivate a user: it cannot log in")
    a.add_argument("name")
    a = action("reactivate", "let a deactivated user log in again")
    a.add_argument("name")
    a = action("reset-password", "set a user's password (asks for it); ends its tokens")
    a.add_argument("name")
    a = action("invite", "make an invite code for closed sign-up")
    a.add_argument("--uses", type=int, default=1, help="accounts it may make (1 to 1000)")
    a.add_argument("--ttl", default="7d", help="how long it is valid (default 7d)")
    a.add_argument("--url", help="the chat page's address, to print an invite link "
                   "(e.g. https://chat.example.com/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except _Usage as exc:
        print(f"chatd user: {exc}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"chatd user: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ChatdError as exc:
        print(f"chatd user: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    action: Callable[[Store, argparse.Namespace], Awaitable[None]] = _ACTIONS[args.action]
    password = _read_password(args.name) if args.action in ("add", "reset-password") else None
    store = open_store(args.db)
    await store.open()
    try:
        if password is not None:
            args.password = password
        await action(store, args)
    finally:
        await store.close()
    return 0


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise _Usage("the passwords differ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        return validate.password(password)
    except ProtocolError as exc:
        raise _Usage(exc.message) from None


async def _apply(store: Store, op: Op) -> Any:
    (result,), _ = await store.apply([op], int(time.time() * 1000))
    if isinstance(result, Exception):
        raise result
    return result


async def _user(store: Store, name: str) -> wire.Account:
    key = validate.name_key(name.strip())
    user = await store.user_by_name(key)
    if user is None:
        raise _Usage(f"no user named {name!r}")
    return wire.Account(user.id, user.name, user.role, user.active)


def _line(user: wire.Account) -> str:
    return f"{user.id}\t{user.name}\t{user.role}\t{'active' if user.active else 'inactive'}"


async def _add(store: Store, args: argparse.Namespace) -> None:
    try:
        name, key = validate.name("name", args.name)
    except ProtocolError as exc:
        raise _Usage(exc.message) from None
    if await store.user_by_name(key) is not None:
        raise _Usage(f"a user named {args.name!r} exists")
    pw_hash = await asyncio.to_thread(crypto.hash_password, args.password)
    user = await _apply(store, CreateUserOp(name, key, pw_hash,
                                            role="admin" if args.admin else None))
    print(_line(wire.Account(user.id, user.name, user.role, user.active)))


async def _list(store: Store, args: argparse.Namespace) -> None:
    for user in await store.users():
        print(_line(user))


async def _set_role(store: Store, args: argparse.Namespace) -> None:
    user = await _user(store, args.name)
    print(_line(await _apply(store, SetRoleOp(None, user.id, args.role))))


async def _set_active(store: Store, args: argparse.Namespace, active: bool) -> None:
    user = await _user(store, args.name)
    print(_line(await _apply(store, SetActiveOp(None, user.id, active))))


async def _reset_password(store: Store, args: argparse.Namespace) -> None:
    user = await _user(store, args.name)
    pw_hash = await asyncio.to_thread(crypto.hash_password, args.password)
    await _apply(store, ChangePasswordOp(user.id, pw_hash, None))
    print(f"password of {user.name} set; its tokens are ended")


async def _invite(store: Store, args: argparse.Namespace) -> None:
    if not 1 <= args.uses <= 1000:
        raise _Usage("--uses: from 1 to 1000")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise _Usage(f"--ttl: {exc}") from None
    # An invite names who made it: the operator's are made in the name of an admin.
    admins = [u for u in await store.users() if u.role == "admin" and u.active]
    if not admins:
        raise _Usage("there is no active admin yet: make one with 'chatd user add NAME --admin'")
    code = crypto.new_token()
    expires = int((time.time() + ttl) * 1000)
    invite = await _apply(store, CreateInviteOp(
        wire.User(admins[0].id, admins[0].name), crypto.new_id("I"), crypto.token_hash(code),
        args.uses, expires))
    print(f"invite {invite.id}: {args.uses} use(s) until {invite.expires_at}")
    print(f"code: {code}")
    if args.url:
        # In the fragment: a browser never sends it to the server, so no log has it.
        print(f"link: {args.url.rstrip('/')}/#invite={code}")


_ACTIONS: dict[str, Callable[[Store, argparse.Namespace], Awaitable[None]]] = {
    "add": _add,
    "list": _list,
    "set-role": _set_role,
    "deactivate": lambda store, args: _set_active(store, args, False),
    "reactivate": lambda store, args: _set_active(store, args, True),
    "reset-password": _reset_password,
    "invite": _invite,
}
