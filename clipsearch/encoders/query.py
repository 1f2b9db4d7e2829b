"""The encoder a query uses: the ONNX text tower when the cache has one, else the full model.

A cold `clipsearch search "text"` spent seconds importing torch and
sentence-transformers for a text encoding that takes milliseconds. Here the first
query with a model takes that full path once, and afterwards exports the model's
text tower (encoders/text_export.py) into the model cache (encoders/cache.py).
Later queries find the export by a hash of the model folder's file listing, read the
model identity the index is checked against from its manifest, and encode the text
with onnxruntime and the `tokenizers` library: neither torch, nor
sentence-transformers, nor transformers is imported.

    encoders = QueryEncoders(settings, say=print_to_stderr)
    encoder = encoders.get()          # FastTextEncoder, or the full Encoder
    ... Searcher(encoder, index) ...
    encoders.finish()                 # after the output: export, when it is due

Whenever the fast path is unavailable (CLIPSEARCH_FAST_PATH=0, onnxruntime not
installed, a hub model not downloaded yet, a model whose export failed) the full
Encoder answers, and `say` is told why. A damaged cache entry is removed and rebuilt.
Example-image queries that need the image tower load the full Encoder on demand.

This module imports only the standard library and numpy at import time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import config
from ..timings import Timings
from . import cache
from .identity import ModelIdentity
from .location import locate
from .onnx_text import OnnxTextTower, load_tokenizer
from .query_vectors import VectorCache
from .tower_export import export_once
from .tower_export import first_line as _first_line

# Up to this many texts, one thread and no weight pre-packing load and answer
# fastest; a long --queries file gets all cores and pre-packed weights.
FEW_TEXTS = 8

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class FastTextEncoder:
    """Encoder's interface for queries: `identity` and `encode_texts` from the cache
    entry; `image_size` and `encode_images` load the full Encoder on first use."""

    def __init__(self, entry: cache.TowerEntry, owner: "QueryEncoders"):
        self.entry = entry
        self.owner = owner
        self._identity = entry.identity.for_queries()  # answers a collection of any image precision
        self.dim = self._identity.dim
        self.location = self._identity.name
        self.vectors = VectorCache(entry.vector_key, self.dim) if config.enabled("query_cache") else None
        self._tower: OnnxTextTower | None = None
        self._broken = False
        self._full: Any = None  # the full Encoder, once an image query needs it
        self._pending: tuple[list[str], Any, dict[str, Any]] | None = None  # (texts, thread, box) of a prefetch()
        self._encoded = 0  # texts given to a tower, all calls together (see _tower_for)

    def prefetch(self, texts: Sequence[str]) -> None:
        """Start encoding `texts` in a thread, so that the ONNX run (which releases
        the GIL) overlaps the caller's next step: opening the index, whose engine
        holds the GIL while it loads. encode_texts() collects the result. Waits
        only until the run has started: the thread then needs no GIL to go on."""
        import threading

        texts = [t for t in dict.fromkeys(texts)
                 if self.vectors is None or self.vectors.get(t) is None]
        if not texts or self._broken or self._pending is not None:
            return
        try:
            tower = self._tower_for(len(texts))
        except Exception as exc:
            self._fail(exc)
            return
        running = threading.Event()
        box: dict[str, Any] = {}  # "vectors", "error" and "seconds", from the thread

        def work():
            start = time.perf_counter()
            try:
                box["vectors"] = tower.encode(texts, running=running)
            except BaseException as exc:  # re-raised in the caller's thread by encode_texts
                box["error"] = exc
            finally:
                box["seconds"] = time.perf_counter() - start
                running.set()

        thread = threading.Thread(target=work, name="clipsearch-encode", daemon=True)
        thread.start()
        running.wait(5.0)
        self._pending = (texts, thread, box)

    def _collect(self) -> dict:
        """The prefetched vectors by text ({} if none); raises what the thread raised."""
        if self._pending is None:
            return {}
        texts, thread, box = self._pending
        self._pending = None
        with self.owner.timings.phase("encode"):  # only the part the index open did not hide
            thread.join()
        self.owner.timings.add("encode, overlapped with index open", box.get("seconds", 0.0))
        if "error" in box:
            raise box["error"]
        return dict(zip(texts, box["vectors"]))

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    # -- text -------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        self._broken = True
        self._tower = None
        self.owner.damaged(self.entry.folder, exc)

    def _tower_for(self, count: int) -> OnnxTextTower:
        """The tower to encode `count` more texts with: loaded for few texts or for
        many on first use; a session that keeps asking (a notebook, a service holding
        one Searcher) moves to the all-cores, pre-packed one once it has paid off."""
        if self._tower is None:
            self._tower = self._load_tower(many=count > FEW_TEXTS)
        elif not self._tower.many and self._encoded + count > FEW_TEXTS:
            self._tower = self._load_tower(many=True)
        self._encoded += count
        return self._tower

    def warm(self, spin: bool = True) -> None:
        """For a long-running service: load the all-cores, pre-packed tower now and
        run it once, so that the first client does not pay for either. `spin=False`:
        its threads sleep between queries instead of busy-waiting, for a service
        whose cores have other work (a watched ingest): a query then takes a few
        milliseconds longer, and the other work is not starved (BENCHMARKS.md)."""
        self._tower = self._load_tower(many=True, spin=spin)
        self._tower.encode(["a photo"], 1)

    def _load_tower(self, many: bool, spin: bool = True) -> OnnxTextTower:
        m = self.entry.manifest
        with self.owner.timings.phase("imports"):
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        with self.owner.timings.phase("model load"):
            tokenizer = load_tokenizer(self.entry.tokenizer_path, int(m["max_length"]))
            tower = OnnxTextTower(self.entry.onnx_path, tokenizer, int(m["max_length"]), int(m["pad_id"]),
                                  many=many, spin=spin, probe=(m["probe"]["text"], m["probe"]["vector"]))
        self.entry.touch()
        return tower

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors: from the query-vector cache where it has them, else from
        the ONNX tower (loaded on first need); the full model if the tower fails."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._broken:
            result = [self.vectors.get(t) if self.vectors is not None else None for t in texts]
            hits = sum(v is not None for v in result)
            if hits and self.owner.say_per_query:
                self.owner.say(f"fast path: {hits} of {len(texts)} query vector(s) from the query-vector cache")
            missing = [i for i, v in enumerate(result) if v is None]
            try:
                fresh = self._collect()  # what a prefetch() encoded, by text
                left = [i for i in missing if texts[i] not in fresh]
                if left:
                    tower = self._tower_for(len(left))
                    with self.owner.timings.phase("encode"):
                        vectors = tower.encode([texts[i] for i in left], batch_size)
                    fresh.update((texts[i], vector) for i, vector in zip(left, vectors))
                for i in missing:
                    result[i] = fresh[texts[i]]
                    if self.vectors is not None:
                        self.vectors.put(texts[i], result[i])
            except Exception as exc:  # a damaged export: the full model answers, the export is redone
                self._fail(exc)
            else:
                return np.stack([v for v in result if v is not None]).astype(np.float32, copy=False)
        return self.full("the cached text tower could not be used").encode_texts(texts, batch_size)

    # -- images: the full model ------------------------------------------------------------
    def full(self, why: str = "an example image that is not in the index needs the image tower"):
        if self._full is None:
            self.owner.say(f"loading the full model: {why}")
            self._full = self.owner.load_full()
        return self._full

    @property
    def image_size(self) -> int:
        return self.full().image_size

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        return self.full().encode_images(images, batch_size)


class QueryEncoders:
    """Chooses the fast or the full path for one command, and exports the text tower
    after a full-path query so that the next one is fast."""

    def __init__(self, settings, say: Say | None = None, timings: Timings | None = None,
                 say_per_query: bool = True):
        self.settings = settings
        self.say = say or _quiet
        # A long-running server's log takes what happens once, not a line a query.
        self.say_per_query = say_per_query
        self.timings = timings or Timings()
        self.path = ""  # "fast" or "full", once get() has run
        self._export_due = False
        self._look_again = False
        self._key: str | None = None
        self._folder: Path | None = None
        self._full: _TimedEncoder | None = None
        self._decided = False
        self._fast: FastTextEncoder | None = None
        self._why_not_fast: str | None = None

    # -- choosing ----------------------------------------------------------------------
    def get(self):
        """The encoder for this command: the fast one, or the full one (loaded now)."""
        fast = self.fast()
        if fast is not None:
            return fast
        self.path = "full"
        self.say(f"full path (torch + sentence-transformers): {self._why_not_fast}")
        return self.load_full()

    def fast(self) -> "FastTextEncoder | None":
        """The fast encoder, or None when this command must take the full path
        (nothing heavy is loaded here either way). Decided once per command."""
        if self._decided:
            return self._fast
        self._decided = True
        reason = self._fast_path_blocker()
        if reason is None:
            assert self._key is not None  # set by _fast_path_blocker when it finds no blocker
            entry, damaged = cache.read_or_discard(self._key)
            if damaged:
                self.say(f"{damaged}; removed it, it is rebuilt after this query")
            if entry is None:
                reason = "first use of this model (or its files changed): no exported text tower yet"
                self._export_due = True
            elif entry.failed:
                reason = f"exporting its text tower failed before: {entry.failed}"
            else:
                self.path = "fast"
                self.say(f"fast path: text tower from {entry.folder} (onnxruntime; no torch)")
                self._fast = FastTextEncoder(entry, self)
        self._why_not_fast = reason
        return self._fast

    def _fast_path_blocker(self) -> str | None:
        if not config.enabled("fast_path"):
            return f"the fast path is turned off ({config.where_set('fast_path')})"
        # A device named by the user is where the model runs, as for ingest: the ONNX text
        # tower runs on the CPU, and would hide that `--device cuda` has no GPU to run on.
        if self.settings.device not in ("auto", "cpu"):
            return f"--device {self.settings.device}: the model runs on it through torch"
        folder, key, why = locate(self.settings.model)
        if key is None:
            self._look_again = folder is None  # a hub model the full path may download now
            return why
        self._folder, self._key = folder, key
        import importlib.util

        for name in ("onnxruntime", "tokenizers"):  # imported when needed: not for a cached query vector
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
                found = False
            if not found:
                return f"{name} is not installed (pip install onnxruntime tokenizers)"
        return None

    def load_full(self):
        if self._full is None:
            from .torch_clip import Encoder, quiet_libraries

            with self.timings.phase("imports"):
                quiet_libraries()
                import sentence_transformers  # noqa: F401
                import torch  # noqa: F401
            with self.timings.phase("model load"):
                encoder = Encoder(self.settings.model, self.settings.device)
                encoder.identity  # noqa: B018 - weight hashing is part of loading, not of searching
            self._full = _TimedEncoder(encoder, self.timings)
        return self._full

    def damaged(self, folder: Path, exc: BaseException) -> None:
        self.say(f"text tower cache {folder} is damaged ({_first_line(exc)}); "
                 "removing it, it is rebuilt after this query")
        cache.remove_entry(folder)
        self._export_due = True

    # -- after the output --------------------------------------------------------------
    def finish(self) -> None:
        """Export the text tower if this query took the full path for want of one.
        Never fails the command: the query has been answered."""
        if self._look_again and self._full is not None:  # the hub model is downloaded now
            self._look_again = False
            if self._fast_path_blocker() is None and self._key is not None:
                self._export_due = cache.read_or_discard(self._key)[0] is None
        if not self._export_due or self._full is None or self._key is None or self._folder is None:
            return
        self._export_due = False
        start = time.perf_counter()
        encoder, key, folder = self._full.encoder, self._key, self._folder

        def export():
            from .text_export import export_text_tower  # onnx missing: a failure of this model's export too

            return export_text_tower(encoder, key, folder, self.settings.model)

        with self.timings.phase("export"):
            outcome = export_once(export, key, self.settings.model, folder, cache.TEXT)
        if outcome.failure is not None:  # the model's failure is remembered: the full path from now on
            self.say(f"could not export the text tower for the fast path: {outcome.failure}" if outcome.lasting else
                     f"could not export the text tower: {outcome.failure}; it is exported again once there is room")
            return
        folder, distance = outcome.result
        self.say(f"exported the text tower to {folder} in {time.perf_counter() - start:.1f} s "
                 f"(largest cosine distance to the full model {distance:.1e}); later queries take the fast path")
        try:
            cache.prune(keep=self._key)
        except OSError:
            pass


class _TimedEncoder:
    """The full Encoder, with its encoding counted as the `encode` phase."""

    def __init__(self, encoder, timings: Timings):
        self.encoder = encoder
        self.timings = timings

    @property
    def identity(self):
        return self.encoder.identity.for_queries()  # a query reads a collection of any image precision

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    def encode_texts(self, texts, batch_size: int = 64):
        with self.timings.phase("encode"):
            return self.encoder.encode_texts(texts, batch_size)

    def encode_images(self, images, batch_size: int = 32):
        with self.timings.phase("encode"):
            return self.encoder.encode_images(images, batch_size)
