"""The web page's account administration (chatd/web) in Chromium against a real daemon:
invite links, the users panel, changing one's password, and close code 4001.

Every page here is served with the strict Content-Security-Policy the daemon is
meant to send (added on the way by Playwright, so these tests hold whether or not
the server sets it yet); a violation fails the test. The fixtures and the
``Person`` helpers are test_web's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Route, expect

from .helpers import PASSWORD, client, server_log_guard  # noqa: F401  (autouse fixture)
from .support import Daemon
from .test_web import Browsers, Person, launch_browsers, wait_states

FAST = ("--scrypt-n", "1024")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# Records every CSP violation the page reports; init scripts are not subject to it.
CSP_RECORDER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""
INVITE_LINK_RE = r"^{http}/#invite=[A-Za-z0-9_-]{{22,}}$"
LNA_OFF = "--disable-features=LocalNetworkAccessChecks"


@pytest.fixture
async def browsers(request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    """test_web's fixture, with Chromium's local network access checks off: a page
    that Playwright fulfilled (to add the CSP) has no address space of its own, so
    Chromium would refuse its WebSocket to 127.0.0.1 as a public page's."""
    async with launch_browsers(request.node.name, LNA_OFF) as b:
        yield b


async def person(browsers: Browsers, http: str, name: str, **kw: Any) -> Person:
    """A person whose pages come with the strict CSP."""
    p = await browsers.person(name, **kw)
    host = urlsplit(http).netloc
    policy = CSP.format(host=host)

    async def add_csp(route: Route) -> None:
        if route.request.resource_type != "document":
            await route.continue_()
            return
        response = await route.fetch()
        await route.fulfill(response=response,
                            headers={**response.headers, "content-security-policy": policy})

    await p.context.route("**/*", add_csp)
    await p.context.add_init_script(CSP_RECORDER)
    return p


async def assert_clean(p: Person) -> None:
    violations = await p.page.evaluate("window.__csp.slice()")
    assert not violations, f"CSP violations in {p.name}'s page: {violations}"
    p.assert_clean()


async def submit_login(p: Person, password: str = PASSWORD) -> None:
    """Fill in the login form that is shown and send it (Enter)."""
    await p.page.fill("#login-name", p.name)
    await p.page.fill("#login-password", password)
    await p.page.press("#login-password", "Enter")


async def expect_logged_in(p: Person) -> None:
    await expect(p.loc("#me")).to_have_text(p.name)
    await expect(p.loc("#chat-view")).to_be_visible()
    await p.expect_state("connected")


def user_row(p: Person, name: str) -> Any:
    return p.loc("#user-list > li.user").filter(
        has=p.page.locator(".user-name", has_text=re.compile(f"^{re.escape(name)}$"))
    )


async def expect_user(p: Person, name: str, role: str, state: str) -> None:
    row = user_row(p, name)
    await expect(row).to_have_count(1)
    await expect(row.locator(".badge")).to_have_text([role, state])


async def open_users(p: Person) -> None:
    await p.loc("#users-open").click()
    await expect(p.loc("#users-dialog")).to_be_visible()
    await expect(p.loc("#user-list > li.user").first).to_be_visible()


async def server_users(d: Daemon) -> dict[str, tuple[str, bool]]:
    async with client(d.url, "alice") as ws:
        users = (await ws.ok("users"))["users"]
    return {u["name"]: (u["role"], u["active"]) for u in users}


async def test_invite_link_users_panel_and_deactivation(
    make_daemon: Any, browsers: Browsers
) -> None:
    # The first account of a new database is its admin: alice makes it with open
    # sign-up, then the daemon comes back closed (as `chatd user add` would leave it).
    d: Daemon = await make_daemon(*FAST)
    alice = await person(browsers, d.http, "alice")
    await alice.login(d.http)
    await expect(alice.loc("#users-open")).to_be_visible()
    await expect(alice.loc("#password-open")).to_be_visible()
    mark = len(await alice.states())
    await d.kill()
    d.args.append("--no-open-signup")
    await d.start(d.port)
    await wait_states(alice, mark, "reconnecting", "connected")

    await open_users(alice)
    await expect_user(alice, "alice", "admin", "active")
    await expect(user_row(alice, "alice").locator(".user-you")).to_have_text("(you)")
    await expect(alice.loc("#invites")).to_be_visible()
    await expect(alice.loc("#invite-list")).to_have_text("No open invites.")
    # The only admin cannot step down: the server's conflict shows in the panel.
    await user_row(alice, "alice").locator(".set-role").click()
    await expect(alice.loc("#users-error")).to_contain_text("no active admin")
    await expect_user(alice, "alice", "admin", "active")

    # An invite for one account, valid a day; its link carries the code in the fragment.
    await alice.page.fill("#invite-uses", "1")
    await alice.page.select_option("#invite-ttl", "86400")
    await alice.loc("#invite-form button[type=submit]").click()
    await expect(alice.loc("#invite-link")).to_be_visible()
    await expect(alice.loc("#users-error")).to_be_empty()
    link = await alice.loc("#invite-link").input_value()
    assert re.fullmatch(INVITE_LINK_RE.format(http=re.escape(d.http)), link), link
    code = link.split("#invite=", 1)[1]
    await expect(alice.loc("#invite-list > li.invite")).to_have_count(1)
    await expect(alice.loc("#invite-list > li.invite")).to_contain_text("1 use left")
    await expect(alice.loc("#invite-list > li.invite")).to_contain_text("by alice")
    await alice.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=d.http)
    await alice.loc("#invite-copy").click()
    await expect(alice.loc("#invite-copied")).to_have_text("Copied.")
    assert await alice.page.evaluate("navigator.clipboard.readText()") == link
    await alice.shot("users-panel-invite")

    # Without an invite a new name gets no account on a closed server.
    carol = await person(browsers, d.http, "carol")
    await carol.page.goto(d.http + "/")
    await expect(carol.loc("#login-form")).to_be_visible()
    await expect(carol.loc("#login-invite")).to_be_hidden()
    await submit_login(carol)
    await expect(carol.loc("#error")).to_contain_text("invite")
    await expect(carol.loc("#login-form")).to_be_visible()

    # bob opens the link: the form has the code filled in, and logging in signs him up.
    bob = await person(browsers, d.http, "bob")
    response = await bob.page.goto(link)
    assert response is not None and "content-security-policy" in response.headers
    await expect(bob.loc("#login-invite")).to_be_visible()
    await expect(bob.loc("#login-invite")).to_have_value(code)
    await bob.shot("login-with-invite")
    await submit_login(bob)
    await expect_logged_in(bob)
    assert bob.page.url == d.http + "/", "the code left the address bar"
    await expect(bob.loc("#login-invite")).to_have_value("")
    # The fragment is never sent: no request and no log line carries the code.
    assert not [u for u in bob.requests if code in u], bob.requests
    assert not [line for line in d.log if code in line]

    # alice sees him (Refresh), makes him an admin and a member again.
    await alice.loc("#users-refresh").click()
    await expect_user(alice, "bob", "member", "active")
    await expect(alice.loc("#invite-list")).to_have_text("No open invites.")  # used up
    await user_row(alice, "bob").locator(".set-role").click()
    await expect_user(alice, "bob", "admin", "active")
    assert (await server_users(d))["bob"] == ("admin", True)
    await user_row(alice, "bob").locator(".set-role").click()
    await expect_user(alice, "bob", "member", "active")
    assert (await server_users(d))["bob"] == ("member", True)

    # A member sees everyone's role and state, and no controls.
    await open_users(bob)
    await expect_user(bob, "alice", "admin", "active")
    await expect_user(bob, "bob", "member", "active")
    await expect(bob.loc("#user-list button")).to_have_count(0)
    await expect(bob.loc("#invites")).to_be_hidden()

    # Deactivated: bob's socket is closed with 4001; his page forgets the token,
    # does not reconnect, and says why on the login form.
    mark = len(await bob.states())
    await user_row(alice, "bob").locator(".set-active").click()
    await expect_user(alice, "bob", "member", "deactivated")
    await expect(user_row(alice, "bob").locator(".set-active")).to_have_text("Reactivate")
    await alice.shot("users-panel")
    await expect(bob.loc("#login-form")).to_be_visible()
    await expect(bob.loc("#users-dialog")).to_be_hidden()
    await expect(bob.loc("#login-notice")).to_be_visible()
    await expect(bob.loc("#login-notice")).to_contain_text("deactivated")
    await expect(bob.loc("#me")).to_have_text("")
    assert await bob.page.evaluate("localStorage.getItem('chatd.token')") is None
    await expect(bob.loc("#conn-state")).to_be_hidden()  # idle: no socket
    assert "reconnecting" not in (await bob.states())[mark:]
    await bob.shot("logged-out-4001")
    await submit_login(bob)
    await expect(bob.loc("#error")).to_contain_text("deactivated")
    await expect(bob.loc("#login-form")).to_be_visible()

    # Reactivated: he logs in again with his password.
    await user_row(alice, "bob").locator(".set-active").click()
    await expect_user(alice, "bob", "member", "active")
    await submit_login(bob)
    await expect_logged_in(bob)
    await expect(bob.loc("#login-notice")).to_be_hidden()
    assert (await server_users(d)) == {"alice": ("admin", True), "bob": ("member", True)}
    for p in (alice, bob, carol):
        await assert_clean(p)


async def test_change_password_ends_the_other_sessions(
    make_daemon: Any, browsers: Browsers
) -> None:
    d: Daemon = await make_daemon(*FAST)
    here = await person(browsers, d.http, "alice")
    there = await person(browsers, d.http, "alice")
    await here.login(d.http)
    await there.login(d.http)
    await here.create_channel("after")

    # Checked in the dialog: the repeat must match, and the server wants the
    # current password.
    await here.loc("#password-open").click()
    await expect(here.loc("#password-dialog")).to_be_visible()
    await here.page.fill("#password-current", PASSWORD)
    await here.page.fill("#password-new", "new-secret-2")
    await here.page.fill("#password-repeat", "new-secret-3")
    await here.page.press("#password-repeat", "Enter")
    await expect(here.loc("#password-error")).to_contain_text("differ")
    await here.page.fill("#password-current", "not-the-password")
    await here.page.fill("#password-repeat", "new-secret-2")
    await here.page.press("#password-repeat", "Enter")
    await expect(here.loc("#password-error")).to_contain_text("wrong password")
    await expect(here.loc("#password-ok")).to_be_empty()

    mark = len(await there.states())
    await here.page.fill("#password-current", PASSWORD)
    await here.page.fill("#password-new", "new-secret-2")
    await here.page.fill("#password-repeat", "new-secret-2")
    await here.page.press("#password-repeat", "Enter")
    await expect(here.loc("#password-ok")).to_contain_text("Password changed")
    await expect(here.loc("#password-error")).to_be_empty()
    await expect(here.loc("#password-current")).to_have_value("")
    await here.shot("password-changed")

    # The other session is closed with 4001 and shows why; this one stays.
    await expect(there.loc("#login-form")).to_be_visible()
    await expect(there.loc("#login-notice")).to_contain_text("password was changed")
    assert await there.page.evaluate("localStorage.getItem('chatd.token')") is None
    assert "reconnecting" not in (await there.states())[mark:]
    await here.loc("#password-dialog .dialog-close").click()
    await expect(here.loc("#password-dialog")).to_be_hidden()
    await here.open_channel("after")
    await here.send("still logged in")
    await here.expect_state("connected")

    # The old password is refused, the new one works.
    await submit_login(there)
    await expect(there.loc("#error")).to_contain_text("wrong name or password")
    await submit_login(there, "new-secret-2")
    await expect_logged_in(there)
    await there.open_channel("after")
    await expect(there.message("still logged in")).to_have_count(1)
    for p in (here, there):
        await assert_clean(p)


async def test_admin_pages_at_phone_width(daemon: Daemon, browsers: Browsers) -> None:
    alice = await person(browsers, daemon.http, "alice", width=375, height=740, mobile=True)
    await alice.login(daemon.http)
    for selector in ("#users-open", "#password-open", "#logout"):
        await expect(alice.loc(selector)).to_be_in_viewport()
    async with client(daemon.url, "a-rather-long-user-name-that-must-wrap-somewhere"):
        pass
    await open_users(alice)
    await alice.loc("#invite-form button[type=submit]").click()
    await expect(alice.loc("#invite-link")).to_be_visible()
    await expect(user_row(alice, "a-rather-long-user-name-that-must-wrap-somewhere")
                 .locator(".set-active")).to_be_in_viewport()
    await expect(alice.loc("#invite-copy")).to_be_in_viewport()
    width = await alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at phone width"
    await alice.shot("users-panel-phone")
    await alice.page.keyboard.press("Escape")
    await expect(alice.loc("#users-dialog")).to_be_hidden()
    await alice.loc("#password-open").click()
    await expect(alice.loc("#password-dialog button[type=submit]")).to_be_in_viewport()
    await alice.shot("password-phone")
    await assert_clean(alice)
