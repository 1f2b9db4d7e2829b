"""Unit vectors: every vector clipsearch stores or queries with is L2-normalized,
so that cosine similarity is a dot product."""

from __future__ import annotations

import numpy as np

from clipsearch.errors import ClipsearchError


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """(n, dim) float32 rows of length one; a 1-d vector becomes one row."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an all-zero vector stays zero rather than NaN
    return vectors / norms


class NonFiniteVectors(ClipsearchError):
    """Some of a batch's vectors are not finite numbers. `finite` says which rows are,
    `vectors` holds them all: a caller that can tell a broken model from an input the
    model overflows on (ingest: ingest/pipeline.py) keeps the finite rows."""

    def __init__(self, message: str, vectors: np.ndarray, finite: np.ndarray):
        super().__init__(message)
        self.vectors = vectors
        self.finite = finite


def require_finite(vectors: np.ndarray, model: str, what: str = "inputs") -> np.ndarray:
    """`vectors` ((n, dim) rows) as they are, or a one-line error naming `model` where
    some are not finite numbers. A model whose weights are NaN (a fine-tune that
    diverged) gives such vectors: stored, they match no query; scored, every
    comparison with them is False, which a ranking can read as a perfect hit."""
    rows = np.asarray(vectors)
    finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1) if rows.size else np.ones(len(rows), dtype=bool)
    if not finite.all():
        raise NonFiniteVectors(
            f"model {model} gives vectors that are not finite numbers (NaN or infinity) for {int((~finite).sum())} "
            f"of {len(rows)} {what}: its weights are broken (a fine-tune that diverged?); use another model",
            rows, finite)
    return vectors
