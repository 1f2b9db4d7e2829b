"""Unit vectors: every vector clipsearch stores or queries with is L2-normalized,
so that cosine similarity is a dot product."""

from __future__ import annotations

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """(n, dim) float32 rows of length one; a 1-d vector becomes one row."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an all-zero vector stays zero rather than NaN
    return vectors / norms
