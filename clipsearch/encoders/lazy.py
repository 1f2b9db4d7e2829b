"""The encoder ingest uses: the model's identity without loading the model, and its
images through the ONNX image tower on a CPU.

An ingest run needs the model's identity before anything else (the collection is
checked against it), but needs the model itself only for files that changed. A
re-run over an unchanged folder used to spend most of its time importing torch and
sentence-transformers and loading weights it never used. Here the identity comes
from the model cache (encoders/cache.py), the same entry the fast query path
(encoders/query.py) reads: found by the model folder's file listing, no torch.
Images go through encoders/image_towers.py: the model's image tower exported to ONNX
(once, by the first ingest with files to embed), or the full Encoder where that
cannot be (a GPU, CLIPSEARCH_FAST_PATH=0, an export that failed).

When the cache holds no identity for the model as its files are now, the Encoder loads
when the identity is asked for, as before, and the identity is recorded in the cache
(identities/<key>.json) so that the next run skips the load. The text tower is not
exported here: that stays with the first query, which is what needs it.
CLIPSEARCH_FAST_PATH=0 turns the cache off here too.

`precision` int8 (--precision int8) encodes with the int8-quantized export and gives
an identity that says so (encoders/identity.py): an int8 collection takes only int8
vectors, an fp32 one only fp32 vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import config
from ..errors import ClipsearchError
from . import cache
from .identity import FP32, PRECISIONS, ModelIdentity
from .image_towers import ImageTowers
from .location import locate

if TYPE_CHECKING:  # pragma: no cover
    from .torch_clip import Encoder


class LazyEncoder:
    """`identity` from the model cache when it has one; images through the ONNX image
    tower or an Encoder loaded on first need; texts through that Encoder.

    `say`: told which image path this run takes and why (ingest --verbose); `tell`:
    the one line an export prints (default: stderr). `threads` and `spin`:
    onnxruntime's intra-op threads and whether they busy-wait between batches (see
    ingest's core plan)."""

    def __init__(self, model: str, device: str = "auto", precision: str = FP32,
                 say: Callable[[str], None] | None = None, tell: Callable[[str], None] | None = None,
                 threads: int | None = None, spin: bool = False):
        if precision not in PRECISIONS:
            raise ClipsearchError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.model = model
        self.device = device
        self.precision = precision
        self.cached = False  # the identity came from the cache
        self._base: ModelIdentity | None = None  # fp32: what the cache records
        self._identity: ModelIdentity | None = None
        self._full: Encoder | None = None
        self._folder: Path | None = None
        self._key: str | None = None
        self.towers = ImageTowers(model, device, precision, self.full, lambda: self._base_identity(),
                                  say=say, tell=tell, threads=threads, spin=spin)

    @property
    def loaded(self) -> bool:
        return self._full is not None

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self.towers.check_precision()  # before the collection is created or checked
            self._identity = self._base_identity().with_precision(self.precision)
        return self._identity

    def _base_identity(self) -> ModelIdentity:
        if self._base is None:
            if self._full is None:
                self._base = self._cached_identity()
                self.cached = self._base is not None
            if self._base is None:
                self._base = self.full().identity
                self._remember()
        return self._base

    def _cached_identity(self) -> ModelIdentity | None:
        if not config.enabled("fast_path"):
            return None
        self._folder, self._key, _ = locate(self.model)
        return cache.read_identity(self._key) if self._key is not None else None

    def _remember(self) -> None:
        """Record the loaded model's identity for the next run. Never fails the run."""
        if not config.enabled("fast_path"):
            return
        if self._key is None:  # a hub model may have been downloaded by the load
            self._folder, self._key, _ = locate(self.model)
        if self._key is None or self._folder is None or self._base is None:
            return
        try:
            cache.write_identity(self._key, self.model, self._folder, self._base)
            cache.prune(keep=self._key)
        except OSError:
            pass  # a cache that cannot be written is only a slower next run

    def full(self):
        """The loaded Encoder. When the identity came from the cache and the model's
        files changed since it was looked up, the loaded weights are checked against it."""
        if self._full is None:
            from ..names import shown
            from .torch_clip import Encoder

            # Seconds of importing torch and reading weights, before any progress line.
            self.towers.tell(f"loading the model {shown(self.model)} (torch)...")
            encoder = Encoder(self.model, self.device)
            if self.cached and self._base is not None and locate(self.model)[1] != self._key:
                if not encoder.identity.is_compatible_with(self._base):
                    raise ClipsearchError(
                        f"the files of model {self.model!r} changed during this run (the index was checked "
                        f"against {self._base.short()}, the files now hold {encoder.identity.short()}); "
                        "run the command again")
            self._full = encoder
        return self._full

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def image_size(self) -> int:
        return self.towers.image_size

    def encode_images(self, images, batch_size: int = 32):
        return self.towers.encode_images(images, batch_size)

    @property
    def preprocess(self):
        """What ingest's decoders make of each image (encoders/image_towers.py):
        a Preprocess, or None for whole images."""
        return self.towers.preprocess

    def encode_crops(self, crops, geometry: tuple, batch_size: int = 32):
        """Unit vectors for the decoders' uint8 crops: the model alone, no image processor."""
        return self.towers.encode_crops(crops, geometry, batch_size)

    def encode_texts(self, texts, batch_size: int = 64):
        return self.full().encode_texts(texts, batch_size)
