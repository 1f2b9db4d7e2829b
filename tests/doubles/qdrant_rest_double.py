"""A stand-in Qdrant server for the tests: the part of Qdrant's REST API that
clipsearch calls, served over real HTTP by qdrant-client's own local engine.

Why it exists: no Qdrant server or Docker engine runs on the machines this project
is built on, so without it the server backend (clipsearch/index/client.py) - REST
serialisation, the API key, retries, an unreachable or lost server - would run in no
test at all. With it those paths run in every CI run (and over gRPC too, through
tests/doubles/qdrant_grpc_double.py on the same engine). It is NOT a substitute for a real
server: it answers the requests the way qdrant-client's local mode does (exact scans,
no HNSW, no optimizer). The legs that need the real thing run when QDRANT_URL is set
(`make test-server`).

Besides an API key, it can fail on purpose: `fail_next(n, status)` answers the next n
requests with that HTTP status (a server that is restarting, or overloaded). It records
every request it serves in `received` (as REST bodies, whichever protocol brought them),
and keeps a new collection's layout (shards, replicas, HNSW, quantization), which the
local engine drops, to report it back as a server does.

Collection aliases are the engine's own (it resolves them in every collection call): an
alias name serves the point routes, `exists` and `get` as its collection does; the
layout and optimizer settings kept here are looked up under the collection it names.

    python tests/doubles/qdrant_rest_double.py --port 6333 --api-key KEY    (by hand)
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlparse

from pydantic import TypeAdapter
from qdrant_client import QdrantClient, models


class NotFound(Exception):
    pass


def _dump(value: Any) -> Any:
    """Pydantic models (and lists of them) as JSON-ready data, as the server sends them."""
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


_insert_points = TypeAdapter(models.PointInsertOperations)
_points_selector = TypeAdapter(models.PointsSelector)
_UPDATED = {"operation_id": 0, "status": "completed"}
# What a single-node server reports for what a create request left out.
_SERVER_DEFAULTS = {"shard_number": 1, "replication_factor": 1, "write_consistency_factor": 1}


@dataclass(frozen=True)
class Received:
    """One request the double served: the handler's name (`create_collection`,
    `upsert`...), the collection and the body as REST would carry it."""

    route: str
    collection: str | None
    body: dict


class QdrantRestDouble:
    """Serves the engine on 127.0.0.1:`port` (0: any free port) in a daemon thread."""

    def __init__(self, port: int = 0, api_key: str | None = None):
        self.api_key = api_key
        self.engine = QdrantClient(location=":memory:")
        self.lock = threading.Lock()  # the local engine is not made for concurrent callers
        self.requests = 0
        self.optimizers: dict[str, dict] = {}  # collection -> optimizer settings changed by PATCH
        self.optimizer_changes: list[tuple[str, dict]] = []  # every PATCH, in order
        self.layouts: dict[str, dict] = {}  # collection -> the layout its create request gave
        # Bounded: one double serves a whole test session, and tests read what they just sent.
        self.received: deque[Received] = deque(maxlen=10_000)
        self._failures: list[int] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="qdrant-rest-double", daemon=True)

    def start(self) -> "QdrantRestDouble":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, count: int, status: int = 503) -> None:
        with self.lock:
            self._failures.extend([status] * count)

    # -- routes -------------------------------------------------------------------
    def _routes(self) -> list[tuple[str, re.Pattern, Callable[[str, dict], Any]]]:
        e = self.engine
        # Exact paths first: `/collections/aliases` is the alias API, not a collection
        # named "aliases" (the first route whose method and path match serves a request).
        table = [
            ("GET", r"/", lambda c, b: e.info()),  # qdrant-client's version
            ("GET", r"/collections", self._list_collections),
            ("GET", r"/aliases", self._list_aliases),
            ("POST", r"/collections/aliases", self._update_aliases),
            ("GET", r"/collections/{c}/aliases", self._collection_aliases),
            ("GET", r"/collections/{c}/exists", lambda c, b: {"exists": e.collection_exists(c)}),
            ("GET", r"/collections/{c}", self._get_collection),
            ("PUT", r"/collections/{c}", self._create_collection),
            ("PATCH", r"/collections/{c}", self._update_collection),
            ("DELETE", r"/collections/{c}", self._delete_collection),
            ("PUT", r"/collections/{c}/index", self._create_index),
            ("PUT", r"/collections/{c}/points", self._upsert),
            ("POST", r"/collections/{c}/points", self._retrieve),
            ("POST", r"/collections/{c}/points/delete", self._delete),
            ("POST", r"/collections/{c}/points/count", self._count),
            ("POST", r"/collections/{c}/points/scroll", self._scroll),
            ("POST", r"/collections/{c}/points/query", self._query),
        ]
        return [(m, re.compile("^" + p.replace("{c}", "(?P<c>[^/]+)") + "$"), f) for m, p, f in table]

    def _existing(self, name: str) -> bool:
        if not self.engine.collection_exists(name):
            raise NotFound(f"Collection `{name}` doesn't exist!")
        return True

    def _collection_of(self, name: str) -> str:
        """The collection `name` stands for: the one it names when it is an alias, else itself."""
        return {a.alias_name: a.collection_name for a in self.engine.get_aliases().aliases}.get(name, name)

    def _list_collections(self, name, body):
        return self.engine.get_collections()

    def _list_aliases(self, name, body):
        return self.engine.get_aliases()

    def _collection_aliases(self, name, body):
        # As the server: the aliases naming that collection (none for an alias or an unknown name).
        return self.engine.get_collection_aliases(name)

    def _update_aliases(self, name, body):
        request = models.ChangeAliasesOperation.model_validate(body)
        collections = {c.name for c in self.engine.get_collections().collections}
        for action in request.actions:
            target = action.create_alias.collection_name if isinstance(action, models.CreateAliasOperation) else None
            if target is not None and target not in collections:
                raise NotFound(f"Collection `{target}` doesn't exist!")
        # All the actions or none: the engine applies them to a copy and keeps it only whole.
        return self.engine.update_collection_aliases(change_aliases_operations=request.actions)

    def _get_collection(self, name, body):
        self._existing(name)
        info = self.engine.get_collection(name)
        name = self._collection_of(name)  # what is kept here is kept under the collection's name
        if name in self.optimizers:
            info.config.optimizer_config = info.config.optimizer_config.model_copy(update=self.optimizers[name])
        layout = self.layouts.get(name, {})
        params = {key: layout.get(key, default) for key, default in _SERVER_DEFAULTS.items()}
        info.config.params = info.config.params.model_copy(update=params)
        if layout.get("hnsw_config"):
            info.config.hnsw_config = info.config.hnsw_config.model_copy(update=layout["hnsw_config"])
        info.config.quantization_config = layout.get("quantization_config")
        return info

    def received_for(self, route: str, collection: str) -> list[dict]:
        """The bodies of the requests of one route to one collection, in order."""
        return [r.body for r in self.received if r.route == route and r.collection == collection]

    def _delete_collection(self, name, body):
        # As the server: an alias name deletes nothing (the engine answers False), and
        # deleting a collection drops the aliases naming it (the engine does).
        self.optimizers.pop(name, None)
        self.layouts.pop(name, None)
        return self.engine.delete_collection(name)

    def _create_collection(self, name, body):
        if self._collection_of(name) != name:
            raise ValueError(f"Wrong input: Alias `{name}` already exists!")
        if self.engine.collection_exists(name):
            raise ValueError(f"Wrong input: Collection `{name}` already exists!")
        request = models.CreateCollection.model_validate(body)
        created = self.engine.create_collection(name, vectors_config=request.vectors, metadata=request.metadata)
        # The local engine keeps none of these: kept here for get_collection.
        self.layouts[name] = {key: value for key, value in (
            ("shard_number", request.shard_number), ("replication_factor", request.replication_factor),
            ("write_consistency_factor", request.write_consistency_factor),
            ("hnsw_config", request.hnsw_config.model_dump(exclude_none=True) if request.hnsw_config else None),
            ("quantization_config", request.quantization_config)) if value is not None}
        return created

    def _update_collection(self, name, body):
        self._existing(name)
        name = self._collection_of(name)
        request = models.UpdateCollection.model_validate(body)
        # The local engine keeps no optimizer settings: they are kept here, read back by
        # get_collection as the server does, and logged for the tests.
        if request.optimizers_config is not None:
            diff = request.optimizers_config.model_dump(exclude_none=True)
            self.optimizers.setdefault(name, {}).update(diff)
            self.optimizer_changes.append((name, diff))
        if request.metadata is not None:
            self.engine.update_collection(name, metadata=request.metadata)
        return True

    def _create_index(self, name, body):
        self._existing(name)
        request = models.CreateFieldIndex.model_validate(body)
        self.engine.create_payload_index(name, request.field_name, request.field_schema)
        return _UPDATED

    def _upsert(self, name, body):
        self._existing(name)
        operation = _insert_points.validate_python(body)
        points = operation.batch if isinstance(operation, models.PointsBatch) else operation.points
        self.engine.upsert(name, points=points)
        return _UPDATED

    def _retrieve(self, name, body):
        self._existing(name)
        request = models.PointRequest.model_validate(body)
        return self.engine.retrieve(name, ids=request.ids, with_payload=request.with_payload,
                                    with_vectors=request.with_vector or False)

    def _delete(self, name, body):
        self._existing(name)
        self.engine.delete(name, points_selector=_points_selector.validate_python(body))
        return _UPDATED

    def _count(self, name, body):
        self._existing(name)
        request = models.CountRequest.model_validate(body)
        return self.engine.count(name, count_filter=request.filter, exact=True)

    def _scroll(self, name, body):
        self._existing(name)
        request = models.ScrollRequest.model_validate(body)
        points, next_offset = self.engine.scroll(
            name, scroll_filter=request.filter, limit=request.limit or 10, offset=request.offset,
            with_payload=request.with_payload if request.with_payload is not None else True,
            with_vectors=request.with_vector or False)
        return models.ScrollResult(points=points, next_page_offset=next_offset)

    def _query(self, name, body):
        self._existing(name)
        request = models.QueryRequest.model_validate(body)
        return self.engine.query_points(
            name, query=request.query, query_filter=request.filter, limit=request.limit or 10,
            with_payload=request.with_payload if request.with_payload is not None else False,
            with_vectors=request.with_vector or False, search_params=request.params)

    def admit(self, api_key: str | None) -> int | None:
        """The HTTP status a request gets before it reaches the engine (a wrong key, a
        failure asked for), or None to serve it. Both protocols ask here."""
        self.requests += 1
        if self.api_key is not None and api_key != self.api_key:
            return 401
        with self.lock:
            return self._failures.pop(0) if self._failures else None

    def call(self, handler, name: str | None, body: dict) -> Any:
        route = getattr(handler, "__name__", "").lstrip("_") or "call"
        with self.lock, warnings.catch_warnings():
            self.received.append(Received(route, name, body))
            # The local engine's notes that payload indexes and search params do nothing
            # in it: true, and known (see the module's docstring).
            warnings.simplefilter("ignore", UserWarning)
            return handler(name, body)

    # -- HTTP ---------------------------------------------------------------------
    def _handler_class(self):
        double = self
        routes = self._routes()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the server: the client reuses connections

            def log_message(self, *args):  # quiet: pytest shows failures, not traffic
                pass

            def _answer(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._answer(status, {"status": {"error": message}, "time": 0.0})

            def _serve(self, method: str) -> None:
                started = time.perf_counter()
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                refused = double.admit(self.headers.get("api-key"))
                if refused == 401:
                    return self._error(401, "Must provide an API key or an Authorization bearer token")
                if refused is not None:
                    return self._error(refused, "Service Unavailable (a failure the test asked for)")
                for route_method, pattern, handler in routes:  # noqa: B007 - the match is used after the loop
                    match = pattern.match(url.path)
                    if route_method == method and match:
                        break
                else:
                    return self._error(404, f"no route for {method} {url.path} in the test double")
                try:
                    result = double.call(handler, match.groupdict().get("c"), json.loads(raw) if raw else {})
                except NotFound as exc:
                    return self._error(404, f"Not found: {exc}")
                except Exception as exc:  # a request the engine refuses: the server's 400
                    return self._error(400, f"Bad request: {exc}")
                if url.path == "/":  # the version answer is the one the server sends bare
                    return self._answer(200, _dump(result))
                self._answer(200, {"result": _dump(result), "status": "ok",
                                   "time": time.perf_counter() - started})

            def do_GET(self):
                self._serve("GET")

            def do_PUT(self):
                self._serve("PUT")

            def do_POST(self):
                self._serve("POST")

            def do_PATCH(self):
                self._serve("PATCH")

            def do_DELETE(self):
                self._serve("DELETE")

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6333)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    double = QdrantRestDouble(args.port, args.api_key).start()
    print(f"serving on {double.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        double.stop()


if __name__ == "__main__":
    main()
