"""The page's photo filters and its search with a photo, in a real browser against a
real `clipsearch serve`: the Taken from / Taken before / Camera boxes filter every
search inside the index and stay in the address; a bad date is said in the box's
words; a camera word no photo has is explained; a photo from this device (chosen, or
dropped on the page) finds the images like it, shrunk before it is sent when large.

Needs Debian's chromium and the `playwright` package (tests/serve/conftest.py's
`browser` fixture); skips without them.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.testing.random_clip import build_random_clip

from support import LYON, PARIS, ServeProcess, exif_photo

pytestmark = pytest.mark.slow

CAMERAS = {  # name: (colour, taken, make, model, position)
    "paris": ("red", "2023:07:14 10:22:31", "Canon", "Canon EOS 5D Mark II", PARIS),
    "lyon": ("green", "2023:08:02 18:00:00", "NIKON CORPORATION", "NIKON D750", LYON),
    "old": ("blue", "2019:12:31 23:59:59", "Canon", "Canon PowerShot G7 X", None),
    "r5": ("purple", "2024:02:03 12:00:00", "Canon", "Canon EOS R5", None),
    "none": ("white", None, None, None, None),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page-filters")
    model = build_random_clip(root / "tiny-clip", size="tiny", seed=0)
    photos = root / "photos"
    for name, (colour, taken, make, camera, position) in CAMERAS.items():
        exif_photo(photos / f"{name}.jpg", colour, taken, make, camera, position)
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(root / "index"), "--model", str(model),
                                      "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    with ServeProcess(["--index", str(root / "index"), "--model", str(model)], root / "serve.log",
                      env={"CLIPSEARCH_CACHE_DIR": str(root / "cache")}) as server:
        yield {"root": root, "photos": photos, "url": server.url}


@pytest.fixture
def page(browser, library):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{library['url']}/")
    yield page
    page.close()
    assert errors == []


def shown_names(page) -> list[str]:
    paths = page.eval_on_selector_all(".hit .path", "nodes => nodes.map(n => n.title)")
    return [Path(path).stem for path in paths]


def search(page, endpoint: str, submit) -> dict:
    """Runs `submit` and returns the answer of the API call it makes to `endpoint`."""
    with page.expect_response(lambda r: urlsplit(r.url).path == endpoint) as answer:
        submit()
    return answer.value


def test_the_filter_boxes_filter_inside_the_index_and_stay_in_the_address(page, library):
    from playwright.sync_api import expect

    page.fill("#query", "a photo")
    page.click("#filters-summary")
    page.fill("#camera", "canon")
    response = search(page, "/api/search", lambda: page.press("#camera", "Enter"))
    assert response.request.post_data_json["camera"] == "canon"
    expect(page.locator(".hit")).to_have_count(3)
    assert sorted(shown_names(page)) == ["old", "paris", "r5"]
    expect(page.locator("#summary")).to_contain_text("camera “canon”")
    expect(page.locator("#filters-summary")).to_have_text("Filters (1)")
    assert parse_qs(urlsplit(page.url).query)["camera"] == ["canon"]

    # A reload (or a shared link) shows the same: the box filled, the filters open.
    page.reload()
    expect(page.locator(".hit")).to_have_count(3)
    expect(page.locator("#camera")).to_have_value("canon")
    assert page.locator("#filters").evaluate("node => node.open")

    # The year 2023 with a Canon: one photo. Its date and camera are in the viewer.
    page.fill("#after", "2023")
    page.fill("#before", "2024")
    search(page, "/api/search", lambda: page.press("#before", "Enter"))
    expect(page.locator(".hit")).to_have_count(1)
    assert shown_names(page) == ["paris"]
    expect(page.locator("#summary")).to_contain_text("taken from 2023 · taken before 2024 · camera “canon”")
    page.locator(".hit .open").first.click()
    expect(page.locator("#viewer-facts")).to_contain_text("taken 2023-07-14 10:22")
    expect(page.locator("#viewer-facts")).to_contain_text("Canon EOS 5D Mark II")
    page.keyboard.press("Escape")

    # "More like this" keeps the filters: the images like paris, taken in 2023 with a Canon.
    page.locator(".hit .open").first.click()
    response = search(page, "/api/images/" + page.locator(".hit").first.get_attribute("data-id") + "/similar",
                      lambda: page.click("#more-like-this"))
    assert parse_qs(urlsplit(response.url).query)["camera"] == ["canon"]
    expect(page.locator("#summary")).to_contain_text("No results for images like paris.jpg · taken from 2023")

    # A filter changed there, the earlier words still in the box: the same images-like
    # search, refiltered, not a text search for those words.
    expect(page.locator("#query")).to_have_value("a photo")
    page.fill("#after", "")
    page.fill("#before", "")
    response = search(page, urlsplit(response.url).path, lambda: page.press("#camera", "Enter"))
    assert parse_qs(urlsplit(response.url).query) == {"k": ["25"], "offset": ["0"], "camera": ["canon"]}
    expect(page.locator(".hit")).to_have_count(2)
    assert sorted(shown_names(page)) == ["old", "r5"]

    # New words: a new text search. A like, then a filter changed with Enter: the likes stay.
    page.fill("#query", "a picture")
    page.fill("#camera", "")
    search(page, "/api/search", lambda: page.press("#query", "Enter"))
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))
    liked = page.locator(".hit").first.get_attribute("data-id")
    search(page, "/api/search", lambda: page.locator(".hit .like").first.click())
    page.fill("#camera", "canon")
    response = search(page, "/api/search", lambda: page.press("#camera", "Enter"))
    assert response.request.post_data_json["liked"] == [liked]
    assert response.request.post_data_json["camera"] == "canon"
    expect(page.locator("#refine")).to_contain_text("Refined by 1 liked")

    # A date that is none: said in the box's words, the box marked.
    page.fill("#query", "a photo")
    page.fill("#camera", "")
    page.fill("#after", "2023-13")
    response = search(page, "/api/search", lambda: page.press("#query", "Enter"))
    assert response.status == 400
    expect(page.locator("#error")).to_contain_text("The “Taken from” box: “2023-13” is not a date")
    expect(page.locator("#after")).to_have_attribute("aria-invalid", "true")
    page.fill("#after", "2024")
    page.fill("#before", "2023")
    search(page, "/api/search", lambda: page.press("#query", "Enter"))
    expect(page.locator("#error")).to_contain_text("The “Taken from” box: 2024 is not before “Taken before” 2023")

    # A camera word no photo has: the answer is empty, and the note says why, with close words.
    page.fill("#after", "")
    page.fill("#before", "")
    page.fill("#camera", "canonn")
    response = search(page, "/api/search", lambda: page.press("#query", "Enter"))
    assert response.json()["hits"] == []
    expect(page.locator("#note")).to_contain_text("No photo in the index has the camera word “canonn”; close: canon")
    expect(page.locator("#error")).to_be_hidden()

    # Clear filters: every photo again, the address without them.
    search(page, "/api/search", lambda: page.click("#clear-filters"))
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))
    expect(page.locator("#filters-summary")).to_have_text("Filters")
    assert "camera" not in parse_qs(urlsplit(page.url).query)


def test_a_photo_from_this_device_finds_the_images_like_it(page, library):
    from playwright.sync_api import expect

    paris = library["photos"] / "paris.jpg"
    response = search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(paris)))
    assert response.status == 200
    hits = response.json()["hits"]
    assert Path(hits[0]["path"]).name == "paris.jpg" and hits[0]["score"] > 0.99
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))
    assert shown_names(page)[0] == "paris"
    expect(page.locator("#summary")).to_contain_text("images like your photo paris.jpg")
    expect(page.locator("#photo-preview")).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=page.locator("#photo-preview").element_handle())
    expect(page.locator(".hit .marks").first).to_be_hidden()  # no likes around a photo the index lacks
    assert parse_qs(urlsplit(page.url).query)["photo"] == ["paris.jpg"]

    # The same photo, a filter typed and Search pressed with no words: sent again, filtered.
    page.click("#filters-summary")
    page.fill("#camera", "nikon")
    search(page, "/api/search/image", lambda: page.click("#search"))
    assert parse_qs(urlsplit(page.url).query)["camera"] == ["nikon"]
    expect(page.locator(".hit")).to_have_count(1)
    assert shown_names(page) == ["lyon"]

    # Back: the photo's unfiltered search, from the page's memory; a reload forgets it, and says so.
    search(page, "/api/search/image", page.go_back)
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))
    page.reload()
    expect(page.locator("#error")).to_contain_text("no longer holds")
    expect(page.locator(".hit")).to_have_count(0)
    # From there, words typed are a text search (not the photo's search asked again).
    page.fill("#query", "a photo")
    search(page, "/api/search", lambda: page.press("#query", "Enter"))
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))

    # An address asking for images like an id that is none, with words: Enter searches them.
    page.goto(f"{library['url']}/?q=a+photo&like=not-an-id")
    expect(page.locator("#error")).to_contain_text("which is not an image id")
    search(page, "/api/search", lambda: page.press("#query", "Enter"))
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))


def test_a_large_photo_is_shrunk_before_it_is_sent_and_a_file_that_is_none_is_said(page, library, tmp_path):
    from playwright.sync_api import expect

    large = tmp_path / "large.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(large, quality=95)
    # What the page hands fetch (the browser's tools do not show a multipart body).
    page.evaluate("""() => {
        const plain = window.fetch;
        window.sentPhotos = [];
        window.fetch = (url, init) => {
            const file = init && init.body instanceof FormData && init.body.get("file");
            if (file) window.sentPhotos.push(file);
            return plain(url, init);
        };
    }""")
    response = search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(large)))
    assert response.status == 200
    sent = page.evaluate("window.sentPhotos.map((file) => ({ size: file.size, type: file.type }))")
    assert sent[0]["type"] == "image/jpeg" and 0 < sent[0]["size"] < large.stat().st_size / 3, sent
    expect(page.locator(".hit")).to_have_count(len(CAMERAS))

    # A large transparent PNG: shrunk to a JPEG on white, as the server lays transparency.
    clear = tmp_path / "clear.png"
    layer = Image.new("RGBA", (2400, 1600), (0, 0, 0, 0))
    layer.paste((200, 0, 0, 255), (800, 500, 1600, 1100))
    layer.save(clear)
    search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(clear)))
    corner = page.evaluate("""async () => {
        const bitmap = await createImageBitmap(window.sentPhotos[1]);
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        canvas.getContext("2d").drawImage(bitmap, 0, 0);
        return [bitmap.width, Array.from(canvas.getContext("2d").getImageData(5, 5, 1, 1).data)];
    }""")
    assert corner[0] == 1024 and all(value > 245 for value in corner[1][:3]), corner

    # Bytes that are no image, named as one: the browser cannot shrink them, the server says.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all" * 10)
    response = search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(broken)))
    assert response.status == 415
    expect(page.locator("#error")).to_have_text("This file is not a photo the server can read.")
    assert "not a usable image" in page.locator("#error").get_attribute("title")

    # A file that is not an image at all: said before anything is sent.
    text = tmp_path / "notes.txt"
    text.write_text("a shopping list")
    page.set_input_files("#photo-file", str(text))
    expect(page.locator("#error")).to_contain_text("“notes.txt” is not a photo")


def test_a_photo_dropped_on_the_page_is_searched_with(page, library):
    from playwright.sync_api import expect

    data = base64.b64encode((library["photos"] / "lyon.jpg").read_bytes()).decode()
    drop = """data => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "lyon.jpg", { type: "image/jpeg" }));
        const main = document.querySelector("main");
        for (const type of ["dragover", "drop"]) {
          main.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }"""
    response = search(page, "/api/search/image", lambda: page.evaluate(drop, data))
    assert Path(response.json()["hits"][0]["path"]).name == "lyon.jpg"
    expect(page.locator("#summary")).to_contain_text(re.compile("images like your photo lyon.jpg"))


def test_two_photos_of_one_name_are_two_places_in_the_history_and_a_reload_forgets_them(page, library, tmp_path):
    """iPhones name every photo image.jpg: the second is a new history entry, and Back
    shows the first's results. After a reload a photo of the earlier load is not found
    under a key a new photo took: it is asked for again."""
    from playwright.sync_api import expect

    first, second = tmp_path / "a" / "image.jpg", tmp_path / "b" / "image.jpg"
    for copy, name in ((first, "paris.jpg"), (second, "lyon.jpg")):
        copy.parent.mkdir()
        copy.write_bytes((library["photos"] / name).read_bytes())
    search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(first)))
    expect(page.locator(".hit").first).to_have_attribute("data-rank", "1")
    assert shown_names(page)[0] == "paris"
    search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(second)))
    page.wait_for_function("() => document.querySelector('.hit .path').title.endsWith('lyon.jpg')")
    search(page, "/api/search/image", page.go_back)
    page.wait_for_function("() => document.querySelector('.hit .path').title.endsWith('paris.jpg')")

    page.reload()
    expect(page.locator("#error")).to_contain_text("no longer holds")
    search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(second)))
    page.wait_for_function("() => document.querySelector('.hit .path').title.endsWith('lyon.jpg')")
    page.go_back()  # the entry of the first photo, chosen before the reload
    expect(page.locator("#error")).to_contain_text("no longer holds")
    expect(page.locator(".hit")).to_have_count(0)


def test_the_last_photo_chosen_wins_over_one_still_being_shrunk(page, library):
    """A large photo takes a while to shrink; another chosen meanwhile is the search, and
    the first, shrunk after it, changes nothing."""
    from playwright.sync_api import expect

    page.evaluate("""() => {  // paris.jpg decodes slowly, as a 50 MP photo would
        const plain = window.createImageBitmap;
        window.createImageBitmap = async (file, ...rest) => {
            if (file.name === "paris.jpg") await new Promise((done) => setTimeout(done, 1500));
            return plain(file, ...rest);
        };
    }""")
    page.set_input_files("#photo-file", str(library["photos"] / "paris.jpg"))
    search(page, "/api/search/image", lambda: page.set_input_files("#photo-file", str(library["photos"] / "lyon.jpg")))
    expect(page.locator("#summary")).to_contain_text("images like your photo lyon.jpg")
    page.wait_for_timeout(2500)  # paris.jpg's shrinking is done by now
    expect(page.locator("#summary")).to_contain_text("images like your photo lyon.jpg")
    assert parse_qs(urlsplit(page.url).query)["photo"] == ["lyon.jpg"]
    assert shown_names(page)[0] == "lyon"
