"""SearchHit: one ranked image, as every way of searching returns it (the search stage,
serve's API, and the thin client reading serve's JSON). Standard library only: the thin
client imports it without numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipsearch.names import path_fields, path_of


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    path: str
    id: str
    width: int | None = None
    height: int | None = None
    # Where serve gives this image's thumbnail and file (a thin client's hits).
    thumbnail: str | None = None
    file: str | None = None
    # When, with what and where it was taken, where the file said (clipsearch/photo_facts.py).
    taken: str | None = None
    camera: str | None = None
    location: dict | None = None

    @classmethod
    def from_hit(cls, rank: int, hit: Any) -> "SearchHit":
        """From an index Hit (clipsearch.index.Hit)."""
        payload = hit.payload
        return cls(rank=rank, score=hit.score, path=hit.path, id=hit.id, width=payload.get("width"),
                   height=payload.get("height"), taken=payload.get("taken"), camera=payload.get("camera"),
                   location=payload.get("location"))

    @classmethod
    def from_json(cls, data: dict) -> "SearchHit":
        """From one hit of serve's JSON."""
        return cls(rank=int(data["rank"]), score=float(data["score"]), path=path_of(data), id=str(data["id"]),
                   width=data.get("width"), height=data.get("height"), thumbnail=data.get("thumbnail"),
                   file=data.get("file"), taken=data.get("taken"), camera=data.get("camera"),
                   location=data.get("location"))

    def to_dict(self) -> dict:
        """What `-f json` prints, the same whichever way the hit was found. `path` is the
        name as Python holds it (a byte that is not UTF-8 as a surrogate escape, \\udcXX
        in JSON, which only Python turns back into the byte); for such a name
        `path_bytes` beside it gives its bytes in base64, as the skip report and serve's
        API do: what any reader (jq, a shell script) can turn back into the name."""
        return {"rank": self.rank, "score": round(self.score, 6), "path": self.path, **name_bytes_field(self.path),
                "width": self.width, "height": self.height, "id": self.id,
                "taken": self.taken, "camera": self.camera, "location": self.location}


def name_bytes_field(path: str) -> dict:
    """{"path_bytes": base64 of the name} for a name that is not UTF-8, else nothing:
    clipsearch/names.py's path_fields less its text stand-in."""
    return {key: value for key, value in path_fields(path).items() if key != "path"}
