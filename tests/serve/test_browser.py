"""The web page in a real browser against a real `clipsearch serve`: search, the viewer,
"more like this", a dislike, paging, errors, the login form; no request leaves localhost.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` package (no
`playwright install`: the browser is the system's). Skips without them.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.testing.random_clip import build_random_clip

from support import ServeProcess, draw_collection

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
IMAGES = 60
K = 24  # the page's page size (app.js)
TOKEN = "browser-test-token-7d2f9a41"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    """A tiny random CLIP and IMAGES drawn images, ingested into an edge index; one
    cache folder, so the text tower is exported by the first server only."""
    root = tmp_path_factory.mktemp("browser")
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    draw_collection(root / "photos", IMAGES)
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(cli, ["ingest", str(root / "photos"), "--index", str(root / "index"),
                                      "--model", str(model), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    return {"root": root, "model": model, "index": root / "index", "cache": root / "cache"}


@contextmanager
def running_server(collection: dict[str, Path], *extra: str, timeout: float = 90.0):
    """`clipsearch serve` in a subprocess; yields its base URL once /api/health answers."""
    env = {"CLIPSEARCH_CACHE_DIR": str(collection["cache"]), "XDG_DATA_HOME": str(collection["root"] / "xdg-data")}
    args = ["--index", str(collection["index"]), "--model", str(collection["model"]), *extra]
    with ServeProcess(args, collection["root"] / f"serve-{len(extra)}.log", env=env, timeout=timeout) as server:
        yield server.url


def watch(page) -> dict[str, list]:
    """Every request's URL, console errors and uncaught page errors, from now on."""
    seen: dict[str, list] = {"requests": [], "console": [], "page_errors": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("console", lambda message: message.type == "error" and seen["console"].append(message.text))
    page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
    return seen


def grid_ids(page) -> list[str]:
    return page.eval_on_selector_all(".hit", "nodes => nodes.map(n => n.dataset.id)")


def grid_ranks(page) -> list[int]:
    return [int(r) for r in page.eval_on_selector_all(".hit", "nodes => nodes.map(n => n.dataset.rank)")]


def only_local(urls: list[str]) -> list[str]:
    """The URLs that went anywhere but this machine (data: URLs go nowhere)."""
    return [u for u in urls if urlsplit(u).scheme != "data" and urlsplit(u).hostname not in LOCAL_HOSTS]


def test_page_searches_refines_and_pages(collection, browser):
    from playwright.sync_api import expect

    with running_server(collection) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(15_000)
        seen = watch(page)
        page.goto(f"{url}/")
        expect(page.locator("#status")).to_contain_text(f"{IMAGES} images")
        expect(page.locator("#status")).to_contain_text("tiny-clip")
        expect(page.locator("#ingest")).to_be_hidden()  # not watching a folder

        # A search: Enter in the box; the grid is the API's answer, scores shown.
        page.fill("#query", "a red circle")
        with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
            page.press("#query", "Enter")
        found = answer.value.json()["hits"]
        assert len(found) == K + 1  # one more than shown: whether there is a next page
        found = found[:K]
        expect(page.locator(".hit")).to_have_count(K)
        assert grid_ids(page) == [hit["id"] for hit in found]
        expect(page.locator(".hit .score").first).to_have_text(f"{found[0]['score']:.3f}")
        expect(page.locator(".hit .path").first).to_have_text(found[0]["path"])
        thumb = page.locator(".hit img").first
        assert "/thumbnail?size=256" in thumb.get_attribute("src")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())

        # The viewer: the image large, its path; Escape closes it.
        page.locator(".hit .open").first.click()
        viewer = page.locator("#viewer")
        expect(viewer).to_be_visible()
        expect(page.locator("#viewer-path")).to_have_text(found[0]["path"])
        large = page.locator("#viewer-image")
        assert large.get_attribute("src") == found[0]["file"]
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=large.element_handle())
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()

        # More like this: the grid becomes the similar list, the image itself left out.
        page.locator(".hit .open").first.click()
        with page.expect_response(lambda r: f"/api/images/{found[0]['id']}/similar" in r.url) as answer:
            page.click("#more-like-this")
        similar = answer.value.json()["hits"][:K]
        expect(viewer).to_be_hidden()
        expect(page.locator(".hit").first).to_have_attribute("data-id", similar[0]["id"])
        assert grid_ids(page) == [hit["id"] for hit in similar]
        assert found[0]["id"] not in grid_ids(page)
        assert grid_ids(page) != [hit["id"] for hit in found]

        # Back to the words; a dislike on the first hit: it vanishes, the rest re-rank.
        with page.expect_response(lambda r: r.url.endswith("/api/search")):
            page.press("#query", "Enter")
        expect(page.locator(".hit").first).to_have_attribute("data-id", found[0]["id"])
        with page.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST") as sent:
            page.locator(".hit").first.locator("button.dislike").click()
        body = sent.value.post_data_json
        assert body["disliked"] == [found[0]["id"]] and body["query"] == "a red circle" and body["k"] == K + 1
        expect(page.locator(f'.hit[data-id="{found[0]["id"]}"]')).to_have_count(0)
        expect(page.locator(".hit")).to_have_count(K)
        expect(page.locator("#refine")).to_contain_text("1 disliked")

        # Paging: the next page's ranks continue where this one's end; Previous goes back.
        page.click("#next")
        expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
        assert grid_ranks(page) == list(range(K + 1, 2 * K + 1))
        page.click("#prev")
        expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
        expect(page.locator("#prev")).to_be_disabled()

        # Likes and dislikes stay in the like buttons' state; a new search clears them.
        page.locator(".hit").first.locator("button.like").click()
        expect(page.locator(".hit button.like[aria-pressed=true]")).to_have_count(1)
        assert seen["console"] == [] and seen["page_errors"] == []

        # The folder filter goes out as `in`.
        page.fill("#folder", str(collection["root"] / "elsewhere"))
        with page.expect_request(lambda r: r.url.endswith("/api/search")) as sent:
            page.press("#folder", "Enter")
        assert sent.value.post_data_json["in"] == str(collection["root"] / "elsewhere")
        expect(page.locator("#summary")).to_contain_text("No results")
        expect(page.locator(".hit")).to_have_count(0)
        page.fill("#folder", str(collection["root"] / "photos"))
        page.press("#folder", "Enter")
        expect(page.locator(".hit")).to_have_count(K)

        # An API error shows in the page, as the server words it.
        page.route("**/api/search", lambda route: route.fulfill(
            status=409, content_type="application/json",
            body=json.dumps({"error": "collection 'images' holds no images yet"})))
        page.press("#query", "Enter")
        expect(page.locator("#error")).to_have_text("collection 'images' holds no images yet")
        expect(page.locator(".hit")).to_have_count(0)
        page.unroute("**/api/search")
        page.press("#query", "Enter")
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator(".hit")).to_have_count(K)

        assert only_local(seen["requests"]) == []
        assert seen["page_errors"] == []
        assert all("409" in text for text in seen["console"]), seen["console"]
        page.close()

        # The watched ingest's progress (this server watches nothing: its answers are
        # stood in for), polled until the server says it is not watching.
        page = browser.new_page()
        page.set_default_timeout(15_000)
        progress = {"watching": True, "state": "embedding", "found": 1200, "embedded": 400, "unchanged": 300,
                    "skipped": 2, "removed": 0, "pending": 498, "rate": 41.3, "eta_seconds": 125.0,
                    "errors": [{"path": "/photos/<b>odd</b>.jpg", "reason": "cannot identify image file"}]}
        page.route("**/api/ingest", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(progress)))
        page.goto(f"{url}/")
        expect(page.locator("#ingest")).to_be_visible()
        expect(page.locator("#ingest-state")).to_have_text("embedding")
        expect(page.locator("#ingest-counts")).to_contain_text("embedded 400")
        expect(page.locator("#ingest-counts")).to_contain_text("41.3 img/s, ETA 02:05")
        expect(page.locator("#ingest-errors li")).to_have_text("/photos/<b>odd</b>.jpg: cannot identify image file")
        assert page.locator("#ingest-progress").get_attribute("value") is not None
        progress["state"] = "scanning"  # the walk goes on: "found" is no total yet
        expect(page.locator("#ingest-counts")).to_contain_text("found 1200 so far")
        expect(page.locator("#ingest-progress")).not_to_have_attribute("value", re.compile(".*"))
        expect(page.locator("#ingest-counts")).not_to_contain_text("ETA")
        progress.clear()
        progress["watching"] = False
        expect(page.locator("#ingest")).to_be_hidden()
        page.close()


def test_token_login_and_logout(collection, browser):
    from playwright.sync_api import expect

    with running_server(collection, "--token", TOKEN) as url:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        seen = watch(page)
        response = page.goto(f"{url}/")
        assert response.status == 401
        expect(page.locator("#token")).to_be_visible()
        page.fill("#token", "not-the-token-at-all")
        page.press("#token", "Enter")
        expect(page.locator("#error")).to_contain_text("not right")

        page.fill("#token", TOKEN)
        with page.expect_navigation():
            page.press("#token", "Enter")
        expect(page.locator("#query")).to_be_visible()
        assert TOKEN not in page.content()
        assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        expect(page.locator(".hit")).to_have_count(K)
        expect(page.locator("#status")).to_contain_text(f"{IMAGES} images")
        assert TOKEN not in page.content()

        # Logged out (the cookie gone): the next call's 401 reloads into the login form,
        # and the search is still in the address bar for after the login.
        context.clear_cookies()
        with page.expect_navigation():
            page.press("#query", "Enter")
        expect(page.locator("#token")).to_be_visible()
        assert "q=a+blue+square" in page.url
        page.fill("#token", TOKEN)
        with page.expect_navigation():
            page.press("#token", "Enter")
        expect(page.locator("#query")).to_have_value("a blue square")
        expect(page.locator(".hit")).to_have_count(K)

        assert only_local(seen["requests"]) == []
        assert seen["page_errors"] == []
        context.close()


# A photo liked on the page leaves the index (the watcher removes the point of a deleted
# file): the next refinement goes on without it, drops it from the likes and says so in
# words, not as an id. The progress line gives the last walk's counts and the changes since.
WATCHED = 12


def test_a_liked_photo_deleted_meanwhile_is_dropped_with_a_note_and_counted(tmp_path, browser):
    from playwright.sync_api import expect

    model = build_random_clip(tmp_path / "tiny-clip", size="tiny", seed=0)
    photos = tmp_path / "photos"
    draw_collection(photos, WATCHED)
    env = {"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "xdg-data")}
    args = ["--index", str(tmp_path / "index"), "--model", str(model), "--watch", str(photos), "--quiet"]
    with ServeProcess(args, tmp_path / "serve.log", env=env) as server:
        server.wait_idle()
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.url}/")
        counts = page.locator("#ingest-counts")
        expect(counts).to_contain_text(f"found {WATCHED}, embedded {WATCHED}, unchanged 0, skipped 0, removed 0")
        expect(counts).to_contain_text("the last walk took")
        page.fill("#query", "a red circle")
        with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
            page.press("#query", "Enter")
        hits = answer.value.json()["hits"]
        liked, later = hits[0], hits[2]
        with page.expect_response(lambda r: r.url.endswith("/api/search")):
            page.locator(f'.hit[data-id="{liked["id"]}"] button.like').click()
        expect(page.locator("#refine")).to_contain_text("1 liked")

        # The liked photo is deleted; the watcher takes its point out of the index.
        Path(liked["path"]).unlink()
        server.wait_until(lambda: server.get("/api/status")[1]["points"] == WATCHED - 1, 60, "the point removed")
        expect(counts).to_contain_text(f"found {WATCHED}, embedded {WATCHED}, unchanged 0, skipped 0, removed 1")
        expect(counts).to_contain_text("; since: removed 1")

        with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
            page.locator(f'.hit[data-id="{later["id"]}"] button.like').click()
        sent = answer.value.request.post_data_json
        assert sent["liked"] == [liked["id"], later["id"]]
        assert answer.value.status == 200 and answer.value.json()["dropped"] == [liked["id"]]
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator(".hit")).not_to_have_count(0)
        expect(page.locator("#note")).to_be_visible()
        expect(page.locator("#note")).to_have_text(
            "Left out 1 liked image: no longer in the index (deleted, moved or renamed since shown).")
        expect(page.locator("#refine")).to_contain_text("Refined by 1 liked and 0 disliked")
        # Gone from the page's likes: the next refinement no longer sends it.
        with page.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST") as request:
            page.locator(f'.hit:not([data-id="{later["id"]}"]) button.dislike').first.click()
        assert request.value.post_data_json["liked"] == [later["id"]]
        expect(page.locator("#note")).to_be_hidden()

        # More like this of a photo deleted since: a sentence, not an id.
        page.goto(f"{server.url}/?like={liked['id']}")
        expect(page.locator("#error")).to_contain_text("no longer in the index")
        assert liked["id"] not in page.locator("#error").inner_text()
        assert errors == []
        page.close()
