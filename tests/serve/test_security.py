"""Serve is safe by default: loopback unless asked, a token for anything else (header or
an HttpOnly, SameSite=Strict cookie), compared in constant time, never logged or shown;
CORS closed unless configured."""

from __future__ import annotations

import re
import socket

import pytest
from fastapi.testclient import TestClient

from clipsearch.serve import security
from clipsearch.serve.security import COOKIE, OPEN_PATHS, choose_token, host_name, is_loopback

from support import ServeProcess, serving_app

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_model_dir):
    with serving_app(tmp_path_factory.mktemp("guarded"), tiny_model_dir, token=TOKEN) as served:
        yield served


def api_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the application answers, ids filled in."""
    found = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            path = route.path.replace("{point}", "00000000-0000-0000-0000-000000000000").replace("{name}", "app.js")
            found.append((method, path))
    return found


def test_every_endpoint_but_health_and_login_needs_the_token(guarded):
    routes = api_routes(guarded.app)
    assert len(routes) >= 14 and ("GET", "/openapi.json") in routes and ("GET", "/docs") in routes
    with TestClient(guarded.app) as client:
        for method, path in routes:
            response = client.request(method, path, follow_redirects=False)
            if path in OPEN_PATHS:
                assert response.status_code != 401 or path != "/api/health", (method, path)
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            assert TOKEN not in response.text
        assert client.get("/api/health").status_code == 200
        wrong = client.get("/api/status", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401
        right = client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and right.json()["points"] == 24


def test_the_page_logs_in_with_an_http_only_strict_cookie(guarded):
    with TestClient(guarded.app) as client:
        page = client.get("/")
        assert page.status_code == 401 and 'id="login"' in page.text and TOKEN not in page.text
        assert client.post("/api/login", json={"token": "wrong-token-wrong-token"}).status_code == 401
        response = client.post("/api/login", json={"token": TOKEN})
        cookie = response.headers["set-cookie"]
        assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert TOKEN not in cookie  # the cookie holds a value derived from the token
        assert client.get("/api/status").status_code == 200
        assert client.get("/").status_code == 200
        client.post("/api/logout")
        client.cookies.clear()
        assert client.get("/api/status").status_code == 401


def test_two_serves_on_one_machine_keep_their_own_login_cookies(guarded):
    from clipsearch.serve.app import Gatekeeper
    from clipsearch.serve.security import Guard

    first, second = Guard(TOKEN, 8765), Guard(TOKEN, 8766)
    assert first.cookie == f"{COOKIE}_8765" and second.cookie == f"{COOKIE}_8766"  # browsers share cookies by host
    gate = next(m for m in guarded.app.user_middleware if m.cls is Gatekeeper)
    own = gate.kwargs["guard"].cookie
    with TestClient(guarded.app) as client:
        session = client.post("/api/login", json={"token": TOKEN}).cookies[own]
        client.cookies.clear()
        client.cookies.set(f"{COOKIE}_1", session)  # the same value under another serve's name opens nothing here
        assert client.get("/api/status").status_code == 401
        client.cookies.set(own, session)
        assert client.get("/api/status").status_code == 200


def test_the_login_link_sets_the_cookie_and_drops_the_token_from_the_address(guarded):
    with TestClient(guarded.app) as client:
        assert client.get("/login", params={"token": "nope-nope-nope-nope"}, follow_redirects=False).status_code == 401
        response = client.get("/login", params={"token": TOKEN}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert COOKIE in response.headers["set-cookie"]
        assert client.get("/api/search", params={"q": "red"}).status_code == 200


def test_tokens_are_compared_in_constant_time(guarded, monkeypatch):
    calls = []
    real = security.hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", recording)
    with TestClient(guarded.app) as client:
        client.get("/api/status", headers={"Authorization": "Bearer wrong"})
        client.cookies.set(COOKIE, "forged")
        client.get("/api/status")
    assert len(calls) == 2 and all(isinstance(a, bytes) for a, _ in calls)


def test_loopback_needs_no_token_and_any_other_address_gets_one():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("photos.lan")
    assert choose_token("127.0.0.1", None) == (None, False)
    token, generated = choose_token("0.0.0.0", None)
    assert generated and len(token) >= 24
    assert choose_token("0.0.0.0", TOKEN) == (TOKEN, False)


def test_without_a_token_only_requests_addressed_to_loopback_are_answered(served, guarded):
    """DNS rebinding: a page whose name an attacker points at 127.0.0.1 is same-origin
    with serve (CORS does not stop it), but its browser sends that name as Host."""
    assert [host_name(h) for h in ("[::1]:8765", "localhost:80", "::1", "photos.lan")] == [
        "::1", "localhost", "::1", "photos.lan"]
    with TestClient(served.app, base_url="http://127.0.0.1") as client:
        for host in ("localhost", "localhost:8765", "LOCALHOST:8765", "localhost.:8765", "127.0.0.1:8765",
                     "[::1]:8765", "127.0.0.2"):
            assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example:8765", "127.0.0.1.attacker.example", "photos.lan", "[2001:db8::1]:8765"):
            refused = client.get("/api/status", headers={"Host": host})
            assert refused.status_code == 403, host
            assert "loopback" in refused.json()["error"] and host not in refused.text  # never echoed
        assert client.get("/", headers={"Host": "attacker.example"}).status_code == 403
    with TestClient(guarded.app) as client:  # a token guards every name: a reverse proxy's too
        assert client.get("/api/status", headers={"Host": "photos.example.org"}).status_code == 401
        auth = {"Host": "photos.example.org", "Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/status", headers=auth).status_code == 200


def test_cors_is_closed_unless_configured(served, tmp_path):
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.uploads import UploadDecoder

    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with TestClient(served.app, base_url="http://127.0.0.1") as client:
        response = client.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in client.options("/api/search", headers=preflight).headers
    opened = create_app(served.service, Guard(None), Thumbnails(tmp_path), UploadDecoder(4.0), 1000,
                        cors_origins=("https://photos.example",), version="test")
    with TestClient(opened, base_url="http://127.0.0.1") as client:
        allowed = client.get("/api/health", headers={"Origin": "https://photos.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://photos.example"
        other = client.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.slow
def test_a_public_address_gets_a_generated_token_printed_once_and_never_logged(served, tmp_path):
    """A real process on 0.0.0.0: the token is generated, printed once as a login URL,
    required by the API, and appears nowhere else in the server's output, even after
    a login through the URL, wrong tokens and errors."""
    import json
    import urllib.request

    served.service.index.close()  # the process opens it; the module's other tests are done with it
    args = ["--index", served.settings.index, "--model", served.settings.model, "--host", "0.0.0.0"]
    server = ServeProcess(args, tmp_path / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(served.root / "cache")})
    try:
        found = re.search(r"open (\S+)/login\?token=(\S+)", server.output())
        assert found, server.output()
        token = found.group(2)
        # another machine opens it by this machine's name, not by 127.0.0.1; the serving line says it too
        assert found.group(1) == f"http://{socket.gethostname()}:{server.port}", server.output()
        assert f"on http://{socket.gethostname()}:{server.port}/ (every address of this machine; " \
               f"http://127.0.0.1:{server.port}/ on it)" in server.output()
        assert "a new one each start: give --token or CLIPSEARCH_TOKEN to keep one" in server.output()
        assert server.get("/api/status")[0] == 401
        assert server.get("/api/status", {"Authorization": f"Bearer {token}"})[0] == 200
        login = urllib.request.Request(f"{server.url}/api/login", data=json.dumps({"token": token}).encode(),
                                       headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(login, timeout=30) as answer:  # the cookie is named by the port serve bound
            assert answer.headers["set-cookie"].startswith(f"{COOKIE}_{server.port}=")
        server.get(f"/login?token={token}")
        server.get("/api/search?q=x", {"Authorization": f"Bearer {token}x"})
        server.get("/api/images/nope/file", {"Authorization": f"Bearer {token}"})
        server.get("/api/search?q=%00", {"Authorization": f"Bearer {token}"})
    finally:
        server.stop()
    output = server.output()
    assert output.count(token) == 1, output
    assert "Traceback" not in output


@pytest.mark.slow
def test_a_real_server_without_a_token_refuses_another_host_name(served, tmp_path):
    """Also: a client's malformed upload is its 400, a body beyond its limit a 413 before
    it is read whole, and no line in serve's log."""
    import urllib.error
    import urllib.request

    served.service.index.close()  # the process opens it; the module's other tests are done with it
    args = ["--index", served.settings.index, "--model", served.settings.model, "--upload-megabytes", "1"]
    server = ServeProcess(args, tmp_path / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(served.root / "cache")})
    try:
        assert server.get("/api/status")[0] == 200
        assert server.get("/api/status", {"Host": f"localhost:{server.port}"})[0] == 200
        status, body = server.get("/api/status", {"Host": f"rebound.example:{server.port}"})
        assert status == 403 and "loopback" in body["error"], body
        garbage = urllib.request.Request(server.url + "/api/search/image", data=b"garbage", method="POST",
                                         headers={"Content-Type": "multipart/form-data; boundary=xx"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(garbage, timeout=30)
        assert refused.value.code == 400
        for path, head, message in (
                ("/api/search/image", b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n',
                 "the upload is larger than 1 MB"),
                ("/api/search", b'{"query": "', "the request body is larger than 1 MB")):
            status, body, sent = chunked_upload(server.port, path, head, 64 << 20)
            assert status == 413 and message in body and sent < 16 << 20, (path, status, body, sent)
        status, body, sent = chunked_upload(server.port, "/api/search", b"", 2 << 20, declared=True)
        assert status == 413 and "larger than 1 MB" in body  # refused on its Content-Length
        assert server.get("/api/search?q=red&k=1")[0] == 200  # and it goes on answering
    finally:
        server.stop()
    output = server.output()
    assert "Traceback" not in output and "boundary" not in output, output


def chunked_upload(port: int, path: str, head: bytes, total: int, declared: bool = False) -> tuple[int, str, int]:
    """POST `head` then up to `total` bytes, chunked (no Content-Length; `declared`: a
    Content-Length of all of it, sent plain): (status, body, bytes sent before the
    server answered or closed)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    content_type = "multipart/form-data; boundary=xx" if path.endswith("/image") else "application/json"
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", content_type)
    if declared:
        connection.putheader("Content-Length", str(len(head) + total))
    else:
        connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    sent = 0
    frame = (lambda data: data) if declared else (lambda data: b"%x\r\n%s\r\n" % (len(data), data))
    try:
        if head:
            connection.send(frame(head))
        while sent < total:
            chunk = b"y" * (64 << 10)
            connection.send(frame(chunk))
            sent += len(chunk)
        if not declared:
            connection.send(b"0\r\n\r\n")
    except OSError:  # the server closed the connection after its 413: what a client sees
        pass
    response = connection.getresponse()
    return response.status, response.read().decode(), sent


@pytest.mark.slow
def test_a_given_token_is_never_echoed_even_when_it_is_bad(tmp_path):
    from click.testing import CliRunner

    from clipsearch.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "none"), "--token", "short secret"])
    assert result.exit_code == 2 and "short secret" not in result.output and "(hidden)" in result.output


def test_originals_go_out_as_raster_image_types_only():
    """The indexed path is a link's target, whose name the walk never checked: a PNG
    named .svg must not go out as image/svg+xml, a type that runs script."""
    from clipsearch.serve.files import media_type

    assert [media_type(f"/p/a.{ext}") for ext in ("jpg", "JPEG", "png", "webp", "tif", "gif")] == [
        "image/jpeg", "image/jpeg", "image/png", "image/webp", "image/tiff", "image/gif"]
    for name in ("/p/trick.svg", "/p/page.html", "/p/x.svgz", "/p/noext", "/p/a.xbm"):
        assert media_type(name) == "application/octet-stream", name
