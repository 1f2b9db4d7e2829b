"""The API as a hand-written client meets it (curl, urllib, a phone app's backend): a
misspelled parameter is refused by name, an empty one is unset, every bad value is a
400, errors say what to send instead, originals revalidate and resume, the schema
declares the token, and the thin client pages past the server's limit and prints the
server's notes."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.index import point_id

import support
from support import draw_image

TOKEN = "api-contract-test-token-0123456789"
# A file name that is not UTF-8, and one whose right-to-left override and newline would
# make a download pass for another name.
NOT_UTF8 = b"bad\xffname.jpg"
SPOOF = "ctl\u202eevil\ngpj.jpg"


def guarded_app(served, token: str | None = TOKEN, cors: tuple[str, ...] = ()):
    """Another application over the same service, with a token (and CORS origins)."""
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.uploads import UploadDecoder

    return create_app(served.service, Guard(token), Thumbnails(served.root / "thumbnails"), UploadDecoder(4.0),
                      2_000_000, cors_origins=cors, version="test")


def a_photo(served) -> tuple[str, Path]:
    path = served.photos / "garden" / "001-green-circle.png"
    return point_id(path), path


def hit_ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


def error(response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- parameters -----------------------------------------------------------------------


def test_an_unknown_query_parameter_is_refused_by_name(client, served):
    pid, _ = a_photo(served)
    assert "unknown query parameter 'camra'" in error(client.get("/api/search", params={"q": "cat", "camra": "x"}))
    assert "in=" in error(client.get("/api/search", params={"q": "cat", "folder": str(served.photos)}))
    assert "q=" in error(client.get("/api/search", params={"query": "cat"}))
    assert "JSON body" in error(client.get("/api/search", params={"q": "cat", "liked": pid}))
    assert "sise" in error(client.get(f"/api/images/{pid}/thumbnail", params={"sise": "128"}))
    assert "unknown query parameter 'verbose'" in error(client.get("/api/status", params={"verbose": "1"}))
    assert "'k'" in error(client.post("/api/search", params={"k": "5"}, json={"query": "cat"}))
    # The page is not the API: its own address holds the search in a query string.
    assert client.get("/", params={"q": "cat", "liked": pid}).status_code == 200


def test_an_unknown_body_or_form_field_is_refused_naming_the_right_one(client, served):
    assert '"query"' in error(client.post("/api/search", json={"q": "cat"}))
    assert '"in"' in error(client.post("/api/search", json={"query": "cat", "folder": str(served.photos)}))
    assert "unknown field 'camra'" in error(client.post("/api/search", json={"query": "cat", "camra": "x"}))
    assert "unknown field 'remember'" in error(client.post("/api/login", json={"token": "x", "remember": True}))
    _, path = a_photo(served)
    with open(path, "rb") as f:
        upload = client.post("/api/search/image", files={"file": ("q.png", f)}, data={"camra": "x"})
    assert "unknown form field 'camra'" in error(upload)


def test_an_empty_parameter_counts_as_unset(client, served):
    """As an HTML form sends every field, filled or not."""
    plain = hit_ids(client.get("/api/search", params={"q": "cat"}))
    empty = {name: "" for name in ("in", "after", "before", "near", "camera", "min_score", "k", "offset", "add")}
    assert hit_ids(client.get("/api/search", params={"q": "cat", **empty})) == plain
    assert hit_ids(client.post("/api/search", json={"query": "cat", **empty})) == plain
    _, path = a_photo(served)
    with open(path, "rb") as f:
        alone = hit_ids(client.post("/api/search/image", files={"file": ("q.png", f)}))
    with open(path, "rb") as f:
        filled = {name: "" for name in ("in", "after", "before", "near", "camera", "min_score", "k", "offset")}
        assert hit_ids(client.post("/api/search/image", files={"file": ("q.png", f)}, data=filled)) == alone


@pytest.mark.parametrize("params", [{"min_score": "abc"}, {"min_score": "nan"}, {"k": "abc"}, {"k": "0"},
                                   {"offset": "10001"}, {"after": "someday"}, {"camera": "!!"}])
def test_every_bad_parameter_value_is_a_400_naming_it(client, params):
    name = next(iter(params))
    assert name in error(client.get("/api/search", params={"q": "cat", **params}))


def test_a_malformed_id_is_a_400(client):
    assert "point" in error(client.get("/api/images/not-an-id"))


# -- messages -------------------------------------------------------------------------


def test_what_to_send_instead_is_said(client, served):
    bad_json = client.post("/api/search", content=b'{"query":"x",}', headers={"Content-Type": "application/json"})
    assert error(bad_json) == ("the body is not valid JSON: Expecting property name enclosed in double quotes "
                               "at line 1 column 14")
    form = client.post("/api/search", content=b'{"query":"x"}',
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "send Content-Type: application/json" in error(form)
    _, path = a_photo(served)
    raw = client.post("/api/search/image", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert "multipart/form-data with a `file` part" in error(raw)
    no_file = client.post("/api/search/image", files={"k": (None, "3")})  # multipart, without the file
    assert "no `file` part" in error(no_file)


def test_a_wrong_token_is_told_apart_from_none(served):
    with TestClient(guarded_app(served), base_url="http://127.0.0.1") as guarded:
        wrong = guarded.get("/api/search", params={"q": "x"}, headers={"Authorization": "Bearer wrong-token-123456"})
        assert error(wrong, 401) == "the token sent (Authorization: Bearer) is wrong"
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert "a token is needed" in error(guarded.get("/api/search", params={"q": "x"}), 401)


def test_the_session_endpoint_is_open_and_tells_only_whether_a_token_is_needed_and_held(client, served):
    assert client.get("/api/session").json() == {"token": False, "logged_in": True}
    with TestClient(guarded_app(served), base_url="http://127.0.0.1") as guarded:
        assert guarded.get("/api/session").json() == {"token": True, "logged_in": False}
        wrong = guarded.get("/api/session", headers={"Authorization": "Bearer wrong-token-123456"})
        assert wrong.json() == {"token": True, "logged_in": False}
        right = guarded.get("/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.json() == {"token": True, "logged_in": True}


def test_an_upload_over_the_pixel_limit_names_serves_setting(client):
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, format="PNG")  # 9 MP; the served decoder's limit is 4
    message = error(client.post("/api/search/image", files={"file": ("big.png", buffer.getvalue())}), 415)
    assert "CLIPSEARCH_MAX_MEGAPIXELS" in message and "--max-megapixels" not in message


def test_a_disallowed_cors_preflight_is_json_with_the_security_headers(served):
    app = guarded_app(served, cors=("https://app.example",))
    with TestClient(app, base_url="http://127.0.0.1") as cors:
        ask = {"Access-Control-Request-Method": "GET"}
        refused = cors.options("/api/search", headers={"Origin": "https://evil.example", **ask})
        assert "origin is not allowed" in error(refused) and "evil" not in refused.text
        allowed = cors.options("/api/search", headers={"Origin": "https://app.example", **ask})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        for response in (refused, allowed):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store" and response.headers["content-security-policy"]


# -- the schema -----------------------------------------------------------------------


def test_the_schema_declares_the_token_on_every_operation_but_the_open_ones(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "serve's token (--token / CLIPSEARCH_TOKEN)"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            open_path = path in ("/api/health", "/api/login", "/api/session")
            assert ("security" not in operation) == open_path, (method, path)
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


# -- images ---------------------------------------------------------------------------


def test_originals_revalidate_and_answer_ranges(client, served):
    pid, path = a_photo(served)
    url = f"/api/images/{pid}/file"
    full = client.get(url)
    tag, modified = full.headers["etag"], full.headers["last-modified"]
    assert full.content == path.read_bytes() and full.headers["accept-ranges"] == "bytes"
    for condition in ({"If-None-Match": tag}, {"If-None-Match": f'"other", W/{tag}'}, {"If-None-Match": "*"},
                      {"If-Modified-Since": modified}):
        again = client.get(url, headers=condition)
        assert again.status_code == 304 and not again.content, condition
        assert again.headers["etag"] == tag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    part = client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == path.read_bytes()[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{path.stat().st_size}"
    resumed = client.get(url, headers={"Range": "bytes=100-", "If-Range": tag})
    assert resumed.status_code == 206 and resumed.content == path.read_bytes()[100:]
    thumbnail = client.get(f"/api/images/{pid}/thumbnail", headers={"If-None-Match": "*"})
    assert thumbnail.status_code == 304


def test_an_original_is_read_from_the_checked_descriptor_not_the_path_again(tmp_path):
    """Replaced after the check, the path is not opened again: what was checked is sent."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from clipsearch.serve.app import IndexedFileResponse

    checked, swapped = tmp_path / "checked.jpg", tmp_path / "swapped.jpg"
    checked.write_bytes(b"the checked file")
    swapped.write_bytes(b"another file, longer than it")

    def endpoint(request):
        return IndexedFileResponse(os.open(checked, os.O_RDONLY), str(swapped))

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as plain:
        assert plain.get("/").content == b"the checked file"
        assert plain.get("/", headers={"Range": "bytes=4-10"}).content == b"checked"


@pytest.fixture(scope="module")
def odd_names(served):
    """Two photos with awkward names, ingested into the served index."""
    from clipsearch import IngestOptions, ingest

    folder = served.photos / "odd"
    draw_image(Path(os.fsdecode(os.fsencode(str(folder)) + b"/" + NOT_UTF8)), "red", "square", fmt="JPEG")
    draw_image(folder / SPOOF, "blue", "square", fmt="JPEG")
    ingest([str(folder)], index=served.service.index, encoder=served.service.encoder.images,
           options=IngestOptions(workers=0, quiet=True))
    return {name: point_id(Path(os.fsdecode(os.fsencode(str(folder)) + b"/" + os.fsencode(name))))
            for name in (os.fsdecode(NOT_UTF8), SPOOF)}


def test_facts_by_id_carry_the_exact_name_and_downloads_a_plain_one(client, odd_names):
    hits = {hit["id"]: hit for hit in client.get("/api/search", params={"q": "square", "k": 100}).json()["hits"]}
    bad, spoof = odd_names[os.fsdecode(NOT_UTF8)], odd_names[SPOOF]
    facts = client.get(f"/api/images/{bad}").json()
    assert facts["path_bytes"] == hits[bad]["path_bytes"] and facts["path"] == hits[bad]["path"]
    disposition = client.get(f"/api/images/{bad}/file").headers["content-disposition"]
    assert disposition == "inline; filename*=UTF-8''bad%EF%BF%BDname.jpg"  # U+FFFD, not a literal \xff
    disposition = client.get(f"/api/images/{spoof}/file").headers["content-disposition"]
    assert disposition == "inline; filename*=UTF-8''ctlevilgpj.jpg"  # no U+202E, no newline


# -- notes ----------------------------------------------------------------------------


def test_an_empty_answer_under_a_folder_the_index_lacks_has_a_note(client, served):
    missing = str(served.photos / "no-such-folder")
    answer = client.get("/api/search", params={"q": "cat", "in": missing}).json()
    assert answer["hits"] == [] and answer["note"] == f"in={missing}: nothing is indexed under this folder"
    posted = client.post("/api/search", json={"query": "cat", "in": missing}).json()
    assert posted["note"] == answer["note"]
    assert "note" not in client.get("/api/search", params={"q": "cat", "in": str(served.photos / "beach")}).json()


def test_a_note_on_a_folder_given_with_a_tilde_says_whose_home_it_read(client, served):
    """~ is the home of the user serve runs as, which the client cannot know."""
    home = os.path.realpath(os.path.expanduser("~"))
    answer = client.get("/api/search", params={"q": "cat", "in": "~/no-such-pictures"}).json()
    assert answer["note"] == f"in=~/no-such-pictures ({home}/no-such-pictures): nothing is indexed under this folder"


# -- over a real socket ---------------------------------------------------------------


@pytest.fixture(scope="module")
def listening(served):
    with support.listening(served.app) as url:
        yield url


def test_a_request_line_too_long_for_http_is_answered_in_json(listening):
    port = int(listening.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        # A request line still unfinished past h11's 16 KiB; small enough to be read whole
        # before serve answers and closes (bytes left unread would make the close a reset).
        conn.sendall(b"GET /api/search?q=x&zz=" + b"a" * 20_000)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"content-type: application/json" in head.lower() and b"x-content-type-options: nosniff" in head.lower()
    assert b'"error"' in body and b"cannot be read as HTTP" in body


def test_the_thin_client_pages_past_the_servers_limit(listening, monkeypatch):
    from clipsearch import remote
    from clipsearch.remote import ServeClient

    everything = ServeClient(listening).search("red", k=100)
    monkeypatch.setattr(remote, "SERVE_MAX_K", 5)  # pages of 5: what k 5000 against 1000 does
    paged = ServeClient(listening).search("red", k=len(everything) + 10)
    assert [(h.rank, h.id) for h in paged] == [(h.rank, h.id) for h in everything]
    assert [h.id for h in ServeClient(listening).search("red", k=12, offset=3)] == [h.id for h in everything[3:15]]


def test_the_thin_client_refuses_more_than_paging_reaches_before_asking(monkeypatch):
    from clipsearch.remote import SERVE_MAX_K, SERVE_MAX_OFFSET, ServeClient

    most = SERVE_MAX_K + SERVE_MAX_OFFSET
    with pytest.raises(ClipsearchError, match=rf"-k {most + 1} .* {most} at most"):
        ServeClient("http://127.0.0.1:9").search("red", k=most + 1)  # nothing listens there: not asked


def test_search_server_with_k_beyond_one_request_and_a_missing_folder(listening, served):
    """`search --server -k 5000`: one page of 1000 holds the whole collection; the
    server's note on an --in it does not have is printed."""
    result = CliRunner().invoke(cli, ["search", "red", "--server", listening, "-k", "5000", "-f", "paths"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == served.service.index.count()
    missing = str(served.photos / "no-such-folder")
    result = CliRunner().invoke(cli, ["search", "red", "--server", listening, "--in", missing])
    assert result.exit_code == 0, result.output
    assert f"in={missing}: nothing is indexed under this folder" in result.stderr


# -- sessions -------------------------------------------------------------------------


def test_a_new_token_ends_the_stored_sessions_for_good(tmp_path):
    from clipsearch.serve.security import Guard

    store = tmp_path / "sessions" / "8765.json"
    cookie = Guard(TOKEN, 8765, store).new_session()
    assert Guard(TOKEN, 8765, store).session_valid(cookie)  # a restart with the same token keeps it
    Guard("another-token-0123456789", 8765, store)  # started under another token
    assert not Guard(TOKEN, 8765, store).session_valid(cookie)  # back to the old one: still ended
    cookie = Guard(TOKEN, 8765, store).new_session()
    Guard(None, 8765, store)  # started with no token
    assert not Guard(TOKEN, 8765, store).session_valid(cookie)
