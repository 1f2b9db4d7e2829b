"""Answer queries against an index: text in, ranked image hits out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clipsearch.errors import ClipsearchError
from clipsearch.index import Hit, Index, canonical_path


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    path: str
    id: str
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_hit(cls, rank: int, hit: Hit) -> "SearchHit":
        return cls(rank=rank, score=hit.score, path=hit.path, id=hit.id,
                   width=hit.payload.get("width"), height=hit.payload.get("height"))

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": round(self.score, 6), "path": self.path,
                "width": self.width, "height": self.height, "id": self.id}


class Searcher:
    """A loaded model and an open index, checked to belong together."""

    def __init__(self, encoder, index: Index):
        index.check_identity(encoder.identity)
        self.encoder = encoder
        self.index = index

    def text_vector(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise ClipsearchError("the query is empty; give some words to search for")
        return self.encoder.encode_texts([text.strip()])[0]

    def by_vector(self, vector: np.ndarray, k: int = 10, under: str | None = None,
                  min_score: float | None = None, exclude_ids: Sequence[str] = ()) -> list[SearchHit]:
        if k < 1:
            raise ClipsearchError(f"-k must be at least 1, got {k}")
        if under is not None:
            under = canonical_path(under)
        hits = self.index.query(vector, k, under=under, exclude_ids=exclude_ids)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return [SearchHit.from_hit(rank, hit) for rank, hit in enumerate(hits, start=1)]

    def text(self, query: str, k: int = 10, under: str | None = None,
             min_score: float | None = None) -> list[SearchHit]:
        return self.by_vector(self.text_vector(query), k, under, min_score)


def search(query: str, k: int = 10, settings=None, under: str | None = None,
           min_score: float | None = None) -> list[SearchHit]:
    """One-call API for notebooks: load the model, open the index, search, close."""
    from clipsearch.config import Settings
    from clipsearch.encoder import Encoder
    from clipsearch.index import open_index

    settings = settings or Settings.resolve()
    if k < 1:
        raise ClipsearchError(f"-k must be at least 1, got {k}")
    with open_index(settings) as index:
        index.require_collection()
        encoder = Encoder(settings.model, settings.device)
        return Searcher(encoder, index).text(query, k, under, min_score)
