"""edit_message over real WebSocket: the live event, replay after an edit, the
client library and command line, and the old text gone from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatd.client import Client

from .helpers import (
    PASSWORD,
    client,
    expect_error,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
)
from .sqlite_file import db_bytes, query
from .test_clientcli import Cli


async def test_an_edit_reaches_subscribers_and_rewrites_history(daemon: Any) -> None:
    async with client(daemon.url, "alice") as a, client(daemon.url, "bob") as b:
        channel = (await a.ok("create_channel", name="general"))["channel"]["id"]
        await b.ok("subscribe")
        sent = (await a.ok("send", channel=channel, body="old words-Q7x"))["message"]
        await expect_error(b, "forbidden", "edit_message", message=sent["id"], body="x")
        await expect_error(a, "not_found", "edit_message", message="Mnope", body="x")
        await expect_error(a, "bad_request", "edit_message", message=sent["id"], body="")
        ok = await a.ok("edit_message", message=sent["id"], body="new words")
        assert set(ok) == {"type", "ref", "message", "channel"}
        edited = ok["message"]
        same = ("id", "seq", "at")
        assert {k: edited[k] for k in same} == {k: sent[k] for k in same}
        assert edited["body"] == "new words" and edited["edited_at"] >= sent["at"]
        event = await b.next_event()
        while event["kind"] != "message.edited":
            event = await b.next_event()
        assert event["message"] == {"id": sent["id"], "body": "new words",
                                    "edited_at": edited["edited_at"]}
        assert event["sender"] == a.me["user"]
        (shown,) = (await a.ok("history", channel=channel))["messages"]
        assert shown == edited
        replay = await stored_log(daemon.url, a.me["token"], event["seq"])
        bodies = {e["message"].get("body") for e in replay if "message" in e}
        assert bodies == {"new words"}, "a replayed message.sent carries the latest body"
    # the old text is in no table, and not in the file once the WAL is checkpointed
    await daemon.terminate()
    assert not [r for r in query(daemon.db, "SELECT body FROM messages") if "Q7x" in r[0]]
    raw = await db_bytes(daemon.db)
    assert b"new words" in raw and b"old words-Q7x" not in raw


async def test_the_client_and_the_command_line_edit(daemon: Any, tmp_path: Path) -> None:
    async with Client(daemon.url, name="alice", password=PASSWORD) as chat:
        channel = (await chat.create_channel("general")).channel
        sent = (await chat.send(channel.id, "typo")).message
        ok = await chat.edit_message(sent.id, "fixed")
        assert ok.message.edited_at and ok.message.body == "fixed"
    cli = Cli(tmp_path, daemon.url)
    await cli.login("alice")
    out = await cli.ok("edit", sent.id, "fixed again")
    assert f"edited {sent.id}" in out
    assert "fixed again (edited)" in await cli.ok("history", "general")
