"""The account commands of the command line: ``chatd user …`` on the database
(the operator's, with or without a running daemon) and ``chatd users``,
``chatd invite``, ``chatd passwd`` against the daemon (a user's)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from .helpers import PASSWORD, close_code, expect_error
from .support import UNIT, WS
from .test_clientcli import Cli


async def operator(db: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHATD_DB"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", "user", *args, "--db", str(db),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60 * UNIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_operator_runs_a_closed_server(make_daemon: Any, tmp_path: Path) -> None:
    db = tmp_path / "closed.db"
    # before the daemon ever ran: the first admin of a closed server
    rc, out, err = await operator(db, "add", "root", "--admin", stdin="root-pw-1\n")
    assert rc == 0, err
    assert out.split("\t")[1:] == ["root", "admin", "active\n"]
    d = await make_daemon("--scrypt-n", "1024", "--no-open-signup", db=db)
    async with WS.connect(d.url) as ws:
        await ws.ok("login", name="root", password="root-pw-1")
    # while it runs: an invite, used by a new account
    rc, out, err = await operator(db, "invite", "--uses", "1", "--url", d.http + "/")
    assert rc == 0, err
    code = out.split("code: ", 1)[1].split()[0]
    assert f"#invite={code}" in out, "the link carries the code in its fragment"
    async with WS.connect(d.url, max_queue=None) as bob:
        await bob.ok("login", name="bob", password=PASSWORD, invite=code)
        await bob.ok("boot")
        # deactivated on the command line: the daemon closes bob's connection
        rc, out, err = await operator(db, "deactivate", "bob")
        assert rc == 0 and "inactive" in out, err
        assert await close_code(bob, within=15) == 4001
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="bob", password=PASSWORD)
    assert (await operator(db, "reactivate", "bob"))[0] == 0
    assert (await operator(db, "reset-password", "bob", stdin="bob-new-pw\n"))[0] == 0
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="bob", password=PASSWORD)
        await ws.ok("login", name="bob", password="bob-new-pw")
    rc, out, _ = await operator(db, "list")
    assert [line.split("\t")[1:3] for line in out.splitlines()] == [
        ["bob", "member"], ["root", "admin"]]
    rc, _, err = await operator(db, "set-role", "root", "member")
    assert rc == 1 and "no active admin" in err
    rc, _, err = await operator(db, "deactivate", "nobody")
    assert rc == 2 and "no user named 'nobody'" in err


async def test_the_user_commands(daemon: Any, tmp_path: Path) -> None:
    root, bob = Cli(tmp_path / "root", daemon.url), Cli(tmp_path / "bob", daemon.url)
    await root.login("root")
    await bob.login("bob")
    lines = (await bob.ok("users")).splitlines()
    assert [line.split("\t")[1:] for line in lines] == [
        ["bob", "member", "active"], ["root", "admin", "active"]]
    rc, _, err = await bob.run("invite", "create")
    assert rc == 1 and "forbidden" in err
    out = await root.ok("invite", "create", "--uses", "3", "--ttl", "1h")
    invite_id, code = out.split("\t")[:2]
    assert f"/#invite={code}" in out
    assert invite_id in await root.ok("invite", "list")
    await root.ok("invite", "revoke", invite_id)
    assert invite_id not in await root.ok("invite", "list")
    assert "admin" in await root.ok("set-role", "bob", "admin")
    assert "inactive" in await root.ok("deactivate", "bob")
    assert "\tactive" in await root.ok("reactivate", "bob")
    await bob.login("bob")
    await bob.ok("passwd", "--password-stdin", stdin=f"{PASSWORD}\nbob-new-pw-2\n")
    async with WS.connect(daemon.url) as ws:
        await ws.ok("login", name="bob", password="bob-new-pw-2")
