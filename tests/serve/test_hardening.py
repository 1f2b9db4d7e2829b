"""Serve under clients that misbehave, and the page under names that try to: a request's
headers have a deadline, connections are capped below the descriptor limit, responses
are not cached and carry a Content-Security-Policy, tokens are printable ASCII, and
control and bidirectional characters in names show as escapes in the page."""

from __future__ import annotations

import resource
import socket
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli

from support import ServeProcess, draw_collection, draw_image

# The file names the page must not show raw: a right-to-left override that would make
# "rtl\u202egnp.jpg" read "rtlgpj.png", a newline, a bell.
ODD_NAMES = ("rtl\u202egnp.jpg", "new\nline.png", "bell\x07.png")
TOKEN = "hardening-test-token-4e1b7c"
CHROMIUM = Path("/usr/bin/chromium")  # as test_browser.py: Debian's, no `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("hardening")
    photos = root / "photos"
    draw_collection(photos, 6)
    for i, name in enumerate(ODD_NAMES):
        draw_image(photos / name, colour="red", shape="circle", mark=i + 1,
                   fmt="JPEG" if name.endswith("jpg") else "PNG")
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(root / "index"),
                                      "--model", str(tiny_model_dir), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    return {"root": root, "photos": photos, "args": ["--index", str(root / "index"), "--model", str(tiny_model_dir)],
            "env": env}


def serve(collection, log: str, *extra: str, env: dict | None = None, nofile: int | None = None) -> ServeProcess:
    """A real serve over the collection; `nofile`: its RLIMIT_NOFILE (soft and hard)."""
    full_env = {**collection["env"], **(env or {})}
    if nofile is None:
        return ServeProcess([*collection["args"], *extra], collection["root"] / log, env=full_env)
    real = subprocess.Popen

    def limited(*args, **kwargs):
        return real(*args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)), **kwargs)

    with mock.patch("subprocess.Popen", limited):
        return ServeProcess([*collection["args"], *extra], collection["root"] / log, env=full_env)


def partial_request(port: int, sent: bytes = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n") -> socket.socket:
    """A connection that sends `sent` (the start of a request's headers) and then nothing."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    if sent:
        conn.sendall(sent)
    return conn


def closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes `conn` within `seconds` (having sent nothing, or a response)."""
    conn.settimeout(seconds)
    try:
        while conn.recv(4096):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.slow
def test_a_request_whose_headers_never_end_is_closed_after_the_deadline(collection):
    from clipsearch.serve.connections import HEADER_SECONDS_VARIABLE

    with serve(collection, "deadline.log", env={HEADER_SECONDS_VARIABLE: "2"}) as server:
        started = time.monotonic()
        slow = [partial_request(server.port) for _ in range(3)]
        silent = partial_request(server.port, b"")  # accepted, then not a byte
        # A kept-alive connection: one request answered, then the next one's headers begun.
        kept = partial_request(server.port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /api/health HTTP/1.1\r\n")
        # A client slow but within the deadline is answered.
        patient = partial_request(server.port)
        time.sleep(0.5)
        patient.sendall(b"\r\n")
        assert patient.recv(4096).startswith(b"HTTP/1.1 200")
        assert server.get("/api/health")[0] == 200  # and others are, meanwhile
        for conn in [*slow, silent, kept]:
            assert closed_within(conn, 15), "a connection without a request's headers was kept open"
            conn.close()
        assert time.monotonic() - started >= 1.5  # not before the deadline
        assert server.get("/api/search?q=red&k=1")[0] == 200
        patient.close()
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_a_request_body_that_stops_arriving_or_goes_unread_ends_the_connection(collection):
    """The header deadline was out of reach once headers were in: a body that stopped
    arriving, or the unread body of a request answered early (a 401 without the token)
    trickled in a byte at a time, held a connection forever, and never counted as
    waiting, so enough of them filled the cap and locked out the token's holder."""
    from clipsearch.serve.connections import HEADER_SECONDS_VARIABLE, MIN_BODY_RATE

    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n")
    with serve(collection, "body.log", "--token", TOKEN, env={HEADER_SECONDS_VARIABLE: "2"}) as server:
        stalled = partial_request(server.port, head + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode() + b"{")
        refused = partial_request(server.port, head + b"\r\n")
        assert refused.recv(4096).startswith(b"HTTP/1.1 401")
        refused.sendall(b"x")  # the unread body, a byte at a time
        assert closed_within(refused, 15), "the unread body of an answered request kept its connection"
        assert closed_within(stalled, 15), "a body that stopped arriving kept its connection"
        # A body that arrives slowly, but without a pause as long as the deadline and at
        # MIN_BODY_RATE or more once the deadline is spent, is answered.
        body = b'{"query": "a red circle", "k": 1}'.ljust(3 * MIN_BODY_RATE)  # JSON: spaces may follow
        steady = partial_request(server.port, b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                 b"application/json\r\nAuthorization: Bearer " + TOKEN.encode() +
                                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for i in range(3):
            time.sleep(1.2)  # 3.6 s in all: more than the deadline, no pause as long as it
            steady.sendall(body[i * MIN_BODY_RATE:(i + 1) * MIN_BODY_RATE])
        steady.settimeout(30)
        assert steady.recv(4096).startswith(b"HTTP/1.1 200")
        for conn in (stalled, refused, steady):
            conn.close()
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_a_body_trickled_in_without_a_long_pause_is_cut_once_too_slow_on_average(collection):
    """The login is open without the token: its body, a byte every second (a pause
    shorter than the deadline each time), held a connection for as long as the client
    liked, and enough of them filled the cap. It must average MIN_BODY_RATE."""
    from clipsearch.serve.connections import HEADER_SECONDS_VARIABLE

    with serve(collection, "trickle.log", "--token", TOKEN, env={HEADER_SECONDS_VARIABLE: "2"}) as server:
        trickle = partial_request(server.port, b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{")
        started = time.monotonic()
        cut = False
        while not cut and time.monotonic() - started < 20:
            time.sleep(0.5)
            try:
                trickle.sendall(b" ")
            except OSError:
                cut = True
            else:
                cut = closed_within(trickle, 0.01)
        elapsed = time.monotonic() - started
        trickle.close()
        assert cut, "a body trickled in at 2 bytes a second kept its connection for 20 s"
        assert 1.5 <= elapsed <= 10, elapsed  # the deadline's grace, then cut
        assert server.get("/api/health")[0] == 200
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_connections_beyond_the_descriptor_limit_do_not_stop_serve(collection):
    """More half-open connections than the process may open files: serve still answers,
    its log stays small (asyncio's accept loop logged EMFILE 120,000 times in 12 s)."""
    nofile = 320
    with serve(collection, "cap.log", nofile=nofile) as server:
        opened = []
        try:
            for _ in range(nofile + 80):
                try:
                    opened.append(partial_request(server.port))
                except OSError:  # the listen queue full for a moment: a client retries
                    pass
            time.sleep(1)
            started = time.monotonic()
            status, _ = server.get("/api/health")
            assert status in (200, 503) and time.monotonic() - started < 10, status
            assert server.get("/api/search?q=red&k=1")[0] == 200
        finally:
            for conn in opened:
                conn.close()
        assert len(opened) > nofile - 40  # the test did open about as many as the limit
    output = server.output()
    assert "Too many open files" not in output and len(output) < 10_000, output[-3000:]


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_a_token_that_is_not_printable_ascii_is_refused_naming_the_setting(tmp_path, how):
    """HTTP headers are latin-1 bytes: a UTF-8 client's `é` never matched (a 401 for
    the right token). Refused at the start, in one line, the token not repeated."""
    token = "\u00e9" * 17
    args = ["serve", "--index", str(tmp_path / "none")]
    if how == "flag":
        result = CliRunner().invoke(cli, [*args, "--token", token])
    else:
        result = CliRunner().invoke(cli, args, env={"CLIPSEARCH_TOKEN": token})
    assert result.exit_code != 0 and token not in result.output
    lines = [line for line in result.output.splitlines() if "ASCII" in line]
    assert len(lines) == 1 and ("--token" if how == "flag" else "CLIPSEARCH_TOKEN") in lines[0], result.output


# -- response headers ------------------------------------------------------------------


def test_responses_are_not_stored_and_carry_a_content_security_policy(client, served):
    first = client.get("/api/search", params={"q": "a red circle", "k": 2}).json()["hits"][0]
    for path in ("/", "/api/status", "/openapi.json", "/api/search?q=red&k=1", "/docs", "/static/app.js",
                 "/api/images/00000000-0000-0000-0000-000000000000"):
        response = client.get(path)
        policy = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, (path, policy)
        assert "object-src 'none'" in policy and "base-uri 'none'" in policy and "unsafe" not in policy, path
        if path == "/static/app.js":
            assert response.headers["cache-control"] == "private, no-cache"
        else:
            assert response.headers.get("cache-control") == "no-store", (path, response.headers)
    # Thumbnails and originals keep their revalidated caching, private to the browser.
    for url in (first["thumbnail"], first["file"]):
        assert client.get(url).headers["cache-control"] == "private, no-cache", url
    assert client.get("/docs-assets/swagger-ui.css").headers["cache-control"] == "private, no-cache"


def test_the_inline_scripts_of_the_docs_and_the_login_page_are_allowed_by_their_hashes(served):
    import base64
    import hashlib
    import re

    from fastapi.testclient import TestClient

    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.uploads import UploadDecoder

    def hashes(html: str, tag: str) -> set[str]:
        return {"'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
                for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)}

    guarded = create_app(served.service, Guard(TOKEN), Thumbnails(served.root / "thumbnails"), UploadDecoder(4.0),
                         1000)
    with TestClient(guarded, base_url="http://127.0.0.1") as client:
        login = client.get("/")
        assert login.status_code == 401 and 'id="login"' in login.text
        docs = client.get("/docs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert docs.status_code == 200
        for page in (login, docs):
            policy = page.headers["content-security-policy"]
            script_src = re.search(r"script-src ([^;]*)", policy).group(1).split()
            style_src = re.search(r"style-src ([^;]*)", policy).group(1).split()
            assert hashes(page.text, "script") and hashes(page.text, "script") <= set(script_src), policy
            assert hashes(page.text, "style") <= set(style_src), policy
            assert page.headers["cache-control"] == "no-store"
        assert ' style="' not in login.text  # an attribute a hash cannot allow


# -- error messages --------------------------------------------------------------------


def test_a_wrong_method_names_every_method_the_path_answers(client):
    response = client.put("/api/search", json={"query": "x"})
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed, response.headers["allow"]
    assert "GET" in response.json()["error"] and "POST" in response.json()["error"]
    assert client.delete("/api/status").headers["allow"] == "GET, HEAD"


def test_a_missing_or_malformed_body_is_named(client):
    missing = client.post("/api/search")
    assert missing.status_code == 400 and "body is missing" in missing.json()["error"], missing.text
    wrong = client.post("/api/search", json=["a", "list"])
    assert wrong.status_code == 400 and wrong.json()["error"].startswith("body: "), wrong.text
    assert client.post("/api/login").json()["error"].startswith("the request body is missing")


def test_a_thumbnail_of_a_file_damaged_since_the_ingest_says_why_in_words(client, served):
    import os

    from clipsearch.index import point_id

    photo = sorted((served.photos / "beach").glob("*.jpg"))[-1]  # one no other test asks a thumbnail of
    before = os.stat(photo)
    original = photo.read_bytes()
    try:
        photo.write_bytes(b"\0garbage" * (len(original) // 8) + b"\0" * (len(original) % 8))
        os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))  # the size and mtime it was indexed with
        response = client.get(f"/api/images/{point_id(photo)}/thumbnail")
        message = response.json()["error"]
        assert response.status_code == 410 and "not an image Pillow can read" in message, message
        assert "<" not in message and "BufferedReader" not in message
    finally:
        photo.write_bytes(original)
        os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_damaged_image_is_described_without_object_reprs():
    from clipsearch.serve.files import unreadable

    assert unreadable(OSError("image file is truncated (3 bytes not processed)")) == \
        "corrupt or truncated: image file is truncated (3 bytes not processed)"
    assert "<" not in unreadable(OSError("cannot read <_io.BufferedReader name=14>"))


# -- the page in a real browser --------------------------------------------------------


def escaped(text: str) -> str:
    """What the page shows for `text` (app.js `visible`)."""
    out = []
    for c in text:
        code = ord(c)
        if c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in (0x61C, 0x200B, 0x200E, 0x200F, 0xFEFF) \
                or 0x2028 <= code <= 0x202E or 0x2060 <= code <= 0x2069:
            out.append(f"\\u{code:04x}")
        else:
            out.append(c)
    return "".join(out)


@pytest.mark.slow
def test_the_page_works_under_its_csp_and_shows_odd_names_as_escapes(collection):
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    expect = sync_api.expect
    with serve(collection, "page.log", "--token", TOKEN) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15_000)
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            # Every CSP violation, reported by the browser itself (init scripts are not subject to the CSP).
            page.add_init_script("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                                 "e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));")

            # The login form's inline script runs under the CSP (else the form would submit by GET).
            assert page.goto(f"{server.url}/").status == 401
            page.fill("#token", TOKEN)
            with page.expect_navigation():
                page.press("#token", "Enter")
            expect(page.locator("#status")).to_contain_text(f"{6 + len(ODD_NAMES)} images")

            page.fill("#query", "a red circle")
            with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
                page.press("#query", "Enter")
            hits = answer.value.json()["hits"]
            expect(page.locator(".hit")).to_have_count(len(hits))
            odd = {hit["id"]: hit for hit in hits if Path(hit["path"]).name in ODD_NAMES}
            assert len(odd) == len(ODD_NAMES), [h["path"] for h in hits]
            for point, hit in odd.items():
                tile = page.locator(f'.hit[data-id="{point}"]')
                shown_path = escaped(hit["path"])
                assert "\\u" in shown_path or "\\n" in shown_path
                expect(tile.locator(".path")).to_have_text(shown_path)
                assert tile.locator(".path").get_attribute("title") == shown_path
                name = escaped(Path(hit["path"]).name)
                assert tile.locator("img").get_attribute("alt") == name
                assert tile.locator(".open").get_attribute("aria-label") == f"Open {name}"
                assert tile.locator(".like").get_attribute("aria-label") == f"More like {name}"
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=tile.locator("img").element_handle())
            text = page.locator("#results").inner_text()
            assert not any(c in text for c in "\u202e\x07"), text

            rtl = next(hit for hit in odd.values() if "\u202e" in hit["path"])
            page.locator(f'.hit[data-id="{rtl["id"]}"] .open').click()
            expect(page.locator("#viewer-path")).to_have_text(escaped(rtl["path"]))
            assert page.locator("#viewer-image").get_attribute("alt") == "rtl\\u202egnp.jpg"
            page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=page.locator("#viewer-image").element_handle())
            page.click("#more-like-this")
            expect(page.locator("#summary")).to_contain_text("images like rtl\\u202egnp.jpg")
            assert page.evaluate("window.__violations") == []

            # The API docs render (their inline script allowed by its hash, their assets from serve).
            page.goto(f"{server.url}/docs")
            expect(page.locator(".opblock").first).to_be_visible()
            assert page.evaluate("window.__violations") == []
            page.close()
        finally:
            browser.close()
    assert not [line for line in console if "Content Security Policy" in line or "pageerror" in line], console
