"""The HTTP API and the page, as a FastAPI application over one SearchService.

Every error leaves as `{"error": "one line"}` with a 4xx status; anything unexpected
is a 500 with a fixed message, its traceback going to the server's log only. Handlers
are plain functions: FastAPI runs them in its thread pool, so a query waiting on the
engine never blocks the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
import unicodedata
import uuid
from importlib import resources
from pathlib import Path
from typing import Annotated, Sequence

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from clipsearch.errors import ClipsearchError
from clipsearch.names import path_fields, path_of, stored

from .duplicates import DuplicateFinder
from .files import HEAD_MARK, THUMBNAIL_SIZES, Gone, IndexedFileResponse, Thumbnails, etag, media_type, open_indexed
from .parameters import UPLOAD_PATH, BlankParameters, invalid_request, known_parameters
from .security import OPEN_PATHS, SESSION_SECONDS, Guard
from .service import MAX_K, MAX_OFFSET, NotFound, NotReady, SearchService, canonical_folder, elapsed_ms
from .service import Query as SearchQuery
from .uploads import Busy, NotAnImage, UploadDecoder, UploadTooLarge

log = logging.getLogger("clipsearch.serve")

STATUS_OF = ((NotFound, 404), (NotReady, 409), (Gone, 410), (UploadTooLarge, 413), (NotAnImage, 415), (Busy, 503))
STATIC = resources.files("clipsearch.serve") / "static"
# The page's own files, listed once: a request names one of these, never a path.
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}
# Everything answered is the library or its page, for whoever holds the token: no cache
# keeps it, unless the route chose otherwise (thumbnails and originals: private, and
# revalidated by ETag). The docs' own script and styles are the same for everyone.
NO_STORE = "no-store"
DOCS_ASSETS = "/docs-assets"


def content_policy(html: str = "") -> str:
    """The Content-Security-Policy of every response: scripts, styles, fetches and
    images from serve itself only (thumbnails; blob: and data: for the page's icon),
    nothing framed or framing, no plugins, no <base>. An HTML page of ours with inline
    <script> or <style> elements (the login form, the API docs) gets exactly those
    allowed, by their hashes."""
    def allowed(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    return (f"default-src 'self'; script-src 'self'{allowed('script')}; style-src 'self'{allowed('style')}; "
            "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


CONTENT_POLICY = content_policy()


def own_headers(cache: str = NO_STORE) -> dict[str, str]:
    """The headers every response of serve carries. The Gatekeeper adds them to what
    passes through it; a response made outside it (a CORS preflight, the 500 of an
    unexpected error, which Starlette answers from its outermost layer) carries them itself."""
    return {**SECURITY_HEADERS, "Cache-Control": cache, "Content-Security-Policy": CONTENT_POLICY}


# -- the schema ------------------------------------------------------------------------


class Hit(BaseModel):
    rank: int
    score: float
    id: str
    path: str
    # Only for a name that is not UTF-8 (`path` then shows each such byte as \xNN): the
    # name's bytes, base64, for clients that must open or print the file exactly.
    path_bytes: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str
    file: str
    taken: str | None = None
    camera: str | None = None
    location: dict[str, float] | None = None


class Hits(BaseModel):
    hits: list[Hit]
    k: int
    offset: int
    took_ms: float
    dropped: list[str] = Field([], description="Liked or disliked ids left out: no longer in the index (deleted, "
                                             "or renamed or moved: an id is its path's).")
    note: str | None = Field(None, description="Why the answer is empty, where serve can tell: the index holds "
                                               "nothing under the `in` folder, no photo has a camera word asked "
                                               "for (with close ones), or none has a date or a GPS position.")


# The photo filters, as `clipsearch search` takes them (search/filters.py parses both).
AFTER_HELP = "Only photos taken at or after the start of this date: 2023, 2023-07, 2023-07-14."
BEFORE_HELP = "Only photos taken before the start of this date."
CAMERA_HELP = "Only photos from a camera whose make and model hold every word of this, any case."
NEAR_HELP = "Only photos taken within KM kilometres of LAT,LON (EXIF GPS): LAT,LON,KM."


class SearchBody(BaseModel):
    query: str | None = Field(None, max_length=2000, description="Words to search for.")
    add: list[Annotated[str, Field(max_length=2000)]] = Field(
        [], max_length=32, description="Terms added to the query: TEXT or W:TEXT.")
    subtract: list[Annotated[str, Field(max_length=2000)]] = Field(
        [], max_length=32, description="Terms taken away: TEXT or W:TEXT.")
    image_id: uuid.UUID | None = Field(None, description="An indexed image to search by.")
    liked: list[uuid.UUID] = Field([], max_length=256, description="Images to move towards (recommend).")
    disliked: list[uuid.UUID] = Field([], max_length=256, description="Images to move away from; never returned.")
    k: int = Field(20, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    folder: str | None = Field(None, alias="in", max_length=4096, description="Only images under this folder.")
    min_score: float | None = None
    after: str | None = Field(None, max_length=40, description=AFTER_HELP)
    before: str | None = Field(None, max_length=40, description=BEFORE_HELP)
    camera: str | None = Field(None, max_length=200, description=CAMERA_HELP)
    near: str | None = Field(None, max_length=100, description=NEAR_HELP)

    # A field not named here is refused, naming it: dropped, a misspelled filter would widen
    # the answer to the whole library without a word.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def blank_is_unset(cls, data):
        """A field sent empty ("") is unset, as an empty query parameter is."""
        return {name: value for name, value in data.items() if value != ""} if isinstance(data, dict) else data


class DuplicatesBody(BaseModel):
    # strict: `true` or "0.95" is refused, not read as 1.0 or as a number
    similar: float | None = Field(None, strict=True, description=(
        "Also group near-duplicates: images at least this cosine similar, e.g. 0.95 (one nearest-neighbour query "
        "per image: about 90 s at 100k)."))
    folder: str | None = Field(None, alias="in", max_length=4096, description="Only images under this folder.")

    model_config = ConfigDict(extra="forbid")


class ImageInfo(BaseModel):
    """What a hit says about the photo, and its file's size and mtime."""

    id: str
    path: str
    path_bytes: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    mtime: float | None = None
    taken: str | None = None
    camera: str | None = None
    location: dict[str, float] | None = None


class LoginBody(BaseModel):
    token: str = Field(max_length=512)

    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    error: str


class Session(BaseModel):
    token: bool = Field(description="Whether this server needs its token (a login) to answer.")
    logged_in: bool = Field(description="Whether this request carries the token or a login (always true where no "
                                        "token is needed).")


# How often a long request (POST /api/duplicates) looks whether its client is still there.
DISCONNECT_POLL_SECONDS = 1.0

# Every bad parameter value is a 400 (FastAPI's own checks included, which would be 422s).
ERRORS = {code: {"model": Message} for code in (400, 401, 404, 409, 410, 413, 415, 503)}

K = Annotated[int, Query(ge=1, le=MAX_K, description="How many hits.")]
OFFSET = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Hits to skip, for paging.")]
FOLDER = Annotated[str | None, Query(alias="in", max_length=4096, description="Only images under this folder.")]
MIN_SCORE = Annotated[float | None, Query(description="Drop hits scoring below this.")]
AFTER = Annotated[str | None, Query(max_length=40, description=AFTER_HELP)]
BEFORE = Annotated[str | None, Query(max_length=40, description=BEFORE_HELP)]
CAMERA = Annotated[str | None, Query(max_length=200, description=CAMERA_HELP)]
NEAR = Annotated[str | None, Query(max_length=100, description=NEAR_HELP)]
POINT = Annotated[uuid.UUID, "an image's point id"]


def shown(path: str) -> str:
    """A path for JSON, which holds text only: a name that is not valid UTF-8 shows each
    byte that is not as \\xNN (names.stored), as the index stores it."""
    return stored(path)


def photo_filter(after: str | None, before: str | None, camera: str | None, near: str | None):
    """The photo filters as the index takes them; a bad value is a 400 naming it."""
    from clipsearch.search import build_where

    return build_where(after, before, camera, near, prefix="") or None


def one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def hits_of(found, k: int, offset: int, started: float, dropped: Sequence[str] = (),
            note: str | None = None) -> JSONResponse:
    """The hits as sent: a finished response, which FastAPI passes on without
    validating it again against `Hits` (the schema it documents). `note`: why the
    answer is empty (why_empty)."""
    answer = {"hits": [{**hit.to_dict(), **path_fields(hit.path), "score": round(hit.score, 6),
                        "rank": offset + i, "thumbnail": f"/api/images/{hit.id}/thumbnail",
                        "file": f"/api/images/{hit.id}/file"} for i, hit in enumerate(found, start=1)],
              "k": k, "offset": offset, "took_ms": elapsed_ms(started), "dropped": list(dropped)}
    if note:
        answer["note"] = note
    return JSONResponse(answer)


def folder_note(service: SearchService, folder: str | None, found: Sequence) -> str | None:
    """The note on an empty answer under an `in` folder the index holds nothing under
    (a typo, a folder never ingested). What the index knows only: whether the folder
    is on the server's disk is not the client's to learn."""
    if found or folder is None or not folder.strip() or service.indexed_under(folder):
        return None
    expanded = canonical_folder(folder)
    # ~ is the home of the user serve runs as, not the client's: say which folder it was.
    read_as = f" ({one_line(expanded)})" if folder.strip().startswith("~") and expanded else ""
    return f"in={one_line(folder)}{read_as}: nothing is indexed under this folder"


def why_empty(service: SearchService, folder: str | None, where, found: Sequence) -> str | None:
    """The note on an empty answer: the folder's (folder_note), else the photo filters'
    where the index can tell cheaply (a camera word no photo has, with close ones; no
    photo with a date or a position at all), as `clipsearch search` says it."""
    note = folder_note(service, folder, found)
    if note or found or where is None:
        return note
    from clipsearch.search.filters import empty_answer_note

    said = empty_answer_note(service.index, where)
    return said.removeprefix("clipsearch: ") if said else None


def image_facts(point: str, payload: dict) -> dict:
    """GET /api/images/{id}: everything a hit says about the photo, and its file's size and mtime."""
    return {"id": point, **path_fields(path_of(payload)), "width": payload.get("width"),
            "height": payload.get("height"), "size": payload.get("size"), "mtime": payload.get("mtime"),
            "taken": payload.get("taken"), "camera": payload.get("camera"), "location": payload.get("location")}


def download_name(path: str) -> str:
    """The file name a download is offered under: the name's bytes as UTF-8 (a byte
    that is not shows as U+FFFD, not as a literal `\\xff`), without control, format
    or line-separator characters: a right-to-left override (U+202E) would make
    `evil\u202egpj.exe` pass for `evilexe.jpg`."""
    name = os.fsencode(os.path.basename(path)).decode("utf-8", "replace")
    kept = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs"))
    return kept or "image"


# Starlette's own conditional-request test (RFC 9110: If-None-Match with its list of
# tags, weak ones and `*`; else If-Modified-Since against Last-Modified).
_CONDITIONS = StaticFiles(check_dir=False)


def not_modified(request: Request, headers: dict[str, str]) -> bool:
    return _CONDITIONS.is_not_modified(Headers(headers={k.lower(): v for k, v in headers.items()}), request.headers)


# The largest body of a request that is not an image upload: JSON of a search with its
# liked and disliked ids, a login. An upload may be the upload limit and its form around it.
BODY_BYTES = 1 << 20
FORM_BYTES = 64 << 10


class BodyLimit:
    """Request bodies are refused (413) beyond their limit as they arrive, not after
    they were read whole: a declared Content-Length at once, a chunked body once its
    bytes pass it. Without this, a 1.5 GB upload was spooled to disk, and a 400 MB JSON
    body held in memory, before any limit was checked."""

    def __init__(self, app, upload_bytes: int):
        self.app = app
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.upload_bytes + FORM_BYTES if upload else BODY_BYTES
        message = (f"the upload is larger than {self.upload_bytes / 1e6:g} MB (--upload-megabytes / "
                   "CLIPSEARCH_UPLOAD_MEGABYTES)" if upload else f"the request body is larger than {limit >> 20} MB")
        too_large = JSONResponse({"error": message}, status_code=413, headers={"Connection": "close"})
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        received, refused = 0, False

        async def counted() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}  # the route stops reading; what it answers is dropped
            return message

        async def sending(message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, sending)


class Gatekeeper:
    """Every request but the open paths needs the token (header or login cookie); every
    response gets the security headers. Plain ASGI: no per-request task or body copy."""

    def __init__(self, app, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:  # the GET it asks about, without the body: FastAPI's routes answer GET only (405)
            # HEAD_MARK: a response that reads a file (an original) reads none of it for a HEAD.
            scope = {**scope, "method": "GET", HEAD_MARK: True}
        path = scope["path"]
        send = self._with_headers(send, head, "private, no-cache" if path.startswith(DOCS_ASSETS + "/") else NO_STORE)
        if not self.guard.host_allowed(Headers(scope=scope).get("host")):
            # The header is not repeated: errors never echo what the client sent.
            refused = JSONResponse({"error": "without a token, serve answers only requests addressed to localhost or a "
                                             "loopback address (a page on another name could be a DNS rebinding "
                                             "attack); give serve --token to reach it by other names"},
                                   status_code=403)
            await refused(scope, receive, send)
            return
        if self.guard.enabled and path not in OPEN_PATHS:
            request = Request(scope)
            refusal = self.guard.refusal(request.headers.get("authorization"), request.cookies.get(self.guard.cookie))
            if refusal is not None:
                if path == "/" and scope["method"] == "GET":
                    response: Response = login_page()
                else:
                    response = JSONResponse({"error": refusal}, status_code=401,
                                            headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _with_headers(send, head: bool = False, cache: str = NO_STORE):
        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in own_headers(cache).items():
                    if name not in headers:
                        headers[name] = value
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        return sending


def create_app(service: SearchService, guard: Guard, thumbnails: Thumbnails, uploads: UploadDecoder,
               upload_bytes: int, cors_origins: tuple[str, ...] = (), version: str = "") -> FastAPI:
    from fastapi_offline import FastAPIOffline

    # docs_url=None: /docs is defined below, to give its inline script's hash to its CSP.
    app = FastAPIOffline(title="clipsearch", version=version or "unknown", docs_url=None, redoc_url=None,
                         static_url=DOCS_ASSETS, dependencies=[Depends(known_parameters)],
                         description="Search an image collection with words, images, likes and dislikes.")
    app.openapi = lambda: with_security(app, guard)  # type: ignore[method-assign]
    finder = DuplicateFinder(service)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        page = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                                   swagger_ui_parameters=app.swagger_ui_parameters)
        page.headers["Content-Security-Policy"] = content_policy(bytes(page.body).decode())
        return page

    # -- errors as one-line JSON ---------------------------------------------------------
    @app.exception_handler(ClipsearchError)
    def known_error(request: Request, exc: ClipsearchError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
        return JSONResponse({"error": one_line(str(exc))}, status_code=status,
                            headers={"Retry-After": "5"} if status == 503 else None)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": one_line(invalid_request(request, exc))}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            # Starlette's Allow names the first route of the path only: GET for /api/search, whose POST is valid too.
            methods = allowed_methods(app, request.scope)
            return JSONResponse({"error": f"method not allowed: this path answers {', '.join(methods)}"},
                                status_code=405, headers={**(exc.headers or {}), "Allow": ", ".join(methods)})
        return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, one_line(str(exc)))
        return JSONResponse({"error": "internal error; the server's log has the details"}, status_code=500,
                            headers=own_headers())

    # -- who may ask ---------------------------------------------------------------------
    app.add_middleware(BlankParameters)
    app.add_middleware(BodyLimit, upload_bytes=upload_bytes)  # inside the gate: no body is read before the token
    app.add_middleware(Gatekeeper, guard=guard)

    if cors_origins:
        app.add_middleware(Cors, allow_origins=list(cors_origins), allow_credentials="*" not in cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    def logged_in(response: Response) -> None:
        response.set_cookie(guard.cookie, guard.new_session(), httponly=True, samesite="strict", path="/",
                            max_age=SESSION_SECONDS)

    @app.get("/login", include_in_schema=False)
    def login_link(token: str = ""):
        """The login URL serve prints: sets the cookie and drops the token from the address
        bar. A wrong or missing token gets the login form (which says a given token is wrong)."""
        if not guard.enabled:
            return RedirectResponse("/", status_code=303)
        if not guard.token_matches(token):
            return login_page()
        response = RedirectResponse("/", status_code=303)
        logged_in(response)
        return response

    @app.post("/api/login", responses={401: {"model": Message}})
    def login(body: LoginBody) -> dict:
        """Exchange the token for an HttpOnly session cookie (the page's login form)."""
        if guard.enabled and not guard.token_matches(body.token):
            return JSONResponse({"error": "wrong token"}, status_code=401)  # type: ignore[return-value]
        response = JSONResponse({"ok": True})
        if guard.enabled:
            logged_in(response)
        return response  # type: ignore[return-value]

    @app.post("/api/logout")
    def logout(request: Request) -> dict:
        """End this login's session: its cookie, and any copy of it, opens nothing after."""
        guard.end_session(request.cookies.get(guard.cookie))
        response = JSONResponse({"ok": True})
        response.delete_cookie(guard.cookie, path="/", httponly=True, samesite="strict")
        return response  # type: ignore[return-value]

    @app.get("/api/session", response_model=Session)
    def session(request: Request) -> dict:
        """Whether this server asks for a token (the page then offers to log out), and
        whether this request has it. Open: it tells no more than a 401 would."""
        return {"token": guard.enabled,
                "logged_in": guard.allows(request.headers.get("authorization"), request.cookies.get(guard.cookie))}

    # -- facts ---------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/status", responses=ERRORS)
    def status() -> dict:
        facts = service.status()
        facts["server"]["version"] = version
        facts.update(path_fields(facts["location"], "location"))  # as status --json gives it
        return facts

    @app.get("/api/ingest", responses=ERRORS)
    def ingest_progress() -> dict:
        state = service.ingest_state()
        for error in state.get("errors", ()):
            error["path"] = shown(error["path"])
            error["reason"] = shown(error["reason"])
        if state.get("last_error"):
            state["last_error"] = shown(state["last_error"])
        return state

    # -- searches ------------------------------------------------------------------------
    @app.get("/api/search", response_model=Hits, responses=ERRORS)
    def search_get(q: Annotated[str | None, Query(max_length=2000, description="Words to search for.")] = None,
                   k: K = 20, offset: OFFSET = 0, folder: FOLDER = None, min_score: MIN_SCORE = None,
                   add: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006 - FastAPI reads, never mutates
                   subtract: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006
                   after: AFTER = None, before: BEFORE = None, camera: CAMERA = None,
                   near: NEAR = None) -> JSONResponse:
        started = time.perf_counter()
        where = photo_filter(after, before, camera, near)
        found = service.search(SearchQuery(query=q, add=add, subtract=subtract, k=k, offset=offset, under=folder,
                                           min_score=min_score, where=where))
        return hits_of(found.hits, k, offset, started, note=why_empty(service, folder, where, found.hits))

    @app.post("/api/search", response_model=Hits, responses=ERRORS)
    def search_post(body: Annotated[SearchBody, Body()]) -> JSONResponse:
        started = time.perf_counter()
        where = photo_filter(body.after, body.before, body.camera, body.near)
        found = service.search(SearchQuery(
            query=body.query, add=body.add, subtract=body.subtract,
            image_ids=[str(body.image_id)] if body.image_id else [],
            liked=[str(i) for i in body.liked], disliked=[str(i) for i in body.disliked],
            k=body.k, offset=body.offset, under=body.folder, min_score=body.min_score,
            where=where))
        return hits_of(found.hits, body.k, body.offset, started, found.dropped,
                       note=why_empty(service, body.folder, where, found.hits))

    @app.post("/api/search/image", response_model=Hits, responses=ERRORS)
    def search_upload(file: Annotated[UploadFile, File(description="The query image.")],
                      k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
                      offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
                      folder: Annotated[str | None, Form(alias="in", max_length=4096)] = None,
                      min_score: Annotated[float | None, Form()] = None,
                      after: Annotated[str | None, Form(max_length=40, description=AFTER_HELP)] = None,
                      before: Annotated[str | None, Form(max_length=40, description=BEFORE_HELP)] = None,
                      camera: Annotated[str | None, Form(max_length=200, description=CAMERA_HELP)] = None,
                      near: Annotated[str | None, Form(max_length=100, description=NEAR_HELP)] = None,
                      ) -> JSONResponse:
        started = time.perf_counter()
        where = photo_filter(after, before, camera, near)  # a bad filter fails before the upload is decoded
        data = file.file.read(upload_bytes + 1)
        if len(data) > upload_bytes:
            raise UploadTooLarge(f"the upload is larger than {upload_bytes / 1e6:g} MB "
                                 "(--upload-megabytes / CLIPSEARCH_UPLOAD_MEGABYTES)")
        image = uploads.decode(data, service.encoder.image_size)
        found = service.by_image(image, k=k, offset=offset, under=folder, min_score=min_score, where=where)
        return hits_of(found, k, offset, started, note=why_empty(service, folder, where, found))

    @app.get("/api/images/{point}/similar", response_model=Hits, responses=ERRORS)
    def similar(point: POINT, k: K = 20, offset: OFFSET = 0, folder: FOLDER = None,
                min_score: MIN_SCORE = None, after: AFTER = None, before: BEFORE = None, camera: CAMERA = None,
                near: NEAR = None) -> JSONResponse:
        started = time.perf_counter()
        where = photo_filter(after, before, camera, near)
        found = service.similar(str(point), k=k, offset=offset, under=folder, min_score=min_score, where=where)
        return hits_of(found, k, offset, started, note=why_empty(service, folder, where, found))

    # POST with a JSON body, though it changes nothing: a request another site's page can
    # make without asking (a GET, an <img>) must not start minutes of work here.
    @app.post("/api/duplicates", responses=ERRORS)
    async def duplicates(request: Request, body: Annotated[DuplicatesBody, Body()]) -> dict:
        """`clipsearch duplicates` over the served index: groups of byte-identical files,
        and with `similar` near-duplicates; one run at a time (503 while another runs).
        Lists files only: nothing is deleted."""
        import asyncio
        import threading

        from starlette.concurrency import run_in_threadpool

        # The run goes on in a worker thread; a client that leaves (Ctrl-C, its own
        # timeout) stops it, rather than keep the next caller at 503 for minutes.
        cancelled = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(finder.find, body.similar, body.folder, cancelled))
        try:
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_SECONDS))[0]:
                if await request.is_disconnected():
                    cancelled.set()
        finally:
            cancelled.set()  # this request cancelled too (the server stopping): the thread stops
        answer = work.result()
        note = await run_in_threadpool(folder_note, service, body.folder, answer["groups"])
        return {**answer, "note": note} if note else answer

    # -- images --------------------------------------------------------------------------
    def open_checked(point: str) -> tuple[dict, int]:
        """The point's file, opened and checked (files.open_indexed). A point no longer
        in the index (404), or whose file is gone or changed since it was indexed (410),
        has its thumbnails removed from the cache first: they show a photo that is not
        the library's any more."""
        try:
            payload = service.record(point)
            return payload, open_indexed(payload)
        except (NotFound, Gone):
            thumbnails.forget([point])
            raise

    @app.get("/api/images/{point}", response_model=ImageInfo, responses=ERRORS)
    def image_info(point: POINT) -> dict:
        return image_facts(str(point), service.record(str(point)))

    @app.get("/api/images/{point}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, 304: {}, **ERRORS})
    def thumbnail(request: Request, point: POINT,
                  size: Annotated[int, Query(description=f"One of {', '.join(map(str, THUMBNAIL_SIZES))}.")] = 256):
        if size not in THUMBNAIL_SIZES:
            raise ClipsearchError(f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}, got {size}")
        with thumbnails.making() as started:  # before the record is read: see making()
            payload, fd = open_checked(str(point))  # gone or changed: 410, before any 304
            headers = {"ETag": etag(str(point), payload, size), "Cache-Control": "private, no-cache"}
            if not_modified(request, headers):
                os.close(fd)
                return Response(status_code=304, headers=headers)
            return Response(thumbnails.get(str(point), payload, size, fd, started), media_type="image/jpeg",
                            headers=headers)

    @app.get("/api/images/{point}/file", responses={200: {"content": {"image/*": {}}}, 206: {}, 304: {},
                                                    416: {"model": Message}, **ERRORS})
    def original(request: Request, point: POINT):
        """The original file: revalidated by ETag (If-None-Match: 304), and in parts (one
        byte range: 206; one past the end of the file: 416)."""
        payload, fd = open_checked(str(point))
        response = IndexedFileResponse(fd, path_of(payload), media_type=media_type(path_of(payload)), headers={
            "ETag": etag(str(point), payload), "Cache-Control": "private, no-cache",
            "Content-Disposition": f"inline; filename*=UTF-8''{_quote(download_name(path_of(payload)))}"})
        if not_modified(request, dict(response.headers)):
            os.close(fd)
            return Response(status_code=304, headers={name: response.headers[name] for name in
                                                      ("etag", "last-modified", "cache-control")})
        return response

    # -- the page ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(asset("index.html").decode())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        suffix = Path(name).suffix
        if name not in ASSETS or suffix not in ASSET_TYPES:
            return JSONResponse({"error": f"no asset {one_line(name)!r}"}, status_code=404)
        return Response(asset(name), media_type=ASSET_TYPES[suffix], headers={"Cache-Control": "private, no-cache"})

    return app


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, its preflight answers in serve's form: JSON, with the
    security headers (they come before the Gatekeeper, which adds them to the rest)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        plain = super().preflight_response(request_headers)
        headers = {name: value for name, value in plain.headers.items()
                   if name not in ("content-length", "content-type")}
        headers.update(own_headers())
        if plain.status_code == 200:
            return JSONResponse({"ok": True}, headers=headers)
        refused = bytes(plain.body).decode().removeprefix("Disallowed CORS ")  # what was refused: origin, method...
        return JSONResponse({"error": f"cross-origin request refused: its {refused} is not allowed here "
                                      "(serve --cors-origin names the origins allowed)"},
                            status_code=plain.status_code, headers=headers)


def with_security(app: FastAPI, guard: Guard) -> dict:
    """The OpenAPI schema, made once: every operation but the open ones declares the
    token (Authorization: Bearer, or the login cookie), so Swagger's Authorize button and
    generated clients send it; a parameter FastAPI would refuse with a 422 is a 400 here."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "serve's token (--token / CLIPSEARCH_TOKEN)"},
        "login": {"type": "apiKey", "in": "cookie", "name": guard.cookie, "description": "set by POST /api/login"}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}, {"login": []}]
            responses = operation.get("responses", {})
            if "422" in responses:
                del responses["422"]
                responses.setdefault("400", {"description": "Bad Request", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    components.setdefault("schemas", {}).setdefault("Message", Message.model_json_schema())
    app.openapi_schema = schema
    return schema


def login_page() -> HTMLResponse:
    """The login form, as a 401: with its inline script and style allowed by their hashes."""
    login = asset("login.html").decode()
    return HTMLResponse(login, status_code=401, headers={"Content-Security-Policy": content_policy(login)})


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route of this path answers; HEAD wherever GET is (Gatekeeper)."""
    from starlette.routing import Match, Mount

    # Matched from the application's root: inside a mount, the scope's root is the mount's.
    scope = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    methods: set[str] = set()
    for route in app.router.routes:
        # A mount of static files (the docs' assets) names no methods: StaticFiles answers GET.
        answers = getattr(route, "methods", None) or (
            {"GET"} if isinstance(route, Mount) and isinstance(route.app, StaticFiles) else None)
        if answers and route.matches(scope)[0] is not Match.NONE:
            methods |= set(answers)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


ASSETS = frozenset(entry.name for entry in STATIC.iterdir() if entry.is_file()) if STATIC.is_dir() else frozenset()
