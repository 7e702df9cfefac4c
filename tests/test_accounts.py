"""Accounts a team can run (PROTOCOL.md "Users, roles and sign-up"), over real
WebSocket: roles, invites, administration, password changes, and close 4001."""

from __future__ import annotations

from typing import Any

import pytest

from chatd.client import Client
from chatd.exceptions import ConnectFailed, Forbidden, Unauthorized

from .helpers import (
    PASSWORD,
    client,
    close_code,
    expect_error,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
)
from .support import WS

FAST = ("--scrypt-n", "1024")


async def test_roles_and_the_admin_commands(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "alice") as alice, client(d.url, "bob") as bob:
        assert (await alice.ok("boot"))["user"]["role"] == "admin", "the first account"
        assert (await bob.ok("boot"))["user"]["role"] == "member"
        bob_id = bob.me["user"]["id"]
        users = (await bob.ok("users"))["users"]
        assert [(u["name"], u["role"], u["active"]) for u in users] == [
            ("alice", "admin", True), ("bob", "member", True)]
        assert set(users[0]) == {"id", "name", "role", "active"}
        for op, args in [("set_role", {"user": bob_id, "role": "admin"}),
                         ("deactivate_user", {"user": bob_id}),
                         ("reactivate_user", {"user": bob_id}),
                         ("create_invite", {}), ("list_invites", {}),
                         ("revoke_invite", {"invite": "Inope"})]:
            await expect_error(bob, "forbidden", op, **args)
        await expect_error(alice, "not_found", "set_role", user="Unope", role="admin")
        bad = await expect_error(alice, "bad_request", "set_role", user=bob_id, role="owner")
        assert "$.role" in bad["message"]
        await expect_error(alice, "conflict", "set_role", user=alice.me["user"]["id"],
                           role="member")
        await expect_error(alice, "conflict", "deactivate_user", user=alice.me["user"]["id"])
        made = await alice.ok("set_role", user=bob_id, role="admin")
        assert made["user"] == {"id": bob_id, "name": "bob", "role": "admin", "active": True}
        # an admin deletes what others made
        channel = (await alice.ok("create_channel", name="general"))["channel"]["id"]
        message = (await alice.ok("send", channel=channel, body="hi"))["message"]["id"]
        await bob.ok("delete_message", message=message)
        await bob.ok("delete_channel", channel=channel)


async def test_closed_sign_up_with_invites(make_daemon: Any) -> None:
    d = await make_daemon(*FAST, "--no-open-signup")
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="root", password=PASSWORD)
    # the operator's first admin would come from `chatd user add`; open a second
    # daemon on the same file with open sign-up to make it here
    await d.kill()
    d.args = [a for a in d.args if a != "--no-open-signup"]
    await d.start()
    async with client(d.url, "root"):
        pass
    await d.kill()
    d.args.append("--no-open-signup")
    await d.start()
    async with client(d.url, "root") as root:
        made = (await root.ok("create_invite", uses=2, ttl=3600))["invite"]
        assert set(made) == {"id", "code", "expires_at", "uses_left", "created_by"}
        assert made["id"].startswith("I") and len(made["code"]) >= 22
        assert made["uses_left"] == 2 and made["created_by"] == root.me["user"]
        listed = (await root.ok("list_invites"))["invites"]
        assert listed == [{k: v for k, v in made.items() if k != "code"}]
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="carol", password=PASSWORD,
                           invite="not-a-code")
        await ws.ok("login", name="carol", password=PASSWORD, invite=made["code"])
    async with WS.connect(d.url) as ws:
        await ws.ok("login", name="dave", password=PASSWORD, invite=made["code"])
        # an existing name logs in without one
        await ws.ok("login", name="carol", password=PASSWORD)
    async with WS.connect(d.url) as ws:
        reply = await expect_error(ws, "unauthorized", "login", name="erin",
                                   password=PASSWORD, invite=made["code"])
        assert "used up" in reply["message"]
    async with client(d.url, "root") as root:
        assert (await root.ok("list_invites"))["invites"] == []
        other = (await root.ok("create_invite"))["invite"]
        await root.ok("revoke_invite", invite=other["id"])
        await expect_error(root, "not_found", "revoke_invite", invite=other["id"])
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="erin", password=PASSWORD,
                           invite=other["code"])


async def test_logout_closes_the_token_elsewhere_with_4001(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "alice") as a:
        token = a.me["token"]
        async with client(d.url, token=token) as other, client(d.url, "alice") as mine:
            await a.ok("logout")
            assert await close_code(other) == 4001
            await expect_error(a, "unauthorized", "boot")  # logged out, still open
            await mine.ok("boot")  # another token of the same user is untouched


async def test_change_password_keeps_this_token_and_ends_the_others(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "alice") as a, client(d.url, "alice") as b:
        await expect_error(a, "unauthorized", "change_password", password="wrong-one",
                           new_password="new-secret-2")
        await a.ok("change_password", password=PASSWORD, new_password="new-secret-2")
        assert await close_code(b) == 4001
        await a.ok("boot")
    async with WS.connect(d.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="alice", password=PASSWORD)
        await ws.ok("login", name="alice", password="new-secret-2")


async def test_deactivation_closes_with_4001_and_refuses_logins(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with client(d.url, "alice") as admin, client(d.url, "bob") as bob:
        bob_id, token = bob.me["user"]["id"], bob.me["token"]
        channel = (await bob.ok("create_channel", name="bobs"))["channel"]["id"]
        await bob.ok("send", channel=channel, body="stays")
        reply = await admin.ok("deactivate_user", user=bob_id)
        assert reply["user"]["active"] is False
        assert await close_code(bob) == 4001
        async with WS.connect(d.url) as ws:
            await expect_error(ws, "unauthorized", "auth", token=token)
            refused = await expect_error(ws, "unauthorized", "login", name="bob",
                                         password=PASSWORD)
            assert "deactivated" in refused["message"]
        history = (await admin.ok("history", channel=channel))["messages"]
        assert [m["body"] for m in history] == ["stays"], "its messages stay"
        await admin.ok("reactivate_user", user=bob_id)
        async with client(d.url, "bob") as again:
            await again.ok("boot")


async def test_the_client_library_does_not_reuse_an_ended_token(make_daemon: Any) -> None:
    d = await make_daemon(*FAST)
    async with Client(d.url, name="alice", password=PASSWORD) as admin:
        token = admin.token
        assert token is not None
        assert (await admin.users()).users[0].role == "admin"
        invite = (await admin.create_invite(uses=1, ttl=600)).invite
        assert invite.code and (await admin.list_invites()).invites[0].id == invite.id
        with_token = Client(d.url, token=token, reconnect_delays=lambda: [0.05] * 3)
        await with_token.connect()
        async with WS.connect(d.url) as ws:
            await ws.ok("auth", token=token)
            await ws.ok("logout")
        with pytest.raises((Unauthorized, ConnectFailed)):
            for _ in range(100):  # the drop arrives; the client must give up, not retry
                await with_token.ping()
        await with_token.close()
        bob = Client(d.url, name="bob", password=PASSWORD)
        async with bob:
            with pytest.raises(Forbidden):
                await bob.create_invite()
