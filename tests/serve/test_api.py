"""The HTTP API against the real application, engine and model: every search agrees with
the index's own answer, paging and filters hold, files go out only by id and only
while they are the indexed file, and every error is one line of JSON."""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import Settings
from clipsearch.index import canonical_path, open_index, point_id

from support import draw_image


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


def expected_ids(served, vector, k, under=None, exclude=()) -> list[str]:
    hits = served.service.index.query(vector, k, under=under, exclude_ids=list(exclude), exact=True)
    return [h.id for h in hits]


def text_vector(served, text):
    return served.service.encoder.encode_texts([text])[0]


def test_health_and_status(client, served):
    assert client.get("/api/health").json() == {"status": "ok"}
    facts = client.get("/api/status").json()
    assert facts["points"] == 24 and facts["exists"] and facts["backend"] == "edge"
    assert facts["model"]["dim"] == served.service.encoder.dim
    assert facts["server"] == {"pid": os.getpid(), "watching": False, "version": "test"}
    assert client.get("/api/ingest").json() == {"watching": False}


def test_text_search_is_the_index_cosine_top_k(client, served):
    response = client.get("/api/search", params={"q": "a red circle", "k": 7})
    body = response.json()
    assert ids(response) == expected_ids(served, text_vector(served, "a red circle"), 7)
    assert [h["rank"] for h in body["hits"]] == list(range(1, 8))
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    first = body["hits"][0]
    assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail"
    assert os.path.isfile(first["path"]) and first["width"] and first["height"]
    # POST says the same.
    assert ids(client.post("/api/search", json={"query": "a red circle", "k": 7})) == ids(response)


def test_paging_continues_the_ranking(client):
    ten = client.get("/api/search", params={"q": "blue", "k": 10}).json()["hits"]
    page = client.get("/api/search", params={"q": "blue", "k": 5, "offset": 5}).json()
    assert [h["id"] for h in page["hits"]] == [h["id"] for h in ten[5:]]
    assert [h["rank"] for h in page["hits"]] == [6, 7, 8, 9, 10]
    assert page["offset"] == 5


def test_folder_filter_and_min_score(client, served):
    beach = canonical_path(served.photos / "beach")
    response = client.get("/api/search", params={"q": "sand", "k": 20, "in": str(served.photos / "beach")})
    assert ids(response) == expected_ids(served, text_vector(served, "sand"), 20, under=beach)
    assert len(ids(response)) == 8
    everything = client.get("/api/search", params={"q": "sand", "k": 24}).json()["hits"]
    cut = everything[5]["score"]
    kept = client.get("/api/search", params={"q": "sand", "k": 24, "min_score": cut}).json()["hits"]
    assert kept and all(h["score"] >= cut for h in kept) and len(kept) < 24


def test_weighted_terms_combine_unit_vectors(client, served):
    response = client.get("/api/search", params={"q": "red", "add": "2:square", "subtract": "green", "k": 6})
    encode = served.service.encoder.encode_texts
    red, square, green = encode(["red", "square", "green"])
    total = red + 2 * square - green
    assert ids(response) == expected_ids(served, total / np.linalg.norm(total), 6)


def test_more_like_this_leaves_the_image_out(client, served):
    example = point_id(served.photos / "garden" / "000-red-circle.png")
    similar = ids(client.get(f"/api/images/{example}/similar", params={"k": 5}))
    stored = served.service.stored_vectors([example])[0]
    assert similar == expected_ids(served, stored, 5, exclude=[example])
    assert ids(client.post("/api/search", json={"image_id": example, "k": 5})) == similar


def test_likes_and_dislikes_refine_with_recommend(client, served):
    base = ids(client.get("/api/search", params={"q": "circle", "k": 6}))
    disliked, liked = base[0], base[3]
    refined = client.post("/api/search", json={"query": "circle", "liked": [liked], "disliked": [disliked], "k": 6})
    got = ids(refined)
    assert disliked not in got and len(got) == 6
    index = served.service.index
    vectors = served.service.stored_vectors([liked, disliked])
    expected = index.recommend([text_vector(served, "circle"), vectors[0]], [vectors[1]], 6, exclude_ids=[disliked])
    assert got == [h.id for h in expected]
    # Likes alone (no text) refine too; an unknown id is a 404.
    assert ids(client.post("/api/search", json={"liked": [liked], "k": 3}))
    unknown = client.post("/api/search", json={"liked": ["00000000-0000-0000-0000-000000000000"]})
    assert unknown.status_code == 404 and "no image with id" in unknown.json()["error"]


def test_search_by_uploaded_image(client, served):
    path = served.photos / "beach" / "003-yellow-circle.jpg"
    with open(path, "rb") as f:
        response = client.post("/api/search/image", files={"file": ("q.jpg", f, "image/jpeg")}, data={"k": "3"})
    hits = response.json()["hits"]
    assert hits[0]["id"] == point_id(path) and hits[0]["score"] > 0.99


def test_uploads_are_bounded(client, served):
    too_big = client.post("/api/search/image", files={"file": ("big.bin", b"\xff" * 2_000_001)})
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
    broken = client.post("/api/search/image", files={"file": ("x.jpg", b"not an image at all")})
    assert broken.status_code == 415 and "not a usable image" in broken.json()["error"]
    # A decompression bomb: a tiny file that declares far more pixels than the limit (4 MP here).
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    bomb = client.post("/api/search/image", files={"file": ("bomb.png", buffer.getvalue())})
    assert bomb.status_code == 415 and "too large" in bomb.json()["error"]
    empty = client.post("/api/search/image", files={"file": ("e.jpg", b"")})
    assert empty.status_code == 415


def test_an_upload_of_a_type_this_install_cannot_read_says_what_to_install(client):
    """An iPhone's HEIC, told by its first bytes (an upload's name is not to be trusted),
    where pillow-heif is not installed: the reason ingest gives for such a file."""
    from clipsearch.images import unreadable_extensions

    if ".heic" not in unreadable_extensions():
        pytest.skip("this install reads HEIC (pillow-heif is installed)")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    refused = client.post("/api/search/image", files={"file": ("IMG_0001.HEIC", heic)})
    assert refused.status_code == 415
    assert refused.json()["error"] == ("the upload cannot be read: the server has no HEIC/HEIF decoder: "
                                       "`pip install pillow-heif` where serve runs adds them")


def test_thumbnails_are_bounded_cached_and_revalidated(client, served):
    path = served.photos / "garden" / "001-green-circle.png"
    pid = point_id(path)
    response = client.get(f"/api/images/{pid}/thumbnail", params={"size": 128})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert max(thumb.size) <= 128
    assert "no-cache" in response.headers["cache-control"] and response.headers["etag"]
    assert list((served.root / "thumbnails").rglob(f"{pid}-128-*.jpg"))  # kept on disk
    again = client.get(f"/api/images/{pid}/thumbnail", params={"size": 128},
                       headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content
    odd = client.get(f"/api/images/{pid}/thumbnail", params={"size": 5000})
    assert odd.status_code == 400 and "size must be one of" in odd.json()["error"]


def test_head_answers_as_get_without_the_body(client, served):
    """Download tools and proxies ask HEAD first; FastAPI's routes answer GET only."""
    pid = point_id(served.photos / "garden" / "002-blue-circle.png")
    for url in ("/api/health", f"/api/images/{pid}/file", f"/api/images/{pid}/thumbnail"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code == 200 and head.content == b"" and got.content, url
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["x-content-type-options"] == "nosniff"
    assert client.head(f"/api/images/{'0' * 8}-0000-0000-0000-{'0' * 12}/file").status_code == 404


def test_originals_are_served_by_id_while_they_are_the_indexed_file(client, served, tmp_path):
    path = served.photos / "garden" / "002-blue-circle.png"
    pid = point_id(path)
    response = client.get(f"/api/images/{pid}/file")
    assert response.status_code == 200 and response.content == path.read_bytes()
    assert response.headers["content-type"] == "image/png"
    info = client.get(f"/api/images/{pid}").json()
    assert info["path"] == canonical_path(path) and info["size"] == path.stat().st_size

    # Replaced by a symlink to a secret after the ingest: refused, thumbnail too.
    victim = served.photos / "garden" / "004-purple-circle.png"
    victim_id = point_id(victim)
    saved = tmp_path / "saved.png"
    shutil.copy2(victim, saved)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    victim.unlink()
    victim.symlink_to(secret)
    try:
        for url in (f"/api/images/{victim_id}/file", f"/api/images/{victim_id}/thumbnail?size=512"):
            refused = client.get(url)
            assert refused.status_code == 410 and "root:x" not in refused.text
    finally:
        victim.unlink()
        shutil.copy2(saved, victim)  # same bytes and mtime: served again
    assert client.get(f"/api/images/{victim_id}/file").status_code == 200

    # Edited since the ingest: refused until it is ingested again.
    edited = served.photos / "garden" / "005-orange-circle.png"
    stat = edited.stat()
    draw_image(edited, "black", "square", size=(90, 90))
    assert client.get(f"/api/images/{point_id(edited)}/file").status_code == 410
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime, other size: still refused
    assert client.get(f"/api/images/{point_id(edited)}/file").status_code == 410


def test_unknown_and_malformed_ids(client):
    missing = client.get("/api/images/00000000-0000-0000-0000-000000000000/file")
    assert missing.status_code == 404 and missing.json()["error"].startswith("no image with id")
    malformed = client.get("/api/images/..%2F..%2Fetc%2Fpasswd/file")
    assert malformed.status_code in (400, 404) and "root:" not in malformed.text
    assert client.get("/static/..%2Fapp.py").status_code == 404


@pytest.mark.parametrize("params, status, needle", [
    ({"q": "x", "k": 0}, 400, "k:"),
    ({"q": "x", "k": 5000}, 400, "k:"),
    ({"q": "x", "offset": -1}, 400, "offset:"),
    ({"q": "   "}, 400, "nothing to search for"),
    ({"q": "x", "in": "/tmp/\x00"}, 400, "NUL"),
    ({"q": "x", "add": "-2:y"}, 400, "weight must be positive"),
    ({"subtract": "people"}, 400, "nothing to search for"),
    ({"q": "x", "in": "photos/garden"}, 400, "must be an absolute folder"),  # not the server's working folder
    ({"q": "x", "min_score": "nan"}, 400, "min_score must be a finite number"),
    ({"q": "x", "min_score": "inf"}, 400, "min_score must be a finite number"),
])
def test_bad_requests_get_one_line_json(client, params, status, needle):
    response = client.get("/api/search", params=params)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert needle in message and "\n" not in message and "Traceback" not in message


def test_a_bad_body_field_is_named_even_when_it_is_called_query(client):
    response = client.post("/api/search", json={"query": ["not", "text"], "k": 3})
    assert response.status_code == 400 and response.json()["error"].startswith("query: "), response.text


def test_in_a_folder_of_the_servers_home(client, served, monkeypatch):
    photos = served.photos / "garden"
    monkeypatch.setenv("HOME", str(served.photos))
    tilde = client.get("/api/search", params={"q": "a red circle", "in": "~/garden", "k": 3})
    spelled = client.get("/api/search", params={"q": "a red circle", "in": str(photos), "k": 3})
    assert tilde.status_code == 200 and tilde.json()["hits"]
    assert [h["path"] for h in tilde.json()["hits"]] == [h["path"] for h in spelled.json()["hits"]]


def test_a_client_named_path_is_text_not_a_file(client, served):
    """A query that happens to be a path on the server's disk is words: the server
    never opens a file because a client named it."""
    path = str(served.photos / "garden" / "000-red-circle.png")
    assert ids(client.get("/api/search", params={"q": path, "k": 3})) == \
        expected_ids(served, text_vector(served, path), 3)


def test_unexpected_failures_carry_no_trace(client, served, monkeypatch, caplog):
    def broken():
        raise RuntimeError("secret detail /home/someone/.ssh")

    monkeypatch.setattr(served.service, "status", broken)
    from fastapi.testclient import TestClient

    with TestClient(served.app, base_url="http://127.0.0.1", raise_server_exceptions=False) as quiet_client:
        response = quiet_client.get("/api/status")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; the server's log has the details"}


def test_not_ready_until_the_collection_holds_images(tmp_path, tiny_model_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from clipsearch.index import open_index
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.service import SearchService, load_encoder
    from clipsearch.serve.uploads import UploadDecoder

    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    encoder = load_encoder(settings, lambda _: None)
    with open_index(settings, create=True) as index:
        index.ensure_collection(encoder.identity)
        service = SearchService(settings, index, encoder, watching=True)
        app = create_app(service, Guard(None), Thumbnails(tmp_path / "t"), UploadDecoder(4.0), 1000)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            response = client.get("/api/search", params={"q": "cat"})
            assert response.status_code == 409 and "holds no images yet" in response.json()["error"]
            index.upsert([point_id(tmp_path / "a.png")], np.ones((1, encoder.dim), np.float32),
                         [{"path": str(tmp_path / "a.png"), "dirs": []}])
            assert len(ids(client.get("/api/search", params={"q": "cat"}))) == 1


@pytest.mark.parametrize("backend", ["rest", "memory"])
def test_serve_over_a_qdrant_server_answers_the_same(backend, tmp_path, tiny_model_dir):
    """The same application in front of a Qdrant server (the REST double here, a real
    server in `make test-server`) or qdrant-client's in-memory engine: searches, refinement
    and files work without the embedded engine's lock."""
    from fastapi.testclient import TestClient

    from clipsearch import IngestOptions, ingest
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.service import SearchService, load_encoder
    from clipsearch.serve.uploads import UploadDecoder

    from support import draw_collection, settings_for

    photos = draw_collection(tmp_path / "photos", 12)
    settings = settings_for(backend, tmp_path, tiny_model_dir)
    with open_index(settings, create=True) as index:
        ingest([str(tmp_path / "photos")], index=index, encoder=load_encoder(settings, lambda _: None).images,
               options=IngestOptions(workers=0, quiet=True))
        service = SearchService(settings, index, load_encoder(settings, lambda _: None))
        app = create_app(service, Guard(None), Thumbnails(tmp_path / "thumbs"), UploadDecoder(4.0), 10**6)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            hits = client.get("/api/search", params={"q": "green", "k": 5}).json()["hits"]
            vector = service.encoder.encode_texts(["green"])[0]
            assert [h["id"] for h in hits] == [h.id for h in index.query(vector, 5, exact=True)]
            refined = client.post("/api/search", json={"query": "green", "disliked": [hits[0]["id"]], "k": 5})
            assert hits[0]["id"] not in [h["id"] for h in refined.json()["hits"]]
            first = point_id(photos[0])
            assert client.get(f"/api/images/{first}/file").content == photos[0].read_bytes()
            assert client.get("/api/status").json()["points"] == 12


def test_the_schema_and_its_docs_page_are_served_offline(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/images/{point}/similar", "/api/status"} <= set(schema["paths"])
    page = client.get("/docs").text
    assert "cdn." not in page and "/docs-assets/swagger-ui-bundle.js" in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_uploads_waiting_for_the_decoder_are_not_timed_out_by_the_wait():
    """The decode limit counts from an upload's turn: a burst whose decodes in a row take
    well over the limit all succeed, where the ones queued behind used to get a false
    "took longer than" (and killed the worker under the others). Past the number that
    may wait, or the time they may wait, it is a 503: not the upload's fault."""
    import threading

    from clipsearch.serve.uploads import Busy, UploadDecoder

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (2500, 2500, 3), dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    decoder = UploadDecoder(40.0, seconds=30.0, queue_seconds=300.0)
    try:
        decoder.decode(data, 64)  # the worker started (a spawn costs seconds here)
        started = time.monotonic()
        decoder.decode(data, 64)
        one = time.monotonic() - started
        decoder.seconds = max(1.0, 6 * one)  # a margin for one decode; the burst in a row takes far longer
        burst = max(16, int(2 * decoder.seconds / one) + 1)
        decoder.max_waiting = burst
        outcomes: list[object] = []

        def upload():
            try:
                outcomes.append(decoder.decode(data, 64).size)
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=upload) for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert len(outcomes) == burst and not [o for o in outcomes if isinstance(o, Exception)], outcomes

        decoder.max_waiting = 0  # no room to wait: at once
        with decoder._turn:
            with pytest.raises(Busy, match="other uploads; try again"):
                decoder.decode(data, 64)
        decoder.max_waiting, decoder.queue_seconds = 4, 0.0  # room, but the wait runs out
        with decoder._turn:
            with pytest.raises(Busy, match="waited 0 s"):
                decoder.decode(data, 64)
    finally:
        decoder.close()
