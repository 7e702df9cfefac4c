"""Search in the web page (chatd/web) in Chromium against a real daemon: the
results list, and going to a hit that is older than the loaded history.

Pages get test_web_admin's strict Content-Security-Policy; a violation fails the
test. The fixtures and the ``Person`` helpers are test_web's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import expect

from .helpers import client, server_log_guard  # noqa: F401  (autouse fixture)
from .support import Daemon
from .test_web import Browsers, launch_browsers
from .test_web_admin import LNA_OFF, assert_clean, person

NEEDLE = "the Needle in the haystack <b>not bold</b>"


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(request.node.name, LNA_OFF) as b:
        yield b


async def test_search_results_and_going_to_an_old_message(
    daemon: Daemon, browsers: Browsers
) -> None:
    bob = await person(browsers, daemon.http, "bob")
    async with client(daemon.url, "alice") as alice:
        team = (await alice.ok("create_channel", name="team"))["channel"]["id"]
        other = (await alice.ok("create_channel", name="other"))["channel"]["id"]
        needle = (await alice.ok("send", channel=team, body=NEEDLE))["message"]
        # More than the page's first history page (50) after it: going to the
        # hit has to load older history.
        for i in range(130):
            await alice.ok("send", channel=team, body=f"filler {i}")
        recent = (await alice.ok("send", channel=other, body="needles again"))["message"]

    await bob.login(daemon.http)
    await bob.open_channel("other")
    await bob.page.fill("#search-input", "NEEDL")
    await bob.page.press("#search-input", "Enter")
    hits = bob.loc("#search-list .search-hit")
    await expect(hits).to_have_count(2)
    await expect(bob.loc("#search-summary")).to_have_text("2 messages")
    await expect(bob.loc("#messages")).to_be_hidden()  # results take its place
    # newest first; channel, sender, time and body, as text
    await expect(hits.nth(0)).to_have_attribute("data-message-id", recent["id"])
    await expect(hits.nth(1).locator(".hit-channel")).to_have_text("team")
    await expect(hits.nth(1).locator(".sender")).to_have_text("alice")
    await expect(hits.nth(1).locator(".body")).to_have_text(NEEDLE)
    await expect(hits.nth(1).locator("time")).to_have_attribute("datetime", needle["at"])
    await expect(hits.nth(1).locator("b")).to_have_count(0)

    await hits.nth(1).click()
    await expect(bob.loc("#channel-title")).to_have_text("team")
    await expect(bob.loc("#search-results")).to_be_hidden()
    target = bob.loc(f'#messages .message[data-message-id="{needle["id"]}"]')
    await expect(target).to_have_class(re.compile(r"\bhighlight\b"))
    await expect(target).to_be_in_viewport()
    # the loaded history has no gap between the hit and the newest message
    await expect(bob.loc("#messages .message")).to_have_count(131)
    await expect(bob.loc("#messages .message.highlight")).to_have_count(1)

    # a query the server refuses says why where the results go; Close brings back the channel
    await bob.page.fill("#search-input", "?! --")
    await bob.page.press("#search-input", "Enter")
    await expect(bob.loc("#search-summary")).to_have_text(re.compile(r"\$\.query: has no word"))
    await bob.loc("#search-close").click()
    await expect(bob.loc("#search-results")).to_be_hidden()
    await expect(bob.loc("#messages")).to_be_visible()
    await bob.page.fill("#search-input", "nothing-like-this")
    await bob.page.press("#search-input", "Enter")
    await expect(bob.loc("#search-summary")).to_have_text("No messages found.")
    await assert_clean(bob)


async def test_search_pages_with_older_results(daemon: Daemon, browsers: Browsers) -> None:
    bob = await person(browsers, daemon.http, "bob")
    async with client(daemon.url, "alice") as alice:
        team = (await alice.ok("create_channel", name="team"))["channel"]["id"]
        for i in range(25):
            await alice.ok("send", channel=team, body=f"report {i}")
    await bob.login(daemon.http)
    await bob.page.fill("#search-input", "report")
    await bob.page.press("#search-input", "Enter")
    await expect(bob.loc("#search-list .search-hit")).to_have_count(20)
    await expect(bob.loc("#search-summary")).to_have_text("20+ messages")
    await bob.loc("#search-more").click()
    await expect(bob.loc("#search-list .search-hit")).to_have_count(25)
    await expect(bob.loc("#search-more")).to_be_hidden()
    await expect(bob.loc("#search-list .search-hit .body").last).to_have_text("report 0")
    await assert_clean(bob)
