"""Photos on the page, in a real Chromium against a real `clipsearch serve`: tiles stay
square whatever a photo's shape; names are shown as they are (a backslash, bytes that are
not UTF-8, runs of spaces); the viewer says why a photo cannot be shown; a thumbnail is
"gone" only when the server says so, and one that could not load (the server down) loads
once the server is back; a search with the server down says so and keeps the grid; on a
phone the viewer's controls stay on screen and every control is a finger's size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from test_browser import watch

from clipsearch.cli import cli
from clipsearch.testing.random_clip import build_random_clip

import support
from support import ServeProcess, draw_collection, draw_image

PHONE = {"width": 390, "height": 844}
# Names as the server shows them (a byte that is not UTF-8 as \xNN), and how each is drawn.
BACKSLASH = "back\\slash.png"
NOT_UTF8 = "bad\\xff\\xfename.png"
SPACES = "two   spaces  here.png"
ODD = {BACKSLASH: ("red", (96, 72)), os.fsdecode(b"bad\xff\xfename.png"): ("green", (96, 72)),
       SPACES: ("blue", (96, 72)), "tall.png": ("purple", (200, 3000)), "screenshot.png": ("orange", (1170, 2532)),
       "gone.png": ("yellow", (96, 72)), "changed.png": ("black", (96, 72)), "print.tif": ("white", (96, 72))}

pytestmark = pytest.mark.slow


def ingested(root: Path) -> tuple[Path, dict[str, str]]:
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(root / "xdg-data")}
    result = CliRunner().invoke(cli, ["ingest", str(root / "photos"), "--index", str(root / "index"),
                                      "--model", str(model), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    return model, env


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The odd photos and a few plain ones in one folder, served."""
    root = tmp_path_factory.mktemp("thumbnails")
    odd = root / "photos" / "odd"
    for mark, (name, (colour, size)) in enumerate(ODD.items(), start=1):
        draw_image(odd / name, colour, "square", size=size, mark=mark)
    draw_collection(odd, 6)
    model, env = ingested(root)
    with ServeProcess(["--index", str(root / "index"), "--model", str(model)], root / "serve.log", env=env) as served:
        yield {"url": served.url, "odd": odd}


def shown_odd(page, library) -> dict[str, dict]:
    """Opens the page on a search in the odd folder; its hits by name, as the server names them."""
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.goto(f"{library['url']}/?{urlencode({'q': 'a photo', 'in': str(library['odd'])})}")
    hits = answer.value.json()["hits"]
    assert len(hits) == len(ODD) + 6
    page.locator(".hit").first.wait_for()
    return {hit["path"].rpartition("/")[2]: hit for hit in hits}


def thumbnails_loaded(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('.hit img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def tile(page, hit):
    return page.locator(f'.hit[data-id="{hit["id"]}"]')


def test_tall_photos_keep_their_tiles_and_rows_square(library, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    hits = shown_odd(page, library)
    thumbnails_loaded(page)
    boxes = page.eval_on_selector_all(".hit .open", "nodes => nodes.map(n => n.getBoundingClientRect().toJSON())")
    assert all(abs(box["width"] - box["height"]) <= 1 for box in boxes), boxes
    heights = page.eval_on_selector_all(".hit", "nodes => nodes.map(n => n.getBoundingClientRect().height)")
    assert max(heights) - min(heights) <= 1, heights
    for name in ("tall.png", "screenshot.png"):  # the whole photo, inside its box
        image = tile(page, hits[name]).locator("img").bounding_box()
        box = tile(page, hits[name]).locator(".open").bounding_box()
        assert image["height"] <= box["height"] + 1 and image["width"] <= box["width"] + 1
    page.close()


def test_names_are_split_on_slashes_only_and_keep_their_spaces(library, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    seen = watch(page)
    hits = shown_odd(page, library)
    assert {BACKSLASH, NOT_UTF8, SPACES} <= set(hits)
    for name in (BACKSLASH, NOT_UTF8):
        expect(tile(page, hits[name]).locator("img")).to_have_attribute("alt", name)
        expect(tile(page, hits[name]).locator(".open")).to_have_attribute("aria-label", f"Open {name}")
        expect(tile(page, hits[name]).locator(".like")).to_have_attribute("aria-label", f"More like {name}")
    # Runs of spaces as they are in the name (innerText is the text as laid out).
    # The name's two parts (its ending kept whole where the rest is cut) keep them each.
    name = tile(page, hits[SPACES]).locator(".path .name")
    assert name.locator(".name-start").inner_text() + name.locator(".name-end").inner_text() == SPACES
    tile(page, hits[SPACES]).locator(".open").click()
    assert page.locator("#viewer-path").inner_text().endswith(f"/{SPACES}")
    page.keyboard.press("Escape")

    tile(page, hits[NOT_UTF8]).locator(".open").click()
    expect(page.locator("#viewer-image")).to_have_attribute("alt", NOT_UTF8)
    with page.expect_response(lambda r: "/similar" in r.url):
        page.click("#more-like-this")
    expect(page.locator("#summary")).to_contain_text(f"images like {NOT_UTF8} (")
    with page.expect_response(lambda r: "/similar" in r.url):
        page.reload()  # the name comes from the server when the address alone brings the search
    expect(page.locator("#summary")).to_contain_text(f"images like {NOT_UTF8} (")
    assert seen["page_errors"] == []
    page.close()


def test_on_a_phone_the_viewer_keeps_its_controls_on_screen_and_controls_fit_a_finger(library, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    hits = shown_odd(page, library)
    for selector in (".hit .like", ".hit .dislike", "#search"):
        for box in page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.getBoundingClientRect().toJSON())"):
            assert box["width"] >= 44 and box["height"] >= 44, (selector, box)
    for name in ("tall.png", "screenshot.png"):
        tile(page, hits[name]).locator(".open").tap()
        expect(page.locator("#viewer")).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=page.locator("#viewer-image").element_handle())
        for selector in ("#viewer-path", "#more-like-this", "#viewer-close"):
            box = page.locator(selector).bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (name, selector, box)
        for selector in ("#more-like-this", "#viewer-close"):
            box = page.locator(selector).bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44, (selector, box)
        page.locator("#viewer-close").tap()
        expect(page.locator("#viewer")).to_be_hidden()
    context.close()


def test_the_viewer_says_why_a_photo_cannot_be_shown_and_a_gone_one_is_called_gone(library, browser):
    """Last in this module: it deletes one photo and changes another."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    seen = watch(page)
    hits = shown_odd(page, library)
    thumbnails_loaded(page)
    (library["odd"] / "gone.png").unlink()
    draw_image(library["odd"] / "changed.png", "white", "circle", size=(120, 90))

    tile(page, hits["gone.png"]).locator(".open").click()
    expect(page.locator("#viewer-error")).to_have_text(
        "This photo was just changed or moved; trying again in a moment…")  # a 410: asked again once, then
    expect(page.locator("#viewer-error")).to_have_text(
        "This photo was changed, moved or deleted since these results were shown. Search again.")
    expect(page.locator("#viewer-error")).to_have_attribute(
        "title", "the indexed file is gone or is no longer a regular file")
    expect(page.locator("#viewer-image")).to_be_hidden()
    expect(page.locator("#viewer-path")).to_have_text(hits["gone.png"]["path"])
    page.keyboard.press("Escape")
    tile(page, hits["changed.png"]).locator(".open").click()
    expect(page.locator("#viewer-error")).to_have_text(
        "This photo was changed, moved or deleted since these results were shown. Search again.")
    expect(page.locator("#viewer-error")).to_have_attribute("title", re.compile("changed since it was indexed"))
    page.keyboard.press("Escape")
    tile(page, hits[SPACES]).locator(".open").click()  # the next photo shows as before
    expect(page.locator("#viewer-error")).to_be_hidden()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=page.locator("#viewer-image").element_handle())
    page.keyboard.press("Escape")
    # A file the server sends whole in a format the browser cannot show: its large thumbnail.
    tile(page, hits["print.tif"]).locator(".open").click()
    expect(page.locator("#viewer-image")).to_have_attribute("src", f"{hits['print.tif']['thumbnail']}?size=1024")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=page.locator("#viewer-image").element_handle())
    expect(page.locator("#viewer-error")).to_be_hidden()
    page.keyboard.press("Escape")
    page.wait_for_function("() => !(history.state && history.state.viewer)")  # the photo's entry left (Back)

    # Their thumbnails, asked again: the server says they are gone (410).
    page.reload()
    for name in ("gone.png", "changed.png"):
        expect(tile(page, hits[name]).locator(".problem")).to_have_text("file gone")
    expect(page.locator(".hit .problem:visible")).to_have_count(2)
    assert seen["page_errors"] == []
    page.close()


def test_thumbnails_that_could_not_load_are_not_gone_and_load_when_the_server_is_back(tmp_path, browser, monkeypatch):
    """The server stops while the page asks for its thumbnails: they "could not load"
    (never "file gone"), a search says the server cannot be reached and keeps the grid,
    and once the server answers again on its address the thumbnails load, no search needed."""
    from playwright.sync_api import expect

    draw_collection(tmp_path / "photos", 12)
    model, env = ingested(tmp_path)
    args = ["--index", str(tmp_path / "index"), "--model", str(model)]
    port = support.free_port()
    monkeypatch.setattr(support, "free_port", lambda: port)  # the same address after the restart
    server = ServeProcess(args, tmp_path / "serve.log", env=env)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    seen = watch(page)
    held: list = []  # the thumbnails' requests, kept from the server until it has stopped
    stopped = []
    page.route("**/thumbnail*", lambda route: route.continue_() if stopped else held.append(route))
    try:
        page.goto(f"{server.url}/")
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        expect(page.locator(".hit")).to_have_count(12)
        for _ in range(100):
            if len(held) == 12:
                break
            page.wait_for_timeout(100)
        assert len(held) == 12
        server.stop()
        stopped.append(True)
        for route in held:
            route.continue_()
        expect(page.locator(".hit .problem:visible")).to_have_count(12)
        expect(page.locator(".hit .problem").first).to_have_text("could not load")
        assert "file gone" not in page.locator("#results").inner_text()

        page.press("#query", "Enter")
        expect(page.locator("#error")).to_have_text("The server is not answering; trying again…")
        expect(page.locator(".hit")).to_have_count(12)

        server = ServeProcess(args, tmp_path / "serve-again.log", env=env)
        expect(page.locator(".hit .problem:visible")).to_have_count(0, timeout=40_000)
        thumbnails_loaded(page)
        assert seen["page_errors"] == []
    finally:
        page.close()
        server.stop()
