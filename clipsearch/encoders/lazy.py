"""The encoder ingest uses: the model's identity without loading the model.

An ingest run needs the model's identity before anything else (the collection is
checked against it), but needs the model itself only for files that changed. A
re-run over an unchanged folder used to spend most of its time importing torch and
sentence-transformers and loading weights it never used. Here the identity comes
from the model cache (encoders/cache.py), the same entry the fast query path
(encoders/query.py) reads: found by the model folder's file listing, no torch.
The full Encoder loads on the first `encode_images` or `image_size` (the decoders'
target size), that is, when the first changed file is about to be decoded.

When the cache holds nothing for the model as its files are now, the Encoder loads
when the identity is asked for, as before, and the identity is recorded in the cache
(identities/<key>.json) so that the next run skips the load. Only the identity is
written: exporting the text tower (7 s for a ViT-B/32, bench/COLD_QUERY_RESULTS.md)
stays with the first query, which is what needs it. CLIPSEARCH_FAST_PATH=0 turns
the cache off here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import config
from ..errors import ClipsearchError
from . import cache
from .identity import ModelIdentity
from .location import locate

if TYPE_CHECKING:  # pragma: no cover
    from .torch_clip import Encoder


class LazyEncoder:
    """`identity` from the model cache when it has one; the rest from an Encoder
    loaded on first need."""

    def __init__(self, model: str, device: str = "auto"):
        self.model = model
        self.device = device
        self.cached = False  # the identity came from the cache
        self._identity: ModelIdentity | None = None
        self._full: Encoder | None = None
        self._folder: Path | None = None
        self._key: str | None = None

    @property
    def loaded(self) -> bool:
        return self._full is not None

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            if self._full is None:
                self._identity = self._cached_identity()
                self.cached = self._identity is not None
            if self._identity is None:
                self._identity = self.full().identity
                self._remember()
        return self._identity

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
        if self._key is None or self._folder is None or self._identity is None:
            return
        try:
            cache.write_identity(self._key, self.model, self._folder, self._identity)
            cache.prune(keep=self._key)
        except OSError:
            pass  # a cache that cannot be written is only a slower next run

    def full(self):
        """The loaded Encoder. When the identity came from the cache and the model's
        files changed since it was looked up, the loaded weights are checked against it."""
        if self._full is None:
            from .torch_clip import Encoder

            encoder = Encoder(self.model, self.device)
            if self.cached and self._identity is not None and locate(self.model)[1] != self._key:
                if not encoder.identity.is_compatible_with(self._identity):
                    raise ClipsearchError(
                        f"the files of model {self.model!r} changed during this run (the index was checked "
                        f"against {self._identity.short()}, the files now hold {encoder.identity.short()}); "
                        "run the command again")
            self._full = encoder
        return self._full

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def image_size(self) -> int:
        return self.full().image_size

    def encode_images(self, images, batch_size: int = 32):
        return self.full().encode_images(images, batch_size)

    def encode_texts(self, texts, batch_size: int = 64):
        return self.full().encode_texts(texts, batch_size)
