"""The query-vector cache: text -> unit vector for one text tower, one small file per text.

A repeated query (a saved search, a notebook cell run again) is answered without
running any model. Lives beside the exported towers (encoders/cache.py) under
query-vectors/<vector key>/, where the key names the text tower and tokenizer that
made the vectors, so a changed model never reads another model's vectors.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..config import cache_root
from . import cache
from .cache import VECTORS

# Cached query vectors per model (2 KB each at 512-d); the oldest half goes when full.
MAX_VECTORS = 2000


class VectorCache:
    """Text -> unit vector for one text tower, one small file per text."""

    def __init__(self, key: str, dim: int, limit: int = MAX_VECTORS):
        self.folder = cache_root() / VECTORS / key
        self.dim = dim
        self.limit = limit

    def _path(self, text: str) -> Path:
        return self.folder / (hashlib.sha256(text.encode("utf-8")).hexdigest()[:40] + ".f32")

    def get(self, text: str):
        import numpy as np

        try:
            data = self._path(text).read_bytes()
        except OSError:
            return None
        if len(data) != 4 * self.dim:
            return None
        return np.frombuffer(data, dtype=np.float32).copy()

    def put(self, text: str, vector) -> None:
        import numpy as np

        path = self._path(text)
        # One temporary name per thread: serve's threads put the same query at once, and
        # a shared name made one thread's rename find the file gone (a false warning).
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(np.asarray(vector, dtype=np.float32).tobytes())
            os.replace(tmp, path)
            self._trim()
        except OSError as exc:  # a cache that cannot be written is only a slower cache
            tmp.unlink(missing_ok=True)  # a full disk must not keep the half-written file
            cache.warn_unwritable(path, exc)

    def _trim(self) -> None:
        with os.scandir(self.folder) as it:
            files = [e for e in it if e.name.endswith(".f32")]
        if len(files) <= self.limit:
            return
        ages: dict[str, float] = {}
        for e in files:
            try:
                ages[e.path] = e.stat().st_mtime
            except OSError:  # trimmed meanwhile by another thread or process
                pass
        oldest = sorted(ages, key=ages.__getitem__)
        for path in oldest[: len(oldest) - self.limit // 2]:
            try:
                os.unlink(path)
            except OSError:
                pass
