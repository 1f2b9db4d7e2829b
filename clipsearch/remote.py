"""A thin client of `clipsearch serve`: the standard library's HTTP only.

`clipsearch search --server URL`, `status --server URL` and `duplicates --server URL`
answer through it in a process that loads no model and opens no index (no numpy, torch,
onnxruntime or Qdrant client), so a cold query costs an interpreter start and one
request. The server's API: serve/app.py.

Every failure is one ClipsearchError line naming the server's URL. The token travels
in `Authorization: Bearer`, is never followed to another address by a redirect, and
is never printed.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable, Mapping, Sequence

from .errors import BusyError, ClipsearchError
from .hits import SearchHit

WHERE = "--server / CLIPSEARCH_SERVER"
TOKEN_WHERE = "--token / CLIPSEARCH_TOKEN"
# The most hits serve gives for one request, and the deepest page it answers
# (serve/service.py takes them from here). A client asking for more pages through them.
SERVE_MAX_K = 1000
SERVE_MAX_OFFSET = 10_000


class ServeClient:
    """`clipsearch serve` at `url` (no trailing slash), with an optional token. `tell`:
    where the server's notes on an answer go (an empty answer under a folder the
    server does not have); a line on stderr unless given."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0,
                 tell: Callable[[str], None] | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        if tell is None:
            from .progress import stderr_line

            tell = stderr_line
        self.tell = tell

    def __repr__(self) -> str:  # the token stays out of every repr and traceback
        return f"ServeClient({self.url!r})"

    # -- the API ------------------------------------------------------------------------
    def status(self) -> dict:
        facts = self._json("GET", "/api/status")
        if not isinstance(facts, dict) or not {"backend", "location", "collection", "exists", "points"} <= set(facts):
            raise ClipsearchError(f"{self.url}/api/status is not a clipsearch serve status; is it clipsearch serve?")
        return facts

    def health(self) -> dict:
        return self._json("GET", "/api/health")

    def search(self, query: str | None = None, add: Sequence[str] = (), subtract: Sequence[str] = (),
               k: int = 10, offset: int = 0, under: str | None = None,
               min_score: float | None = None, photo: Mapping[str, str | None] | None = None) -> list[SearchHit]:
        """Text terms: the query, and `[W:]TEXT` terms added or subtracted. `photo`: the
        photo filters as the search command's flags give them (after, before, camera,
        near); the server parses them as `clipsearch search` does."""
        def page(count: int, skip: int) -> Any:
            body = {"query": query, "add": list(add), "subtract": list(subtract), "k": count, "offset": skip,
                    "in": under, "min_score": min_score, **_given(photo)}
            return self._json("POST", "/api/search", json.dumps(body).encode(), "application/json")

        return self._paged(page, k, offset)

    def search_image(self, path: str, k: int = 10, offset: int = 0, under: str | None = None,
                     min_score: float | None = None, photo: Mapping[str, str | None] | None = None,
                     ) -> list[SearchHit]:
        """Upload the image file at `path` and search by it (the server embeds it)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ClipsearchError(f"cannot read {path}: {exc.strerror or exc}") from None

        def page(count: int, skip: int) -> Any:
            fields: dict[str, str] = {"k": str(count), "offset": str(skip)}
            if under is not None:
                fields["in"] = under
            if min_score is not None:
                fields["min_score"] = repr(float(min_score))
            fields.update(_given(photo))
            body, content_type = multipart(fields, "file", os.path.basename(path), data)
            return self._json("POST", "/api/search/image", body, content_type)

        return self._paged(page, k, offset)

    def duplicates(self, similar: float | None = None, under: str | None = None, timeout: float | None = None) -> dict:
        """POST /api/duplicates: the server's `clipsearch duplicates` over its index (its
        JSON as serve/duplicates.py gives it). `timeout`: the near-duplicate pass takes
        minutes on a large library, longer than a search's."""
        body = json.dumps({"similar": similar, "in": under}).encode()
        waited, self.timeout = self.timeout, timeout or self.timeout
        try:
            answer = self._json("POST", "/api/duplicates", body, "application/json")
        except ServeRefused as exc:
            if exc.status in (404, 405):  # a serve older than duplicates --server
                raise ClipsearchError(f"clipsearch serve at {self.url} cannot find duplicates: it is older than "
                                      "this clipsearch (upgrade it there)") from None
            raise
        finally:
            self.timeout = waited
        if not isinstance(answer, dict) or not isinstance(answer.get("groups"), list):
            raise ClipsearchError(f"{self.url} did not answer as clipsearch serve does (no duplicate groups; {WHERE})")
        return answer

    def _paged(self, page: Callable[[int, int], Any], k: int, offset: int) -> list[SearchHit]:
        """k hits from `offset` on, asked SERVE_MAX_K at a time (`page(count, skip)`:
        one request's answer); the server's note on the answer is told."""
        most = SERVE_MAX_OFFSET + SERVE_MAX_K
        if offset > SERVE_MAX_OFFSET:
            raise ClipsearchError(f"offset {offset} is beyond what clipsearch serve at {self.url} pages to "
                                  f"({SERVE_MAX_OFFSET} at most)")
        if offset + k > most:
            raise ClipsearchError(f"-k {k} asks clipsearch serve at {self.url} for more hits than it gives for one "
                                  f"search: {most} at most ({SERVE_MAX_K} a request, paged up to offset "
                                  f"{SERVE_MAX_OFFSET}); give -k {most - offset} or less")
        hits: list[SearchHit] = []
        # The short page first: the last one then starts at offset + k - SERVE_MAX_K, within
        # the server's offsets whenever offset + k is (full pages first would pass them).
        count = (k - 1) % SERVE_MAX_K + 1
        while len(hits) < k:
            answer = page(count, offset + len(hits))
            found = _hits(answer)
            hits += found
            note = answer.get("note") if isinstance(answer, dict) else None
            if note:
                self.tell(" ".join(str(note).split())[:500])
            if len(found) < count:  # the end of the ranking
                break
            count = min(SERVE_MAX_K, k - len(hits))
        return hits

    def thumbnail(self, thumbnail_path: str, size: int = 256) -> bytes:
        """The JPEG bytes of a hit's thumbnail (`hit.thumbnail`: /api/images/ID/thumbnail)."""
        separator = "&" if "?" in thumbnail_path else "?"
        _, data = self._request("GET", f"{thumbnail_path}{separator}size={size}")
        return data

    # -- HTTP ---------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        content, data = self._request(method, path, body, content_type)
        try:
            return json.loads(data)
        except ValueError:
            raise ClipsearchError(f"{self.url} did not answer as clipsearch serve does "
                                  f"({method} {path} gave {content or 'no content type'}; {WHERE})") from None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> tuple[str, bytes]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        if self._token:  # unredirected: a redirect to another address never carries it
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            raise ClipsearchError(f"cannot reach clipsearch serve at {self.url}: {_reason(exc.reason)} "
                                  f"({WHERE})") from None
        except TimeoutError:
            raise ClipsearchError(f"clipsearch serve at {self.url} did not answer within {self.timeout:g} s "
                                  f"({WHERE})") from None
        except OSError as exc:  # a connection reset or closed mid-answer
            raise ClipsearchError(f"cannot reach clipsearch serve at {self.url}: {_reason(exc)} ({WHERE})") from None

    def _http_error(self, exc: Any) -> ClipsearchError:
        try:
            message = json.loads(exc.read()).get("error")
        except Exception:
            message = None
        message = " ".join(str(message).split())[:500] if message else None
        if exc.code == 401:
            if self._token:
                return ClipsearchError(f"clipsearch serve at {self.url} refused the token ({TOKEN_WHERE})")
            return ClipsearchError(f"clipsearch serve at {self.url}: the server needs a token: {TOKEN_WHERE}")
        if message is None:
            return ClipsearchError(f"{self.url} did not answer as clipsearch serve does (HTTP {exc.code}; {WHERE})")
        if exc.code == 503:  # busy now (uploads, a duplicates run): exit 75, try again later
            return ServeBusy(f"clipsearch serve at {self.url} is busy: {message}")
        if exc.code >= 500:
            return ClipsearchError(f"clipsearch serve at {self.url} failed: {message}")
        return ServeRefused(f"clipsearch serve at {self.url}: {message}", exc.code)


class ServeBusy(BusyError):
    """clipsearch serve is busy (HTTP 503): trying again later can succeed."""


class ServeRefused(ClipsearchError):
    """A request clipsearch serve refused with its reason (HTTP 4xx): `status` tells
    which, e.g. an upload that is no image (415) or too large (413), which a --queries
    batch skips as that line's own."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _given(photo: Mapping[str, str | None] | None) -> dict[str, str]:
    """The photo filters that were given (after, before, camera, near), as sent."""
    return {name: value for name, value in (photo or {}).items() if value is not None}


def _hits(answer: Any) -> list[SearchHit]:
    try:
        return [SearchHit.from_json(hit) for hit in answer["hits"]]
    except (KeyError, TypeError, ValueError):
        raise ClipsearchError("the server's answer holds no hits list; is it clipsearch serve?") from None


def _reason(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return " ".join(str(reason.strerror).split()).lower()
    return " ".join(str(reason).split())


def multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578): text fields, then one file."""
    boundary = f"clipsearch-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
                     .encode() + value.encode("utf-8", "surrogateescape") + b"\r\n")
    safe_name = _quoted(filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(file_field)}"; '
                 f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quoted(text: str) -> str:
    """A name inside a quoted header parameter: no quote, backslash or line break."""
    return "".join("_" if c in '"\\\r\n' else c for c in text)


def on_this_machine(url: str) -> bool:
    """Whether a server URL names this machine by a loopback address or `localhost`."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_folder(under: str | None) -> str | None:
    """An --in folder as a thin client sends it: absolute (~ the client user's home),
    and a name that is not UTF-8 in the form the index stores it (\\xNN), which JSON
    and a URL can carry and the server's filter compares. The server resolves links."""
    from .names import stored

    return stored(os.path.abspath(os.path.expanduser(under))) if under else None


def data_uri(jpeg: bytes) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")

