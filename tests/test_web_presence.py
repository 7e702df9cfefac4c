"""Typing and presence in the web page (chatd/web) in Chromium against a real
daemon: "alice is typing…" under the other person's messages, the page's own
rate of ``typing`` commands, and the online dots of the users panel.

Pages get test_web_admin's strict Content-Security-Policy; a violation fails the
test. The fixtures and the ``Person`` helpers are test_web's.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import WebSocketRoute, expect

from .helpers import client, server_log_guard  # noqa: F401  (autouse fixture)
from .support import Daemon
from .test_web import Browsers, launch_browsers
from .test_web_admin import LNA_OFF, assert_clean, person


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(request.node.name, LNA_OFF) as b:
        yield b


class Counter:
    """Between the page and the server: counts the commands the page sends, by op."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame: Any = json.loads(message) if isinstance(message, str) else None
            if isinstance(frame, dict):
                self.ops.append(str(frame.get("op")))
            server.send(message)

        ws.on_message(from_page)


async def test_typing_notice(daemon: Daemon, browsers: Browsers) -> None:
    alice = await person(browsers, daemon.http, "alice")
    bob = await person(browsers, daemon.http, "bob")
    counter = Counter()
    await alice.page.route_web_socket(re.compile(r"/ws$"), counter.route)
    await alice.login(daemon.http)
    await bob.login(daemon.http)
    await alice.create_channel("team")
    await alice.create_channel("other")
    await alice.open_channel("team")
    await bob.open_channel("team")
    await expect(bob.loc("#typing")).to_have_text("")

    # Typing a sentence sends one `typing`, not one per key.
    await alice.loc("#composer-input").press_sequentially("Lunch at noon", delay=20)
    await expect(bob.loc("#typing")).to_have_text("alice is typing…")
    assert counter.ops.count("typing") == 1, counter.ops
    await expect(alice.loc("#typing")).to_have_text("")  # not to the one typing
    await bob.shot("typing-bob")

    # Only in the channel it was typed in.
    await bob.open_channel("other")
    await expect(bob.loc("#typing")).to_have_text("")
    await bob.open_channel("team")
    await expect(bob.loc("#typing")).to_have_text("alice is typing…")

    # The message itself ends the notice at once.
    await alice.page.press("#composer-input", "Enter")
    await expect(bob.message("Lunch at noon")).to_have_count(1)
    await expect(bob.loc("#typing")).to_have_text("")

    # A typing that is not repeated fades after about 5 s.
    async with client(daemon.url, "carol") as carol:
        cid = await bob.channel_id("team")
        await carol.ok("typing", channel=cid)
        await expect(bob.loc("#typing")).to_have_text("carol is typing…")
        await expect(bob.loc("#typing")).to_have_text("", timeout=8000)
    await assert_clean(alice)
    await assert_clean(bob)


async def test_online_dots(daemon: Daemon, browsers: Browsers) -> None:
    alice = await person(browsers, daemon.http, "alice")
    await alice.login(daemon.http)  # the first account: an admin, who sees the panel
    async with client(daemon.url, "bob") as bob:
        await alice.loc("#users-open").click()
        dialog = alice.loc("#users-dialog")
        await expect(dialog).to_be_visible()

        def dot(name: str) -> Any:
            return dialog.locator("li.user").filter(
                has=alice.page.locator(".user-name", has_text=re.compile(f"^{name}$"))
            ).locator(".presence-dot")

        await expect(dot("alice")).to_have_class(re.compile(r"\bonline\b"))
        await expect(dot("bob")).to_have_class(re.compile(r"\bonline\b"))
        await expect(dot("bob")).to_have_attribute("title", "online")
        await alice.shot("presence-online")
        await bob.ok("logout")
        # live, from the presence frame: no refresh of the panel
        await expect(dot("bob")).not_to_have_class(re.compile(r"\bonline\b"))
        await expect(dot("bob")).to_have_attribute("title", "offline")
        await expect(dot("alice")).to_have_class(re.compile(r"\bonline\b"))
        await bob.login("bob")
        await expect(dot("bob")).to_have_class(re.compile(r"\bonline\b"))
    await expect(dot("bob")).not_to_have_class(re.compile(r"\bonline\b"))
    await alice.shot("presence-offline")
    await assert_clean(alice)
