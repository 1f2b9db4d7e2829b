"""What made a collection's vectors, and whether another model may use them.

An index is only meaningful with the image tower that embedded it. The identity
therefore fingerprints the image side (vision weights, projection, preprocessing)
separately from the text side: a model fine-tuned with its vision tower frozen keeps
the image fingerprint and can query an existing index without a re-ingest, while a
model whose image tower changed cannot.

The precision of the image vectors is part of it too: an int8-quantized image tower
(`--precision int8`, encoders/image_export.py) makes vectors that differ from the
fp32 ones by more than the fast paths' 1e-4, so a collection holds one precision
only. fp32 is the default and is not written down: a record without a precision is
fp32, and an fp32 identity serialises exactly as it did before precisions existed.
A query encoder reads (its text tower is never quantized) and carries no precision
(`for_queries`): it answers a collection of either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..config import PRECISIONS
from ..errors import ClipsearchError

FP32, INT8 = PRECISIONS


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # hub id or absolute folder path, for people; not compared
    image_fingerprint: str  # hash of everything that turns pixels into a vector
    text_fingerprint: str  # hash of the text tower, informational
    dim: int
    # Of the image vectors: fp32, int8; None for a query encoder, which writes no
    # image vectors and reads a collection of any precision. Left out of == (a query
    # encoder's identity equals the model's); is_compatible_with compares it.
    precision: str | None = field(default=FP32, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["precision"] in (FP32, None):  # byte-compatible with the records before precisions
            del data["precision"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelIdentity":
        try:
            precision = str(data.get("precision", FP32))
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}")
            return cls(
                name=str(data["name"]),
                image_fingerprint=str(data["image_fingerprint"]),
                text_fingerprint=str(data.get("text_fingerprint", "")),
                dim=int(data["dim"]),
                precision=precision,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipsearchError(f"the collection's model record is damaged ({exc!s})") from None

    def with_precision(self, precision: str) -> "ModelIdentity":
        """The identity of this model's image tower run at `precision`."""
        return replace(self, precision=precision)

    def for_queries(self) -> "ModelIdentity":
        """The identity a query encoder answers with: compatible with this image tower
        at any precision (text vectors do not depend on it)."""
        return replace(self, precision=None)

    def short(self) -> str:
        precision = f", {self.precision}" if self.precision not in (FP32, None) else ""
        return f"{self.name} (image {self.image_fingerprint[:12]}, dim {self.dim}{precision})"

    def is_compatible_with(self, stored: "ModelIdentity") -> bool:
        """Same image vectors: same image tower, dimension and precision. The name may
        differ (a model folder moved, or a text-only fine-tune)."""
        return (self.dim == stored.dim and self.image_fingerprint == stored.image_fingerprint
                and self._same_precision(stored))

    def _same_precision(self, stored: "ModelIdentity") -> bool:
        return self.precision is None or stored.precision is None or self.precision == stored.precision

    def check_against(self, stored: "ModelIdentity", collection: str) -> None:
        if self.dim == stored.dim and self.image_fingerprint == stored.image_fingerprint \
                and not self._same_precision(stored):
            raise ClipsearchError(
                f"precision mismatch: collection {collection!r} holds {stored.precision} image vectors, "
                f"this run would add {self.precision} ones; use --precision {stored.precision} "
                "(CLIPSEARCH_PRECISION) or another collection")
        if not self.is_compatible_with(stored) and self.name == stored.name and self.dim == stored.dim:
            # One folder, other weights: fine-tuned again in place (finetune --overwrite).
            raise ClipsearchError(
                f"model mismatch: the model in {self.name} changed since collection {collection!r} was built "
                f"(image tower {stored.image_fingerprint[:12]} then, {self.image_fingerprint[:12]} now); "
                f"bring the collection over with `clipsearch reindex --model {self.name}`, or use another collection"
            )
        if not self.is_compatible_with(stored):
            raise ClipsearchError(
                f"model mismatch: collection {collection!r} was built with {stored.short()}, "
                f"but the model in use is {self.short()}; use that model (--model, or neither --model nor "
                f"CLIPSEARCH_MODEL: the collection's own), adopt this one in the collection with "
                f"`clipsearch reindex --model {self.name}`, or use another collection"
            )
