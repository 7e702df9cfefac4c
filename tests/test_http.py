"""The HTTP side of the one port, the Origin check, the command line and its env vars."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from .helpers import (
    client,
    close_code,
    expect_error,
    healthz_seq,
    http_get,
    raw_reply,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
)
from .support import UNIT, WS

FLAGS = ["--db", "--host", "--port", "--message-ttl", "--channel-ttl", "--event-ttl",
         "--expire-interval", "--open-signup", "--no-open-signup", "--max-frame",
         "--allow-origin"]


async def test_healthz_reports_current_seq(daemon):
    status, headers, body = await http_get(daemon.http + "/healthz")
    assert status == 200, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    assert doc == {"status": "ok", "seq": 0}, doc
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        m = (await ws.ok("send", channel=ch, body="x"))["message"]
        assert json.loads((await http_get(daemon.http + "/healthz"))[2]) == \
            {"status": "ok", "seq": m["seq"]}
        await ws.ok("delete_message", message=m["id"])
        assert await healthz_seq(daemon.http) > m["seq"]
        boot = await ws.ok("boot")
        assert await healthz_seq(daemon.http) == boot["resume_point"]


async def test_root_serves_html(daemon):
    status, headers, body = await http_get(daemon.http + "/")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/html"), headers
    assert b"<" in body and b"html" in body.lower()


async def test_the_page_is_served_with_a_strict_content_security_policy(daemon):
    status, headers, _ = await http_get(daemon.http + "/")
    assert status == 200
    policy = {d.split()[0]: d.split()[1:] for d in
              headers["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    host = daemon.http.removeprefix("http://")
    assert policy["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert headers["x-frame-options"] == "DENY"
    # a Host header that is not a plain host[:port] is not echoed into the policy
    _, headers, _ = await http_get(daemon.http + "/", Host="evil.example; script-src *")
    assert "evil" not in headers["content-security-policy"]


async def test_metrics_can_require_a_bearer_token(make_daemon):
    d = await make_daemon(env={"CHATD_METRICS_TOKEN": "m3trics-s3cret"})
    status, headers, _ = await http_get(d.http + "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, _ = await http_get(d.http + "/metrics", Authorization="Bearer wrong")
    assert status == 401
    status, _, body = await http_get(d.http + "/metrics", Authorization="Bearer m3trics-s3cret")
    assert status == 200 and b"# TYPE " in body
    status, _, _ = await http_get(d.http + "/healthz")
    assert status == 200, "/healthz stays open for load balancers"


async def test_metrics_prometheus_text(daemon):
    async with client(daemon.url, "alice") as ws:
        await ws.ok("ping")
    status, headers, body = await http_get(daemon.http + "/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain"), headers
    text = body.decode()
    assert any(line.startswith("# TYPE ") for line in text.splitlines()), text[:500]


async def test_unknown_path_is_a_client_error(daemon):
    status, _, _ = await http_get(daemon.http + "/no-such-page")
    assert 400 <= status < 500, status


async def test_foreign_origin_refused(daemon):
    for origin in ("http://evil.example", "http://localhost:1", f"http://localhost:{daemon.port}",
                   f"http://127.0.0.1:{daemon.port + 1}", f"ftp://127.0.0.1:{daemon.port}",
                   "null"):
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(daemon.url, origin=origin):
                pass
        assert info.value.response.status_code == 403, origin
    # the daemon is still fine
    async with WS.connect(daemon.url) as ws:
        await ws.ok("ping")


async def test_own_origin_and_no_origin_accepted(daemon):
    for origin in (f"http://127.0.0.1:{daemon.port}", f"https://127.0.0.1:{daemon.port}", None):
        async with WS.connect(daemon.url, origin=origin) as ws:
            await ws.ok("ping")


async def test_allow_origin_flag_repeatable(make_daemon):
    d = await make_daemon("--allow-origin", "http://a.example",
                          "--allow-origin", "https://b.example:8443")
    for origin in ("http://a.example", "https://b.example:8443"):
        async with WS.connect(d.url, origin=origin) as ws:
            await ws.ok("ping")
    for origin in ("http://evil.example", "http://b.example:8443", "https://a.example"):
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(d.url, origin=origin):
                pass
        assert info.value.response.status_code == 403, origin
    async with WS.connect(d.url) as ws:
        await ws.ok("ping")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatd", *args], capture_output=True, text=True,
                          timeout=30 * UNIT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_mentions_every_flag(argv):
    p = _run(*argv)
    assert p.returncode == 0, p.stderr
    missing = [f for f in FLAGS if f not in p.stdout]
    assert not missing, f"chatd {' '.join(argv)} does not mention {missing}:\n{p.stdout}"


def test_console_script_help():
    from pathlib import Path
    exe = Path(sys.executable).with_name("chatd")
    if not exe.exists():
        pytest.skip("chatd console script not installed in this environment")
    p = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True,
                       timeout=30 * UNIT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "--db" in p.stdout


def test_bad_flag_value_fails_cleanly():
    p = _run("serve", "--message-ttl", "soon", "--port", "0")
    assert p.returncode not in (0, None)
    assert "Traceback" not in p.stderr, p.stderr
    assert "message-ttl" in p.stderr, p.stderr


async def test_flags_from_environment(make_daemon):
    d = await make_daemon(env={"CHATD_MAX_FRAME": "1000"})
    async with WS.connect(d.url) as ws:
        r = await raw_reply(ws, json.dumps({"op": "ping", "ref": 1, "pad": "x" * 500}))
        assert r["type"] == "ok", r
        await ws.send_raw(json.dumps({"op": "ping", "ref": 2, "pad": "x" * 1500}))
        assert await close_code(ws) == 1009


async def test_allow_origin_from_environment(make_daemon):
    d = await make_daemon(env={"CHATD_ALLOW_ORIGIN": "http://env.example"})
    async with WS.connect(d.url, origin="http://env.example") as ws:
        await ws.ok("ping")


async def test_no_open_signup(make_daemon, tmp_path):
    db = tmp_path / "signup.db"
    d = await make_daemon(db=db)
    async with client(d.url, "alice", password="alice-pw") as ws:
        uid = ws.me["user"]["id"]
    await d.kill()
    d2 = await make_daemon("--no-open-signup", db=db)
    async with WS.connect(d2.url) as ws:
        await expect_error(ws, "unauthorized", "login", name="mallory", password="x")
        await expect_error(ws, "unauthorized", "login", name="alice", password="wrong")
        r = await ws.ok("login", name="ALICE", password="alice-pw")
        assert r["user"]["id"] == uid
    await d2.kill()
    d3 = await make_daemon("--open-signup", db=db)
    async with WS.connect(d3.url) as ws:
        await ws.ok("login", name="mallory", password="x")


async def test_no_open_signup_from_environment(make_daemon):
    for value in ("0", "false"):
        d = await make_daemon(env={"CHATD_OPEN_SIGNUP": value})
        async with WS.connect(d.url) as ws:
            r = await ws.request("login", name="mallory", password="x")
            assert r["type"] == "error" and r["code"] == "unauthorized", (value, r)
        await d.kill()
