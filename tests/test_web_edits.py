"""Message edits in the web page (chatd/web) in Chromium against a real daemon:
editing in place, the live ``message.edited`` event, and ``edited_at`` in history.

Pages get test_web_admin's strict Content-Security-Policy; a violation fails the
test. The fixtures and the ``Person`` helpers are test_web's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import expect

from .helpers import all_history, client, server_log_guard  # noqa: F401  (autouse fixture)
from .support import Daemon
from .test_web import Browsers, Person, Refuser, launch_browsers
from .test_web_admin import LNA_OFF, assert_clean, person

FIRST = "Lunch at noon?"
EDITED = "Lunch at 1 instead — the room is booked."
EDITED_TITLE = re.compile(r"^Edited \S")


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(request.node.name, LNA_OFF) as b:
        yield b


async def start_edit(p: Person, body: str) -> None:
    msg = p.message(body)
    await msg.hover()
    await msg.locator(".edit-message").click()
    await expect(msg.locator(".edit-input")).to_be_focused()
    await expect(msg.locator(".edit-input")).to_have_value(body)


async def expect_edited(p: Person, body: str) -> None:
    msg = p.message(body)
    await expect(msg).to_have_count(1)
    await expect(msg.locator(".edited")).to_be_visible()
    await expect(msg.locator(".edited")).to_have_text("(edited)")
    await expect(msg.locator(".edited")).to_have_attribute("title", EDITED_TITLE)


async def test_edit_shows_live_and_after_reload(daemon: Daemon, browsers: Browsers) -> None:
    alice = await person(browsers, daemon.http, "alice")
    bob = await person(browsers, daemon.http, "bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)
    cid = await alice.create_channel("team")
    await alice.open_channel("team")
    await bob.open_channel("team")
    await alice.send(FIRST)
    await bob.send("Sounds good.")
    await expect(bob.message(FIRST)).to_have_count(1)
    ids = await bob.message_ids()
    assert len(ids) == 2

    # Only the sender gets Edit, on her own messages only; nothing is marked yet.
    await expect(bob.message(FIRST).locator(".edit-message")).to_have_count(0)
    await expect(alice.message("Sounds good.").locator(".edit-message")).to_have_count(0)
    await expect(alice.message(FIRST).locator(".edit-message")).to_have_count(1)
    await expect(bob.loc("#messages .edited:visible")).to_have_count(0)

    # Escape cancels; an empty body is refused next to the message, not sent.
    await start_edit(alice, FIRST)
    await alice.page.keyboard.press("Escape")
    await expect(alice.loc(".edit-form")).to_have_count(0)
    await expect(alice.message(FIRST)).to_have_count(1)
    await start_edit(alice, FIRST)
    await alice.page.fill(".edit-input", "   ")
    await alice.page.keyboard.press("Enter")
    await expect(alice.loc(".message .edit-error")).to_have_text(re.compile("cannot be empty"))

    # Enter saves: both pages show the new text in the same place, marked edited.
    await alice.page.fill(".edit-input", EDITED)
    await alice.page.keyboard.press("Enter")
    await expect(alice.loc(".edit-form")).to_have_count(0)
    await expect_edited(alice, EDITED)
    await expect_edited(bob, EDITED)
    await expect(bob.message(FIRST)).to_have_count(0)
    assert await bob.message_ids() == ids
    assert await alice.message_ids() == ids
    await expect(bob.message("Sounds good.").locator(".edited")).to_be_hidden()
    await alice.loc("#composer-input").focus()
    await alice.shot("edit-alice")
    await bob.shot("edit-bob-live")

    async with client(daemon.url, "observer") as ws:
        history = await all_history(ws, cid)
    assert [m["body"] for m in history] == [EDITED, "Sounds good."]
    assert history[0].get("edited_at") and not history[1].get("edited_at")

    # After a reload bob's page has it from history: same text, same marker.
    await bob.page.reload()
    await bob.expect_state("connected")
    await expect(bob.loc("#channel-title")).to_have_text("team")
    await expect_edited(bob, EDITED)
    assert await bob.message_ids() == ids
    await expect(bob.message(EDITED).locator(".edit-message")).to_have_count(0)
    await bob.shot("edit-bob-reloaded")
    await assert_clean(alice)
    await assert_clean(bob)


async def test_edit_at_phone_width(daemon: Daemon, browsers: Browsers) -> None:
    async with client(daemon.url, "bob") as ws:
        cid = (await ws.ok("create_channel", name="mobile"))["channel"]["id"]
        await ws.ok("send", channel=cid, body="Typo check?")
    alice = await person(browsers, daemon.http, "alice", width=375, height=740, mobile=True)
    refuser = Refuser()
    await alice.page.route_web_socket(re.compile(r"/ws$"), refuser.route)
    await alice.login(daemon.http)
    await alice.open_channel("mobile")
    await alice.send("I cna type on a phone.")
    await start_edit(alice, "I cna type on a phone.")
    for selector in (".edit-input", ".edit-save", ".edit-cancel"):
        await expect(alice.loc(selector)).to_be_in_viewport()
    width = await alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at phone width while editing"
    await alice.shot("edit-phone")
    await alice.page.fill(".edit-input", "I can type on a phone.")

    # A refused edit is reported in the message's form, which stays open to retry.
    refuser.refuse = {"edit_message"}
    await alice.loc(".edit-save").click()
    error = alice.message("I cna type on a phone.").locator(".edit-error")
    await expect(error).to_have_text("edit_message: the server is shutting down")
    await expect(error).to_be_in_viewport()
    assert refuser.refused == ["edit_message"]
    await expect(alice.loc(".edit-input")).to_have_value("I can type on a phone.")
    await alice.shot("edit-phone-error")
    await alice.loc(".edit-save").click()
    await expect(alice.loc(".edit-form")).to_have_count(0)
    await expect_edited(alice, "I can type on a phone.")
    await expect(alice.message("Typo check?").locator(".edit-message")).to_have_count(0)
    await assert_clean(alice)
