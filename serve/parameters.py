"""What a client may send to the API, and how a request FastAPI cannot read is told.

An operation refuses a parameter it does not declare, naming it (a misspelled filter,
dropped, would widen the answer to the whole library without a word); an empty query
parameter is unset, as an HTML form sends every field; FastAPI's validation errors
become one line saying which parameter, or what to send instead.
"""

from __future__ import annotations

import json
from typing import Sequence

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form as FormParameter
from fastapi.routing import APIRoute

from clipsearch.errors import ClipsearchError

UPLOAD_PATH = "/api/search/image"


class BlankParameters:
    """An empty query parameter (`after=`, `k=`) counts as unset, as an HTML form or a
    URL template sends every field whether filled or not. Dropped from the query string
    before anything reads it; bytes are left as they are (a value need not be UTF-8)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("query_string") and scope["path"].startswith("/api/"):
            pairs = scope["query_string"].split(b"&")
            kept = [pair for pair in pairs if pair.partition(b"=")[2]]
            if len(kept) != len(pairs):
                scope = {**scope, "query_string": b"&".join(kept)}
        await self.app(scope, receive, send)


class UnknownParameter(ClipsearchError):
    """A parameter the operation does not take: a 400 naming it."""


# Names a client may bring from another operation or another spelling: where they belong.
RIGHT_NAMES = {
    ("query", "query"): "GET takes the words as q=",
    ("body", "q"): "a JSON body takes the words as \"query\" (q= is GET's)",
    ("query", "folder"): "the folder filter is in=",
    ("body", "folder"): "the folder filter is \"in\"",
    ("form", "folder"): "the folder filter is in",
    ("query", "image_id"): "only POST /api/search takes it, in its JSON body",
    ("query", "liked"): "only POST /api/search takes it, in its JSON body",
    ("query", "disliked"): "only POST /api/search takes it, in its JSON body",
}


def unknown_parameter(where: str, name: str, known: Sequence[str]) -> str:
    kind = {"query": "query parameter", "body": "field", "form": "form field"}[where]
    hint = RIGHT_NAMES.get((where, name)) or (
        "this operation takes its parameters in its JSON body" if where == "query" and name in known else "")
    takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
    return f"unknown {kind} {name[:80]!r}: {hint or takes}"


async def known_parameters(request: Request) -> None:
    """Every API operation refuses a query parameter (or form field) it does not
    declare, naming it. The page, its assets and /login are not the API: the page's
    own address holds its state in a query string."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    dependant = route.dependant
    forms = [field.alias for field in dependant.body_params if isinstance(field.field_info, FormParameter)]
    body = [name for field in dependant.body_params for name in _field_names(field)]
    declared = {field.alias for field in dependant.query_params}
    for name in request.query_params:
        if name not in declared:
            raise UnknownParameter(unknown_parameter("query", name, sorted(declared) or body))
    if forms:
        for name in (await request.form()).keys():
            if name not in forms:
                raise UnknownParameter(unknown_parameter("form", name, forms))


def _field_names(field) -> list[str]:
    """The names a JSON body field takes: its model's fields, or its own name."""
    model = getattr(field.field_info, "annotation", None)
    fields = getattr(model, "model_fields", None)
    if fields:
        return [info.alias or name for name, info in fields.items()]
    return [field.alias]


def invalid_request(request: Request, exc: RequestValidationError) -> str:
    """FastAPI's account of a request it could not read, as one line a person writing
    a client can act on: which parameter, or what to send instead."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    upload = request.url.path == UPLOAD_PATH
    media = (request.headers.get("content-type") or "").partition(";")[0].strip().lower()
    if kind == "json_invalid":
        return not_json(exc.body, str(first.get("ctx", {}).get("error", "")))
    if upload and media != "multipart/form-data":
        return "send the image as multipart/form-data with a `file` part (curl -F file=@photo.jpg)"
    if loc == ("body",) and kind == "missing":  # "Field required" named no field: the body is missing
        return "the request body is missing: send a JSON object (Content-Type: application/json)"
    if loc[:1] == ("body",) and not upload and media and media != "application/json" and not media.endswith("+json"):
        return f"send Content-Type: application/json (the body was sent as {media[:80]})"
    if upload and loc == ("body", "file"):
        return "the upload has no `file` part: send the image as multipart/form-data with a `file` part"
    if kind == "extra_forbidden" and len(loc) == 2:
        route = request.scope.get("route")
        known = [name for field in route.dependant.body_params for name in _field_names(field)] \
            if isinstance(route, APIRoute) else []
        return unknown_parameter("body", str(loc[1]), known)
    if loc and loc[0] in ("body", "query", "path", "form", "header", "cookie") and loc != ("body",):
        loc = loc[1:]  # where it was sent, not its name: a body field may be called "query"
    where = ".".join(str(p) for p in loc)  # `body` where it is the body as a whole (not a JSON object, say)
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


def not_json(body, reason: str) -> str:
    """Where and why a body is not JSON: the decoder's own line and column."""
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (TypeError, ValueError):
        pass
    return f"the body is not valid JSON: {reason or 'cannot be decoded'}"
