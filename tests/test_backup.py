"""``chatd backup``: a consistent copy of a sqlite database while the daemon serves
it under load, that a daemon then serves; PostgreSQL is pointed at pg_dump."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from .helpers import (
    all_history,
    assert_same_stream,
    chatd,
    client,
    healthz_seq,
    server_log_guard,  # noqa: F401
    stored_log,
    wait_for,
)
from .sqlite_file import query
from .support import Daemon

BACKUP_LINE = re.compile(r"^backup (?P<out>.+): epoch (?P<epoch>\S+) seq (?P<seq>\d+) ")


async def test_a_backup_under_load_is_consistent_and_serves(make_daemon: Any,
                                                            tmp_path: Path) -> None:
    live: Daemon = await make_daemon("--no-rate-limits")
    out = tmp_path / "backups" / "chatd-backup.db"
    out.parent.mkdir()
    #: (monotonic time of the ack, message id), per sender
    acked: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async with client(live.url, "alice") as alice:
        general = (await alice.ok("create_channel", name="general"))["channel"]["id"]
        token = alice.me["token"]  # type: ignore[attr-defined]

        async def sender(name: str) -> None:
            async with client(live.url, name) as ws:
                i = 0
                while not stop.is_set():
                    reply = await ws.ok("send", channel=general, body=f"{name} {i}")
                    acked.append((time.monotonic(), reply["message"]["id"]))
                    i += 1

        senders = [asyncio.create_task(sender(f"sender{k}")) for k in range(4)]
        try:
            await wait_for(lambda: len(acked) >= 200, what="200 acked sends")
            began = time.monotonic()
            code, stdout, err = await chatd("backup", "--db", str(live.db), str(out))
            ended = time.monotonic()
            count_at_end = len(acked)
            # the load goes on after the backup
            await wait_for(lambda: len(acked) >= count_at_end + 100, what="100 sends more")
        finally:
            stop.set()
            await asyncio.gather(*senders)
        assert code == 0, err
        m = BACKUP_LINE.match(stdout)
        assert m and m["out"] == str(out), stdout
        backup_seq = int(m["seq"])
        boot = await alice.ok("boot")
        live_seq = await healthz_seq(live.http)
        assert boot["resume_point"] <= live_seq
        assert 0 < backup_seq <= live_seq
        assert any(began < t < ended for t, _ in acked), "sends were acked during the backup"
        assert any(t > ended for t, _ in acked), "the load ran on after the backup"
        before = {mid for t, mid in acked if t < began}
        original = await stored_log(live.url, token, backup_seq)

    # One file, no leftovers; it passes sqlite's own check.
    assert os.listdir(out.parent) == [out.name]
    assert query(out, "PRAGMA integrity_check") == [("ok",)]

    restored: Daemon = await make_daemon(db=out)
    async with client(restored.url, token=token) as ws:  # a token of before the backup
        boot2 = await ws.ok("boot")
        assert boot2["epoch"] == boot["epoch"] == m["epoch"]
        assert boot2["resume_point"] == backup_seq
        kept = {msg["id"] for msg in await all_history(ws, general)}
        assert before <= kept, f"{len(before - kept)} acked messages are not in the backup"
    copied = await stored_log(restored.url, token, backup_seq)
    assert_same_stream(copied, original, "the restored daemon's replay since=0")
    assert copied[-1]["seq"] == backup_seq


async def test_backup_refuses_what_it_cannot_copy(tmp_path: Path, pg_url: str) -> None:
    code, out, err = await chatd("backup", "--db", pg_url, str(tmp_path / "x.dump"))
    assert code == 2 and out == "", err
    assert "pg_dump --format=custom --file" in err and "docs/operations.md" in err, err
    assert not (tmp_path / "x.dump").exists()

    code, _, err = await chatd("backup", "--db", str(tmp_path / "missing.db"),
                               str(tmp_path / "copy.db"))
    assert code == 1 and "no database at" in err, err
    assert os.listdir(tmp_path) == []
