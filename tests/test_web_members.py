"""Private channels, direct messages and unread badges in the web page (chatd/web),
in Chromium against a real daemon.

Pages get test_web_admin's strict Content-Security-Policy; a violation fails the
test. The fixtures and the ``Person`` helpers are test_web's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect

from .helpers import client, server_log_guard, wait_for  # noqa: F401  (autouse fixture)
from .support import Daemon
from .test_web import Browsers, Person, launch_browsers, wait_states
from .test_web_admin import LNA_OFF, assert_clean, person

SECRET = "secret-plans"


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(request.node.name, LNA_OFF) as b:
        yield b


def dm(p: Person, label: str) -> Any:
    return p.loc("#dm-list > li[data-channel-id]").filter(
        has=p.page.locator(".channel-name", has_text=re.compile(f"^{re.escape(label)}$"))
    )


def badge(p: Person, name: str) -> Any:
    return p.channel(name).locator(".unread-badge")


async def pick(p: Person, select: str, name: str) -> None:
    """Choose a user in a picker once the page has it in its list."""
    await p.loc(select).focus()
    option = p.page.locator(f"{select} option", has_text=re.compile(f"^{name}$"))
    await expect(option).to_have_count(1)
    await p.page.select_option(select, label=name)


async def member_names(p: Person) -> list[str]:
    names: list[str] = await p.loc("#member-list .member-name").all_inner_texts()
    return names


async def test_private_channel_members_and_a_dm(daemon: Daemon, browsers: Browsers) -> None:
    alice = await person(browsers, daemon.http, "alice")
    bob = await person(browsers, daemon.http, "bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)

    # A private channel: the lock in alice's list, and nothing at all in bob's.
    await alice.loc("#new-channel-private").check()
    cid = await alice.create_channel(SECRET)
    await expect(alice.channel(SECRET).locator(".channel-lock")).to_have_count(1)
    await expect(alice.channel(SECRET)).to_have_attribute("data-kind", "private")
    await expect(alice.loc("#channel-title")).to_have_text(SECRET)
    await alice.send("before bob")
    await alice.loc("#new-channel-private").uncheck()
    await alice.create_channel("general")  # public: bob gets it live, after the secret one
    await expect(alice.channel("general").locator(".channel-lock")).to_have_count(0)
    await expect(bob.channel("general")).to_have_count(1)
    await expect(bob.channel(SECRET)).to_have_count(0)
    await expect(bob.loc(f'li[data-channel-id="{cid}"]')).to_have_count(0)

    # Not after a reload (boot), nor after a reconnect (resume from his position).
    await bob.page.reload()
    await bob.expect_state("connected")
    await expect(bob.channel("general")).to_have_count(1)
    await expect(bob.channel(SECRET)).to_have_count(0)
    mark = len(await bob.states())
    await daemon.restart()
    await wait_states(bob, mark, "reconnecting", "connected")
    await alice.expect_state("connected")
    await alice.open_channel(SECRET)
    await alice.send("still just me")
    async with client(daemon.url, "carol") as ws:  # a marker bob does get, after it
        gid = await alice.channel_id("general")
        await ws.ok("send", channel=gid, body="public marker")
    await expect(bob.channel("general")).to_have_class(re.compile(r"\bunread\b"))
    await expect(bob.loc(f'li[data-channel-id="{cid}"]')).to_have_count(0)

    # alice adds bob from the members panel: he gets the channel with its history.
    await expect(alice.loc("#members-open")).to_be_visible()
    await alice.loc("#members-open").click()
    await expect(alice.loc("#members-dialog")).to_be_visible()
    await expect(alice.loc("#member-list .member")).to_have_count(1)
    await expect(alice.loc("#member-list .user-you")).to_have_count(1)
    await pick(alice, "#add-member-user", "bob")
    await alice.loc("#add-member-form button[type=submit]").click()
    await expect(alice.loc("#member-list .member")).to_have_count(2)
    assert await member_names(alice) == ["alice", "bob"]
    await expect(alice.loc("#member-list .remove-member")).to_have_count(1)  # her channel
    await expect(alice.loc("#members-error")).to_be_empty()
    await alice.shot("members-panel")
    # After a reload her page still knows she made it (the members reply names
    # its creator): the Remove button stays.
    await alice.page.reload()
    await alice.expect_state("connected")
    await alice.open_channel(SECRET)
    await alice.loc("#members-open").click()
    await expect(alice.loc("#member-list .member")).to_have_count(2)
    await expect(alice.loc("#member-list .remove-member")).to_have_count(1)
    await expect(alice.loc("#member-list .member-creator")).to_have_count(1)

    await expect(bob.channel(SECRET)).to_have_count(1)
    await expect(bob.channel(SECRET).locator(".channel-lock")).to_have_count(1)
    await expect(badge(bob, SECRET)).to_be_hidden()  # history from before he joined
    await bob.open_channel(SECRET)
    await expect(bob.loc("#messages .message .body")).to_have_text(["before bob", "still just me"])
    await bob.send("thanks for adding me")
    await expect(alice.message("thanks for adding me")).to_have_count(1)

    # bob leaves: the channel and its messages go from his page at once.
    await bob.loc("#members-open").click()
    await expect(bob.loc("#member-list .member")).to_have_count(2)
    await expect(bob.loc("#member-list .remove-member")).to_have_count(0)  # not his channel
    await bob.loc("#leave-channel").click()
    await expect(bob.loc("#members-dialog")).to_be_hidden()
    await expect(bob.channel(SECRET)).to_have_count(0)
    await expect(bob.loc("#messages .message")).to_have_count(0)
    await expect(bob.loc("#channel-title")).to_have_text("No channel open")
    await expect(bob.loc("#members-open")).to_be_hidden()
    await expect(alice.loc("#member-list .member")).to_have_count(1)  # her open panel follows
    await alice.loc("#members-dialog .dialog-close").click()
    await alice.send("after bob")
    await bob.page.reload()
    await bob.expect_state("connected")
    await expect(bob.channel("general")).to_have_count(1)
    await expect(bob.channel(SECRET)).to_have_count(0)
    await expect(bob.loc("#messages .message")).to_have_count(0)

    # A dm from the picker: bob's page opens it; alice's shows it unread, by his name.
    await pick(bob, "#dm-user", "alice")
    await bob.loc("#new-dm-form button[type=submit]").click()
    await expect(dm(bob, "alice")).to_have_count(1)
    await expect(bob.loc("#channel-title")).to_have_text("alice")
    await expect(dm(bob, "alice").locator(".delete-channel")).to_have_count(0)
    await expect(bob.loc("#composer-input")).to_be_enabled()
    await bob.send("psst, alice")
    await expect(dm(alice, "bob")).to_have_count(1)
    await expect(dm(alice, "bob").locator(".unread-badge")).to_have_text("1")
    await expect(alice.channel("alice, bob")).to_have_count(0)  # not among the channels
    await dm(alice, "bob").locator(".channel-name").click()
    await expect(alice.loc("#channel-title")).to_have_text("bob")
    await expect(alice.message("psst, alice")).to_have_count(1)
    await expect(dm(alice, "bob").locator(".unread-badge")).to_be_hidden()
    await alice.send("hi bob")
    await expect(bob.message("hi bob")).to_have_count(1)
    # The same pair opens the same dm, from either side.
    await pick(alice, "#dm-user", "bob")
    await alice.loc("#new-dm-form button[type=submit]").click()
    await expect(alice.loc("#dm-list > li")).to_have_count(1)
    await bob.shot("dm-bob")
    for p in (alice, bob):
        await assert_clean(p)


async def test_unread_badges_agree_across_two_tabs(daemon: Daemon, browsers: Browsers) -> None:
    tab_a = await person(browsers, daemon.http, "alice")
    await tab_a.login(daemon.http)
    tab_b = Person("alice", tab_a.context, await tab_a.context.new_page())
    await tab_b.page.goto(daemon.http + "/")  # the saved token logs it in
    await tab_b.expect_state("connected")
    await expect(tab_b.loc("#me")).to_have_text("alice")
    await tab_a.create_channel("lobby")  # the channel each tab has open meanwhile
    await tab_b.open_channel("lobby")

    async with client(daemon.url, "bob") as bob:
        team = (await bob.ok("create_channel", name="team"))["channel"]["id"]
        for tab in (tab_a, tab_b):
            await expect(tab.channel("team")).to_have_count(1)
            await expect(badge(tab, "team")).to_be_hidden()

        await bob.ok("send", channel=team, body="one")
        for tab in (tab_a, tab_b):
            await expect(badge(tab, "team")).to_have_text("1")
            await expect(tab.channel("team")).to_have_class(re.compile(r"\bunread\b"))
        two = (await bob.ok("send", channel=team, body="two"))["message"]
        three = (await bob.ok("send", channel=team, body="three"))["message"]
        await bob.ok("delete_message", message=three["id"])
        for tab in (tab_a, tab_b):
            await expect(badge(tab, "team")).to_have_text("2")
        await tab_a.shot("unread-badge")

        # After a reload the count comes from boot, and a deletion still takes
        # exactly its message off it.
        await tab_b.page.reload()
        await tab_b.expect_state("connected")
        await expect(badge(tab_b, "team")).to_have_text("2")
        await bob.ok("delete_message", message=two["id"])
        for tab in (tab_a, tab_b):
            await expect(badge(tab, "team")).to_have_text("1")

        # Tab A opens the channel: it is read there, and tab B's badge goes too.
        await tab_a.open_channel("team")
        await expect(badge(tab_a, "team")).to_be_hidden()
        await expect(badge(tab_b, "team")).to_be_hidden()
        await expect(tab_b.channel("team")).not_to_have_class(re.compile(r"\bunread\b"))

        # While tab A shows it, new messages are read at once: B stays at 0.
        four = (await bob.ok("send", channel=team, body="four"))["message"]
        await expect(tab_a.message("four")).to_have_count(1)
        async with client(daemon.url, "alice") as check:
            async def read_up_to_four() -> bool:
                boot = await check.ok("boot")
                (ch,) = [c for c in boot["channels"] if c["id"] == team]
                return bool(ch["read_seq"] >= four["seq"] and ch["unread"] == 0)

            await wait_for(read_up_to_four, within=30, interval=0.1, what="team read")
        await expect(badge(tab_b, "team")).to_be_hidden()
        # A burst read while shown costs a few read.updated, not one per message:
        # every mark_read that moves is a committed event.
        async with client(daemon.url, "alice") as watch:
            await watch.ok("subscribe")
            last = 0
            for i in range(12):
                last = (await bob.ok("send", channel=team, body=f"burst {i}"))["message"]["seq"]
            await expect(tab_a.message("burst 11")).to_have_count(1)

            def reads() -> list[dict[str, Any]]:
                return [e for e in watch.events if e["kind"] == "read.updated"]

            async def read_to_the_end() -> bool:
                while True:
                    try:
                        await watch.recv(0.05)
                    except TimeoutError:
                        break
                return any(e["read_seq"] >= last for e in reads())

            await wait_for(read_to_the_end, within=30, interval=0.1, what="burst read")
            assert len(reads()) <= 4, [e["read_seq"] for e in reads()]
        await tab_b.page.reload()
        await tab_b.expect_state("connected")
        await expect(tab_b.channel("team")).to_have_count(1)
        await expect(badge(tab_b, "team")).to_be_hidden()
        # alice's own messages never count.
        await tab_b.open_channel("lobby")
        await tab_a.send("my own words")
        await expect(tab_b.channel("team")).to_have_count(1)
        await expect(badge(tab_b, "team")).to_be_hidden()
    for tab in (tab_a, tab_b):
        await assert_clean(tab)


async def test_members_and_dms_at_phone_width(daemon: Daemon, browsers: Browsers) -> None:
    async with client(daemon.url, "a-rather-long-user-name-that-must-wrap-somewhere"):
        pass
    alice = await person(browsers, daemon.http, "alice", width=375, height=740, mobile=True)
    await alice.login(daemon.http)
    await alice.loc("#new-channel-private").check()
    await alice.create_channel("phone-plans")
    await pick(alice, "#dm-user", "a-rather-long-user-name-that-must-wrap-somewhere")
    await alice.loc("#new-dm-form button[type=submit]").click()
    await expect(alice.loc("#dm-list > li")).to_have_count(1)
    await alice.open_channel("phone-plans")
    for selector in ("#members-open", "#dm-user", "#new-channel-private"):
        await expect(alice.loc(selector)).to_be_in_viewport()
    width = await alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at phone width"
    await alice.loc("#members-open").click()
    await pick(alice, "#add-member-user", "a-rather-long-user-name-that-must-wrap-somewhere")
    await alice.loc("#add-member-form button[type=submit]").click()
    await expect(alice.loc("#member-list .member")).to_have_count(2)
    for selector in ("#add-member-form button", "#leave-channel", "#member-list .remove-member"):
        await expect(alice.loc(selector)).to_be_in_viewport()
    width = await alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at phone width with the members panel"
    await alice.shot("members-phone")
    await assert_clean(alice)
