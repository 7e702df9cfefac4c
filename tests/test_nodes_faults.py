"""Several nodes when PostgreSQL goes away and comes back, under load: commands
answer ``unavailable`` meanwhile, /healthz says 503, nothing acknowledged is
lost, and every node's tail resumes without a gap."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .helpers import (
    Pump,
    all_history,
    assert_strictly_increasing,
    client,
    http_get,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
    stored_log,
)
from .pg import local_server
from .support import UNIT


async def health(http: str) -> int:
    try:
        return (await http_get(http + "/healthz"))[0]
    except OSError:
        return 0


async def until_health(http: str, status: int, within: float = 30) -> None:
    deadline = time.monotonic() + within * UNIT
    while await health(http) != status:
        assert time.monotonic() < deadline, f"{http}/healthz never answered {status}"
        await asyncio.sleep(0.1)


async def test_postgresql_restart_under_load(make_daemon: Any) -> None:
    with local_server() as server:  # its own server: this test stops it
        _, url = server.create_database()
        a = await make_daemon("--scrypt-n", "1024", "--no-rate-limits", db=url)
        b = await make_daemon("--scrypt-n", "1024", "--no-rate-limits", db=url)
        async with client(a.url, "alice") as ws:
            token = ws.me["token"]
            channel = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        acked: dict[str, int] = {}
        unavailable = 0
        stop = False

        async def sender(http_url: str, tag: str) -> None:
            nonlocal unavailable
            async with client(http_url, token=token) as ws:
                i = 0
                while not stop:
                    reply = await ws.request("send", channel=channel, body=f"{tag}-{i}",
                                             nonce=f"{tag}-{i}", timeout=60)
                    if reply["type"] == "ok":
                        acked[reply["message"]["id"]] = reply["message"]["seq"]
                        i += 1
                    else:
                        assert reply["code"] == "unavailable", reply
                        unavailable += 1
                        await asyncio.sleep(0.05)  # and again with the same nonce

        async with client(b.url, token=token) as sub:
            await sub.ok("subscribe", since=0)
            pump = Pump(sub)
            senders = [asyncio.ensure_future(sender(d.url, f"{n}{j}"))
                       for n, d in (("a", a), ("b", b)) for j in range(3)]
            try:
                await asyncio.sleep(1.0)
                before = len(acked)
                await asyncio.to_thread(server.stop)
                await until_health(a.http, 503)
                await until_health(b.http, 503)
                await asyncio.sleep(1.0)
                during = len(acked)
                await asyncio.to_thread(server.start)
                await until_health(a.http, 200)
                await until_health(b.http, 200)
                await asyncio.sleep(1.0)
            finally:
                stop = True
                await asyncio.gather(*senders)
            assert before > 20 and len(acked) > during + 20, (before, during, len(acked))
            assert unavailable > 0, "commands were refused while the database was down"
            last = max(acked.values())
            live = [e for e in await pump.until(last) if e["seq"] <= last]
            await pump.stop()
        assert_strictly_increasing(live)
        assert live == await stored_log(a.url, token, last), "the tail resumed without a gap"
        async with client(a.url, token=token) as ws:
            stored = {m["id"]: m["seq"] for m in await all_history(ws, channel)}
        missing = {m: s for m, s in acked.items() if stored.get(m) != s}
        assert not missing, f"{len(missing)} acknowledged sends lost"
        await a.kill()
        await b.kill()
