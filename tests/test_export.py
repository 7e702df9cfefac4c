"""``chatd export``: users, channels and messages as JSON lines, on both backends,
while the daemon serves the database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import PASSWORD, all_history, chatd, client, server_log_guard  # noqa: F401
from .support import Daemon


@pytest.fixture(params=["sqlite", "postgresql"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon on a fresh database of each backend."""
    if request.param == "postgresql":
        db: Any = request.getfixturevalue("pg_url")
    else:
        db = tmp_path / "chatd.db"
    d = Daemon(db)
    await d.start()
    try:
        yield d
    finally:
        await d.kill()


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_export_users_channels_and_messages(served: Daemon, tmp_path: Path) -> None:
    d = served
    async with client(d.url, "alice") as alice, client(d.url, "bob") as bob:
        token = alice.me["token"]  # type: ignore[attr-defined]
        ids = {"alice": alice.me["user"]["id"], "bob": bob.me["user"]["id"]}  # type: ignore[attr-defined]
        general = (await alice.ok("create_channel", name="general"))["channel"]
        random = (await bob.ok("create_channel", name="random"))["channel"]
        await alice.ok("send", channel=general["id"], body="hello")
        gone = await bob.ok("send", channel=general["id"], body="deleted before the export")
        await bob.ok("delete_message", message=gone["message"]["id"])
        await bob.ok("send", channel=random["id"], body='quotes " and \\ and\nnewline ü')
        await alice.ok("send", channel=general["id"], body="bye")
        history = {c["id"]: await all_history(alice, c["id"]) for c in (general, random)}

        code, out, err = await chatd("export", "--db", str(d.db))
        assert code == 0, err
    got = lines(out)
    users = [o for o in got if o["type"] == "user"]
    assert [(u["id"], u["name"], u["active"]) for u in users] == [
        (ids["alice"], "alice", True), (ids["bob"], "bob", True)]
    assert all(set(u) == {"type", "id", "name", "role", "active"} for u in users)
    assert all(u["role"] in ("admin", "member") for u in users)
    assert got[:2] == users, "users come first"
    want: list[dict[str, Any]] = []
    for channel in (general, random):
        want.append({"type": "channel", "id": channel["id"], "name": channel["name"],
                     "kind": "public"})
        want += [{"type": "message", "channel": channel["id"], **m}
                 for m in history[channel["id"]]]
    assert got[2:] == want
    assert "deleted before the export" not in out
    # No secrets: no password, token, or hash of either.
    assert PASSWORD not in out and token not in out and "scrypt" not in out

    code, only, err = await chatd("export", "--db", str(d.db), "--channel", random["id"],
                                  "--out", str(tmp_path / "random.jsonl"))
    assert (code, only) == (0, ""), err
    assert lines((tmp_path / "random.jsonl").read_text("utf-8")) == [
        *users, *(o for o in want if random["id"] in (o["id"], o.get("channel")))]

    code, _, err = await chatd("export", "--db", str(d.db), "--channel", "Cnope",
                               "--out", str(tmp_path / "nope.jsonl"))
    assert code == 1 and "no channel with id 'Cnope'" in err, err
    assert not (tmp_path / "nope.jsonl").exists()
