"""Where: the photo filters a search passes to the index. Apart from base.py so that the
flag parsing (search/filters.py) and the thin client need neither numpy nor a backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Where:
    """Photo filters that run inside the index, beside `under` (search --after, --before,
    --camera, --near): on the payload's `taken`, `camera_words` and `location`, each
    with a payload index suited to it (PHOTO_FIELDS). An image without the field does
    not pass a filter on it."""

    taken_from: str | None = None  # ISO 8601, inclusive
    taken_before: str | None = None  # ISO 8601, exclusive
    camera_words: tuple[str, ...] = ()  # every one of them
    near: tuple[float, float, float] | None = None  # latitude, longitude, radius in metres

    def __bool__(self) -> bool:
        return bool(self.taken_from or self.taken_before or self.camera_words or self.near)
