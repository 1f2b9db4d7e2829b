"""The page as a family member uses it, in a real Chromium against a real `clipsearch
serve --watch --token`: what the server notes is shown in words for people; a folder is
asked for in full, with a guess; the viewer says why a photo cannot be shown in words,
tries a just-changed one again, steps to the next photo, downloads it, and Back closes
it; captions show the name; the files that could not be read are one line; a search
that got no answer runs again once the server answers; Next knows the last page; a
phone shows two photos a row; an empty search says so; an old login link of a logged-in
browser opens the page.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from test_browser import K, grid_ids, watch

from clipsearch.testing.random_clip import build_random_clip

from support import ServeProcess, draw_collection, draw_image

TOKEN = "findings-test-token-3c9e51d0"
PHONE = {"width": 375, "height": 667}
LONG = "a-long-name-from-a-phone-camera-" + "x" * 120 + "-end.png"
BROKEN = 3  # files in the library that cannot be read

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """2 x K photos (an exactly full last page), some in "sub folder" (one with a long
    name), and BROKEN files that are no images, watched by a serve that needs a token."""
    root = tmp_path_factory.mktemp("findings")
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    photos = root / "photos"
    draw_collection(photos, 2 * K - 6)
    draw_collection(photos / "sub folder", 5)
    draw_image(photos / "sub folder" / LONG, "red", "circle", mark=7)
    for i in range(BROKEN):
        (photos / f"broken {i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "XDG_DATA_HOME": str(root / "xdg-data")}
    args = ["--index", str(root / "index"), "--model", str(model), "--watch", str(photos), "--token", TOKEN, "--quiet"]
    with ServeProcess(args, root / "serve.log", env=env) as server:
        ingest = lambda: server.get("/api/ingest", {"Authorization": f"Bearer {TOKEN}"})[1] or {}  # noqa: E731
        server.wait_until(lambda: ingest().get("state") == "watching" and not ingest().get("pending")
                          and len(ingest().get("errors", [])) == BROKEN, 180, "the watched ingest to settle")
        yield {"url": server.url, "photos": photos}


@pytest.fixture
def context(browser, library):
    """A logged-in browser (the session cookie, as the login form sets it)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    assert context.request.post(f"{library['url']}/api/login", data={"token": TOKEN}).ok
    yield context
    context.close()


def opened(context, library, **params):
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.seen = watch(page)
    if params:
        with page.expect_response(lambda r: "/api/search" in r.url or "/similar" in r.url):
            page.goto(f"{library['url']}/?{urlencode(params)}")
        page.locator(".hit").first.wait_for()
    else:
        page.goto(f"{library['url']}/")
    return page


def searches(page) -> list[str]:
    return [url for url in page.seen["requests"] if "/api/search" in url]


def test_the_servers_note_and_a_folder_not_in_full_are_said_in_words(context, library):
    from playwright.sync_api import expect

    sub = library["photos"] / "sub folder"
    page = opened(context, library, q="a red circle", **{"in": str(sub)})
    # A folder by its name alone: the page asks for it in full, guessing from the paths
    # on screen, and sends nothing; "~" the same (whose home? not the server's, silently).
    sent = len(searches(page))
    page.fill("#folder", "sub folder")
    page.press("#folder", "Enter")
    expect(page.locator("#error")).to_have_text(f"Type the folder in full, starting with “/”. Did you mean “{sub}”?")
    page.fill("#folder", "~")
    page.press("#folder", "Enter")
    expect(page.locator("#error")).to_contain_text("“~” is not understood here.")
    expect(page.locator(".hit")).to_have_count(6)  # the results stay
    assert len(searches(page)) == sent and parse_qs(urlsplit(page.url).query)["in"] == [str(sub)]

    # Nothing indexed under the folder: the server's note, in words, where "No results" is.
    page.fill("#folder", "/nowhere/at/all")
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.press("#folder", "Enter")
    assert answer.value.json()["note"] == "in=/nowhere/at/all: nothing is indexed under this folder"
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#summary")).to_have_text("No results for “a red circle”.")
    expect(page.locator("#note")).to_be_visible()
    expect(page.locator("#note")).to_contain_text(
        "There are no photos under the folder “/nowhere/at/all”. Check its spelling")
    assert page.seen["page_errors"] == []
    page.close()


def test_an_empty_search_says_so_and_sends_nothing(context, library):
    from playwright.sync_api import expect

    page = opened(context, library, q="a blue square")
    before, sent = page.url, len(searches(page))
    page.fill("#query", "   ")
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_have_text("Type what you are looking for, e.g. “a dog on a beach”.")
    expect(page.locator(".hit")).to_have_count(K)
    assert page.url == before and len(searches(page)) == sent
    page.close()


def test_next_knows_an_exactly_full_last_page(context, library):
    from playwright.sync_api import expect

    page = opened(context, library, q="a green triangle", offset=K)
    expect(page.locator("#summary")).to_contain_text(f"Results {K + 1}–{2 * K} for")
    expect(page.locator("#next")).to_be_disabled()
    page.click("#prev")
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
    expect(page.locator("#next")).to_be_enabled()
    page.close()


def test_captions_show_the_name_cut_in_the_middle_and_the_folder_cut_at_its_start(context, library):
    page = opened(context, library, q="a red circle", **{"in": str(library["photos"] / "sub folder")})
    caption = page.locator(".hit", has_text=LONG).locator(".path")
    assert caption.get_attribute("title") == str(library["photos"] / "sub folder" / LONG)
    # Where each end of the name and of the folder is drawn, against the caption's box.
    box = caption.bounding_box()
    drawn = caption.evaluate("""p => {
        const at = (node, i) => { const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
                                  return r.getBoundingClientRect().toJSON(); };
        const end = p.querySelector('.name-end').firstChild, folder = p.querySelector('.folder bdi').firstChild;
        return {nameEnd: at(end, end.length - 1), folderStart: at(folder, 0), folderEnd: at(folder, folder.length - 2),
                nameEndText: end.data}; }""")
    inside = lambda r: box["x"] - 1 <= r["x"] and r["x"] + r["width"] <= box["x"] + box["width"] + 1  # noqa: E731
    assert drawn["nameEndText"].endswith("-end.png") and inside(drawn["nameEnd"])  # the extension shows
    assert inside(drawn["folderEnd"])  # "…/sub folder/": the folder nearest the photo shows
    assert not inside(drawn["folderStart"])  # the start of a long folder is what is cut
    page.close()


def test_the_files_that_could_not_be_read_are_one_line_and_results_on_a_phones_first_screen(browser, library):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    assert context.request.post(f"{library['url']}/api/login", data={"token": TOKEN}).ok
    page = opened(context, library, q="a red circle")
    summary = page.locator("#ingest-problems summary")
    expect(summary).to_have_text(f"{BROKEN} files could not be read")
    expect(page.locator("#ingest-errors li")).to_have_count(BROKEN)
    expect(page.locator("#ingest-errors")).to_be_hidden()
    summary.click()
    expect(page.locator("#ingest-errors li").first).to_contain_text("broken ")
    summary.click()
    # Two photos a row, the first row on the first screen.
    tiles = [page.locator(".hit").nth(i).bounding_box() for i in range(4)]
    assert len({round(t["x"]) for t in tiles}) == 2 and len({round(t["y"]) for t in tiles}) == 2
    assert tiles[0]["y"] + tiles[0]["height"] < PHONE["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    context.close()


def test_a_search_without_an_answer_runs_again_when_the_server_answers(context, library):
    from playwright.sync_api import expect

    page = opened(context, library, q="a red circle")
    shown = grid_ids(page)
    page.route("**/api/search", lambda route: route.abort())  # the server down, for searches
    page.fill("#query", "a blue square")
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_have_text("The server is not answering; trying again…")
    assert grid_ids(page) == shown
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.unroute("**/api/search")  # back: the next status poll answers, the search runs again
    expect(page.locator("#error")).to_be_hidden()
    assert answer.value.request.post_data_json["query"] == "a blue square"
    expect(page.locator(".hit").first).to_have_attribute("data-id", answer.value.json()["hits"][0]["id"])
    expect(page.locator("#summary")).to_contain_text("a blue square")
    page.close()


def test_back_closes_the_photo_and_the_viewer_steps_through_the_photos(browser, library):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    assert context.request.post(f"{library['url']}/api/login", data={"token": TOKEN}).ok
    page = opened(context, library, q="a red circle")
    page.locator("#next").tap()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
    ids, address = grid_ids(page), page.url
    page.locator(".hit .open").nth(3).tap()
    expect(page.locator("#viewer")).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#viewer-image")).to_have_attribute("src", f"/api/images/{ids[4]}/file")
    page.locator("#viewer-prev").tap()
    page.locator("#viewer-prev").tap()
    expect(page.locator("#viewer-image")).to_have_attribute("src", f"/api/images/{ids[2]}/file")
    page.go_back()
    expect(page.locator("#viewer")).to_be_hidden()
    assert page.url == address and grid_ids(page) == ids
    expect(page.locator("#summary")).to_contain_text(f"Results {K + 1}–")
    # The last photo: no next one. Escape closes it and leaves no history behind.
    page.locator(".hit .open").last.tap()
    expect(page.locator("#viewer-next")).to_be_disabled()
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    page.wait_for_function("() => !(history.state && history.state.viewer)")
    page.go_back()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")  # the page before this one
    assert parse_qs(urlsplit(page.url).query) == {"q": ["a red circle"]}
    context.close()


def test_the_viewer_says_why_in_words_tries_a_changed_photo_again_and_downloads(context, library):
    from playwright.sync_api import expect

    page = opened(context, library, q="a red circle")
    hits = grid_ids(page)
    # Removed since the search (the server's 404): words, the server's reason in the tooltip.
    gone = f"no image with id {hits[0]} in collection 'images'"
    page.route(f"**/api/images/{hits[0]}/file", lambda route: route.fulfill(
        status=404, content_type="application/json", body=json.dumps({"error": gone})))
    page.locator(".hit .open").first.click()
    expect(page.locator("#viewer-error")).to_have_text(
        "This photo was deleted, moved or renamed since these results were shown. Search again.")
    expect(page.locator("#viewer-error")).to_have_attribute("title", gone)
    page.keyboard.press("Escape")

    # Changed a moment ago (410 while a watching serve indexes it again): asked again once.
    answered = []

    def changed_once(route):
        answered.append(route.request.url)
        if len(answered) <= 2:  # the image, and the page's question why it did not load
            route.fulfill(status=410, content_type="application/json",
                          body=json.dumps({"error": "the file changed since it was indexed"}))
        else:
            route.continue_()

    page.route(f"**/api/images/{hits[1]}/file", changed_once)
    page.locator(".hit .open").nth(1).click()
    expect(page.locator("#viewer-error")).to_have_text(
        "This photo was just changed or moved; trying again in a moment…")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=page.locator("#viewer-image").element_handle())
    expect(page.locator("#viewer-error")).to_be_hidden()
    assert len(answered) == 3

    # Download: the original, under its own name.
    with page.expect_download() as download:
        page.click("#viewer-download")
    name = page.locator(".hit").nth(1).locator(".path").get_attribute("title").rpartition("/")[2]
    assert download.value.suggested_filename == name
    page.close()


def test_an_old_login_link_of_a_logged_in_browser_opens_the_page(context, library):
    from playwright.sync_api import expect

    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{library['url']}/login?token=an-old-token-from-last-week")
    expect(page.locator("#query")).to_be_visible()
    assert urlsplit(page.url).path == "/" and "token" not in page.url
    expect(page.locator("#status")).to_contain_text(f"{2 * K} images")
    page.close()
