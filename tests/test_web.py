"""The built-in web page (chatd/web) in a real browser against a real daemon.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, installed by ``make
browser``); no browser is downloaded. A missing Chromium or Playwright fails
these tests rather than skipping them: CI installs both.

Screenshots go to ``test-artifacts/`` (git-ignored). ``CHATD_UPDATE_SCREENSHOT=1``
also writes the README's ``docs/screenshot.png`` from the two-user chat test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    WebSocketRoute,
    async_playwright,
    expect,
)

from .helpers import PASSWORD, all_history, client, healthz_seq, wait_for
from .support import UNIT, Daemon

CHROMIUM = os.environ.get("CHATD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
README_SHOT = ROOT / "docs" / "screenshot.png"
INJECTION = "<img src=x onerror=alert(1)>"
HORIZON_RE = re.compile(r"expiry: .*horizon (\d+)")
WAIT_MS = 30_000 * UNIT  # every browser-side wait; generous, the machine is shared

# Records every value #conn-state's data-state takes, so a short-lived state
# (reconnecting) can be asserted after the fact instead of raced.
STATE_RECORDER = """
window.__states = [];
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("conn-state");
  const record = () => {
    const s = el.dataset.state;
    if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
  };
  record();
  new MutationObserver(record).observe(el, { attributes: true, attributeFilter: ["data-state"] });
});
"""


class Person:
    """One browser context with one page, and everything it did that a test checks."""

    def __init__(self, name: str, context: BrowserContext, page: Page):
        self.name = name
        self.context = context
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.console_errors: list[str] = []

        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda req: self.requests.append(req.url))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        # A refused or dropped WebSocket while the daemon is down is expected.
        if msg.type == "error" and "WebSocket connection" not in msg.text:
            self.console_errors.append(msg.text)

    def loc(self, selector: str) -> Any:
        return self.page.locator(selector)

    async def login(self, http: str, password: str = PASSWORD) -> None:
        """Open the page and log in with the form, submitting with Enter."""
        await self.page.goto(http + "/")
        await self.page.fill("#login-name", self.name)
        await self.page.fill("#login-password", password)
        await self.page.press("#login-password", "Enter")
        await expect(self.loc("#me")).to_have_text(self.name)
        await expect(self.loc("#chat-view")).to_be_visible()
        await self.expect_state("connected")

    async def expect_state(self, state: str) -> None:
        await expect(self.loc("#conn-state")).to_have_attribute("data-state", state)
        await expect(self.loc("#conn-state")).to_have_text(state)

    def channel(self, name: str) -> Any:
        return self.loc("#channel-list > li[data-channel-id]").filter(
            has=self.page.locator(".channel-name", has_text=re.compile(f"^{re.escape(name)}$"))
        )

    async def channel_id(self, name: str) -> str:
        await expect(self.channel(name)).to_have_count(1)
        cid = await self.channel(name).get_attribute("data-channel-id")
        assert cid and cid.startswith("C"), cid
        return cid

    async def create_channel(self, name: str) -> str:
        await self.page.fill("#new-channel-name", name)
        await self.page.press("#new-channel-name", "Enter")
        return await self.channel_id(name)

    async def open_channel(self, name: str) -> None:
        await self.channel(name).locator(".channel-name").click()
        await expect(self.loc("#channel-title")).to_have_text(name)
        await expect(self.channel(name)).to_have_class(re.compile(r"\bactive\b"))
        await expect(self.loc("#composer-input")).to_be_enabled()

    async def send(self, body: str) -> None:
        """Type into the composer and press Enter; returns once the message is shown."""
        await self.page.fill("#composer-input", body)
        await self.page.press("#composer-input", "Enter")
        await expect(self.loc("#composer-input")).to_have_value("")
        await expect(self.message(body)).to_have_count(1)

    def message(self, body: str) -> Any:
        return self.loc("#messages .message").filter(
            has=self.page.locator(".body", has_text=re.compile(f"^{re.escape(body)}$"))
        )

    async def message_ids(self) -> list[str]:
        ids: list[str] = await self.loc("#messages .message").evaluate_all(
            "nodes => nodes.map(n => n.dataset.messageId)"
        )
        return ids

    async def expect_ids(self, want: list[str]) -> None:
        """Wait until the open channel shows exactly ``want``, in that order."""
        got: list[str] = []

        async def same() -> bool:
            nonlocal got
            got = await self.message_ids()
            return got == want

        with contextlib.suppress(AssertionError):
            await wait_for(same, within=30, interval=0.1, what=f"{self.name}'s messages")
        assert got == want, f"{self.name} shows {len(got)} messages, server has {len(want)}"

    async def states(self) -> list[str]:
        states: list[str] = await self.page.evaluate("window.__states.slice()")
        return states

    async def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", label) + ".png")
        await self.page.screenshot(path=str(path))
        return path

    def assert_clean(self) -> None:
        assert not self.errors, f"uncaught errors in {self.name}'s page: {self.errors}"
        assert not self.dialogs, f"dialogs in {self.name}'s page: {self.dialogs}"
        assert not self.console_errors, f"console errors in {self.name}'s page: " \
            f"{self.console_errors}"


class Browsers:
    """Opens people (contexts) in one Chromium; screenshots each at the end."""

    def __init__(self, browser: Browser, test: str):
        self.browser = browser
        self.test = test
        self.people: list[Person] = []

    async def person(self, name: str, *, width: int = 1000, height: int = 640,
                     mobile: bool = False) -> Person:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height},
            is_mobile=mobile, has_touch=mobile,
            locale="en-US", timezone_id="UTC",
        )
        context.set_default_timeout(WAIT_MS)
        await context.add_init_script(STATE_RECORDER)
        person = Person(name, context, await context.new_page())
        self.people.append(person)
        return person

    async def close(self) -> None:
        for person in self.people:
            with contextlib.suppress(Exception):
                await person.shot(f"{self.test}-{person.name}-final")
            with contextlib.suppress(Exception):
                await person.context.close()


def require_chromium() -> None:
    """Fail, never skip: CI installs Chromium, so its absence is a broken setup."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run `make browser` (apt-get install chromium)")


@contextlib.asynccontextmanager
async def launch_browsers(test: str, *extra_args: str) -> AsyncIterator[Browsers]:
    """One Chromium for the test named ``test``; ``extra_args`` are more of its flags."""
    require_chromium()
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args]
        )
        b = Browsers(browser, test)
        try:
            yield b
        finally:
            await b.close()
            await browser.close()


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(request.node.name) as b:
        yield b


async def server_ids(daemon: Daemon, channel: str) -> list[str]:
    async with client(daemon.url, "observer") as ws:
        return [m["id"] for m in await all_history(ws, channel)]


def horizon(d: Daemon) -> int:
    """The newest horizon the daemon's expiry runs have logged."""
    found = (HORIZON_RE.search(line) for line in d.log)
    return max((int(m.group(1)) for m in found if m), default=0)


async def wait_states(person: Person, after: int, *wanted: str) -> None:
    """Wait until the states recorded after index ``after`` contain ``wanted`` in order."""

    async def seen() -> bool:
        states = (await person.states())[after:]
        i = 0
        for s in states:
            if i < len(wanted) and s == wanted[i]:
                i += 1
        return i == len(wanted)

    try:
        await wait_for(seen, within=30, interval=0.05, what=f"{person.name}: {wanted}")
    except AssertionError:
        raise AssertionError(
            f"{person.name}'s page went {(await person.states())[after:]}, expected {wanted}"
        ) from None


# ------------------------------------------------------------------- tests


async def test_two_people_chat_live(daemon: Daemon, browsers: Browsers) -> None:
    alice = await browsers.person("alice")
    bob = await browsers.person("bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)

    # alice creates two channels; bob sees them appear live and opens one by its name.
    await alice.create_channel("general")
    await alice.create_channel("random")
    await expect(alice.loc("#channel-title")).to_have_text("random")  # creating opens it
    await expect(bob.channel("general")).to_have_count(1)
    await expect(bob.channel("random")).to_have_count(1)
    await alice.open_channel("general")
    await bob.open_channel("general")

    await alice.send("Hi Bob! The deploy went fine.")
    await expect(bob.message("Hi Bob! The deploy went fine.")).to_have_count(1)
    await bob.send("Great — thanks, Alice. Café at 3?")
    await expect(alice.message("Great — thanks, Alice. Café at 3?")).to_have_count(1)
    for person in (alice, bob):
        await expect(person.loc("#messages .message")).to_have_count(2)
        await expect(person.loc("#messages .message .sender")).to_have_text(["alice", "bob"])
        await expect(person.loc("#messages .message .time").first).not_to_be_empty()
    await expect(alice.loc("#messages .message.mine")).to_have_count(1)
    await alice.page.locator("#composer-input").blur()
    path = await alice.shot("chat-alice")
    await bob.shot("chat-bob")
    if os.environ.get("CHATD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, README_SHOT)

    # Only the sender gets a delete button; a deletion disappears live on the other side.
    doomed = alice.message("Hi Bob! The deploy went fine.")
    await expect(bob.message("Hi Bob! The deploy went fine.").locator(".delete-message")) \
        .to_have_count(0)
    await doomed.hover()
    await doomed.locator(".delete-message").click()
    await expect(alice.message("Hi Bob! The deploy went fine.")).to_have_count(0)
    await expect(bob.message("Hi Bob! The deploy went fine.")).to_have_count(0)
    await expect(bob.message("Great — thanks, Alice. Café at 3?")).to_have_count(1)

    # Messages in another channel mark it unread instead of showing up here.
    async with client(daemon.url, "carol") as ws:
        rid = await bob.channel_id("random")
        await ws.ok("send", channel=rid, body="over here")
    await expect(bob.channel("random")).to_have_class(re.compile(r"\bunread\b"))
    await expect(bob.message("over here")).to_have_count(0)

    gid = await alice.channel_id("general")
    want = await server_ids(daemon, gid)
    await alice.expect_ids(want)
    await bob.expect_ids(want)
    alice.assert_clean()
    bob.assert_clean()


async def test_reload_logout_and_wrong_password(daemon: Daemon, browsers: Browsers) -> None:
    bob = await browsers.person("bob")
    await bob.login(daemon.http)
    await bob.create_channel("notes")
    await bob.open_channel("notes")
    await bob.send("remember me")

    # A reload keeps the login (token) and reopens the channel that was open.
    await bob.page.reload()
    await expect(bob.loc("#me")).to_have_text("bob")
    await bob.expect_state("connected")
    await expect(bob.loc("#channel-title")).to_have_text("notes")
    await expect(bob.message("remember me")).to_have_count(1)

    await bob.loc("#logout").click()
    await expect(bob.loc("#login-form")).to_be_visible()
    await expect(bob.loc("#chat-view")).to_be_hidden()
    await expect(bob.loc("#me")).to_have_text("")
    await bob.page.reload()  # the token is gone: still logged out
    await expect(bob.loc("#login-form")).to_be_visible()

    await bob.page.fill("#login-name", "bob")
    await bob.page.fill("#login-password", "not-the-password")
    await bob.page.press("#login-password", "Enter")
    await expect(bob.loc("#error")).not_to_be_empty()
    await expect(bob.loc("#login-form")).to_be_visible()
    await bob.shot("wrong-password")
    await bob.login(daemon.http)
    await expect(bob.channel("notes")).to_have_count(1)
    bob.assert_clean()


async def test_idle_login_form_does_not_reconnect_in_a_loop(
    make_daemon: Any, browsers: Browsers
) -> None:
    # The server closes sockets that do not log in within --login-timeout (1008).
    d: Daemon = await make_daemon("--login-timeout", "1")
    alice = await browsers.person("alice")
    await alice.page.goto(d.http + "/")
    await expect(alice.loc("#login-form")).to_be_visible()

    def timeouts() -> int:
        return sum("no login within the timeout" in line for line in d.log)

    await wait_for(lambda: timeouts() >= 1, within=30, what="the login timeout to close it")
    await asyncio.sleep(3 * UNIT)  # three more timeouts, were the page to reconnect
    assert timeouts() == 1, "".join(d.log)
    assert "reconnecting" not in await alice.states()
    await expect(alice.loc("#conn-state")).to_be_hidden()

    # Sending the form connects again and logs in.
    await alice.page.fill("#login-name", "alice")
    await alice.page.fill("#login-password", PASSWORD)
    await alice.page.press("#login-password", "Enter")
    await expect(alice.loc("#me")).to_have_text("alice")
    await alice.expect_state("connected")
    await expect(alice.loc("#conn-state")).to_be_visible()
    await alice.create_channel("awake")
    await alice.open_channel("awake")
    await alice.send("still here")
    alice.assert_clean()


class Refuser:
    """Between the page and the real server (Playwright's WebSocket routing): answers
    the next command of each op in ``refuse`` with ``unavailable`` instead of passing
    it on, as a draining or overloaded server does; everything else goes through."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.refused: list[str] = []

    def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message) if isinstance(message, str) else None
            op = frame.get("op") if isinstance(frame, dict) else None
            if op in self.refuse:
                self.refuse.discard(op)
                self.refused.append(op)
                ws.send(json.dumps({"type": "error", "ref": frame["ref"], "code": "unavailable",
                                    "message": f"{op}: the server is shutting down"}))
                return
            server.send(message)

        ws.on_message(from_page)


async def test_unavailable_is_retried(daemon: Daemon, browsers: Browsers) -> None:
    alice = await browsers.person("alice")
    refuser = Refuser()
    await alice.page.route_web_socket(re.compile(r"/ws$"), refuser.route)
    await alice.login(daemon.http)
    cid = await alice.create_channel("drain")
    await alice.open_channel("drain")

    # A send refused with `unavailable` stays queued and goes out again, once.
    refuser.refuse = {"send"}
    await alice.send("refused once, then sent")
    assert refuser.refused == ["send"]
    async with client(daemon.url, "bob") as ws:
        assert [m["body"] for m in await all_history(ws, cid)] == ["refused once, then sent"]
    await expect(alice.loc("#outbox .pending")).to_have_count(0)

    # auth refused with `unavailable` on reconnect: the page backs off, tries
    # again, and the error it showed meanwhile goes away once it is back.
    refuser.refuse = {"auth"}
    await alice.page.reload()
    await alice.expect_state("connected")
    assert refuser.refused == ["send", "auth"]
    await expect(alice.loc("#error")).to_be_empty()
    await expect(alice.message("refused once, then sent")).to_have_count(1)
    alice.assert_clean()


async def test_text_is_rendered_as_text(daemon: Daemon, browsers: Browsers) -> None:
    alice = await browsers.person("alice")
    bob = await browsers.person("bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)
    channel_name = "<b>bold</b>"
    await alice.create_channel(channel_name)
    await alice.open_channel(channel_name)
    await bob.open_channel(channel_name)

    await alice.send(INJECTION)  # alice sees her own copy, bob the live event
    await expect(bob.message(INJECTION)).to_have_count(1)
    # A third person, with markup in her name, opens the channel afterwards: the
    # message comes from history; her own goes to the others live.
    carol = await browsers.person("<i>carol</i>")
    await carol.login(daemon.http)
    await carol.open_channel(channel_name)
    await expect(carol.message(INJECTION)).to_have_count(1)
    await carol.send("<script>alert(2)</script>")
    await expect(alice.message("<script>alert(2)</script>").locator(".sender")) \
        .to_have_text("<i>carol</i>")

    await asyncio.sleep(0.5 * UNIT)  # an onerror handler, were there one, fires by now
    for person in (alice, bob, carol):
        body = person.message(INJECTION).locator(".body")
        assert await body.text_content() == INJECTION
        await expect(person.loc("#messages img, #messages script, #messages i")).to_have_count(0)
        await expect(person.loc("#me i")).to_have_count(0)
        await expect(person.loc("#channel-list b")).to_have_count(0)
        await expect(person.loc("#channel-title")).to_have_text(channel_name)
        assert not [u for u in person.requests if u.endswith("/x")], person.requests
        person.assert_clean()
    await bob.shot("injection-bob")


async def test_channel_create_and_delete_live(daemon: Daemon, browsers: Browsers) -> None:
    alice = await browsers.person("alice")
    bob = await browsers.person("bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)
    await alice.create_channel("scratch")
    await bob.open_channel("scratch")
    await alice.send("short-lived")
    await expect(bob.message("short-lived")).to_have_count(1)

    # bob did not create it: the server refuses, the page says so and keeps it.
    await bob.channel("scratch").locator(".delete-channel").click()
    await expect(bob.loc("#error")).not_to_be_empty()
    await expect(bob.channel("scratch")).to_have_count(1)

    await alice.channel("scratch").locator(".delete-channel").click()
    await expect(alice.channel("scratch")).to_have_count(0)
    await expect(bob.channel("scratch")).to_have_count(0)
    await expect(bob.loc("#channel-notice")).to_be_visible()
    await expect(bob.loc("#channel-notice")).to_contain_text("deleted")
    await expect(bob.loc("#composer-input")).to_be_disabled()
    await bob.shot("channel-deleted-bob")
    alice.assert_clean()
    bob.assert_clean()


async def test_history_pages_load_when_scrolling_up(daemon: Daemon, browsers: Browsers) -> None:
    total = 120
    async with client(daemon.url, "alice") as ws:
        cid = (await ws.ok("create_channel", name="busy"))["channel"]["id"]
        # Pipelined: all sends written first, then the replies read.
        for i in range(total):
            await ws.send_raw(json.dumps({"op": "send", "ref": f"s{i}", "channel": cid,
                                          "body": f"message {i:03d}"}))
        oks = 0
        while oks < total:
            frame = await ws.recv()
            if frame.get("type") != "event":
                assert frame["type"] == "ok", frame
                oks += 1
        want = [m["id"] for m in await all_history(ws, cid)]
    assert len(want) == total

    bob = await browsers.person("bob")
    await bob.login(daemon.http)
    await bob.open_channel("busy")
    box = bob.loc("#messages")
    await expect(bob.message(f"message {total - 1:03d}")).to_be_in_viewport()
    first = await bob.loc("#messages .message").count()
    assert first < total, "the first page should not be the whole channel"
    assert await bob.message_ids() == want[-first:]

    # Scroll up with the wheel until every page has loaded; each page keeps the
    # reader's place (it does not jump to the top of the new page).
    shown = first
    await box.hover()
    deadline = time.monotonic() + 60 * UNIT
    while shown < total:
        assert time.monotonic() < deadline, f"stuck at {shown} messages"
        await bob.page.mouse.wheel(0, -20_000)
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda n=shown: _more_than(bob, n), within=5, interval=0.05, what="an older page"
            )
        now = await bob.loc("#messages .message").count()
        if now > shown and now < total:
            top = await box.evaluate("el => el.scrollTop")
            assert top > 48, f"after loading an older page the view jumped to the top ({top})"
        shown = now
    await bob.expect_ids(want)
    await expect(bob.message("message 000")).to_have_count(1)
    await box.evaluate("el => { el.scrollTop = 0; }")
    await bob.shot("history-top")
    bob.assert_clean()


async def _more_than(person: Person, n: int) -> bool:
    return await person.loc("#messages .message").count() > n


async def test_restart_under_both_and_same_messages(daemon: Daemon, browsers: Browsers) -> None:
    alice = await browsers.person("alice")
    bob = await browsers.person("bob")
    await alice.login(daemon.http)
    await bob.login(daemon.http)
    cid = await alice.create_channel("ops")
    await bob.open_channel("ops")
    await alice.send("before the restart (alice)")
    await bob.send("before the restart (bob)")
    await expect(alice.message("before the restart (bob)")).to_have_count(1)

    # kill -9 and start again on the same port and db: both pages reconnect and resume.
    marks = [len(await p.states()) for p in (alice, bob)]
    await daemon.restart()
    for person, mark in zip((alice, bob), marks, strict=True):
        await wait_states(person, mark, "reconnecting", "connected")
        await person.expect_state("connected")
    await alice.send("after the restart (alice)")
    await expect(bob.message("after the restart (alice)")).to_have_count(1)
    await bob.send("after the restart (bob)")
    await expect(alice.message("after the restart (bob)")).to_have_count(1)

    # Down again: what alice sends meanwhile waits in her outbox and goes out
    # exactly once when the server is back.
    port = daemon.port
    marks = [len(await p.states()) for p in (alice, bob)]
    await daemon.kill()
    await wait_states(alice, marks[0], "reconnecting")
    await alice.page.fill("#composer-input", "sent while the server was down")
    await alice.page.press("#composer-input", "Enter")
    await expect(alice.loc("#outbox .pending")).to_have_text("sent while the server was down")
    await alice.shot("outbox-while-down")
    await daemon.start(port)
    for person, mark in zip((alice, bob), marks, strict=True):
        await wait_states(person, mark, "reconnecting", "connected")
    await expect(alice.loc("#outbox .pending")).to_have_count(0)
    await expect(bob.message("sent while the server was down")).to_have_count(1)
    await bob.send("all good")
    await expect(alice.message("all good")).to_have_count(1)

    # A graceful restart (SIGTERM drains and closes with 1001) is the same to them.
    marks = [len(await p.states()) for p in (alice, bob)]
    assert await daemon.terminate() == 0
    await daemon.start(port)
    for person, mark in zip((alice, bob), marks, strict=True):
        await wait_states(person, mark, "reconnecting", "connected")
        await expect(person.loc("#error")).to_be_empty()
    await alice.send("after the drain")
    await expect(bob.message("after the drain")).to_have_count(1)

    want = await server_ids(daemon, cid)
    assert len(want) == 7, want
    await alice.expect_ids(want)
    await bob.expect_ids(want)
    alice.assert_clean()
    bob.assert_clean()


async def test_resume_gap_resyncs(make_daemon: Any, browsers: Browsers) -> None:
    d: Daemon = await make_daemon("--event-ttl", "0.5", "--expire-interval", "0.2")
    alice = await browsers.person("alice")
    await alice.login(d.http)
    cid = await alice.create_channel("news")
    async with client(d.url, "bob") as ws:
        seen = (await ws.ok("send", channel=cid, body="first"))["message"]["seq"]
    await expect(alice.message("first")).to_have_count(1)
    # The page's port goes dark. The same database is served on another port
    # meanwhile, where bob sends and the events alice missed expire.
    port = d.port
    mark = len(await alice.states())
    # The newest event alice's page can have seen: "first", or the read.updated
    # of the mark_read the page sends while the channel is open.
    seen = max(seen, await healthz_seq(d.http))
    await d.kill()
    await wait_states(alice, mark, "reconnecting")
    await d.start(0)
    async with client(d.url, "bob") as ws:
        for body in ("missed 1", "missed 2"):
            await ws.ok("send", channel=cid, body=body)
    # Expiry logs the horizon of each run; wait until it has passed alice's seq.
    await wait_for(lambda: horizon(d) > seen, within=30, interval=0.1,
                   what="the horizon to pass alice's seq")
    async with client(d.url, "bob") as ws:
        await ws.ok("send", channel=cid, body="missed 3")
    await d.kill()
    await d.start(port)

    # alice's resume is refused with resume_gap: the page boots again and shows it.
    await wait_states(alice, mark, "reconnecting", "resynced")
    await alice.expect_state("resynced")
    await expect(alice.loc("#channel-title")).to_have_text("news")
    async with client(d.url, "bob") as ws:
        want = [m["id"] for m in await all_history(ws, cid)]
        assert len(want) == 4
        await alice.expect_ids(want)
        await ws.ok("send", channel=cid, body="live again")
    await expect(alice.message("live again")).to_have_count(1)
    await alice.shot("resynced")
    alice.assert_clean()


async def test_phone_width(daemon: Daemon, browsers: Browsers) -> None:
    async with client(daemon.url, "bob") as ws:
        cid = (await ws.ok("create_channel", name="mobile"))["channel"]["id"]
        await ws.ok("send", channel=cid, body="Are you on your phone?")
    alice = await browsers.person("alice", width=375, height=740, mobile=True)
    await alice.login(daemon.http)
    await alice.open_channel("mobile")
    await alice.send("Yes, and it works here too.")
    await expect(alice.message("Yes, and it works here too.")).to_be_in_viewport()
    for selector in ("#composer-input", "#composer-form button", "#channel-title", "#logout"):
        await expect(alice.loc(selector)).to_be_in_viewport()
    width = await alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at phone width"
    await alice.shot("phone")
    async with client(daemon.url, "bob") as ws:
        assert [m["body"] for m in await all_history(ws, cid)] == \
            ["Are you on your phone?", "Yes, and it works here too."]
    alice.assert_clean()
