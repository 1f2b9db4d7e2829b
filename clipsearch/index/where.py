"""Where: the photo filters a search passes to the index. Apart from base.py so that the
flag parsing (search/filters.py) and the thin client need neither numpy nor a backend.

Where checks and normalises what it is given, so that the Python API fails as the CLI
does, with one line naming the field, never with silence or an engine's error:

    Where(taken_from="2023", taken_before=date(2024, 1, 1), camera_words="Canon EOS",
          near=(48.8566, 2.3522, 25_000))          # the radius in metres
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ..errors import ClipsearchError
from ..photo_facts import camera_words as words_of

_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")
# Half the Earth's circumference: a circle this wide holds every place.
MAX_RADIUS_M = 20_040_000


def period_start(text: str, name: str) -> str:
    """The first moment of the period `text` names (YYYY, YYYY-MM, YYYY-MM-DD or
    YYYY-MM-DDTHH:MM[:SS]), ISO 8601; `name` (a flag, a field) heads the error."""
    match = _PERIOD.match(text.strip())
    if not match:
        raise ClipsearchError(f"{name} {text!r} is not a date: give YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    year, month, day, hour, minute, second = (int(part) if part else None for part in match.groups())
    try:
        moment = datetime(year, month or 1, day or 1, hour or 0, minute or 0, second or 0)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ClipsearchError(f"{name} {text!r} is not a date: {exc}") from None
    return moment.isoformat()


@dataclass(frozen=True)
class Where:
    """Photo filters that run inside the index, beside `under` (search --after, --before,
    --camera, --near): on the payload's `taken`, `camera_words` and `location`, each
    with a payload index suited to it (PHOTO_FIELDS). An image without the field does
    not pass a filter on it.

    taken_from, taken_before: a date or datetime (no time zone: EXIF times are the
    camera's clock), or text as --after/--before take it ("2023", "2023-07-14T10:30"),
    each meaning the start of that period; kept as ISO 8601 text. camera_words: a
    camera's text ("Canon EOS") or several, matched as --camera matches (any case, every
    word). near: (latitude, longitude, radius in METRES) -- --near's radius is in km.
    A value of the wrong type or out of range is a ClipsearchError naming the field."""

    taken_from: str | None = None  # ISO 8601, inclusive
    taken_before: str | None = None  # ISO 8601, exclusive
    camera_words: tuple[str, ...] = ()  # every one of them
    near: tuple[float, float, float] | None = None  # latitude, longitude, radius in metres

    def __post_init__(self) -> None:
        taken_from, taken_before = _moment(self.taken_from, "taken_from"), _moment(self.taken_before, "taken_before")
        if taken_from and taken_before and taken_from >= taken_before:
            raise ClipsearchError(f"Where(taken_from={taken_from!r}) is not before taken_before={taken_before!r}: "
                                  "no photo can match both")
        object.__setattr__(self, "taken_from", taken_from)
        object.__setattr__(self, "taken_before", taken_before)
        object.__setattr__(self, "camera_words", _camera_words(self.camera_words))
        object.__setattr__(self, "near", _near(self.near))

    def __bool__(self) -> bool:
        return bool(self.taken_from or self.taken_before or self.camera_words or self.near)


def _moment(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise ClipsearchError(f"Where({field}={value!r}) has a time zone: EXIF times are the camera's clock, "
                                  "without one; give a naive datetime")
        return value.isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).isoformat()
    if isinstance(value, str):
        return period_start(value, f"Where({field}=...):")
    raise ClipsearchError(f"Where({field}=...) takes a date, a datetime or text such as '2023-07-14'; "
                          f"got {type(value).__name__}")


def _camera_words(value: Any) -> tuple[str, ...]:
    """Every word of the text or texts given, as the stored words spell them."""
    texts = [value] if isinstance(value, str) else value
    try:
        texts = list(texts or ())
    except TypeError:
        texts = [value]
    if not all(isinstance(text, str) for text in texts):
        raise ClipsearchError(f"Where(camera_words=...) takes a camera's text or a sequence of words; got {value!r}")
    words = tuple(dict.fromkeys(word for text in texts for word in words_of(text)))
    if texts and not words and any(text.strip() for text in texts):
        raise ClipsearchError(f"Where(camera_words={value!r}) has no letters or digits to match")
    return words


def _near(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):  # "1,2,3" is --near's text, in km: not read letter by letter
            raise TypeError
        lat, lon, metres = (float(part) for part in value)
    except (TypeError, ValueError):
        raise ClipsearchError(f"Where(near={value!r}) must be (latitude, longitude, radius in metres); "
                              "search(near='LAT,LON,KM') takes --near's text") from None
    if not -90 <= lat <= 90:
        raise ClipsearchError(f"Where(near=...): latitude {lat:g} is outside -90..90")
    if not -180 <= lon <= 180:
        raise ClipsearchError(f"Where(near=...): longitude {lon:g} is outside -180..180")
    if not (math.isfinite(metres) and 0 < metres <= MAX_RADIUS_M):
        raise ClipsearchError(f"Where(near=...): the radius is in metres, more than 0 and at most {MAX_RADIUS_M}; "
                              f"got {metres:g}")
    return lat, lon, metres
