"""Logging in and out of a real `clipsearch serve` started with a token, in a real
Chromium and over plain HTTP: a mistyped login link gets the login form and a sentence;
the page offers a logout, which ends the session on the server (a copy of the cookie
opens nothing after it); a restart keeps the sessions, a new token ends them; the login
form says when the server cannot be reached.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from test_browser import watch

from clipsearch.cli import cli
from clipsearch.testing.random_clip import build_random_clip

import support
from support import ServeProcess, draw_collection

TOKEN = "session-test-token-5b8e1c07"
IMAGES = 12

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sessions")
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    draw_collection(root / "photos", IMAGES)
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(root / "xdg-data")}
    result = CliRunner().invoke(cli, ["ingest", str(root / "photos"), "--index", str(root / "index"),
                                      "--model", str(model), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    return {"root": root, "args": ["--index", str(root / "index"), "--model", str(model), "--token", TOKEN],
            "env": env}


def serve(library: dict, log: str) -> ServeProcess:
    return ServeProcess(library["args"], library["root"] / log, env=library["env"])


def status_with(url: str, cookie_name: str, cookie: str) -> int:
    request = urllib.request.Request(f"{url}/api/status", headers={"Cookie": f"{cookie_name}={cookie}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def logged_in(url: str) -> tuple[str, str]:
    """(cookie name, value) of a login with the token."""
    request = urllib.request.Request(f"{url}/api/login", data=json.dumps({"token": TOKEN}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        name, _, rest = response.headers["set-cookie"].partition("=")
        return name, rest.partition(";")[0]


def test_a_mistyped_login_link_gets_the_form_the_logout_ends_the_session_everywhere(library, browser):
    from playwright.sync_api import expect

    with serve(library, "serve.log") as server:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        seen = watch(page)
        response = page.goto(f"{server.url}/login?token=not-the-right-token")
        assert response.status == 401
        policy = response.headers["content-security-policy"]  # the inline script allowed by its hash alone
        assert "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#error")).to_have_text("That token is not right.")
        assert page.url == f"{server.url}/"  # the wrong token is out of the address bar
        page.fill("#token", TOKEN)
        with page.expect_navigation():
            page.press("#token", "Enter")
        expect(page.locator("#query")).to_be_visible()
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        expect(page.locator(".hit")).to_have_count(IMAGES)

        # A copy of the session cookie, taken while logged in, opens the library...
        cookie = next(c for c in context.cookies() if c["name"].startswith("clipsearch_session"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert status_with(server.url, cookie["name"], cookie["value"]) == 200
        # ...until the page's logout, which lands on the login form, the search kept.
        expect(page.locator("#logout")).to_be_visible()
        with page.expect_navigation():
            page.click("#logout")
        expect(page.locator("#token")).to_be_visible()
        assert "q=a+red+circle" in page.url
        assert status_with(server.url, cookie["name"], cookie["value"]) == 401
        other = browser.new_context()
        other.add_cookies([cookie])
        assert other.new_page().goto(f"{server.url}/").status == 401
        other.close()

        # A login again is a new session; the page comes back to its search.
        page.fill("#token", TOKEN)
        with page.expect_navigation():
            page.press("#token", "Enter")
        expect(page.locator(".hit")).to_have_count(IMAGES)
        assert seen["page_errors"] == []
        context.close()


def test_a_restart_keeps_the_sessions_and_a_new_token_ends_them(library, monkeypatch):
    port = support.free_port()
    monkeypatch.setattr(support, "free_port", lambda: port)  # the same address, so the same cookie name
    with serve(library, "before.log") as server:
        name, session = logged_in(server.url)
        name, ended = logged_in(server.url)
        assert status_with(server.url, name, session) == 200
        logged_out = urllib.request.Request(f"{server.url}/api/logout", method="POST",
                                            headers={"Cookie": f"{name}={ended}"})
        urllib.request.urlopen(logged_out, timeout=30).close()
    with serve(library, "after.log") as server:  # a NAS rebooted: nobody logs in again
        assert status_with(server.url, name, session) == 200
        assert status_with(server.url, name, ended) == 401
    kept = library["root"] / "cache" / "sessions" / f"{port}.json"
    assert kept.stat().st_mode & 0o777 == 0o600 and session.partition(".")[2] not in kept.read_text()
    other = ServeProcess([*library["args"][:-1], "another-token-of-enough-length"], library["root"] / "other.log",
                         env=library["env"])
    with other as server:
        assert status_with(server.url, name, session) == 401


def test_the_login_form_says_when_the_server_cannot_be_reached(library, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(15_000)
    seen = watch(page)
    with serve(library, "gone.log") as server:
        page.goto(f"{server.url}/")
        expect(page.locator("#token")).to_be_visible()
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    expect(page.locator("#error")).to_have_text("The server is not answering; try again in a moment.")
    assert seen["page_errors"] == []
    page.close()


def test_sessions_are_random_and_ended_one_by_one():
    from clipsearch.serve.security import Guard

    guard = Guard(TOKEN)
    first, second = guard.new_session(), guard.new_session()
    assert first != second and TOKEN not in first
    assert guard.allows(None, first) and guard.allows(None, second)
    guard.end_session(first)
    assert not guard.allows(None, first) and guard.allows(None, second)
    assert not Guard(TOKEN).allows(None, second)  # another serve, the same token: not its session
    for forged in ("", ".", "x", first.partition(".")[0] + ".", second.partition(".")[0] + ".wrong"):
        assert not guard.allows(None, forged), forged
