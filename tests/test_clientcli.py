"""The operator CLI: its pure pieces, then ``python -m chatd ...`` against a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from chatd import wire
from chatd.clientcli import (
    CliError,
    TokenStore,
    config_dir,
    escape,
    format_event,
    resolve_channel,
)

from .support import UNIT, WS, Daemon

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-secret-1"
# The key order of an event object in PROTOCOL.md.
EVENT_KEYS = ["type", "seq", "at", "kind", "channel", "sender", "message"]


# ------------------------------------------------------------------ pure pieces


def test_config_dir_follows_xdg(tmp_path: Path) -> None:
    assert config_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "chatd"
    home = Path.home() / ".config" / "chatd"
    assert config_dir({}) == home
    assert config_dir({"XDG_CONFIG_HOME": ""}) == home
    assert config_dir({"XDG_CONFIG_HOME": "relative/dir"}) == home  # the spec says ignore it


def test_token_store_is_private_and_keyed_by_url(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "cfg" / "chatd" / "tokens.json")
    assert store.get("ws://a/ws") is None
    store.put("ws://a/ws", "tok-a", wire.User(id="U1", name="alice"))
    store.put("ws://b/ws", "tok-b", wire.User(id="U2", name="bob"))
    store.put("ws://a/ws", "tok-a2", wire.User(id="U1", name="alice"))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    a = store.get("ws://a/ws")
    b = store.get("ws://b/ws")
    assert a is not None and a["token"] == "tok-a2" and a["user"]["name"] == "alice"
    assert b is not None and b["token"] == "tok-b"
    assert store.remove("ws://a/ws") and not store.remove("ws://a/ws")
    assert store.get("ws://a/ws") is None and store.get("ws://b/ws") is not None
    # A file someone made readable is tightened on the next save.
    store.path.chmod(0o644)
    store.put("ws://c/ws", "tok-c", wire.User(id="U3", name="carol"))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not list(store.path.parent.glob(".*.tmp"))


def test_resolve_channel_by_id_or_name() -> None:
    channels = [wire.Channel(id="C1", name="General"), wire.Channel(id="C2", name="ﬁles")]
    assert resolve_channel(channels, "C2").id == "C2"
    assert resolve_channel(channels, "general").id == "C1"
    assert resolve_channel(channels, "  GENERAL ").id == "C1"
    assert resolve_channel(channels, "files").id == "C2"  # NFKC + casefold, like the server
    with pytest.raises(CliError, match="no channel named 'random'"):
        resolve_channel(channels, "random")


def test_events_print_on_one_line_without_terminal_escapes() -> None:
    channel = wire.Channel(id="C1", name="gen\x1b[2Jeral")
    sent = wire.Event(
        seq=7, at="2026-11-27T23:03:14.123Z", kind="message.sent", channel=channel,
        sender=wire.User(id="U1", name="alice"),
        message=wire.EventMessage(id="M1", body="two\nlines\u2028\x1b]0;pwned\x07"),
    )
    line = format_event(sent)
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert line == (
        "7 2026-11-27T23:03:14.123Z #gen\\x1b[2Jeral <alice> two\\nlines\\u2028\\x1b]0;pwned\\x07"
    )
    deleted = wire.Event(
        seq=8, at="2026-11-27T23:03:15.000Z", kind="message.deleted",
        channel=wire.Channel(id="C1", name="g"), message=wire.EventMessage(id="M1"),
    )
    assert format_event(deleted) == "8 2026-11-27T23:03:15.000Z #g message M1 deleted"
    created = wire.Event(seq=1, at="2026-11-27T23:03:10.000Z", kind="channel.created",
                         channel=wire.Channel(id="C1", name="g"))
    assert format_event(created).endswith("#g channel created")
    assert escape("é ok \\") == "é ok \\\\"


# ------------------------------------------------------------------ end to end


class Cli:
    """``python -m chatd`` with its own config directory."""

    def __init__(self, tmp_path: Path, url: str):
        self.url = url
        self.config = tmp_path / "config"
        self.env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.config),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CHATD_URL", None)

    async def spawn(self, *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatd", *args, "--url", self.url,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )

    async def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        proc = await self.spawn(*args, stdin=stdin is not None)
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), 60 * UNIT
        )
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        rc, out, err = await self.run(*args, stdin=stdin)
        assert rc == 0, (args, rc, err)
        return out

    async def login(self, name: str = "alice", password: str = PASSWORD) -> str:
        return await self.ok("login", "--name", name, "--password-stdin", stdin=password + "\n")


async def read_json_lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60 * UNIT):
        while len(lines) < count:
            line = await proc.stdout.readline()
            assert line, "tail exited early"
            lines.append(line.decode().rstrip("\n"))
    return lines


async def server_events(url: str) -> list[dict[str, Any]]:
    async with WS.connect(url) as ws:
        await ws.login("auditor")
        await ws.ok("subscribe", since=0)
        now = (await ws.ok("boot"))["resume_point"]
        return await ws.events_until(now)


async def test_login_send_history_and_tail_json_across_a_restart(
    daemon: Daemon, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, daemon.url)
    out = await cli.login()
    assert out.startswith(f"logged in to {daemon.url} as alice (U")
    tokens = cli.config / "chatd" / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert PASSWORD not in tokens.read_text()

    cid, name, kind = (await cli.ok("create-channel", "general")).strip().split("\t")
    assert cid.startswith("C") and name == "general" and kind == "public"
    assert (await cli.ok("channels")).splitlines() == [f"{cid}\tgeneral\tpublic"]

    tail = await cli.spawn("tail", "--json", "--since", "0")
    try:
        assert "sent M" in await cli.ok("send", "General", "hello")  # by name, any case
        assert "sent M" in await cli.ok("send", cid, "second line")  # by id
        history = (await cli.ok("history", "general")).splitlines()
        assert [h.split(" ", 2)[2] for h in history] == ["<alice> hello", "<alice> second line"]

        lines = await read_json_lines(tail, 3)
        truth = await server_events(daemon.url)
        assert [json.loads(line) for line in lines] == truth
        for line in lines:
            keys = list(json.loads(line))
            assert keys == [k for k in EVENT_KEYS if k in keys]
        assert [json.loads(line)["kind"] for line in lines] == [
            "channel.created", "message.sent", "message.sent"
        ]

        # The daemon crashes and comes back on the same port: tail carries on.
        await daemon.restart()
        await cli.ok("send", "general", "after the restart")
        more = await read_json_lines(tail, 1)
        assert json.loads(more[0])["message"]["body"] == "after the restart"
        assert json.loads(more[0])["seq"] > json.loads(lines[-1])["seq"]

        tail.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.wait(), 30 * UNIT) == 0
        assert tail.stdout is not None
        assert await tail.stdout.read() == b""  # nothing repeated after the restart
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_tail_human_form_and_channel_filter(daemon: Daemon, tmp_path: Path) -> None:
    cli = Cli(tmp_path, daemon.url)
    await cli.login()
    await cli.ok("create-channel", "a")
    await cli.ok("create-channel", "b")
    tail = await cli.spawn("tail", "--since", "0", "--channel", "b")
    try:
        await cli.ok("send", "a", "not this")
        await cli.ok("send", "b", "this\none")
        lines = await read_json_lines(tail, 2)
        assert lines[0].endswith("#b channel created")
        assert lines[1].endswith("#b <alice> this\\none")
        tail.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.wait(), 30 * UNIT) == 0
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_failures_print_one_line_and_exit_non_zero(daemon: Daemon, tmp_path: Path) -> None:
    cli = Cli(tmp_path, daemon.url)

    def one_line(err: str, starts: str) -> None:
        assert err.count("\n") == 1 and err.startswith(f"chatd: {starts}"), err

    rc, _, err = await cli.run("channels")
    assert rc == 1
    one_line(err, f"not logged in to {daemon.url}")

    await cli.login()
    rc, _, err = await cli.run("login", "--name", "alice", "--password-stdin", stdin="wrong\n")
    assert rc == 1
    one_line(err, "login refused")

    rc, _, err = await cli.run("send", "nowhere", "x")
    assert rc == 1
    one_line(err, "no channel named 'nowhere'")

    await cli.ok("create-channel", "general")
    rc, _, err = await cli.run("create-channel", "GENERAL")
    assert rc == 1
    one_line(err, "conflict: ")

    rc, _, err = await cli.run("login", "--name", "x", "--password-stdin", stdin="")
    assert rc == 1
    one_line(err, "empty password")

    await cli.ok("logout")
    rc, _, err = await cli.run("channels")
    assert rc == 1
    one_line(err, "not logged in")

    await cli.login()
    await daemon.kill()
    rc, _, err = await cli.run("channels")
    assert rc == 1
    one_line(err, f"gave up connecting to {daemon.url}")
