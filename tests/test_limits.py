"""Abuse limits, each with its flag (issue 4; docs/security.md lists them).

Command rate limits per connection and per user (token buckets, ``rate_limited``
with ``retry_after``), ``--no-rate-limits``, failed-login throttling per name and
per client address, close 1008 after repeated failed logins on one connection,
connection limits in total and per address, the login timeout, the Origin
allow-list, and that a normal client is never limited by the defaults.

Every test talks to a real daemon over real sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from .helpers import PASSWORD, client, close_code, wait_for
from .sqlite_file import db_rows
from .support import UNIT, WS

FAST = ("--scrypt-n", "1024")  # real logins, cheap hashing


async def pipeline(ws: WS, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every frame at once, then read one reply per frame (events are skipped)."""
    for f in frames:
        await ws.send_raw(json.dumps(f))
    replies = []
    while len(replies) < len(frames):
        frame = await ws.recv(30)
        if frame.get("type") != "event":
            replies.append(frame)
    return replies


def retry_after_all(replies: list[dict[str, Any]]) -> float:
    return max((r.get("retry_after") or 0.0) for r in replies)


def assert_rate_limited(reply: dict[str, Any], ref: Any) -> float:
    assert reply["type"] == "error" and reply["code"] == "rate_limited", reply
    assert reply["ref"] == ref, reply
    assert isinstance(reply["message"], str) and reply["message"], reply
    retry = reply.get("retry_after")
    assert isinstance(retry, int | float) and not isinstance(retry, bool), reply
    assert retry > 0, reply
    return float(retry)


# ------------------------------------------------------------- command rate limits


async def test_conn_rate_limit_replies_rate_limited_with_retry_after(make_daemon):
    d = await make_daemon(*FAST, "--conn-rate", "5", "--conn-burst", "10")
    async with client(d.url, "rl-alice") as ws:
        ch = (await ws.ok("create_channel", name="rl"))["channel"]["id"]
        # The bucket holds 10 and refills at 5/s; login and create_channel took 2.
        frames = [{"op": "ping", "ref": i} for i in range(30)]
        replies = await pipeline(ws, frames)
        # Replies come in command order, each with its own ref.
        assert [r["ref"] for r in replies] == list(range(30))
        ok = [r for r in replies if r["type"] == "ok"]
        limited = [r for r in replies if r["type"] != "ok"]
        assert 1 <= len(ok) < 30 and limited, replies
        retry = max(assert_rate_limited(r, r["ref"]) for r in limited)
        # At 5 commands/s a single token comes back within 0.2 s.
        assert retry <= 0.201, retry

        # A rate-limited send is not executed: nothing is stored for it. (Wait
        # for a few tokens first, so that some of the sends get through.)
        await asyncio.sleep(1.0)
        sends = [{"op": "send", "ref": f"s{i}", "channel": ch, "body": f"flood {i}"}
                 for i in range(40)]
        replies = await pipeline(ws, sends)
        refused = {r["ref"] for r in replies if r["type"] == "error"}
        accepted = {r["ref"]: r for r in replies if r["type"] == "ok"}
        assert refused, "40 pipelined sends at 5/s burst 10 were never limited"
        assert accepted, "no send got through after waiting for the bucket to refill"
        for r in replies:
            if r["type"] == "error":
                assert_rate_limited(r, r["ref"])
        after = await db_rows(d.db)
        stored = {row[6] for table, row in after if table == "messages"}  # body column
        for ref in refused:
            assert f"flood {ref[1:]}" not in stored, f"rate-limited {ref} was stored"
        for ref in accepted:
            assert f"flood {ref[1:]}" in stored

        # After retry_after the connection is served again.
        await asyncio.sleep(retry_after_all(replies) + 0.05)
        assert (await ws.request("ping"))["type"] == "ok"


async def test_user_rate_limit_spans_connections(make_daemon):
    d = await make_daemon(*FAST, "--conn-rate", "1000", "--conn-burst", "1000",
                          "--user-rate", "5", "--user-burst", "12")
    async with WS.connect(d.url) as a:
        token = (await a.login("rl-bob"))["token"]
        async with client(d.url, token=token) as b, client(d.url, "rl-carol") as other:
            # 8 pings on each connection: 16 > 12 for the user, 8 < 1000 per connection.
            ra, rb = await asyncio.gather(
                pipeline(a, [{"op": "ping", "ref": i} for i in range(8)]),
                pipeline(b, [{"op": "ping", "ref": i} for i in range(8)]),
            )
            limited = [r for r in ra + rb if r["type"] == "error"]
            assert limited, "16 commands of one user at burst 12 were never limited"
            for r in limited:
                assert_rate_limited(r, r["ref"])
            assert len([r for r in ra + rb if r["type"] == "ok"]) <= 12 + 1
            # Another user is not affected by rl-bob's bucket.
            ro = await pipeline(other, [{"op": "ping", "ref": i} for i in range(8)])
            assert all(r["type"] == "ok" for r in ro), ro


async def test_no_rate_limits_turns_command_limits_off_but_not_login_throttling(make_daemon):
    d = await make_daemon(*FAST, "--no-rate-limits", "--conn-rate", "1", "--conn-burst", "1",
                          "--user-rate", "1", "--user-burst", "1", "--login-failures", "3",
                          "--login-window", "1h")
    async with client(d.url, "nrl-dave") as ws:
        replies = await pipeline(ws, [{"op": "ping", "ref": i} for i in range(200)])
        assert all(r["type"] == "ok" for r in replies), [r for r in replies if r["type"] != "ok"]
    async with WS.connect(d.url) as ws:
        for _ in range(3):
            r = await ws.request("login", name="nrl-dave", password="wrong")
            assert r["code"] == "unauthorized", r
        r = await ws.request("login", name="nrl-dave", password=PASSWORD)
        assert_rate_limited(r, r["ref"])


# ------------------------------------------------------------- login throttling


async def test_failed_logins_throttled_per_name(make_daemon):
    # 3 failures per name per 12 s: one token comes back every 4 s.
    d = await make_daemon(*FAST, "--login-failures", "3", "--login-window", "12s",
                          "--max-login-failures-per-conn", "100")
    async with WS.connect(d.url) as ws:
        await ws.login("victim")
        await ws.login("bystander")
    async with WS.connect(d.url) as ws:
        for _ in range(3):
            r = await ws.request("login", name="victim", password="guess")
            assert r["code"] == "unauthorized", r
        # Over the limit: even the right password is refused, and so is a
        # case-folded spelling of the same name.
        r = await ws.request("login", name="victim", password=PASSWORD)
        retry = assert_rate_limited(r, r["ref"])
        assert retry <= 12, r
        r = await ws.request("login", name="VICTIM", password="guess")
        assert_rate_limited(r, r["ref"])
        # Other names from the same address are not throttled by it.
        assert (await ws.request("login", name="bystander", password=PASSWORD))["type"] == "ok"
    async with WS.connect(d.url) as ws:
        # A new connection does not reset the throttle: it is per name.
        r = await ws.request("login", name="victim", password=PASSWORD)
        retry = assert_rate_limited(r, r["ref"])
        await asyncio.sleep(retry + 0.1)
        assert (await ws.request("login", name="victim", password=PASSWORD))["type"] == "ok"


async def test_failed_logins_throttled_per_address(make_daemon):
    d = await make_daemon(*FAST, "--login-failures", "100", "--login-failures-per-address", "4",
                          "--login-window", "1h", "--max-login-failures-per-conn", "100")
    names = [f"addr{i}" for i in range(6)]
    async with WS.connect(d.url) as ws:
        for n in names:
            await ws.login(n)
    async with WS.connect(d.url) as ws:
        # Four failures, each on a different name, and one bad token (auth failures count).
        for n in names[:3]:
            assert (await ws.request("login", name=n, password="nope"))["code"] == "unauthorized"
        assert (await ws.request("auth", token="not-a-token"))["code"] == "unauthorized"
        for n in names[3:]:
            r = await ws.request("login", name=n, password=PASSWORD)
            assert_rate_limited(r, r["ref"])
        r = await ws.request("login", name="brand-new-name", password=PASSWORD)
        assert_rate_limited(r, r["ref"])
    # The address is throttled on new connections too.
    async with WS.connect(d.url) as ws:
        r = await ws.request("login", name=names[5], password=PASSWORD)
        assert_rate_limited(r, r["ref"])
    # A client from another address is not.
    async with WS.connect(d.url, local_addr=("127.0.0.2", 0)) as ws:
        assert (await ws.request("login", name=names[5], password=PASSWORD))["type"] == "ok"


async def test_close_1008_after_max_failed_logins_per_connection(make_daemon):
    d = await make_daemon(*FAST, "--max-login-failures-per-conn", "3")
    async with WS.connect(d.url) as ws:
        await ws.login("mlf")
    async with WS.connect(d.url) as ws:
        assert (await ws.request("login", name="mlf", password="x"))["code"] == "unauthorized"
        assert (await ws.request("auth", token="bogus"))["code"] == "unauthorized"
        await ws.send_raw(json.dumps({"op": "login", "name": "mlf", "password": "y"}))
        assert await close_code(ws) == 1008
    # Failures on another connection start from zero.
    async with WS.connect(d.url) as ws:
        assert (await ws.request("auth", token="bogus"))["code"] == "unauthorized"
        assert (await ws.request("login", name="mlf", password=PASSWORD))["type"] == "ok"
        assert (await ws.request("ping"))["type"] == "ok"


# ------------------------------------------------------------- connection limits


async def refused(url: str, **kw: Any) -> str:
    """Open a connection that the server must refuse; how it refused."""
    try:
        async with websockets.connect(url, open_timeout=10 * UNIT, **kw) as conn:
            try:
                await asyncio.wait_for(conn.recv(), 10 * UNIT)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1008, exc
                return "1008"
            raise AssertionError("connection over the limit was served")
    except InvalidStatus as exc:
        assert exc.response.status_code == 503, exc.response.status_code
        return "503"


async def test_max_connections_total(make_daemon):
    d = await make_daemon("--max-connections", "3")
    async with WS.connect(d.url) as a, WS.connect(d.url) as b:
        async with WS.connect(d.url, local_addr=("127.0.0.2", 0)) as c:
            for ws in (a, b, c):
                assert (await ws.request("ping"))["type"] == "ok"
            print("4th connection refused with", await refused(d.url))
            print("from another address too:",
                  await refused(d.url, local_addr=("127.0.0.3", 0)))
        # One closed: a new one is accepted again.

        async def fourth_ok() -> bool:
            try:
                async with WS.connect(d.url) as ws:
                    return (await ws.request("ping"))["type"] == "ok"
            except (InvalidStatus, websockets.ConnectionClosed):
                return False

        await wait_for(fourth_ok, 10, interval=0.1, what="a slot after a close")


async def test_connection_limit_holds_under_a_concurrent_burst(make_daemon):
    """40 handshakes at once (they all pass the HTTP check before any is counted):
    never more than --max-connections are served; the rest get 503 or 1008."""
    d = await make_daemon("--max-connections", "5")
    release = asyncio.Event()
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            async with WS.connect(d.url, local_addr=(f"127.0.0.{2 + i % 8}", 0)) as ws:
                try:
                    r = await ws.request("ping")
                except websockets.ConnectionClosed as exc:
                    outcomes.append(f"closed {exc.rcvd.code if exc.rcvd else None}")
                    return
                assert r["type"] == "ok", r
                outcomes.append("served")
                await release.wait()
        except InvalidStatus as exc:
            outcomes.append(f"http {exc.response.status_code}")

    tasks = [asyncio.ensure_future(one(i)) for i in range(40)]
    await wait_for(lambda: len(outcomes) == 40, 30, what="40 outcomes")
    release.set()
    await asyncio.gather(*tasks)
    print("burst of 40 with --max-connections 5:",
          {o: outcomes.count(o) for o in sorted(set(outcomes))})
    assert outcomes.count("served") == 5, outcomes
    assert set(outcomes) <= {"served", "http 503", "closed 1008"}, outcomes


async def test_max_connections_per_address(make_daemon):
    d = await make_daemon("--max-connections-per-address", "2")
    async with WS.connect(d.url) as a, WS.connect(d.url) as b:
        print("3rd connection from 127.0.0.1 refused with", await refused(d.url))
        async with WS.connect(d.url, local_addr=("127.0.0.2", 0)) as c:
            for ws in (a, b, c):
                assert (await ws.request("ping"))["type"] == "ok"


async def test_login_timeout_closes_idle_unauthenticated_connections_only(make_daemon):
    d = await make_daemon(*FAST, "--login-timeout", "1")
    async with WS.connect(d.url) as idle, WS.connect(d.url) as pinger, \
            WS.connect(d.url) as user:
        await user.login("lt-erin")
        started = time.monotonic()

        async def keep_pinging() -> int | None:
            # Pings need no login, and activity is not a login: still closed.
            try:
                while True:
                    await pinger.request("ping")
                    await asyncio.sleep(0.1)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

        ping_task = asyncio.ensure_future(keep_pinging())
        assert await close_code(idle, within=20) == 1008
        elapsed = time.monotonic() - started
        assert await asyncio.wait_for(ping_task, 20 * UNIT) == 1008
        print(f"idle connection closed 1008 after {elapsed:.2f} s (--login-timeout 1)")
        assert elapsed >= 0.5, "closed before the login timeout"
        # The logged-in connection outlives the timeout.
        await asyncio.sleep(1.0)
        assert (await user.request("ping"))["type"] == "ok"
        assert (await user.request("boot"))["type"] == "ok"


# ------------------------------------------------------------- Origin


async def origin_status(url: str, origin: str | None) -> int:
    kw: dict[str, Any] = {} if origin is None else {"origin": origin}
    try:
        async with websockets.connect(url, open_timeout=10 * UNIT, **kw) as conn:
            await conn.send(json.dumps({"op": "ping", "ref": 1}))
            assert json.loads(await asyncio.wait_for(conn.recv(), 10 * UNIT))["type"] == "ok"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_origin_allow_list_default_is_own_origin(daemon):
    own = f"http://127.0.0.1:{daemon.port}"
    assert await origin_status(daemon.url, None) == 101  # non-browser clients
    assert await origin_status(daemon.url, own) == 101
    assert await origin_status(daemon.url, f"https://127.0.0.1:{daemon.port}") == 101
    for foreign in ("http://evil.example", f"http://127.0.0.1:{daemon.port}.evil.example",
                    "http://127.0.0.1", f"http://localhost:{daemon.port}", "null",
                    f"ws://127.0.0.1:{daemon.port}"):
        assert await origin_status(daemon.url, foreign) == 403, foreign


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_allow_origin_admits_listed_origins(make_daemon, how):
    listed = ["https://chat.example.org", "http://localhost:3000"]
    if how == "flag":
        d = await make_daemon("--allow-origin", listed[0], "--allow-origin", listed[1])
    else:
        d = await make_daemon(env={"CHATD_ALLOW_ORIGIN": ",".join(listed)})
    for o in listed:
        assert await origin_status(d.url, o) == 101, o
    assert await origin_status(d.url, "https://evil.example.org") == 403
    assert await origin_status(d.url, "https://chat.example.org.evil.example") == 403
    assert await origin_status(d.url, None) == 101


# ------------------------------------------------------------- normal use is never limited


async def test_normal_client_few_hundred_commands_a_second_not_limited(daemon):
    """Default flags: 300 pings spread over about one second, on two connections of
    one user at once (600/s for the user), are all ok."""
    async with WS.connect(daemon.url) as a:
        token = (await a.login("busy-user"))["token"]
        async with client(daemon.url, token=token) as b:

            async def paced(ws: WS) -> list[dict[str, Any]]:
                replies: list[dict[str, Any]] = []
                for k in range(30):  # 30 bursts of 10, one every ~33 ms
                    replies += await pipeline(
                        ws, [{"op": "ping", "ref": k * 10 + i} for i in range(10)])
                    await asyncio.sleep(1 / 30)
                return replies

            ra, rb = await asyncio.gather(paced(a), paced(b))
            bad = [r for r in ra + rb if r["type"] != "ok"]
            assert not bad, bad[:5]
            assert [r["ref"] for r in ra] == list(range(300))
