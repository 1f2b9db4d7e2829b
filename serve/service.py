"""SearchService: one open index and one warm query encoder, shared by every request.

Request handlers run in a pool of threads. The embedded engine gets one call at a
time (a lock around every call of `SerializedIndex`: its calls take milliseconds, and
the watcher's upserts take their turn between queries); a Qdrant server is reached
without the lock. Text is encoded by the exported ONNX text tower in its all-cores
mode, loaded and run once at start; example images that are not in the index (an
upload) load the full model on first use, the same one the watcher embeds with.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from clipsearch.config import Settings
from clipsearch.encoders import l2_normalize
from clipsearch.errors import ClipsearchError
from clipsearch.index import Index
from clipsearch.index.where import Where
from clipsearch.remote import SERVE_MAX_K, SERVE_MAX_OFFSET
from clipsearch.search import Searcher, SearchHit, Term, parse_term
from clipsearch.search.engine import settled

# Deep pages are answered by asking the index for offset + k hits. The thin client
# knows the limits too (it pages through them), so they are written once, there.
MAX_K = SERVE_MAX_K
MAX_OFFSET = SERVE_MAX_OFFSET


class NotFound(ClipsearchError):
    """An id that is not in the collection."""


class NotReady(ClipsearchError):
    """No collection yet, or an empty one (a watched ingest has not committed a batch)."""


class SerializedIndex:
    """The Index contract with every call made under one lock: the embedded engine is
    driven by one thread at a time. Attributes (location, collection, backend) pass
    through. `inner` is the index itself, for what must hold the lock differently
    (the off-process HNSW build takes it only to flush and to swap)."""

    def __init__(self, index: Index, lock: Any):
        self.inner = index
        self.lock = lock

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                answer = attribute(*args, **kwargs)
            # A generator (scroll) runs its calls into the engine as it is iterated: each
            # step under the lock too, and other calls in between.
            return self._stepped(answer) if inspect.isgenerator(answer) else answer

        return locked

    def _stepped(self, steps: Iterator[Any]) -> Iterator[Any]:
        while True:
            with self.lock:
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item


class SharedEncoder:
    """The encoder protocol over two models: text from the query encoder, images from
    the full model, loaded on first need and shared with the watcher. One lock each:
    neither encoder keeps its state safe across threads."""

    def __init__(self, text, images, precision: str = "fp32"):
        self.text = text
        self.images = images
        # The images' precision: what a watched ingest writes, and checks the collection for.
        self.identity = text.identity.with_precision(precision)
        self.dim = text.dim
        self._text_lock = threading.Lock()
        self._image_lock = threading.RLock()

    @property
    def image_size(self) -> int:
        with self._image_lock:
            return int(self.images.image_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        with self._text_lock:
            return self.text.encode_texts(texts, batch_size)

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        with self._image_lock:
            return self.images.encode_images(images, batch_size)

    # A watched ingest's decoders make the model's crops, as ingest's do (issue 19), when
    # the image encoder can take them; None sends whole images (ingest/pipeline.py).
    @property
    def preprocess(self):
        with self._image_lock:
            return getattr(self.images, "preprocess", None) if hasattr(self.images, "encode_crops") else None

    def encode_crops(self, crops: np.ndarray, geometry, batch_size: int = 32) -> np.ndarray:
        with self._image_lock:
            return self.images.encode_crops(crops, geometry, batch_size)


def load_encoder(settings: Settings, say: Callable[[str], None], busy: bool = False,
                 precision: str = "fp32") -> SharedEncoder:
    """The warm query encoder: the exported text tower (exported now, once, when the
    cache has none), and an image encoder loaded on first need (ingest's: the ONNX
    image tower on a CPU) at `precision`, the collection's: a watched ingest into an
    int8 collection writes int8 vectors, and an uploaded query image is encoded as the
    collection's images were. `busy`: the process has other work for the cores (a
    watched ingest), so the tower's threads must not spin between queries."""
    from clipsearch.encoders import LazyEncoder, QueryEncoders

    queries = QueryEncoders(settings, say=say, say_per_query=False)
    text = queries.get()
    if queries.path == "full":  # first use of this model: export its text tower, then use it
        queries.finish()
        again = QueryEncoders(settings, say=say, say_per_query=False)
        fast = again.fast()
        if fast is not None:
            text = fast
    if hasattr(text, "warm"):
        text.warm(spin=not busy)
    if hasattr(text, "warm") or precision != "fp32":
        images: Any = LazyEncoder(settings.model, settings.device, precision=precision, spin=not busy)
    else:  # the full model answers text: let it answer fp32 images too, one model in memory
        images = text
    return SharedEncoder(text, images, precision)


@dataclass
class Query:
    """What a search request asks for: text terms, example images by id, likes and dislikes."""

    query: str | None = None
    add: Sequence[str] = ()
    subtract: Sequence[str] = ()
    image_ids: Sequence[str] = ()
    liked: Sequence[str] = ()
    disliked: Sequence[str] = ()
    k: int = 20
    offset: int = 0
    under: str | None = None
    min_score: float | None = None
    where: Where | None = None  # photo filters: when, with what camera, where taken
    exclude_ids: Sequence[str] = field(default_factory=tuple)


@dataclass
class Results:
    """A search's hits, and the liked or disliked ids it left out: no longer in the index."""

    hits: list[SearchHit]
    dropped: list[str] = field(default_factory=list)


class SearchService:
    def __init__(self, settings: Settings, index: Index, encoder, watching: bool = False):
        self.settings = settings
        self.lock = threading.RLock() if index.backend == "edge" else nullcontext()
        self.index = SerializedIndex(index, self.lock)
        self.encoder = encoder
        self.watcher: Any = None
        self.watching = watching
        self._searcher: Searcher | None = None
        self._ready = threading.Lock()

    # -- readiness --------------------------------------------------------------
    def searcher(self) -> Searcher:
        """The Searcher, once the collection exists and holds a point (checked against
        the model once); until then a NotReady naming what to wait for."""
        if self._searcher is not None:
            return self._searcher
        with self._ready:
            if self._searcher is None:
                if not self.index.exists() or self.index.count() == 0:
                    waiting = ""
                    if self.watching:
                        idle = self.watcher is not None and self.watcher.state()["state"] == "watching"
                        waiting = ("; the watched folders hold none now: they are followed, and what is put there "
                                   "is indexed" if idle else "; the watched ingest is filling it")
                    raise NotReady(f"collection {self.settings.collection!r} at {self.index.location} "
                                   f"holds no images yet{waiting}")
                self._searcher = Searcher(self.encoder, self.index)  # type: ignore[arg-type]
        return self._searcher

    # -- vectors ----------------------------------------------------------------
    def _vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors, normalized, of those of `ids` still in the index, by id."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        return {r.id: l2_normalize(r.vector)[0] for r in self.index.retrieve(ids, with_vectors=True)
                if r.vector is not None}

    def stored_vectors(self, ids: Sequence[str]) -> list[np.ndarray]:
        """The stored vectors of indexed images, in the order given; an unknown id is a NotFound."""
        ids = list(dict.fromkeys(ids))
        found = self._vectors(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(self._gone(missing))
        return [found[i] for i in ids]

    def _gone(self, ids: Sequence[str]) -> str:
        more = f" (and {len(ids) - 1} more)" if len(ids) > 1 else ""
        # Ids are of paths: a file renamed or moved since the client was shown it has another id now.
        return (f"no image with id {ids[0]}{more} in collection {self.settings.collection!r} any more: "
                "deleted, moved or renamed since it was shown")

    def query_vector(self, q: Query) -> np.ndarray | None:
        """The weighted sum of the text terms and example images, normalized; None when
        the request has neither (a pure like/dislike refinement)."""
        terms = []
        if q.query is not None and q.query.strip():  # the query is words as they are, as in the CLI
            terms.append(Term("text", q.query.strip()))
        terms += [parse_term(spec, 1.0, "add", images=False) for spec in q.add]
        terms += [parse_term(spec, -1.0, "subtract", images=False) for spec in q.subtract]
        parts: list[np.ndarray] = []
        if terms:
            vectors = self.encoder.encode_texts([t.value for t in terms])
            parts += [t.weight * v for t, v in zip(terms, vectors)]
        parts += self.stored_vectors(q.image_ids)
        if not parts:
            return None
        if not any(t.weight > 0 for t in terms) and not q.image_ids:
            raise ClipsearchError("nothing to search for: give a query, an image or an add term")
        total = np.sum(parts, axis=0)
        if not np.any(total):
            raise ClipsearchError("the query terms cancel out to nothing; change their weights")
        return l2_normalize(total)[0]

    # -- searches ---------------------------------------------------------------
    def search(self, q: Query) -> Results:
        """The hits of `q`. Liked and disliked images no longer in the index (deleted, or
        renamed or moved: a point's id is its path's) are left out and named in
        `dropped`: a page's likes outlive the photos they point at. An example image
        (`image_ids`) is the query itself: one gone is a NotFound."""
        check_window(q.k, q.offset, q.min_score)
        searcher = self.searcher()
        vector = self.query_vector(q)
        stored = self._vectors([*q.liked, *q.disliked])
        dropped = [i for i in dict.fromkeys([*q.liked, *q.disliked]) if i not in stored]
        liked = [stored[i] for i in dict.fromkeys(q.liked) if i in stored]
        disliked = [stored[i] for i in dict.fromkeys(q.disliked) if i in stored]
        if vector is None and q.liked and not liked:  # the likes were the whole query
            raise NotFound(f"nothing left to search for: {self._gone([i for i in dropped if i in q.liked])}")
        exclude = list(dict.fromkeys([*q.exclude_ids, *q.image_ids, *q.disliked]))
        wanted = q.offset + q.k
        if liked or disliked:
            positives = ([vector] if vector is not None else []) + liked
            if not positives:
                raise ClipsearchError("a refinement needs a query or at least one liked image")
            under = canonical_folder(q.under)
            found = settled(lambda n: self.index.recommend(positives, disliked, n, under=under,
                                                           exclude_ids=exclude, where=q.where or None), wanted)
            if q.min_score is not None:
                found = [h for h in found if h.score >= q.min_score]
            hits = [SearchHit.from_hit(rank, h) for rank, h in enumerate(found, start=1)]
        else:
            if vector is None:
                raise ClipsearchError("nothing to search for: give a query, an image or an add term")
            hits = searcher.by_vector(vector, wanted, canonical_folder(q.under), q.min_score, exclude_ids=exclude,
                                      where=q.where)
        return Results(hits[q.offset:], dropped)

    def similar(self, point: str, k: int = 20, offset: int = 0, under: str | None = None,
                min_score: float | None = None, where: Where | None = None) -> list[SearchHit]:
        """More like this: the image's stored vector, the image itself left out."""
        return self.search(Query(image_ids=[point], k=k, offset=offset, under=under, min_score=min_score,
                                 where=where)).hits

    def by_image(self, image, k: int = 20, offset: int = 0, under: str | None = None,
                 min_score: float | None = None, where: Where | None = None) -> list[SearchHit]:
        """Search by a decoded image that need not be in the index (an upload)."""
        check_window(k, offset, min_score)
        searcher = self.searcher()
        vector = l2_normalize(self.encoder.encode_images([image]))[0]
        return searcher.by_vector(vector, offset + k, canonical_folder(under), min_score, where=where)[offset:]

    # -- facts ------------------------------------------------------------------
    def indexed_under(self, folder: str) -> int:
        """How many photos the index holds under `folder` (the `in` filter, as a search
        reads it)."""
        return self.index.count(under=canonical_folder(folder))

    def record(self, point: str) -> dict:
        records = self.index.retrieve([point])
        if not records:
            raise NotFound(f"no image with id {point} in collection {self.settings.collection!r}")
        return records[0].payload

    def status(self) -> dict:
        with self.lock:
            facts = self.index.inner.describe()
        facts["server"] = {"pid": os.getpid(), "watching": self.watching}
        return facts

    def ingest_state(self) -> dict:
        if self.watcher is None:
            return {"watching": False}
        return self.watcher.state()


def check_window(k: int, offset: int, min_score: float | None = None) -> None:
    if not 1 <= k <= MAX_K:
        raise ClipsearchError(f"k must be between 1 and {MAX_K}, got {k}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ClipsearchError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
    if min_score is not None and not math.isfinite(min_score):  # nan passed every hit and kept none
        raise ClipsearchError(f"min_score must be a finite number, got {min_score}")


def canonical_folder(under: str | None) -> str | None:
    """The `in` folder as the index spells its paths: absolute and symlink-free. A
    client names a folder of the server's machine; nothing is read from it."""
    if under is None or not under.strip():
        return None
    if "\x00" in under:
        raise ClipsearchError("the folder filter holds a NUL character")
    if not os.path.isabs(os.path.expanduser(under)):  # relative to what? Not the server's working folder
        raise ClipsearchError("the folder filter must be an absolute folder of the server's machine, as its "
                              "paths are indexed (/home/anna/Pictures; ~ is the home of the user serve runs as)")
    from clipsearch.index import canonical_path

    return canonical_path(os.path.expanduser(under))  # ~ as the check above read it: the server's home


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
