"""The photo filters through clipsearch serve (issue #14): the API's after, before, camera
and near parameters on every search (text, likes, similar, upload) filter inside the index
as `clipsearch search` does locally, a bad value is a 400 naming the parameter, and
`search --server --camera ...` sends them: the thin client answers as the local search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.config import Settings

from support import LYON, PARIS, ServeProcess, exif_photo

TOKEN = "photo-filter-test-token-0123456789"


def library(photos):
    exif_photo(photos / "trip/paris.jpg", "red", "2023:07:14 10:22:31", "Canon", "Canon EOS 5D Mark II", PARIS)
    exif_photo(photos / "trip/lyon.jpg", "green", "2023:08:02 18:00:00", "NIKON CORPORATION", "NIKON D750", LYON)
    exif_photo(photos / "home/old.jpg", "blue", "2019:12:31 23:59:59", "Canon", "Canon PowerShot G7 X",
               original=False)
    exif_photo(photos / "home/none.jpg", "white")
    exif_photo(photos / "home/r5.jpg", "purple", "2024:02:03 12:00:00", "Canon", "Canon EOS R5")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    from clipsearch import IngestOptions, ingest
    from clipsearch.index import open_index
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.service import SearchService, load_encoder
    from clipsearch.serve.uploads import UploadDecoder

    root = tmp_path_factory.mktemp("photo-filters")
    photos = root / "photos"
    library(photos)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        env.setenv("HF_HUB_OFFLINE", "1")
        settings = Settings.resolve(model=str(tiny_model_dir), index=str(root / "index"), device="cpu")
        ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
        index = open_index(settings)
        service = SearchService(settings, index, load_encoder(settings, lambda _: None))
    app = create_app(service, Guard(None), Thumbnails(root / "thumbnails"), UploadDecoder(4.0), 2_000_000,
                     version="test")
    try:
        yield root, photos, service, app
    finally:
        index.close()


@pytest.fixture
def client(served):
    from fastapi.testclient import TestClient

    with TestClient(served[3], base_url="http://127.0.0.1") as test_client:
        yield test_client


def names(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {os.path.basename(hit["path"]) for hit in response.json()["hits"]}


def id_of(client, name: str) -> str:
    hits = client.get("/api/search", params={"q": "a photo", "k": 10}).json()["hits"]
    return next(h["id"] for h in hits if os.path.basename(h["path"]) == name)


@pytest.mark.parametrize("params, expected", [
    ({"camera": "canon"}, {"paris.jpg", "old.jpg", "r5.jpg"}),
    ({"camera": "EOS 5d"}, {"paris.jpg"}),
    ({"after": "2023", "before": "2024"}, {"paris.jpg", "lyon.jpg"}),
    ({"after": "2023-08"}, {"lyon.jpg", "r5.jpg"}),
    ({"before": "2020"}, {"old.jpg"}),
    ({"near": f"{PARIS[0]},{PARIS[1]},50"}, {"paris.jpg"}),
    ({"near": f"{PARIS[0]},{PARIS[1]},500"}, {"paris.jpg", "lyon.jpg"}),
    ({"camera": "canon", "after": "2023"}, {"paris.jpg", "r5.jpg"}),
], ids=["camera", "camera-words", "year", "after", "before", "near-50", "near-500", "camera-and-after"])
def test_text_search_filters_in_the_index(client, params, expected):
    assert names(client.get("/api/search", params={"q": "a photo", "k": 10, **params})) == expected
    assert names(client.post("/api/search", json={"query": "a photo", "k": 10, **params})) == expected


def test_likes_similar_and_uploads_take_the_filters(client, served):
    _, photos, _, _ = served
    paris = id_of(client, "paris.jpg")
    # likes go through the index's recommend query, which filters the same way
    assert names(client.post("/api/search", json={"liked": [id_of(client, "r5.jpg")], "camera": "nikon"})) == {
        "lyon.jpg"}
    assert names(client.get(f"/api/images/{paris}/similar", params={"camera": "canon"})) == {"old.jpg", "r5.jpg"}
    with open(photos / "trip/lyon.jpg", "rb") as handle:
        upload = client.post("/api/search/image", files={"file": ("q.jpg", handle, "image/jpeg")},
                             data={"k": "10", "before": "2023-08"})
    assert names(upload) == {"paris.jpg", "old.jpg"}
    # with `in` too: both hold
    assert names(client.get("/api/search", params={"q": "a photo", "camera": "canon",
                                                   "in": str(photos / "home")})) == {"old.jpg", "r5.jpg"}


def test_an_empty_filtered_answer_says_why_on_every_search(client, served):
    """The note `clipsearch search` prints for a camera word no photo has (with close
    words), on every kind of search; none where the filters found something."""
    _, photos, _, _ = served
    said = "no photo in the index has the camera word 'canonn'; close: canon"
    text = client.get("/api/search", params={"q": "a photo", "camera": "canonn"}).json()
    assert text["hits"] == [] and text["note"] == said
    assert client.post("/api/search", json={"query": "a photo", "camera": "canonn"}).json()["note"] == said
    paris = id_of(client, "paris.jpg")
    assert client.get(f"/api/images/{paris}/similar", params={"camera": "canonn"}).json()["note"] == said
    with open(photos / "trip/lyon.jpg", "rb") as handle:
        upload = client.post("/api/search/image", files={"file": ("q.jpg", handle, "image/jpeg")},
                             data={"camera": "canonn"})
    assert upload.json()["note"] == said
    # Each filter is met by some photo, only not together: nothing to point at.
    both = client.get("/api/search", params={"q": "a photo", "camera": "nikon", "before": "2020"}).json()
    assert both["hits"] == [] and "note" not in both
    assert "note" not in client.get("/api/search", params={"q": "a photo", "camera": "canon"}).json()


def test_an_images_facts_say_all_its_hit_says(client):
    """GET /api/images/{id}: when, with what and where, as the hit has them."""
    for hit in client.get("/api/search", params={"q": "a photo", "k": 10}).json()["hits"]:
        facts = client.get(f"/api/images/{hit['id']}").json()
        assert {key: facts[key] for key in ("path", "taken", "camera", "location", "width", "height")} == \
            {key: hit[key] for key in ("path", "taken", "camera", "location", "width", "height")}
    paris = client.get(f"/api/images/{id_of(client, 'paris.jpg')}").json()
    assert paris["camera"] and paris["taken"].startswith("2023-07-14") and paris["location"]


@pytest.mark.parametrize("params, message", [
    ({"after": "2023-13"}, "after= '2023-13' is not a date"),
    ({"before": "yesterday"}, "before= 'yesterday' is not a date"),
    ({"near": "48.8,2.3"}, "near= '48.8,2.3' must be LAT,LON,KM"),
    ({"near": "91,0,5"}, "latitude 91 is outside -90..90"),
    ({"camera": "--"}, "camera= '--' has no letters or digits"),
    ({"after": "2024", "before": "2023"}, "after= 2024 is not before before= 2023"),
], ids=["month-13", "word", "near-parts", "latitude", "camera-empty", "reversed"])
def test_a_bad_filter_is_a_400_naming_it(client, params, message):
    response = client.get("/api/search", params={"q": "a photo", **params})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


def test_the_thin_client_sends_the_filters(served, tiny_model_dir, monkeypatch):
    root, photos, _, _ = served
    index = root / "index-served"
    shutil.copytree(root / "index", index, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "serve-cache")}
    args = ["--index", str(index), "--model", str(tiny_model_dir), "--token", TOKEN]
    with ServeProcess(args, root / "serve.log", env=env, timeout=90) as server:
        monkeypatch.setenv("CLIPSEARCH_SERVER", server.url)
        monkeypatch.setenv("CLIPSEARCH_TOKEN", TOKEN)
        flags = ["--camera", "canon", "--after", "2023-01", "-f", "paths"]
        thin = CliRunner().invoke(cli, ["search", "a photo", *flags], catch_exceptions=False)
        assert thin.exit_code == 0, thin.output
        assert {os.path.basename(p) for p in thin.stdout.splitlines()} == {"paris.jpg", "r5.jpg"}
        upload = CliRunner().invoke(cli, ["search", "--image", str(photos / "home/none.jpg"), "--near",
                                          f"{LYON[0]},{LYON[1]},10", "-f", "paths"], catch_exceptions=False)
        assert upload.exit_code == 0, upload.output
        assert [os.path.basename(p) for p in upload.stdout.splitlines()] == ["lyon.jpg"]
        # an empty answer's note, as the local search prints it
        none = CliRunner().invoke(cli, ["search", "a photo", "--camera", "canonn"], catch_exceptions=False)
        assert none.exit_code == 0 and none.stdout == ""
        assert "no photo in the index has the camera word 'canonn'; close: canon" in none.stderr
        # a bad value is refused here, before any request, naming the flag
        bad = subprocess.run([sys.executable, "-m", "clipsearch.cli", "search", "x", "--after", "2023-13"],
                             env={**os.environ, "CLIPSEARCH_SERVER": server.url, "CLIPSEARCH_TOKEN": TOKEN},
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
            "Error: --after '2023-13' is not a date: month must be in 1..12"]
