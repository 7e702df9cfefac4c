"""Helpers shared by the integration tests, on top of :mod:`tests.support`.

Nothing here mocks anything: these are small conveniences for talking to a real
daemon over a real WebSocket and reading its real sqlite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets

from .support import UNIT, WS, Daemon

AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PASSWORD = "pw-secret-1"

# The exact key sets of PROTOCOL.md.
EVENT_KEYS = {
    "channel.created": {"type", "seq", "at", "kind", "channel"},
    "channel.deleted": {"type", "seq", "at", "kind", "channel"},
    "message.sent": {"type", "seq", "at", "kind", "channel", "sender", "message"},
    "message.deleted": {"type", "seq", "at", "kind", "channel", "message"},
}
MESSAGE_KEYS = {"id", "seq", "at", "sender", "body"}


def daemons_of(item: pytest.Item) -> list[Daemon]:
    """The daemons a test used, through ``daemon`` or ``make_daemon``."""
    found: list[Daemon] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Daemon):
            found.append(value)
        # make_daemon: a closure over the list of the daemons it started
        for cell in getattr(value, "__closure__", None) or ():
            try:
                content = cell.cell_contents
            except ValueError:
                continue
            if isinstance(content, list):
                found += [d for d in content if isinstance(d, Daemon)]
    return found


@pytest.fixture(autouse=True)
def server_log_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test (and after its daemons stopped): no traceback and no ERROR line
    in any daemon's log. Import it into a test module to apply it there."""
    yield
    for d in daemons_of(request.node):
        bad = [line for line in d.log if "Traceback" in line or " ERROR " in line]
        assert not bad, "the daemon logged errors:\n" + "".join(d.log[-100:])


@contextlib.asynccontextmanager
async def client(url: str, name: str | None = None, *, token: str | None = None,
                 password: str = PASSWORD, **kw: Any) -> AsyncIterator[WS]:
    """A connection, logged in with ``name`` (login) or ``token`` (auth) if given.

    The login reply is kept on ``ws.me`` (``user`` and, for login, ``token``).
    Unless told otherwise (``max_queue=...``) the client buffers every incoming
    frame: with websockets' default of 16, a client that leaves with unread events
    stops reading the socket, never sees the server's close frame and waits
    ``close_timeout`` (10 s) on exit.
    """
    kw.setdefault("max_queue", None)
    async with WS.connect(url, **kw) as ws:
        me: dict[str, Any] = {}
        if name is not None:
            me = await ws.login(name, password)
        elif token is not None:
            me = await ws.ok("auth", token=token)
        ws.me = me  # type: ignore[attr-defined]
        yield ws


async def wait_for(cond: Callable[[], Awaitable[bool]] | Callable[[], bool],
                   within: float = 10, interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``cond`` (sync or async) until it is true; fail after ``within`` UNITs."""
    deadline = time.monotonic() + within * UNIT
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def expect_error(ws: WS, code: str, op: str, **args: Any) -> dict[str, Any]:
    reply = await ws.request(op, **args)
    assert reply["type"] == "error", (op, args, reply)
    assert reply["code"] == code, (op, args, reply)
    assert isinstance(reply.get("message"), str), reply
    return reply


async def raw_reply(ws: WS, data: str | bytes, within: float = 10) -> dict[str, Any]:
    """Send one raw frame and return the next non-event frame."""
    await ws.send_raw(data)
    while True:
        frame = await ws.recv(within)
        if frame.get("type") != "event":
            return frame


async def assert_usable(ws: WS) -> None:
    """The connection still answers a ping with the right ref."""
    reply = await ws.request("ping")
    assert reply["type"] == "ok", reply


async def close_code(ws: WS, within: float = 10) -> int | None:
    """Read until the server closes; return the close code it sent (None if none)."""
    try:
        while True:
            await ws.recv(within)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


class Pump:
    """Reads a subscribed connection in the background so the server never waits on us."""

    def __init__(self, ws: WS):
        self.ws = ws
        self.error: BaseException | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await self.ws.recv(timeout=600)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    @property
    def last_seq(self) -> int:
        return self.ws.events[-1]["seq"] if self.ws.events else -1

    async def until(self, seq: int, within: float = 30) -> list[dict[str, Any]]:
        def reached() -> bool:
            if self.error is not None:
                raise AssertionError(f"subscriber failed: {self.error!r}")
            return self.last_seq >= seq
        await wait_for(reached, within, what=f"event seq >= {seq}")
        return self.ws.events

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def marker(ws: WS, channel: str, body: str = "marker") -> int:
    """Send a message and return its seq: a known point in the stream to read up to."""
    reply = await ws.ok("send", channel=channel, body=body)
    seq: int = reply["message"]["seq"]
    return seq


async def stored_log(url: str, token: str, upto: int, *, since: int = 0,
                     channels: list[str] | None = None) -> list[dict[str, Any]]:
    """What a fresh ``subscribe since=...`` replays, read up to seq ``upto``."""
    async with client(url, token=token) as ws:
        args: dict[str, Any] = {"since": since}
        if channels is not None:
            args["channels"] = channels
        await ws.ok("subscribe", **args)
        events = await ws.events_until(upto, timeout=30)
        assert_strictly_increasing(events)
        return [e for e in events if e["seq"] <= upto]


def assert_strictly_increasing(events: Iterable[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    for a, b in itertools.pairwise(seqs):
        assert a < b, f"seq {b} after {a}: not strictly increasing (seqs {seqs[:200]})"


def assert_same_stream(got: list[dict[str, Any]], want: list[dict[str, Any]], what: str) -> None:
    """Equal event lists, with a readable diagnosis of gaps and duplicates."""
    if got == want:
        return
    got_seqs = [e["seq"] for e in got]
    want_seqs = [e["seq"] for e in want]
    dups = sorted({s for s in got_seqs if got_seqs.count(s) > 1})
    missing = sorted(set(want_seqs) - set(got_seqs))
    extra = sorted(set(got_seqs) - set(want_seqs))
    first_diff = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                      min(len(got), len(want)))
    raise AssertionError(
        f"{what}: stream differs from the stored log: {len(got)} events vs {len(want)}; "
        f"duplicates {dups[:20]}, missing {missing[:20]}, extra {extra[:20]}; "
        f"first difference at index {first_diff}: "
        f"got {got[first_diff] if first_diff < len(got) else None} "
        f"want {want[first_diff] if first_diff < len(want) else None}"
    )


def check_at(at: Any) -> None:
    assert isinstance(at, str) and AT_RE.match(at), f"bad at {at!r}"
    t = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    # UTC, not local time: the daemon runs on this machine, so the clocks agree.
    assert abs(t.timestamp() - time.time()) < 600, f"at {at!r} is not the current UTC time"


def check_event(ev: dict[str, Any]) -> None:
    """The exact fields of PROTOCOL.md for each event kind."""
    assert ev["type"] == "event", ev
    kind = ev.get("kind")
    assert kind in EVENT_KEYS, ev
    assert set(ev) == EVENT_KEYS[kind], f"{kind} has fields {sorted(ev)}"
    assert isinstance(ev["seq"], int) and not isinstance(ev["seq"], bool) and ev["seq"] > 0, ev
    check_at(ev["at"])
    check_channel(ev["channel"])
    if kind == "message.sent":
        check_user(ev["sender"])
        assert set(ev["message"]) == {"id", "body"}, ev
        assert ev["message"]["id"].startswith("M"), ev
        assert isinstance(ev["message"]["body"], str), ev
    elif kind == "message.deleted":
        assert set(ev["message"]) == {"id"}, ev
        assert ev["message"]["id"].startswith("M"), ev


def check_channel(ch: Any) -> None:
    assert isinstance(ch, dict), ch
    assert set(ch) == ({"id", "name", "kind", "members"} if "members" in ch
                       else {"id", "name", "kind"}), ch
    assert isinstance(ch["id"], str) and ch["id"].startswith("C"), ch
    assert isinstance(ch["name"], str) and ch["name"], ch
    assert ch["kind"] in ("public", "private", "dm"), ch
    if "members" in ch:
        assert ch["kind"] == "dm", ch
        for u in ch["members"]:
            check_user(u)


def check_boot_channel(ch: Any) -> None:
    """A channel as boot shows it: with read_seq and unread."""
    assert isinstance(ch, dict), ch
    assert isinstance(ch.get("read_seq"), int) and ch["read_seq"] >= 0, ch
    assert isinstance(ch.get("unread"), int) and ch["unread"] >= 0, ch
    check_channel(plain_channel(ch))


def plain_channel(ch: dict[str, Any]) -> dict[str, Any]:
    """A boot channel without the user's read position and unread count."""
    return {k: v for k, v in ch.items() if k not in ("read_seq", "unread")}


def check_user(u: Any) -> None:
    assert isinstance(u, dict) and set(u) == {"id", "name"}, u
    assert isinstance(u["id"], str) and u["id"].startswith("U"), u
    assert isinstance(u["name"], str) and u["name"], u


def check_message(m: Any) -> None:
    assert isinstance(m, dict) and set(m) == MESSAGE_KEYS, m
    assert isinstance(m["id"], str) and m["id"].startswith("M"), m
    assert isinstance(m["seq"], int) and m["seq"] > 0, m
    check_at(m["at"])
    check_user(m["sender"])
    assert isinstance(m["body"], str), m


async def all_history(ws: WS, channel: str, page: int = 500) -> list[dict[str, Any]]:
    """Every message of a channel, by paging ``history`` backwards; ascending seq."""
    out: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        args: dict[str, Any] = {"channel": channel, "limit": page}
        if before is not None:
            args["before"] = before
        reply = await ws.ok("history", **args)
        msgs = reply["messages"]
        out[:0] = msgs
        if not reply["more"]:
            return out
        assert msgs, reply
        before = msgs[0]["seq"]


def _http_get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10 * UNIT) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


async def http_get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP GET: (status, lower-cased headers, body)."""
    return await asyncio.to_thread(_http_get, url, headers)


async def healthz_seq(http: str) -> int:
    status, _, body = await http_get(http + "/healthz")
    assert status == 200, (status, body)
    seq: int = json.loads(body)["seq"]
    return seq



async def chatd(*args: str, within: float = 60) -> tuple[int, str, str]:
    """Run ``python -m chatd ARGS`` as an operator would: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), within * UNIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
