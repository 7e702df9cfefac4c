"""search over real WebSocket: what it finds after sends, edits and deletes, its
pages and refusals; the client library and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatd.client import Client

from .helpers import (
    PASSWORD,
    client,
    expect_error,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
)
from .sqlite_file import search_index_check
from .test_clientcli import Cli


def _ids(reply: dict[str, Any]) -> list[str]:
    return [m["id"] for m in reply["messages"]]


@pytest.mark.parametrize("index_batch", ["64", "0"], ids=["trailing", "per-message"])
async def test_search_finds_the_current_words_of_the_channels(make_daemon: Any,
                                                             index_batch: str) -> None:
    """Both search index modes: trailing by up to 64 messages (the default), and
    each message's entry in its own transaction (``--search-index-batch 0``)."""
    daemon = await make_daemon("--search-index-batch", index_batch)
    async with client(daemon.url, "alice") as a, client(daemon.url, "bob") as b:
        general = (await a.ok("create_channel", name="general"))["channel"]
        random = (await b.ok("create_channel", name="random"))["channel"]
        s1 = (await a.ok("send", channel=general["id"], body="Lunch at the Straße café?"))
        s2 = (await b.ok("send", channel=random["id"], body="lunch_time: ﬁsh and chips"))
        s3 = (await b.ok("send", channel=general["id"], body="no lunch today"))
        m1, m2, m3 = s1["message"], s2["message"], s3["message"]

        found = await b.ok("search", query="LUNCH")
        assert _ids(found) == [m3["id"], m2["id"], m1["id"]] and found["more"] is False
        # each hit is the message as history shows it, with its channel
        hit = found["messages"][2]
        assert hit == {**m1, "channel": general}
        assert found["messages"][1]["channel"] == random

        assert _ids(await a.ok("search", query="strasse caf")) == [m1["id"]]
        assert _ids(await a.ok("search", query="fish chi")) == [m2["id"]]
        assert _ids(await a.ok("search", query='"no lunch"')) == [m3["id"]]
        assert _ids(await a.ok("search", query='"lunch no"')) == []
        assert _ids(await a.ok("search", query='"lunc"')) == []  # quoted: whole words
        assert _ids(await a.ok("search", query="lunch", channel=random["id"])) == [m2["id"]]

        # pages: limit, more, before
        page = await a.ok("search", query="lunch", limit=2)
        assert _ids(page) == [m3["id"], m2["id"]] and page["more"] is True
        page = await a.ok("search", query="lunch", limit=2,
                          before=page["messages"][-1]["seq"])
        assert _ids(page) == [m1["id"]] and page["more"] is False

        # an edit: found by its new words only; a delete: never found again
        edited = (await a.ok("edit_message", message=m1["id"], body="dinner instead"))["message"]
        assert _ids(await a.ok("search", query="lunch")) == [m3["id"], m2["id"]]
        (hit,) = (await a.ok("search", query="dinner"))["messages"]
        assert hit == {**edited, "channel": general} and "edited_at" in hit
        await b.ok("delete_message", message=m3["id"])
        assert _ids(await a.ok("search", query="lunch")) == [m2["id"]]
        await b.ok("delete_channel", channel=random["id"])
        assert _ids(await a.ok("search", query="lunch")) == []
        await expect_error(a, "not_found", "search", query="lunch", channel=random["id"])
    # what the index holds is exactly the words of the messages left
    await daemon.terminate()
    search_index_check(daemon.db)


async def test_search_refusals_name_the_field_and_odd_queries_are_text(daemon: Any) -> None:
    async with client(daemon.url) as anonymous:
        await expect_error(anonymous, "unauthorized", "search", query="x")
    async with client(daemon.url, "alice") as a:
        channel = (await a.ok("create_channel", name="general"))["channel"]["id"]
        sent = (await a.ok("send", channel=channel,
                           body='NEAR AND OR NOT "quoted" a*b ^c -d col:val'))["message"]
        for query in ("", "   ", '""', "?!", "_ - *"):
            err = await expect_error(a, "bad_request", "search", query=query)
            assert "$.query" in err["message"], err
        err = await expect_error(a, "bad_request", "search", query="x" * 10_000)
        assert "$.query" in err["message"], err
        err = await expect_error(a, "bad_request", "search", query="x", limit=0)
        assert "$.limit" in err["message"]
        err = await expect_error(a, "bad_request", "search", query="x", limit=101)
        assert "$.limit" in err["message"]
        err = await expect_error(a, "bad_request", "search", query=" ".join("w" * 33))
        assert "$.query" in err["message"]
        await expect_error(a, "bad_request", "search", query=7)
        await expect_error(a, "not_found", "search", query="x", channel="Cnope")
        for query in ("NEAR(a b)", "AND", "OR NOT", '"quoted', "a*", "^c", "-d", "col:val",
                      "a'", "b\\", "x" * 1000, '"a* b"', "NEAR"):
            reply = await a.ok("search", query=query)
            assert _ids(reply) in ([], [sent["id"]]), query
        assert _ids(await a.ok("search", query="near and or not")) == [sent["id"]]
        assert _ids(await a.ok("search", query="col val")) == [sent["id"]]
        assert _ids(await a.ok("search", query='"col val"')) == [sent["id"]]


async def test_the_client_and_the_command_line_search(daemon: Any, tmp_path: Path) -> None:
    async with Client(daemon.url, name="alice", password=PASSWORD) as chat:
        general = (await chat.create_channel("general")).channel
        other = (await chat.create_channel("other")).channel
        first = (await chat.send(general.id, "the quick brown fox")).message
        second = (await chat.send(other.id, "quick thinking")).message
        ok = await chat.search("quick")
        assert [h.id for h in ok.messages] == [second.id, first.id] and not ok.more
        assert ok.messages[1].channel == general and ok.messages[1].body == first.body
        ok = await chat.search("qui", channel=general.id)
        assert [h.id for h in ok.messages] == [first.id]
        ok = await chat.search("quick", limit=1)
        assert [h.id for h in ok.messages] == [second.id] and ok.more
        ok = await chat.search("quick", before=second.seq)
        assert [h.id for h in ok.messages] == [first.id]
    cli = Cli(tmp_path, daemon.url)
    await cli.login("alice")
    out = await cli.ok("search", "QUICK")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("#other ") and "quick thinking" in lines[0]
    assert lines[1].startswith(f"#general {first.seq} ")
    assert "<alice> the quick brown fox" in lines[1]
    out = await cli.ok("search", "quick", "--channel", "general", "--json")
    (hit,) = [json.loads(line) for line in out.splitlines()]
    assert hit["id"] == first.id and hit["channel"]["name"] == "general"
    out = await cli.ok("search", "quick", "--limit", "1")
    assert "quick thinking" in out and "fox" not in out


async def test_a_trailing_search_index_loses_nothing_to_sigkill(make_daemon: Any,
                                                                 tmp_path: Path) -> None:
    """--search-index-batch: acknowledged sends not yet in the index are found
    before and after a SIGKILL, and the index catches up with them afterwards."""
    d = await make_daemon("--search-index-batch", "16", db=tmp_path / "trail.db")
    async with client(d.url, "alice") as a:
        general = (await a.ok("create_channel", name="general"))["channel"]["id"]
        sent = [(await a.ok("send", channel=general, body=f"kiwi {i}"))["message"]["id"]
                for i in range(5)]
        assert _ids(await a.ok("search", query="kiwi")) == sent[::-1]
    await d.kill()
    await d.start()
    async with client(d.url, "alice") as a:
        assert _ids(await a.ok("search", query="kiwi")) == sent[::-1]
        await a.ok("edit_message", message=sent[0], body="mango 0")
        sent += [(await a.ok("send", channel=general, body=f"kiwi {i}"))["message"]["id"]
                 for i in range(5, 16)]  # the sixteenth since the last catch-up
        assert _ids(await a.ok("search", query="kiwi", limit=100)) == sent[:0:-1]
        assert _ids(await a.ok("search", query="mango")) == sent[:1]
    await d.kill()
    search_index_check(d.db)  # every message in the index, with its current words

