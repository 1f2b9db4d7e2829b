"""What made a collection's vectors, and whether another model may use them.

An index is only meaningful with the image tower that embedded it. The identity
therefore fingerprints the image side (vision weights, projection, preprocessing)
separately from the text side: a model fine-tuned with its vision tower frozen keeps
the image fingerprint and can query an existing index without a re-ingest, while a
model whose image tower changed cannot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ClipsearchError


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # hub id or absolute folder path, for people; not compared
    image_fingerprint: str  # hash of everything that turns pixels into a vector
    text_fingerprint: str  # hash of the text tower, informational
    dim: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelIdentity":
        try:
            return cls(
                name=str(data["name"]),
                image_fingerprint=str(data["image_fingerprint"]),
                text_fingerprint=str(data.get("text_fingerprint", "")),
                dim=int(data["dim"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipsearchError(f"the collection's model record is damaged ({exc!s})") from None

    def short(self) -> str:
        return f"{self.name} (image {self.image_fingerprint[:12]}, dim {self.dim})"

    def is_compatible_with(self, stored: "ModelIdentity") -> bool:
        """Same image vectors: same image tower and dimension. The name may differ
        (a model folder moved, or a text-only fine-tune)."""
        return self.dim == stored.dim and self.image_fingerprint == stored.image_fingerprint

    def check_against(self, stored: "ModelIdentity", collection: str) -> None:
        if not self.is_compatible_with(stored):
            raise ClipsearchError(
                f"model mismatch: collection {collection!r} was built with {stored.short()}, "
                f"but the model in use is {self.short()}; use that model (--model) or another collection"
            )
