"""Originals sent from their checked descriptor by serve's own code (no private method
of Starlette's), byte ranges and their errors as the API's JSON, the 500 and 405 with
serve's headers, the folder note that tells what the index holds and nothing of the
server's disk, the upload limit named by its setting, and a file-type table that
imports no Pillow."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch.index import point_id

import support

SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


def original(served) -> tuple[str, bytes]:
    path = served.photos / "garden" / "003-yellow-circle.png"
    return f"/api/images/{point_id(path)}/file", path.read_bytes()


def assert_serves_headers(response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    assert "default-src 'self'" in response.headers.get("content-security-policy", "")
    assert response.headers.get("cache-control") == "no-store"


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert_serves_headers(response)
    return response.json()["error"]


# -- originals ------------------------------------------------------------------------


def test_serve_overrides_no_private_method_of_starlette():
    """A private method (FileResponse._open_file, which serve's originals overrode) may
    change or go in any Starlette release that pip installs: serve's subclasses of
    Starlette's classes override public methods only."""
    import inspect

    from clipsearch.serve import app, files

    checked = 0
    for module in (app, files):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not cls.__module__.startswith("clipsearch."):
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.split(".")[0] not in ("starlette", "fastapi"):
                    continue
                checked += 1
                private = {name for name in vars(cls) if name.startswith("_") and not name.startswith("__")}
                assert not private & set(dir(base)), (cls.__name__, base.__name__, private & set(dir(base)))
    assert checked  # the originals' response and the CORS middleware at least


def test_an_original_is_served_whatever_starlettes_file_reader_does(client, served, monkeypatch):
    from starlette.responses import FileResponse

    def private(self):
        raise AssertionError("serve used FileResponse._open_file")

    monkeypatch.setattr(FileResponse, "_open_file", private, raising=False)
    url, data = original(served)
    assert client.get(url).content == data
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]


def test_one_byte_range_of_an_original(client, served):
    url, data = original(served)
    size = len(data)
    full = client.get(url)
    tag, modified = full.headers["etag"], full.headers["last-modified"]
    assert full.headers["content-length"] == str(size) and full.headers["accept-ranges"] == "bytes"
    for asked, (start, end) in {"bytes=-10": (size - 10, size), f"bytes=-{size * 2}": (0, size),
                                "bytes=5-": (5, size), f"bytes=0-{size * 5}": (0, size),
                                f"bytes={size - 1}-{size - 1}": (size - 1, size), " bytes = 2 - 4 ": (2, 5)}.items():
        part = client.get(url, headers={"Range": asked})
        assert part.status_code == 206 and part.content == data[start:end], asked
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}", asked
        assert part.headers["content-length"] == str(end - start), asked
        assert part.headers["etag"] == tag and part.headers["content-type"] == "image/png", asked
    # If-Range: the part only of the version named; the whole file of another.
    assert client.get(url, headers={"Range": "bytes=0-3", "If-Range": modified}).status_code == 206
    for other in ('"another-version"', f"W/{tag}", "Mon, 01 Jan 2001 00:00:00 GMT"):
        whole = client.get(url, headers={"Range": "bytes=0-3", "If-Range": other})
        assert whole.status_code == 200 and whole.content == data, other
    # Answered whole, as RFC 9110 allows: several ranges, and a unit that is not bytes.
    for asked in ("bytes=0-1,5-9", "items=0-1"):
        whole = client.get(url, headers={"Range": asked})
        assert whole.status_code == 200 and whole.content == data and "content-range" not in whole.headers, asked
    head = client.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.content == b"" and head.headers["content-length"] == "10"


def test_a_head_of_an_original_reads_none_of_it(client, served, monkeypatch):
    """The Gatekeeper answers HEAD as the GET it asks about, without the body: the
    original was read whole all the same (a 20 MB RAW read for its headers)."""
    url, data = original(served)
    reads = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or pread(fd, n, at))
    head = client.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))
    assert reads == []
    assert client.get(url).content == data and sum(reads) == len(data)


def test_a_range_error_is_json_with_the_security_headers(client, served):
    url, data = original(served)
    for past in (f"bytes={len(data)}-", f"bytes={len(data) + 100}-{len(data) + 200}", "bytes=-0"):
        response = client.get(url, headers={"Range": past})
        assert "the Range header asks for" in error_of(response, 416), past
        assert response.headers["content-range"] == f"bytes */{len(data)}"
    huge = "9" * 5000  # past Python's int() limit: was a 500 with a traceback in the log
    for bad in ("bytes=abc", "bytes=-", "bytes", "bytes=1-x", "bytes=0x1-2", "bytes=+1-2", b"bytes=\xb2-3",
                f"bytes={huge}-", f"bytes=0-{huge}", f"bytes=-{huge}"):
        assert "the Range header is not a byte range" in error_of(client.get(url, headers={"Range": bad}), 400), bad
    assert "comes before its first" in error_of(client.get(url, headers={"Range": "bytes=9-2"}), 400)


def test_a_large_original_is_streamed_in_parts_from_the_descriptor(tmp_path):
    """Chunks past the first, a range across them, and the descriptor closed after."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from clipsearch.serve.app import IndexedFileResponse

    data = os.urandom(300_000)
    path = tmp_path / "large.jpg"
    path.write_bytes(data)
    opened: list[int] = []

    def endpoint(request):
        opened.append(os.open(path, os.O_RDONLY))
        return IndexedFileResponse(opened[-1], str(path))

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as plain:
        whole = plain.get("/")
        assert whole.content == data and whole.headers["content-type"] == "image/jpeg"
        part = plain.get("/", headers={"Range": "bytes=65000-200000"})
        assert part.status_code == 206 and part.content == data[65000:200001]
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)


@pytest.fixture
def listening(served):
    with support.listening(served.app) as url:
        yield url


def test_an_original_and_its_range_over_a_real_socket(listening, served):
    url, data = original(served)
    with urllib.request.urlopen(listening + url, timeout=30) as response:
        assert response.status == 200 and response.read() == data
    ranged = urllib.request.Request(listening + url, headers={"Range": "bytes=3-"})
    with urllib.request.urlopen(ranged, timeout=30) as response:
        assert response.status == 206 and response.read() == data[3:]


# -- errors outside the routes --------------------------------------------------------


def test_an_unexpected_error_is_json_with_the_security_headers(served, monkeypatch):
    """Starlette answers it from its outermost layer, outside the Gatekeeper that adds
    the headers to everything else: the 500 carried none."""
    def broken(point):
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.service, "record", broken)
    with TestClient(served.app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        response = client.get(f"/api/images/{point_id(served.photos / 'garden' / '000-red-circle.png')}")
    assert error_of(response, 500) == "internal error; the server's log has the details"


def test_a_wrong_method_on_the_docs_assets_names_the_one_they_answer(client):
    response = client.post("/docs-assets/swagger-ui.css")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == "method not allowed: this path answers GET, HEAD"


# -- the folder note ------------------------------------------------------------------


def test_the_folder_note_tells_what_the_index_holds_not_what_the_disk_has(client, served):
    """Whether a folder exists on the server's machine is not a client's to learn: a
    folder never indexed gets the same note whether it is there or not."""
    there = served.root / "not-indexed"
    there.mkdir(exist_ok=True)
    missing = served.root / "no-such-folder"
    notes = []
    for folder in (there, missing):
        answer = client.get("/api/search", params={"q": "red", "in": str(folder)}).json()
        assert answer["hits"] == []
        notes.append(answer["note"])
        assert answer["note"] == f"in={folder}: nothing is indexed under this folder"
        posted = client.post("/api/search", json={"query": "red", "in": str(folder)}).json()
        assert posted["note"] == answer["note"]
    assert all("machine" not in note and "no such" not in note for note in notes)
    # Photos indexed under it, none passing the filters: not the folder's note, but the
    # filter's (these drawn photos carry no EXIF date at all).
    filtered = client.get("/api/search", params={"q": "red", "in": str(served.photos), "after": "2999"}).json()
    assert filtered["hits"] == []
    assert filtered["note"] == "no photo in the index has a capture date (EXIF), which the filter needs"


# -- the upload limit's name ----------------------------------------------------------


def test_a_too_large_image_names_the_setting_its_caller_gives(tmp_path):
    from clipsearch.images import SkipImage, decode_job, load_image

    path = tmp_path / "large.png"
    Image.new("1", (2000, 1000)).save(path)
    with pytest.raises(SkipImage, match=r"limit --max-megapixels 1\)"):
        load_image(str(path), max_megapixels=1)  # ingest's and the CLI's words, as before
    with pytest.raises(SkipImage, match=r"limit CLIPSEARCH_MAX_MEGAPIXELS 1\)"):
        load_image(str(path), max_megapixels=1, limit_name="CLIPSEARCH_MAX_MEGAPIXELS")
    assert "limit --max-megapixels 1)" in decode_job((str(path), 224, 1.0))[2]
    assert "limit SETTING 1)" in decode_job((str(path), 224, 1.0, "SETTING"))[2]


def test_a_too_large_upload_names_serves_setting(client):
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, format="PNG")  # 9 MP; the served limit is 4
    response = client.post("/api/search/image", files={"file": ("big.png", buffer.getvalue())})
    assert response.status_code == 415
    assert "(limit CLIPSEARCH_MAX_MEGAPIXELS 4)" in response.json()["error"]


# -- the file-type table --------------------------------------------------------------


def test_the_table_of_image_types_imports_no_pillow():
    """Whether a word names an image file (the thin client's `search --server x.jpg`)
    is a look at its extension: it costs no Pillow import."""
    code = ("import sys; from clipsearch.image_types import IMAGE_EXTENSIONS; "
            "assert '.jpg' in IMAGE_EXTENSIONS and '.heic' in IMAGE_EXTENSIONS; "
            "assert 'PIL' not in sys.modules, 'Pillow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
    from clipsearch import image_types, images

    assert images.IMAGE_TYPES is image_types.IMAGE_TYPES  # one table, read by both names


@pytest.mark.parametrize("query", ["foo.bar", "nosuch.jpg", "1.5"])
def test_a_thin_client_query_with_a_dot_imports_no_pillow(query, tmp_path):
    """`search --server WORD.EXT` asks whether WORD.EXT is an image file by its
    extension: an import of Pillow (the decoders' module) for that cost every remote
    query with a dot its import time."""
    code = ("import sys; from clipsearch.cli import cli\n"
            "try: cli.main(['search', '--server', 'http://127.0.0.1:9', sys.argv[1]], standalone_mode=False)\n"
            "except Exception: pass\n"
            "assert 'PIL' not in sys.modules, 'Pillow imported'")
    subprocess.run([sys.executable, "-c", code, query], check=True, cwd=tmp_path)
