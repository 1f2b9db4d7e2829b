"""The page's place in the browser's history and address bar, paging and focus, in a real
Chromium against a real `clipsearch serve`: Back and Forward walk the searches, pages and
"more like this"; likes and dislikes are in the address, so a reload shows the same
results; paging brings the results' top into view; the keyboard focus survives the grid
being drawn again.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from test_browser import K, grid_ids, grid_ranks, watch

from clipsearch.cli import cli
from clipsearch.testing.random_clip import build_random_clip

from support import ServeProcess, draw_collection

IMAGES = 60
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real serve of IMAGES drawn images; its base URL."""
    root = tmp_path_factory.mktemp("history")
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    draw_collection(root / "photos", IMAGES)
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1",
           "XDG_DATA_HOME": str(root / "xdg-data")}
    result = CliRunner().invoke(cli, ["ingest", str(root / "photos"), "--index", str(root / "index"),
                                      "--model", str(model), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    with ServeProcess(["--index", str(root / "index"), "--model", str(model)], root / "serve.log", env=env) as served:
        yield served.url


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    page.seen = watch(page)
    yield page
    assert page.seen["page_errors"] == []
    page.close()


def searched(page, words: str) -> list[dict]:
    """Types the words and presses Enter; the hits the server answered that the page shows
    (it asks for one more, to know whether there is a next page)."""
    page.fill("#query", words)
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.press("#query", "Enter")
    hits = answer.value.json()["hits"][:K]
    page.locator(".hit").first.wait_for()
    return hits


def address(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def focused(page) -> dict:
    """What has the keyboard focus: its id and classes, and the photo whose tile holds it."""
    return page.evaluate("""() => { const a = document.activeElement; const hit = a.closest('.hit');
        return {tag: a.tagName, id: a.id, cls: a.className, photo: hit && hit.dataset.id}; }""")


def test_back_and_forward_walk_the_searches_pages_and_more_like_this(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/")
    first = [hit["id"] for hit in searched(page, "a red circle")]
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.click("#next")
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
    second = grid_ids(page)
    page.locator(".hit .open").first.click()
    with page.expect_response(lambda r: f"/api/images/{second[0]}/similar" in r.url) as answer:
        page.click("#more-like-this")
    similar = [hit["id"] for hit in answer.value.json()["hits"]][:K]
    expect(page.locator(".hit").first).to_have_attribute("data-id", similar[0])
    # The words stay with "more like this", in the address and in the box.
    assert address(page) == {"q": ["a red circle"], "like": [second[0]]}
    expect(page.locator("#query")).to_have_value("a red circle")

    page.go_back()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
    assert grid_ids(page) == second and address(page) == {"q": ["a red circle"], "offset": [str(K)]}
    expect(page.locator("#page")).to_have_text("Page 2")
    page.go_back()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
    assert grid_ids(page) == first and address(page) == {"q": ["a red circle"]}
    page.go_back()  # the page as it opened, still the app's: no search
    expect(page.locator(".hit")).to_have_count(0)
    expect(page.locator("#pager")).to_be_hidden()
    assert urlsplit(page.url).path == "/" and page.url.startswith(server)

    page.go_forward()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
    page.go_forward()
    page.go_forward()
    expect(page.locator(".hit").first).to_have_attribute("data-id", similar[0])
    assert grid_ids(page) == similar
    expect(page.locator("#summary")).to_contain_text("images like ")
    expect(page.locator("#summary")).not_to_contain_text("the chosen image")  # the name, kept with the entry


def test_likes_and_dislikes_are_in_the_address_so_a_reload_shows_the_same_results(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/")
    hits = searched(page, "a blue square")
    liked, disliked = hits[2]["id"], hits[0]["id"]
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.locator(f'.hit[data-id="{liked}"] button.like').click()
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.locator(f'.hit[data-id="{disliked}"] button.dislike').click()
    expect(page.locator("#refine")).to_contain_text("Refined by 1 liked and 1 disliked")
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.click("#next")
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
    assert address(page) == {"q": ["a blue square"], "liked": [liked], "disliked": [disliked], "offset": [str(K)]}
    shown = grid_ids(page)
    summary = page.locator("#summary").inner_text().split(" (")[0]
    assert summary == "Results 25–48 for “a blue square”"

    with page.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST") as sent:
        page.reload()
    body = sent.value.post_data_json
    assert (body["query"], body["liked"], body["disliked"], body["offset"]) == ("a blue square", [liked], [disliked], K)
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(K + 1))
    assert grid_ids(page) == shown
    expect(page.locator("#refine")).to_contain_text("Refined by 1 liked and 1 disliked")
    expect(page.locator("#summary")).to_contain_text(summary)

    # Back to the first page: its likes are the ones it had.
    page.go_back()
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
    expect(page.locator(f'.hit[data-id="{liked}"] button.like')).to_have_attribute("aria-pressed", "true")
    expect(page.locator(f'.hit[data-id="{disliked}"]')).to_have_count(0)


def test_paging_brings_the_top_of_the_results_into_view_on_a_phone(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport=PHONE)
    page.set_default_timeout(15_000)
    page.goto(f"{server}/")
    searched(page, "a green triangle")
    for button, rank in (("#next", K + 1), ("#prev", 1)):
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        assert page.evaluate("window.scrollY") > 2000  # 24 tiles are a long way down on a phone
        page.click(button)
        expect(page.locator(".hit").first).to_have_attribute("data-rank", str(rank))
        top = page.locator("#summary").bounding_box()
        assert 0 <= top["y"] < PHONE["height"] / 2, (button, top)
        first = page.locator(".hit").first.bounding_box()
        assert 0 <= first["y"] < PHONE["height"], (button, first)
        assert focused(page)["id"] == "summary"  # the heading of the results now shown
    page.close()


def test_the_keyboard_focus_survives_like_dislike_and_more_like_this(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/")
    hits = searched(page, "a yellow circle")
    second = hits[1]["id"]
    page.locator(f'.hit[data-id="{second}"] button.like').focus()
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.keyboard.press("Enter")
    expect(page.locator(f'.hit[data-id="{second}"] button.like')).to_have_attribute("aria-pressed", "true")
    assert focused(page) == {"tag": "BUTTON", "id": "", "cls": "like", "photo": second}
    page.keyboard.press("Enter")  # the same control: the like taken back
    expect(page.locator(f'.hit[data-id="{second}"] button.like')).to_have_attribute("aria-pressed", "false")
    assert focused(page) == {"tag": "BUTTON", "id": "", "cls": "like", "photo": second}

    # A dislike hides its photo: the focus goes to the photo now in its place.
    first = grid_ids(page)[0]
    page.locator(f'.hit[data-id="{first}"] button.dislike').focus()
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.keyboard.press("Enter")
    expect(page.locator(f'.hit[data-id="{first}"]')).to_have_count(0)
    assert focused(page) == {"tag": "BUTTON", "id": "", "cls": "open", "photo": grid_ids(page)[0]}

    # More like this: the focus goes to the heading of the new results.
    page.locator(".hit .open").nth(2).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    assert focused(page)["id"] == "more-like-this"
    with page.expect_response(lambda r: "/similar" in r.url):
        page.keyboard.press("Enter")
    expect(page.locator("#summary")).to_contain_text("images like")
    assert focused(page)["id"] == "summary"
    page.keyboard.press("Tab")  # and on from there into the grid
    assert focused(page)["photo"] == grid_ids(page)[0]


def test_the_pager_shows_only_with_results_to_page(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/")
    expect(page.locator("#status")).to_contain_text(f"{IMAGES} images")
    expect(page.locator("#pager")).to_be_hidden()
    expect(page.locator("#logout")).to_be_hidden()  # no token, nothing to log out of
    page.fill("#folder", "/nowhere/at/all")
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
    expect(page.locator("#summary")).to_have_text("No results for “a red circle”.")
    expect(page.locator("#pager")).to_be_hidden()
    page.fill("#folder", "")
    page.press("#query", "Enter")
    expect(page.locator("#pager")).to_be_visible()


def test_an_address_between_pages_or_with_a_bad_id_and_odd_words_are_shown_honestly(server, page):
    from playwright.sync_api import expect

    # An offset between two pages: the page it falls in, ranks and page number agreeing.
    page.goto(f"{server}/?q=a+red+circle&offset=13")
    expect(page.locator(".hit")).to_have_count(K)
    assert grid_ranks(page) == list(range(1, K + 1))
    expect(page.locator("#page")).to_have_text("Page 1")
    expect(page.locator("#summary")).to_contain_text("Results 1–24 for")
    assert address(page) == {"q": ["a red circle"]}
    page.goto(f"{server}/?q=a+red+circle&offset=50")
    expect(page.locator(".hit").first).to_have_attribute("data-rank", str(2 * K + 1))
    expect(page.locator("#page")).to_have_text("Page 3")

    # "More like" something that is no image id: a sentence, not a validation error.
    page.goto(f"{server}/?like=not-an-id")
    expect(page.locator("#error")).to_contain_text("not an image id")
    assert "UUID" not in page.locator("#error").inner_text()
    expect(page.locator("#pager")).to_be_hidden()

    # The words of the summary line are shown as names are: a bidi override as its escape.
    page.goto(f"{server}/")
    searched(page, "cat\u202egnp.exe")
    summary = page.locator("#summary").inner_text()
    assert "“cat\\u202egnp.exe”" in summary and "\u202e" not in summary
