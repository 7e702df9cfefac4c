"""Make tests/data/chatd-0.1.0.db (and its record, chatd-0.1.0.json) with chatd 0.1.0.

Run ONCE, against the 0.1.0 tree (commit 742c0c1), by its own daemon; only the
protocol is used, as a user of 0.1.0 would have made the data::

    git -C /work/main worktree add --detach /tmp/chatd-010 742c0c1
    /work/main/.venv/bin/python tests/data/make_010_db.py --tree /tmp/chatd-010

The daemon runs from ``--tree`` (``python -m chatd serve`` with that directory
as its working directory and first on the path). What it makes:

1. alice, then bob, sign up (alice is the older account); each keeps a token
   (issued with --token-ttl 36500d, so it outlives the test data);
2. alice creates #general, #random and #doomed; both send to #general and
   #random; alice sends once with a nonce; two messages are deleted; #doomed
   gets a message and is deleted;
3. a second daemon, with --event-ttl 2s, expires those events (the horizon
   moves above 0), then a few more messages are sent and it stops at once;
4. a third, with the default TTLs, reads the final state.

The JSON record holds what the upgrade test compares: the users (ids,
passwords, tokens), the channels, every message by history, the nonce send's
first ok, the epoch, seq and horizon, and every retained event (subscribe
since=horizon). The database is left in WAL mode, as 0.1.0 leaves it, checkpointed into one
file (no -wal) and vacuumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import websockets

HERE = Path(__file__).resolve().parent
PASSWORDS = {"alice": "alice-pw-0.1.0", "bob": "bob-pw-0.1.0"}


class Daemon:
    def __init__(self, tree: Path, db: Path, *flags: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--db", str(db), "--port", "0",
             "--scrypt-n", "1024", "--token-ttl", "36500d", *flags],
            cwd=tree, env=env, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/ws", line)
            if m:
                self.url = f"ws://127.0.0.1:{m.group(1)}/ws"
                return
        raise SystemExit("the 0.1.0 daemon did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0


class Conn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0
        self.events: list[dict[str, Any]] = []

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.n += 1
        ref = f"r{self.n}"
        await self.ws.send(json.dumps({"op": op, "ref": ref, **args}))
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame.get("type") == "event":
                self.events.append(frame)
            elif frame.get("ref") == ref:
                return frame

    async def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = await self.request(op, **args)
        assert reply["type"] == "ok", reply
        return reply


@asynccontextmanager
async def connect(url: str, name: str | None = None) -> AsyncIterator[Conn]:
    async with websockets.connect(url) as ws:
        conn = Conn(ws)
        if name is not None:
            await conn.ok("login", name=name, password=PASSWORDS[name])
        yield conn


async def phase_one(url: str, record: dict[str, Any]) -> None:
    users = record["users"] = {}
    for name in ("alice", "bob"):  # alice first: the oldest account
        async with connect(url) as c:
            reply = await c.ok("login", name=name, password=PASSWORDS[name])
            users[name] = {"id": reply["user"]["id"], "password": PASSWORDS[name],
                           "token": reply["token"]}
        await asyncio.sleep(0.01)  # distinct created_ms
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        channels = {}
        for name in ("general", "random", "doomed"):
            channels[name] = (await alice.ok("create_channel", name=name))["channel"]["id"]
        general, random, doomed = channels["general"], channels["random"], channels["doomed"]
        await alice.ok("send", channel=general, body="hello from 0.1.0")
        await bob.ok("send", channel=general, body="hi alice")
        first = await alice.ok("send", channel=general, body="sent once, with a nonce",
                               nonce="nonce-0.1.0")
        record["nonce"] = {"user": "alice", "channel": general, "nonce": "nonce-0.1.0",
                           "body": "sent once, with a nonce", "ok": first}
        gone = await bob.ok("send", channel=general, body="bob deletes this one")
        await bob.ok("delete_message", message=gone["message"]["id"])
        await alice.ok("send", channel=random, body="random thought")
        oops = await alice.ok("send", channel=random, body="alice deletes this one")
        await alice.ok("delete_message", message=oops["message"]["id"])
        await bob.ok("send", channel=doomed, body="in a channel about to go")
        await alice.ok("delete_channel", channel=doomed)
        record["deleted_channel"] = doomed
        record["deleted_messages"] = [gone["message"]["id"], oops["message"]["id"]]
        del channels["doomed"]
        record["channels"] = channels


async def horizon_of(url: str) -> int:
    async with connect(url, "alice") as c:
        reply = await c.request("subscribe", since=0)
        if reply["type"] == "ok":
            return 0
        assert reply["code"] == "resume_gap", reply
        return int(reply["horizon"])


async def phase_two(url: str, record: dict[str, Any]) -> None:
    for _ in range(200):
        if await horizon_of(url) > 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise SystemExit("the horizon did not move")
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        general, random = record["channels"]["general"], record["channels"]["random"]
        await bob.ok("send", channel=general, body="after the horizon moved")
        await alice.ok("send", channel=random, body="the last message of 0.1.0")


async def final_state(url: str, record: dict[str, Any]) -> None:
    async with connect(url, "alice") as c:
        boot = await c.ok("boot")
        record["epoch"] = boot["epoch"]
        record["seq"] = boot["resume_point"]
        record["boot_channels"] = boot["channels"]
        record["history"] = {
            cid: (await c.ok("history", channel=cid, limit=500))["messages"]
            for cid in record["channels"].values()
        }
    record["horizon"] = await horizon_of(url)
    async with connect(url, "alice") as c:
        await c.ok("subscribe", since=record["horizon"], epoch=record["epoch"])
        while not c.events or c.events[-1]["seq"] < record["seq"]:
            c.events.append(json.loads(await asyncio.wait_for(c.ws.recv(), 10)))
        record["events"] = c.events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, required=True, help="a checkout of chatd 0.1.0")
    ap.add_argument("--out", type=Path, default=HERE / "chatd-0.1.0.db")
    args = ap.parse_args()
    db: Path = args.out
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    record: dict[str, Any] = {"made_by": "chatd 0.1.0 (742c0c1), tests/data/make_010_db.py"}

    d = Daemon(args.tree, db)
    try:
        asyncio.run(phase_one(d.url, record))
    finally:
        d.stop()
    time.sleep(3)  # phase one's events are now older than the next daemon's --event-ttl
    d = Daemon(args.tree, db, "--event-ttl", "2s", "--expire-interval", "0.2s")
    try:
        asyncio.run(phase_two(d.url, record))
    finally:
        d.stop()
    d = Daemon(args.tree, db)  # default TTLs: nothing expires while the state is read
    try:
        asyncio.run(final_state(d.url, record))
    finally:
        d.stop()
    assert record["horizon"] > 0 and record["seq"] > record["horizon"], record

    # As 0.1.0 leaves it (WAL mode, checkpointed at close), compacted: one small file.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not Path(f"{db}-wal").exists()
    db.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{db}: epoch {record['epoch']} seq {record['seq']} horizon {record['horizon']},"
          f" {db.stat().st_size} bytes")


if __name__ == "__main__":
    main()
