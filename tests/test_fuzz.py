"""Fuzzing (PROTOCOL.md guarantee 5; issue 4 "Fuzz").

Part 1, property tests (hypothesis) over one real daemon shared by every example
of this module and two real connections (one logged in, one not). Each example
sends one frame: arbitrary JSON values, every op with wrong types, missing and
extra fields, real ids mixed in so that deep paths are reached, huge and odd
Unicode (lone surrogates, NUL, bidi and zero-width characters, combining marks,
non-characters, astral planes), random bytes as binary and as text. Then:

* the frame gets exactly one reply, ``ok`` or a well-formed ``error`` (the keys,
  code and details of PROTOCOL.md), never ``internal``; its ref is echoed when
  the frame had a valid one, and is null otherwise;
* the connection stays usable: a ping right after is answered, and it is the
  very next reply (so no second reply to the fuzzed frame);
* a rejected command changes nothing stored: every row of every table is the
  same before and after (read straight from the sqlite file); at the end, boot,
  history and a replay since=0 agree with what the accepted commands did;
* a valid send of odd Unicode is stored and given back exactly.

Part 2, raw-socket abuse with plain asyncio streams: bad WebSocket frames
(unmasked, reserved bits, bad opcodes, oversized lengths, bad UTF-8, bad
control frames), handshakes that stop halfway, connections that never speak,
and garbage instead of HTTP. After each, the daemon still serves a normal client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from .helpers import PASSWORD, all_history, client, http_get, plain_channel, stored_log
from .sqlite_file import integrity_check, read_db_rows
from .support import UNIT, WS, Daemon

T = TypeVar("T")

FUZZ_FLAGS = (
    "--scrypt-n", "1024",
    "--no-rate-limits",
    # Fuzzed logins fail a lot, under a handful of names: keep the throttles and
    # the per-connection limit out of the way (test_limits.py covers them).
    "--login-failures", "1000000", "--login-failures-per-address", "1000000",
    "--max-login-failures-per-conn", "1000000",
    "--login-timeout", "1h",
)
EXAMPLES = settings(
    max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
CODES = {"bad_request", "unauthorized", "forbidden", "not_found", "conflict", "too_large",
         "rate_limited", "resume_gap", "unavailable"}  # never "internal"
ERROR_KEYS = {"type", "ref", "code", "message", "limit", "retry_after", "horizon", "epoch"}
MAX_FRAME = 65536


# ------------------------------------------------------------------ the harness


@dataclass(frozen=True)
class Slot:
    """A placeholder for a real value (an id, the epoch, the current token)."""

    name: str


class Harness:
    """One daemon and two sync connections, driven from the test thread; the
    daemon's asyncio helpers run on a loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.stack = contextlib.ExitStack()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = Daemon(tmp / "fuzz.db", FUZZ_FLAGS)
        self.run(self.daemon.start())
        self.examples = 0
        self.outcomes: dict[str, Counter[str]] = {}
        self.user = self._connect()
        self.anon = self._connect()
        self.slots: dict[str, Any] = {}
        self.token = ""
        self._login_user()
        other = self._connect()
        them = self._ok(other, {"op": "login", "name": "fz-other", "password": PASSWORD})
        self.slots["user_other"] = them["user"]["id"]
        ch = self._ok(other, {"op": "create_channel", "name": "fz-others"})["channel"]["id"]
        msg = self._ok(other, {"op": "send", "channel": ch, "body": "not yours"})
        other.close()
        self.slots.update(chan_other=ch, msg_other=msg["message"]["id"], name_other="fz-other")
        self._replenish()

    # -- plumbing

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60 * UNIT)

    def _connect(self) -> ClientConnection:
        return self.stack.enter_context(
            sync_connect(self.daemon.url, max_size=None, open_timeout=10 * UNIT))

    def reply(self, conn: ClientConnection) -> dict[str, Any]:
        """The next frame that is not an event."""
        while True:
            frame = json.loads(conn.recv(timeout=10 * UNIT))
            if frame.get("type") != "event":
                return frame  # type: ignore[no-any-return]

    def _ok(self, conn: ClientConnection, cmd: dict[str, Any]) -> dict[str, Any]:
        conn.send(json.dumps(cmd))
        r = self.reply(conn)
        assert r["type"] == "ok", (cmd, r)
        return r

    def _login_user(self) -> None:
        r = self._ok(self.user, {"op": "login", "name": "fz-me", "password": PASSWORD})
        self.token = r["token"]
        self.slots.update(token=self.token, name_me="fz-me", user_me=r["user"]["id"])

    def _replenish(self) -> None:
        """Make sure the ids in ``slots`` exist: fuzzed deletes may have removed them."""
        boot = self._ok(self.user, {"op": "boot"})
        self.slots["epoch"] = boot["epoch"]
        self.slots["resume_point"] = boot["resume_point"]
        mine = {c["id"] for c in boot["channels"]}
        if self.slots.get("chan_own") not in mine:
            name = f"fz-chan-{self.examples}"
            r = self._ok(self.user, {"op": "create_channel", "name": name})
            self.slots["chan_own"] = r["channel"]["id"]
        if self.slots.get("msg_own") is None:
            r = self._ok(self.user, {"op": "send", "channel": self.slots["chan_own"],
                                     "body": f"own {self.examples}"})
            self.slots["msg_own"] = r["message"]["id"]

    def rows(self) -> list[tuple[str, tuple[Any, ...]]]:
        return read_db_rows(self.daemon.db)

    def fill(self, value: Any) -> Any:
        if isinstance(value, Slot):
            return self.slots[value.name]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    # -- one example

    def check(self, data: str | bytes, *, anon: bool) -> dict[str, Any]:
        """Send ``data`` as one frame and check everything in the module docstring."""
        self.examples += 1
        conn = self.anon if anon else self.user
        before = self.rows()
        probe = f"probe-{self.examples}"
        try:
            conn.send(data)
            r = self.reply(conn)
            conn.send(json.dumps({"op": "ping", "ref": probe}))
            after_probe = self.reply(conn)
        except ConnectionClosed as exc:
            # Put a working connection back for the next examples, then fail.
            if anon:
                self.anon = self._connect()
            else:
                self.user = self._connect()
                self._login_user()
            raise AssertionError(
                f"{data[:200]!r}... ({len(data)} long) made the server close the connection: "
                f"{exc.rcvd}") from None
        assert after_probe == {"type": "ok", "ref": probe}, (
            f"after {data[:300]!r} -> {r}: the next reply was {after_probe}, not the ping's")
        check_reply(r, data)
        outcome = r["type"] if r["type"] == "ok" else r["code"]
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
        self.outcomes.setdefault(test, Counter())[outcome] += 1
        if r["type"] == "error":
            assert self.rows() == before, f"rejected {data[:300]!r} ({r}) changed stored data"
        else:
            self._after_ok(data, anon)
        return r

    def _after_ok(self, data: str | bytes, anon: bool) -> None:
        op = json.loads(data).get("op")
        if op in ("login", "auth", "logout"):
            # The connection's identity changed: put it back as it was.
            if anon:
                self.anon.close()
                self.anon = self._connect()
            else:
                self._login_user()
        if op == "delete_message":
            self.slots["msg_own"] = None
        # Account changes are undone at once, so that fz-me stays the only admin
        # (it can never deactivate or demote itself) and keeps its password.
        cmd = json.loads(data)
        if op == "set_role":
            self._ok(self.user, {"op": "set_role", "user": cmd["user"],
                                 "role": "admin" if cmd["user"] == self.slots["user_me"]
                                 else "member"})
        if op == "deactivate_user":
            self._ok(self.user, {"op": "reactivate_user", "user": cmd["user"]})
        if op == "change_password":
            self._ok(self.user, {"op": "change_password", "password": cmd["new_password"],
                                 "new_password": PASSWORD})
        if op in ("delete_message", "delete_channel", "logout"):
            self._replenish()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.close()
        self.run(self.daemon.kill())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def check_reply(r: dict[str, Any], data: str | bytes) -> None:
    """A well-formed ok or error (PROTOCOL.md), with the ref of the frame if it had one."""
    assert r.get("type") in ("ok", "error"), r
    assert "ref" in r, r
    if r["type"] == "error":
        assert set(r) <= ERROR_KEYS, r
        assert r["code"] in CODES, f"{data[:300]!r} -> {r}"
        assert isinstance(r["message"], str) and r["message"], r
        if r["code"] == "too_large":
            assert isinstance(r.get("limit"), int), r
        if r["code"] == "resume_gap":
            assert isinstance(r.get("horizon"), int) and isinstance(r.get("epoch"), str), r
    assert r["ref"] == expected_ref(data), f"{data[:300]!r} -> {r}"


def expected_ref(data: str | bytes) -> Any:
    if isinstance(data, bytes):
        return None
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    ref = obj.get("ref")
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int) or (isinstance(ref, str) and len(ref) <= 64):
        return ref
    return None


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(tmp_path_factory.mktemp("fuzz"))
    try:
        yield harness
    finally:
        print(f"\nfuzz: {harness.examples} frames; outcomes:")
        for test, counts in harness.outcomes.items():
            print(f"  {test}: {dict(counts.most_common())}")
        log = "".join(harness.daemon.log)
        harness.close()
        assert "Traceback" not in log and "internal error" not in log, log[-5000:]


def encode(value: Any, ascii_only: bool) -> str:
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel escaped
        text = json.dumps(value, ensure_ascii=True)
    return text


def fits(text: str) -> bool:
    # Over --max-frame the server closes with 1009 (tested below), not a property here.
    return len(text.encode("utf-8")) < MAX_FRAME - 64


# ------------------------------------------------------------------ strategies

ODD = [
    "\u0000", "\u0001", "\u001f", "\u007f", "\u0085", "\u00a0", "\u00ad", "\u034f",
    "\u061c", "\u200b", "\u200c", "\u200d", "\u200e", "\u202e", "\u2066", "\u2028",
    "\u2029", "\u3000", "\ufeff", "\ufffd", "\ufffe", "\uffff", "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8", "\U000e0001",
    "\U0010ffff", "\U0001d400", "e\u0301", "\u00e9", "\u1e9b\u0323", "\ufb01", "\u0130",
    "\u00df", "\u03a3", "\u0131", "\u2126", "\u212b", "A\u030a", "\uac00", "\u1100\u1161",
    "\ud800", "\udfff", "\udbff\udfff", "\udc00\ud800", "\\", '"', "\\u0000", "'",
    "<script>", "%s%n", "../../etc/passwd", " ", "\t", "\r\n", "\n", "' OR 1=1 --",
    "\x1b[31m", "\u0300" * 50, "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E"
    "\U000E0067\U000E007F",
]

odd_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=80),
    st.lists(st.sampled_from(ODD), min_size=1, max_size=12).map("".join),
    st.builds(lambda piece, n: piece * n, st.sampled_from([*ODD, "x", "\u00e9", "\u4e00"]),
              st.integers(1, 5000)),
    st.builds(lambda n: "x" * n, st.sampled_from([63, 64, 65, 256, 257, 1024, 1025, 4095,
                                                   4096, 4097, 20000])),
)
json_scalar = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63,
                                    -2**63 - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1e300, 1.0]),
    odd_text,
)
json_values = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=12,
)
slots = st.sampled_from(["chan_own", "chan_other", "msg_own", "msg_other", "epoch", "token",
                         "name_me", "name_other", "resume_point", "user_me",
                         "user_other"]).map(Slot)
field_value = st.one_of(slots, json_values, odd_text, st.lists(slots, max_size=3))

OPS: dict[str, list[str]] = {
    "login": ["name", "password"],
    "auth": ["token"],
    "logout": [],
    "ping": [],
    "boot": [],
    "create_channel": ["name"],
    "delete_channel": ["channel"],
    "send": ["channel", "body", "nonce"],
    "delete_message": ["message"],
    "edit_message": ["message", "body"],
    "history": ["channel", "before", "limit"],
    "search": ["query", "channel", "before", "limit"],
    "subscribe": ["since", "epoch", "channels"],
    "unsubscribe": [],
    "change_password": ["password", "new_password"],
    "users": [],
    "create_invite": ["uses", "ttl"],
    "list_invites": [],
    "revoke_invite": ["invite"],
    "set_role": ["user", "role"],
    "deactivate_user": ["user"],
    "reactivate_user": ["user"],
}
ALL_FIELDS = sorted({f for fs in OPS.values() for f in fs})
# Well-typed values for each field, so that examples get past decoding to the deep
# checks (permissions, existence, limits, resume gaps) as often as not.
seqs = st.one_of(st.integers(-3, 3), st.integers(0, 10**6), st.just(Slot("resume_point")),
                 st.sampled_from([2**63 - 1, 2**63, -(2**63)]))
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(odd_text, st.sampled_from([Slot("name_me"), Slot("name_other")])),
    "password": st.one_of(st.just(PASSWORD), odd_text),
    "token": st.one_of(st.just(Slot("token")), odd_text),
    "channel": st.sampled_from([Slot("chan_own"), Slot("chan_other"), Slot("msg_own"), "C", ""]),
    "message": st.sampled_from([Slot("msg_own"), Slot("msg_other"), Slot("chan_own"), "M"]),
    "body": odd_text,
    "nonce": st.text(max_size=70),
    "before": seqs,
    "since": seqs,
    "limit": st.integers(-2, 502),
    "epoch": st.one_of(st.just(Slot("epoch")), st.text(max_size=20)),
    "channels": st.lists(st.one_of(slots, st.text(max_size=5)), max_size=4),
    "new_password": st.one_of(st.just(PASSWORD), odd_text),
    "uses": st.integers(-2, 1002),
    "ttl": st.integers(-5, 3_000_000),
    "invite": st.one_of(st.sampled_from(["I", "Inope", Slot("user_me")]), odd_text),
    "user": st.sampled_from([Slot("user_me"), Slot("user_other"), "U", "Unope", Slot("chan_own")]),
    "role": st.one_of(st.sampled_from(["admin", "member", "Admin", "owner", ""]), odd_text),
}
# What full-text engines take as syntax (FTS5, tsquery), mixed with words: search
# must treat all of it as text (or refuse it as bad_request), never fail.
FTS_SYNTAX = ['"', "*", "-", "^", "+", ":", "(", ")", "{", "}", "'", "\\", "&", "|", "!",
              "<->", ":*", "AND", "OR", "NOT", "NEAR", "NEAR/2", "col:", "hello", "wor",
              "x1", "ß", "\ufb01", " ", " ", "_", "\u0000", "\ud800", "a" * 200]
fts_queries = st.one_of(
    st.lists(st.sampled_from(FTS_SYNTAX), max_size=16).map("".join),
    odd_text,
    st.just("x" * 10_000),
)
GOOD["query"] = fts_queries
refs = st.one_of(st.none(), st.integers(), st.text(max_size=70), json_values)
good_refs = st.one_of(st.integers(), st.text(max_size=64))


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 4)):  # mostly a real op
        op = draw(st.sampled_from(sorted(OPS)))
    else:
        op = draw(st.one_of(st.sampled_from(["LOGIN", "Ping", "send ", "", "frobnicate",
                                             "__init__", "subscribe\u0000"]), json_values))
    fields = OPS.get(op, []) if isinstance(op, str) else []
    cmd: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # usually an op, sometimes none at all
        cmd["op"] = op
    if draw(st.booleans()):
        cmd["ref"] = draw(refs if draw(st.integers(0, 3)) == 0 else good_refs)
    for f in fields:
        if draw(st.integers(0, 4)):  # usually present, usually well-typed
            cmd[f] = draw(GOOD[f] if draw(st.integers(0, 3)) else field_value)
    for f in draw(st.lists(st.sampled_from([*ALL_FIELDS, "type", "x", "__proto__"]),
                           max_size=2)):
        cmd.setdefault(f, draw(field_value))
    return cmd


# ------------------------------------------------------------------ part 1: properties


@settings(EXAMPLES, max_examples=500)
@given(cmd=commands(), anon=st.booleans(), ascii_only=st.booleans())
def test_fuzz_every_op_with_wrong_types_odd_unicode_and_real_ids(h, cmd, anon, ascii_only):
    text = encode(h.fill(cmd), ascii_only)
    if fits(text):
        h.check(text, anon=anon)


@EXAMPLES
@given(value=json_values, anon=st.booleans(), ascii_only=st.booleans())
def test_fuzz_arbitrary_json_values(h, value, anon, ascii_only):
    text = encode(value, ascii_only)
    if fits(text):
        r = h.check(text, anon=anon)
        if not isinstance(value, dict):
            assert r["type"] == "error" and r["code"] == "bad_request", (value, r)


@EXAMPLES
@given(blob=st.binary(max_size=3000), as_text=st.booleans(), anon=st.booleans())
def test_fuzz_random_bytes(h, blob, as_text, anon):
    data: str | bytes = blob.decode("latin-1") if as_text else blob
    r = h.check(data, anon=anon)
    if not as_text:
        assert r["type"] == "error" and r["code"] == "bad_request", r


@EXAMPLES
@given(body=odd_text, name=odd_text)
def test_fuzz_odd_unicode_is_stored_exactly_or_refused(h, body, name):
    """A valid body comes back from history exactly as sent; a name is stored NFC and
    trimmed; anything refused is refused with the right code."""
    text = encode({"op": "send", "ref": "b", "channel": h.slots["chan_own"], "body": body}, False)
    # What the server decodes: JSON joins an escaped surrogate pair into one code point.
    body = json.loads(text)["body"]
    if fits(text):
        r = h.check(text, anon=False)
        encodable = not any(0xD800 <= ord(c) <= 0xDFFF for c in body)
        if encodable and 1 <= len(body) <= 4096:
            assert r["type"] == "ok", (body[:100], r)
            assert r["message"]["body"] == body
            h.user.send(json.dumps({"op": "history", "ref": "hb", "channel": h.slots["chan_own"],
                                    "before": r["message"]["seq"] + 1, "limit": 1}))
            got = h.reply(h.user)
            assert got["messages"][-1]["body"] == body, "body changed on the way to storage"
            assert got["messages"][-1]["id"] == r["message"]["id"]
        elif r["type"] == "error":
            want = "too_large" if encodable and len(body) > 4096 else "bad_request"
            assert r["code"] == want, (body[:100], r)
        else:
            assert not encodable, "a lone surrogate was accepted but not refused"
    text = encode({"op": "create_channel", "ref": "c", "name": name}, False)
    name = json.loads(text)["name"]
    if fits(text):
        r = h.check(text, anon=False)
        if r["type"] == "ok":
            shown = unicodedata.normalize("NFC", name).strip()
            assert r["channel"]["name"] == shown, (name, r)
            assert 1 <= len(shown) <= 64, (name, r)
        else:
            assert r["code"] in ("bad_request", "too_large", "conflict"), (name, r)


@EXAMPLES
@given(query=fts_queries, limit=st.integers(1, 100), in_channel=st.booleans())
def test_fuzz_search_queries_are_text(h, query, limit, in_channel):
    """Any query is answered ok or bad_request, and every hit matches it by the
    protocol's rule (chatd.search.matches)."""
    from chatd import search

    cmd: dict[str, Any] = {"op": "search", "ref": "q", "query": query, "limit": limit}
    if in_channel:
        cmd["channel"] = h.slots["chan_own"]
    text = encode(cmd, False)
    if not fits(text):
        return
    r = h.check(text, anon=False)
    query = json.loads(text)["query"]
    if r["type"] == "error":
        assert r["code"] == "bad_request", (query[:100], r)
        # JSON with a lone surrogate is not JSON to the server (PROTOCOL.md allows that)
        if not any(0xD800 <= ord(c) <= 0xDFFF for c in query):
            assert "$.query" in r["message"], (query[:100], r)
        return
    parsed = search.parse(query)
    assert len(r["messages"]) <= limit
    for hit in r["messages"]:
        assert search.matches(parsed, hit["body"]), (query[:100], hit)


NESTED = {
    "array": lambda n: "[" * n + "]" * n,
    "object": lambda n: '{"a":' * n + "1" + "}" * n,
    "in ref": lambda n: '{"op":"ping","ref":' + "[" * n + "]" * n + "}",
    "in an unknown field": lambda n: '{"op":"ping","ref":"x","extra":' + '{"a":' * n + "0"
                                     + "}" * n + "}",
    "in channels": lambda n: '{"op":"subscribe","ref":"x","channels":' + "[" * n + "]" * n
                             + "}",
}


@pytest.mark.parametrize("depth", [1100, 5000, 9000])
@pytest.mark.parametrize("shape", sorted(NESTED))
def test_deeply_nested_json_is_bad_request(h, shape, depth):
    """Nesting deeper than the decoders' recursion limit, within --max-frame: a
    bad_request like any other invalid frame, not a crashed connection (1011)."""
    text = NESTED[shape](depth)
    assert fits(text)
    r = h.check(text, anon=False)
    assert r["type"] == "error" and r["code"] == "bad_request", r


def test_fuzz_stored_state_is_consistent_afterwards(h):
    """After all the fuzzing (runs last in this module's part 1): boot, history and a
    replay since=0 agree with each other, and the file passes integrity_check."""

    async def consistent() -> None:
        async with client(h.daemon.url, token=h.token) as ws:
            boot = await ws.ok("boot")
            log = await stored_log(h.daemon.url, h.token, boot["resume_point"])
            live = {}
            for e in log:
                if e["kind"] == "channel.created":
                    live[e["channel"]["id"]] = e["channel"]
                elif e["kind"] == "channel.deleted":
                    live.pop(e["channel"]["id"], None)
            assert {c["id"]: plain_channel(c) for c in boot["channels"]} == live
            for ch in boot["channels"]:
                msgs = await all_history(ws, ch["id"])
                sent = [e for e in log if e["kind"] == "message.sent"
                        and e["channel"]["id"] == ch["id"]]
                assert [(m["id"], m["seq"], m["body"]) for m in msgs] == [
                    (e["message"]["id"], e["seq"], e["message"]["body"]) for e in sent]

    h.run(consistent())
    assert integrity_check(h.daemon.db) == "ok"


# ------------------------------------------------------------------ part 2: raw sockets


async def open_raw(port: int, request: bytes | None = None) -> tuple[asyncio.StreamReader,
                                                                     asyncio.StreamWriter]:
    """A TCP connection with the WebSocket handshake done (unless ``request`` is given,
    which is then sent as is)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if request is not None:
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # the server may hang up mid-way
            await writer.drain()
        return reader, writer
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * UNIT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, length: int | None = None) -> bytes:
    """One WebSocket frame, built by hand so that it can be wrong on purpose."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


async def read_close(reader: asyncio.StreamReader, within: float = 20) -> tuple[int | None, int]:
    """Read server frames until a close frame or EOF: (close code or None, text frames)."""
    texts = 0
    deadline = time.monotonic() + within * UNIT
    try:
        while True:
            left = deadline - time.monotonic()
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), left)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await asyncio.wait_for(reader.readexactly(n), left)
            if b0 & 0x0F == 0x8:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None), texts
            if b0 & 0x0F == 0x1:
                texts += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        return None, texts


async def read_eof(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it ends the connection (fails on timeout)."""
    out = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), within * UNIT):
            out += chunk
    return out


async def still_serves(d: Daemon, name: str) -> None:
    status, _, _ = await http_get(d.http + "/healthz")
    assert status == 200
    async with WS.connect(d.url) as ws:
        await ws.login(name)
        ch = (await ws.ok("create_channel", name=f"ch-{name}"))["channel"]["id"]
        sent = await ws.ok("send", channel=ch, body="still here")
        assert (await ws.ok("history", channel=ch))["messages"] == [sent["message"]]


BAD_FRAMES: dict[str, tuple[list[bytes], set[int | None]]] = {
    "unmasked client frame": ([frame(0x1, b'{"op":"ping"}', mask=False)], {1002}),
    "reserved bit 1": ([frame(0x1, b'{"op":"ping"}', rsv=4)], {1002}),
    "reserved bits 2 and 3": ([frame(0x1, b'{"op":"ping"}', rsv=3)], {1002}),
    "data opcode 3": ([frame(0x3, b"x")], {1002}),
    "control opcode 11": ([frame(0xB, b"x")], {1002}),
    "continuation first": ([frame(0x0, b"x")], {1002}),
    "text inside a fragmented text": ([frame(0x1, b"{", fin=False), frame(0x1, b"}")], {1002}),
    "fragmented ping": ([frame(0x9, b"x", fin=False)], {1002}),
    "ping over 125 bytes": ([frame(0x9, b"x" * 200)], {1002}),
    "close with code 999": ([frame(0x8, struct.pack("!H", 999))], {1002}),
    "close with 1 byte": ([frame(0x8, b"\x03")], {1002}),
    "invalid UTF-8 text": ([frame(0x1, b'{"op":"ping","ref":"\xff\xfe"}')], {1007}),
    "truncated UTF-8 across fragments": (
        [frame(0x1, b'"\xe2\x82', fin=False), frame(0x0, b'"')], {1007}),
    "length 2**62 announced": ([frame(0x1, b"", length=2**62)], {1009}),
    "length 2**63 - 1 announced": ([frame(0x2, b"", length=2**63 - 1)], {1009}),
    "fragments over the max size": (
        [frame(0x1, b"x" * 40000, fin=False), frame(0x0, b"x" * 40000, fin=False),
         frame(0x0, b"x", fin=True)], {1009}),
}


async def test_bad_websocket_frames(daemon):
    """Each bad frame after a good one: the server closes that connection with the
    right code (1002 protocol error, 1007 bad UTF-8, 1009 too big) without replying
    to it, and keeps serving everyone else. One daemon for all the cases."""
    failures = []
    for case, (frames, codes) in BAD_FRAMES.items():
        reader, writer = await open_raw(daemon.port)
        try:
            # A valid command first, so that the connection is known to work.
            writer.write(frame(0x1, b'{"op":"ping","ref":1}'))
            b0, n = await asyncio.wait_for(reader.readexactly(2), 10 * UNIT)
            assert b0 == 0x81, "the ping before the bad frame was not answered"
            assert json.loads(await reader.readexactly(n)) == {"type": "ok", "ref": 1}
            for f in frames:
                writer.write(f)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            code, texts = await read_close(reader)
            if texts or code not in codes:
                failures.append(f"{case}: closed with {code} after {texts} replies,"
                                f" expected one of {codes}")
            await read_eof(reader, 20)  # ... and then the TCP connection ends.
        finally:
            writer.close()
        await still_serves(daemon, "after-" + case.replace(" ", "-")[:40])
    assert not failures, failures


async def test_half_handshakes_and_silent_connections(make_daemon):
    """Connections that stop halfway through the handshake, that never send a byte,
    and that finish the handshake but never send a frame: the daemon keeps
    serving meanwhile, closes the silent WebSocket ones with 1008 after
    --login-timeout, and ends the half-open ones by itself (the handshake timeout)."""
    d = await make_daemon("--login-timeout", "1")
    half = [f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nUpgrade: websocket\r\n".encode(),
            b"GET /ws HT", b"G", f"GET /ws HTTP/1.1\r\nHost: x\r\n{'X-Pad: a' * 10}".encode()]
    opened = [await open_raw(d.port, half[i % len(half)]) for i in range(12)]
    opened += [await open_raw(d.port, b"") for _ in range(8)]  # never a byte
    silent = [await open_raw(d.port) for _ in range(5)]  # handshake done, then nothing
    started = time.monotonic()
    try:
        await still_serves(d, "while-half-open")
        codes = await asyncio.gather(*(read_close(r, 20) for r, _ in silent))
        assert [c for c, _ in codes] == [1008] * 5, codes
        print(f"silent WebSocket connections closed 1008 after "
              f"{time.monotonic() - started:.2f} s (--login-timeout 1)")
        await still_serves(d, "after-login-timeout")
        # The half-open handshakes are ended by the server, not left open forever.
        await asyncio.gather(*(read_eof(r, 60) for r, _ in opened))
        print(f"half-open handshakes ended by the server after "
              f"{time.monotonic() - started:.2f} s")
        await still_serves(d, "after-half-open")
    finally:
        for _, w in opened + silent:
            w.close()


GARBAGE = {
    "random bytes": os.urandom(3000),
    "not http": b"HELLO WORLD\r\n\r\n",
    "tls client hello": bytes.fromhex("16030100c4010000c00303") + os.urandom(180),
    "http/0.9": b"GET /ws\r\n\r\n",
    "bad method line": b"\x00\x00\x00\x00 / HTTP/1.1\r\n\r\n",
    "huge header": b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "many headers": b"GET /ws HTTP/1.1\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
    "upgrade without key": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "wrong version": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                     b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 8\r\n\r\n",
    "bad key": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
               b"\r\nSec-WebSocket-Key: !!\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "post with body": b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"GET /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
    "frames before the handshake": frame(0x1, b'{"op":"ping"}') * 10,
}


async def test_garbage_instead_of_http(daemon):
    seen = {}
    for case, data in GARBAGE.items():
        reader, writer = await open_raw(daemon.port, data)
        try:
            answer = await read_eof(reader, 30)  # the server ends the connection
        finally:
            writer.close()
        assert not answer or answer.startswith(b"HTTP/1.1 "), (case, answer[:200])
        seen[case] = answer.split(b"\r\n", 1)[0].decode() if answer else "(closed)"
        await still_serves(daemon, "after-" + case.replace(" ", "-"))
    print("\n".join(f"{case}: {status}" for case, status in seen.items()))
