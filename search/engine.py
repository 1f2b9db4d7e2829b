"""Answer queries against an index: text, example images and mixtures of both in,
ranked image hits out."""

from __future__ import annotations

import math
import numbers
import os
from collections import abc
from datetime import date
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from clipsearch.encoders import l2_normalize
from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.hits import SearchHit
from clipsearch.index import Hit, Index, canonical_path, point_id
from clipsearch.index.where import Where

from .terms import Term, UnusableQuery, image_term

if TYPE_CHECKING:  # pragma: no cover
    from clipsearch.config import Settings

# The input side of most CLIP models: the size a query image is first decoded at.
CHECK_SIZE = 224


def check_k(k: int, name: str = "-k") -> None:
    if k < 1:
        raise UsageError(f"{name} must be at least 1, got {k}")


# How far past k settled() looks for the end of a run of tied scores: a run longer than
# this (thousands of byte-identical copies) is cut at it, in a stable order still.
MAX_TIE_WINDOW = 4096


def settled(fetch: Callable[[int], list[Hit]], k: int) -> list[Hit]:
    """The top `k` of `fetch(n)` (an index query for n hits) in a stable order: by score,
    then id. The index orders equal scores as it meets them, so two queries could cut a
    run of ties (byte-identical copies) differently, and a page (offset + k) repeat an
    image of the page before and skip another. The run that reaches the k-th place is
    fetched whole: more hits are asked for while the last one still ties it."""
    limit = k + 1
    while True:
        hits = fetch(limit)
        if len(hits) < limit or hits[-1].score < hits[k - 1].score or limit >= k + MAX_TIE_WINDOW:
            break
        limit = min(2 * limit, k + MAX_TIE_WINDOW)
    return sorted(hits, key=lambda h: (-h.score, h.id))[:k]


class Searcher:
    """A loaded model and an open, non-empty index, checked to belong together."""

    def __init__(self, encoder, index: Index):
        if not all(hasattr(index, name) for name in ("check_identity", "query", "count")):  # or a wrapper of one
            raise _wrong("Searcher()", "index", "an open clipsearch index (open_index(settings))", index)
        index.check_identity(encoder.identity)  # which first requires the collection
        if index.count() == 0:
            raise ClipsearchError(
                f"collection {index.collection!r} at {index.location} is empty; run `clipsearch ingest DIR` first"
            )
        self.encoder = encoder
        self.index = index

    # -- vectors ----------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise UsageError("the query is empty; give some words to search for")
        return self.encoder.encode_texts([text.strip()])[0]

    def image_vector(self, path: str) -> np.ndarray:
        """An indexed image's stored vector (exact, no decoding); else embed the file."""
        stored = self.index.retrieve([point_id(path)], with_vectors=True)
        if stored and stored[0].vector is not None:
            return l2_normalize(stored[0].vector)[0]
        from clipsearch.images import SkipImage, load_image

        try:
            # Decoded before the model is asked for its input size, which loads the
            # full model (seconds): a bad file is refused at once.
            decoded = load_image(path, CHECK_SIZE)
            if self.encoder.image_size != CHECK_SIZE:
                decoded = load_image(path, self.encoder.image_size)
        except SkipImage as exc:
            raise UnusableQuery(f"cannot use {path} as a query image: {exc}", path=path, reason=str(exc)) from None
        return self.encoder.encode_images([decoded.image])[0]

    def combine(self, terms: Sequence[Term]) -> np.ndarray:
        """Weighted sum of each term's unit vector, normalized: rclip's `+`/`-`."""
        if not terms:
            raise UsageError("nothing to search for: give a query, --image or --add")
        texts = [t for t in terms if t.kind == "text"]
        vectors: dict[Term, np.ndarray] = {}
        if texts:
            for term, vec in zip(texts, self.encoder.encode_texts([t.value for t in texts])):
                vectors[term] = vec
        for term in terms:
            if term.kind == "image" and term not in vectors:
                vectors[term] = self.image_vector(term.value)
        total = sum(term.weight * vectors[term] for term in terms)
        if not np.any(total):
            raise UnusableQuery("the query terms cancel out to nothing; change their weights")
        return l2_normalize(total)[0]

    # -- queries ----------------------------------------------------------------
    def by_vector(self, vector: np.ndarray, k: int = 10, under: str | None = None,
                  min_score: float | None = None, exclude_ids: Sequence[str] = (),
                  where: Where | None = None) -> list[SearchHit]:
        """`under` and `where` (search/filters.py) filter inside the index."""
        _check_k_and_filters("Searcher", k, min_score, where)
        if under is not None:
            if not isinstance(under, (str, bytes, os.PathLike)):
                raise _wrong("Searcher", "under", "a path (str, bytes or os.PathLike)", under)
            under = canonical_path(os.fsdecode(under))
        hits = settled(lambda n: self.index.query(vector, n, under=under, exclude_ids=exclude_ids, where=where or None),
                       k)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return [SearchHit.from_hit(rank, hit) for rank, hit in enumerate(hits, start=1)]

    def terms(self, terms: Sequence[Term], k: int = 10, under: str | None = None,
              min_score: float | None = None, where: Where | None = None) -> list[SearchHit]:
        """Example images are left out of their own results."""
        exclude = [point_id(t.value) for t in terms if t.kind == "image" and t.weight > 0]
        return self.by_vector(self.combine(terms), k, under, min_score, exclude_ids=exclude, where=where)

    def text(self, query: str, k: int = 10, under: str | None = None,
             min_score: float | None = None, where: Where | None = None) -> list[SearchHit]:
        if not isinstance(query, str):
            raise _wrong("Searcher.text()", "query", "text (str)", query)
        _check_k_and_filters("Searcher.text()", k, min_score, where)  # before the model is asked
        return self.by_vector(self.text_vector(query), k, under, min_score, where=where)

    def image(self, path: str, k: int = 10, under: str | None = None,
              min_score: float | None = None, where: Where | None = None) -> list[SearchHit]:
        return self.terms([image_term(path)], k, under, min_score, where)


def _wrong(function: str, name: str, expected: str, value) -> TypeError:
    return TypeError(f"{function}: {name}= must be {expected}, got {type(value).__name__}")


def _check_k_and_filters(function: str, k, min_score, where) -> None:
    """The arguments every query takes: each wrong type a TypeError naming it."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise _wrong(function, "k", "an int", k)
    check_k(int(k), "k")
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
            raise _wrong(function, "min_score", "a number", min_score)
        if not math.isfinite(min_score):
            raise UsageError(f"{function}: min_score={min_score} is not a finite number")
    if where is not None and not isinstance(where, Where):
        raise _wrong(function, "where", "a clipsearch.index.where.Where", where)


def search(query: str | None = None, k: int = 10, settings: Settings | None = None,
           under: str | bytes | os.PathLike | None = None,
           min_score: float | None = None, image: str | bytes | os.PathLike | None = None,
           add: Iterable[str] | str = (), subtract: Iterable[str] | str = (),
           where: Where | None = None, *, after: str | date | None = None, before: str | date | None = None,
           camera: str | None = None, near: str | Sequence[float] | None = None) -> list[SearchHit]:
    """One-call API for notebooks: load the model, open the index, search, close.
    Text goes through the same encoders as the CLI: the cached ONNX text tower when
    there is one, else the full model (clipsearch/encoders/query.py).

        search("a dog on a beach", k=5)
        search(image="holiday/beach.jpg", subtract=["people"])
        search("a harbour", after="2023", before="2024", camera="canon", near="48.8566,2.3522,25")

    `after`, `before`, `camera` and `near` are the CLI's --after, --before, --camera and
    --near, read as it reads them (near: "LAT,LON,KM" or (lat, lon, km), in kilometres);
    `where` is the same filter built by hand (clipsearch.index.where.Where: its radius
    is in metres), for Searcher's methods; not both.

    `add` and `subtract` take terms, or one term as a string (not its letters). As in
    the CLI, a query or term that names an existing image file searches by that image:
    text from someone else (a web form) goes to Searcher.text, which opens no file.

    `query` is text (str). A file name is bytes: `image` and `under` take a path as
    str, bytes or os.PathLike. An argument of the wrong type is a TypeError naming it,
    a value out of range (k=0, min_score=nan) a UsageError.
    """
    from clipsearch.config import Settings
    from clipsearch.encoders.query import QueryEncoders
    from clipsearch.index import names_no_model, open_index, with_collection_model

    image, under, add, subtract = _checked_arguments(query, k, settings, under, min_score, image, add, subtract,
                                                     where)
    settings = settings or Settings.resolve()
    where = _photo_filter(where, after, before, camera, near)
    terms = build_terms(query, image, add, subtract)
    with open_index(settings) as index:
        index.require_collection()  # before loading any model
        if names_no_model(settings):  # else the model check in Searcher is the one record read
            settings = with_collection_model(settings, index.stored_identity())
        encoders = QueryEncoders(settings)
        hits = Searcher(encoders.get(), index).terms(terms, k, under, min_score, where)
    encoders.finish()  # a first use exports the text tower, so that the next call is fast
    return hits


def _checked_arguments(query, k, settings, under, min_score, image, add, subtract, where
                       ) -> tuple[str | None, str | None, list[str], list[str]]:
    """search()'s arguments checked before anything opens, each wrong type a TypeError
    naming its parameter (not an AttributeError from deep inside). Returns image and
    under as str paths (bytes or PathLike decoded as the file system does), add and
    subtract as lists of terms (a generator is read once, here)."""
    from clipsearch.config import Settings

    def wrong(name: str, expected: str, value) -> TypeError:
        return _wrong("search()", name, expected, value)

    if query is not None and not isinstance(query, str):
        hint = "; a file name as bytes goes to image=" if isinstance(query, (bytes, os.PathLike)) else ""
        raise wrong("query", "text (str)" + hint, query)
    _check_k_and_filters("search()", k, min_score, where)
    if settings is not None and not isinstance(settings, Settings):
        raise wrong("settings", "a clipsearch Settings (Settings.resolve(index=...))", settings)
    extra = []
    for name, terms in (("add", add), ("subtract", subtract)):
        given = list(_terms_given(terms)) if isinstance(terms, abc.Iterable) and not isinstance(terms, bytes) else None
        if given is None or not all(isinstance(term, str) for term in given):
            raise wrong(name, "a term (str) or a list of terms", terms)
        extra.append(given)
    paths = []
    for name, path in (("image", image), ("under", under)):
        if path is not None and not isinstance(path, (str, bytes, os.PathLike)):
            raise wrong(name, "a path (str, bytes or os.PathLike)", path)
        paths.append(None if path is None else os.fsdecode(path))
    return paths[0], paths[1], extra[0], extra[1]


def _photo_filter(where: Where | None, after: str | date | None, before: str | date | None, camera: str | None,
                  near: str | Sequence[float] | None) -> Where | None:
    """search()'s filter: `where`, or the one its CLI-like keywords ask for."""
    from .filters import build_where

    given = (after, before, camera, near)
    if all(value is None for value in given):
        return where
    if where:
        raise UsageError("give search() either where= or after=/before=/camera=/near=, not both")
    if near is not None and not isinstance(near, str):
        try:
            near = ",".join(repr(float(part)) for part in near)
        except (TypeError, ValueError):
            raise UsageError(f"near={near!r} must be 'LAT,LON,KM' or (lat, lon, km)") from None
    after, before = (value.isoformat() if isinstance(value, date) else value for value in (after, before))
    for name, value in zip(("after", "before", "camera"), (after, before, camera)):
        if value is not None and not isinstance(value, str):
            kinds = "text or a date" if name != "camera" else "text"
            raise TypeError(f"search(): {name}= takes {kinds}, as --{name} does; got {type(value).__name__}")
    return build_where(after, before, camera, near, prefix="") or None


def _terms_given(terms: Iterable[str] | str) -> Iterable[str]:
    """search()'s add or subtract: a string is one term."""
    return (terms,) if isinstance(terms, str) else terms


def build_terms(query: str | None, image: str | None, add: Iterable[str], subtract: Iterable[str]) -> list[Term]:
    """The CLI's and the API's query pieces as weighted terms. A query that is an
    existing image file searches by that image."""
    from .terms import query_term

    terms: list[Term] = []
    if query is not None:
        terms.append(query_term(query))
    if image is not None:
        terms.append(image_term(image, option="--image"))
    terms += extra_terms(add, subtract)
    if not any(t.weight > 0 for t in terms):
        raise UsageError("nothing to search for: give a query, --image or --add")
    return terms


def extra_terms(add: Iterable[str], subtract: Iterable[str]) -> list[Term]:
    """--add and --subtract as weighted terms: the same for every query of a batch."""
    from .terms import parse_term

    return [*(parse_term(spec, 1.0, "--add") for spec in add),
            *(parse_term(spec, -1.0, "--subtract") for spec in subtract)]
