"""The one contract every encoder keeps.

An encoder turns images and texts into unit float32 vectors of one shared space and
says which model made them. Stages hold any of these without knowing which: the full
torch model (torch_clip.Encoder), the one that loads it only when a file needs
embedding (lazy.LazyEncoder), and the query encoder whose text side runs in ONNX
(query.FastTextEncoder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from .identity import ModelIdentity


@runtime_checkable
class ImageTextEncoder(Protocol):
    @property
    def identity(self) -> "ModelIdentity":
        """Which model made the vectors; an index is checked against it."""

    @property
    def dim(self) -> int:
        """The vectors' dimension."""

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the model's square input: decoders shrink images to
        about this before encoding."""

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        """(len(texts), dim) float32, unit rows."""

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 32) -> "np.ndarray":
        """(len(images), dim) float32, unit rows; images are RGB."""
