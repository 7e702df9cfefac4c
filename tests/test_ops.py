"""Operability: /metrics, /healthz and the daemon's log lines (text and JSON).

Metric names are those of chatd/metrics.py; docs/operations.md lists them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import client, http_get, wait_for
from .sqlite_file import build_db, query
from .support import UNIT, WS, Daemon

SECRET = "Corr3ct-Horse-Battery-Staple"
WRONG = "Wr0ng-Guess-Of-A-Password"
BODY = "a private message body 7f3a"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(daemon: Daemon) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    status, headers, body = await http_get(daemon.http + "/metrics")
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain"), headers
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} missing from /metrics"
    return samples[key]


def check_histogram(samples: Samples, name: str) -> tuple[float, float]:
    """Cumulative buckets that never decrease and end in +Inf == _count; (count, sum)."""
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (n, labels), v in samples.items() if n == f"{name}_bucket"
    )
    assert buckets, f"{name} has no buckets"
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    assert buckets[-1][0] == float("inf")
    count = value(samples, f"{name}_count")
    assert buckets[-1][1] == count
    return count, value(samples, f"{name}_sum")


async def test_metrics_after_traffic(daemon: Daemon) -> None:
    sends = 5
    async with client(daemon.url, "alice") as alice, client(daemon.url, "bob") as bob:
        cid = (await alice.ok("create_channel", name="general"))["channel"]["id"]
        await bob.ok("subscribe")
        last = 0
        for i in range(sends):
            last = (await alice.ok("send", channel=cid, body=f"hello {i}"))["message"]["seq"]
        await bob.events_until(last)
        reply = await alice.request("send", channel="Cnope", body="lost")
        assert reply["code"] == "not_found", reply

        m = await scrape(daemon)
        assert value(m, "chatd_connections") == 2
        assert value(m, "chatd_subscribers") == 1
        assert value(m, "chatd_lagging_subscribers") == 0
        assert value(m, "chatd_current_seq") == last
        assert value(m, "chatd_events_committed_total") == 1 + sends
        assert value(m, "chatd_commands_total", op="send", outcome="ok") == sends
        assert value(m, "chatd_commands_total", op="send", outcome="not_found") == 1
        assert value(m, "chatd_commands_total", op="login", outcome="ok") == 2
        assert value(m, "chatd_commands_total", op="create_channel", outcome="ok") == 1
        assert value(m, "chatd_commands_total", op="subscribe", outcome="ok") == 1

        count, total = check_histogram(m, "chatd_send_ack_seconds")
        assert count == sends
        assert 0 < total < 60 * sends * UNIT
        count, total = check_histogram(m, "chatd_commit_batch_size")
        assert count >= 1
        assert total >= 1 + sends  # every event went through a group commit
        check_histogram(m, "chatd_commit_seconds")
        assert value(m, "chatd_expiry_runs_total") == 0  # default interval is 60 s
        assert value(m, "chatd_slow_reader_closes_total") == 0

        # /healthz agrees with the metrics and with the last ack.
        status, headers, body = await http_get(daemon.http + "/healthz")
        assert status == 200
        assert headers["content-type"].startswith("application/json"), headers
        assert json.loads(body) == {"status": "ok", "seq": last}

    async def closed() -> bool:
        return value(await scrape(daemon), "chatd_connections") == 0

    await wait_for(closed, what="chatd_connections back to 0")
    assert value(await scrape(daemon), "chatd_subscribers") == 0


async def test_metrics_count_expiry(make_daemon: Any) -> None:
    d: Daemon = await make_daemon("--message-ttl", "0.5", "--expire-interval", "0.2")
    async with client(d.url, "alice") as ws:
        cid = (await ws.ok("create_channel", name="brief"))["channel"]["id"]
        for i in range(3):
            await ws.ok("send", channel=cid, body=f"gone soon {i}")

    async def expired() -> bool:
        m = await scrape(d)
        return m.get(("chatd_expired_rows_total", (("kind", "messages"),)), 0) >= 3

    await wait_for(expired, within=30, interval=0.1, what="3 expired messages in /metrics")
    m = await scrape(d)
    assert value(m, "chatd_expiry_runs_total") >= 1
    assert value(m, "chatd_expired_rows_total", kind="messages") == 3
    # 1 channel.created + 3 message.sent + 3 message.deleted, all through the writer.
    assert value(m, "chatd_events_committed_total") >= 7
    status, _, body = await http_get(d.http + "/healthz")
    assert status == 200 and json.loads(body)["seq"] == value(m, "chatd_current_seq")


async def _traffic(d: Daemon) -> dict[str, Any]:
    """Log in with a password, use the token on a second connection, send, close it
    with a reason, fail a login and drop a connection without a close frame."""
    async with WS.connect(d.url) as first:
        login = await first.login("alice", SECRET)
        token = login["token"]
        async with WS.connect(d.url) as second:
            await second.ok("auth", token=token)
            cid = (await second.ok("create_channel", name="ops"))["channel"]["id"]
            await second.ok("send", channel=cid, body=BODY)
            peer = "{}:{}".format(*second.conn.local_address[:2])
            await second.conn.close(1000, "bye now")
        async with WS.connect(d.url) as third:
            reply = await third.request("login", name="alice", password=WRONG)
            assert reply["code"] == "unauthorized", reply
            dropped = "{}:{}".format(*third.conn.local_address[:2])
            third.conn.transport.abort()  # no close frame at all
        await first.ok("logout")
    return {"token": token, "peer": peer, "dropped": dropped}


def _assert_no_secrets(lines: list[str], token: str) -> None:
    assert lines
    for line in lines:
        for secret in (token, SECRET, WRONG, BODY):
            assert secret not in line, f"a secret or a message body is logged: {line!r}"


async def test_json_log_lines(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(
        "--log-format", "json", "--log-level", "debug", "--expire-interval", "0.2"
    )
    t = await _traffic(d)

    def records() -> list[dict[str, Any]]:
        out = []
        for line in d.log:
            if line.strip():
                rec = json.loads(line)  # every line is one JSON object
                assert isinstance(rec, dict), line
                out.append(rec)
        return out

    def closes(peer: str) -> list[dict[str, Any]]:
        return [r for r in records() if r.get("event") == "close" and r.get("peer") == peer]

    await wait_for(lambda: closes(t["peer"]) and closes(t["dropped"])
                   and any(r.get("event") == "expiry" for r in records()),
                   within=30, interval=0.05, what="close and expiry log lines")

    for rec in records():
        assert {"ts", "level", "logger", "msg"} <= rec.keys(), rec
    opens = [r for r in records() if r.get("event") == "open" and r.get("peer") == t["peer"]]
    assert len(opens) == 1, records()
    [close] = closes(t["peer"])
    assert close["user"] == "alice"
    assert close["code"] == 1000
    assert close["reason"] == "bye now"
    assert close["level"] == "info"
    [dropped] = closes(t["dropped"])
    assert dropped["user"] is None  # its login failed
    assert dropped["code"] == 1006, dropped  # no close frame: "abnormal closure"

    expiry = next(r for r in records() if r.get("event") == "expiry")
    for key in ("messages", "channels", "events", "horizon"):
        assert isinstance(expiry[key], int), expiry
    listening = [r for r in records() if r.get("event") == "listening"]
    assert listening and listening[0]["port"] == d.port

    _assert_no_secrets(d.log, t["token"])


async def test_text_log_lines(make_daemon: Any) -> None:
    d: Daemon = await make_daemon("--log-level", "debug", "--expire-interval", "0.2")
    t = await _traffic(d)
    close_re = re.compile(
        rf"close {re.escape(t['peer'])} user=alice code=1000 reason='bye now'"
    )
    await wait_for(lambda: any(close_re.search(line) for line in d.log)
                   and any("expiry:" in line for line in d.log),
                   within=30, interval=0.05, what="close and expiry log lines")
    assert any(f"open {t['peer']}" in line for line in d.log), d.log
    with_json = [line for line in d.log if line.lstrip().startswith("{")]
    assert not with_json, with_json
    _assert_no_secrets(d.log, t["token"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_log_level_warning_is_quiet(tmp_path: Path) -> None:
    # Not the Daemon helper: it waits for the "serving on" line, an info line.
    port = _free_port()
    cmd = [sys.executable, "-m", "chatd", "serve", "--db", str(tmp_path / "q.db"),
           "--port", str(port), "--log-level", "warning", "--log-format", "json"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    d = Daemon(tmp_path / "q.db")
    d.port = port
    try:
        async def up() -> bool:
            try:
                return (await http_get(d.http + "/healthz"))[0] == 200
            except OSError:
                return False

        await wait_for(up, within=20, interval=0.1, what="the daemon to serve /healthz")
        await _traffic(d)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30 * UNIT)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    # The line that tells where it listens may stay; no other info line does.
    assert all(r["level"] != "info" or r.get("event") == "listening" for r in records), records


@pytest.mark.parametrize(("db", "says"), [
    ("mysql://chatd@localhost/chatd", "unknown database URL scheme"),
    # a database file newer than this chatd is refused, never rewritten
    ("NEWER", "newer than this chatd"),
])
async def test_a_db_it_cannot_open_is_one_clear_line_and_exit_1(
    tmp_path: Path, db: str, says: str
) -> None:
    if db == "NEWER":
        path = tmp_path / "newer.db"
        build_db(path, [
            ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", ()),
            *[("INSERT INTO meta VALUES (?, ?)", kv)
              for kv in [("schema_version", "999"), ("epoch", "E1"), ("seq", "0"),
                         ("horizon", "0")]],
        ])
        db = str(path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", "serve", "--db", db, "--port", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30 * UNIT)
    text = err.decode()
    assert proc.returncode == 1, text
    assert "cannot serve" in text and says in text, text
    assert "Traceback" not in text, text
    if db.endswith("newer.db"):
        assert query(Path(db), "SELECT value FROM meta WHERE key = 'schema_version'") == [
            ("999",)]
        assert query(Path(db), "SELECT count(*) FROM sqlite_master") == [(2,)]
