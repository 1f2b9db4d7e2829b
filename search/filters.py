"""`search --after/--before/--camera/--near`: the flags' text as an index filter (Where).

Dates name a period: `2023`, `2023-07`, `2023-07-14` or a moment `2023-07-14T10:30`.
`--after D` keeps photos taken at or after the start of D and `--before D` those taken
before the start of D, so `--after 2023 --before 2024` is the year 2023. Times are the
camera's clock as EXIF records it (no time zone). `--camera` matches whole words of the
camera's make and model, case-insensitively, every word given (`--camera canon`,
`--camera "eos 5d"`). `--near LAT,LON,KM`: within KM kilometres of that point.
`--in DIR` is the index's own folder filter; absent_folder_note explains an empty answer.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

from clipsearch.errors import ClipsearchError
from clipsearch.index.where import Where
from clipsearch.names import shown
from clipsearch.photo_facts import camera_words

_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")


def period_start(text: str, flag: str) -> str:
    """The first moment of the period `text` names, ISO 8601."""
    match = _PERIOD.match(text.strip())
    if not match:
        raise ClipsearchError(f"{flag} {text!r} is not a date: give YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    year, month, day, hour, minute, second = (int(part) if part else None for part in match.groups())
    try:
        moment = datetime(year, month or 1, day or 1, hour or 0, minute or 0, second or 0)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ClipsearchError(f"{flag} {text!r} is not a date: {exc}") from None
    return moment.isoformat()


def parse_near(text: str, flag: str = "--near") -> tuple[float, float, float]:
    """'LAT,LON,KM' as (latitude, longitude, metres)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        lat, lon, km = (float(part) for part in parts) if len(parts) == 3 else (None, None, None)
    except ValueError:
        lat = lon = km = None
    if lat is None or lon is None or km is None:
        raise ClipsearchError(f"{flag} {text!r} must be LAT,LON,KM (e.g. 48.8566,2.3522,10)")
    if not -90 <= lat <= 90:
        raise ClipsearchError(f"{flag} {text!r}: latitude {lat:g} is outside -90..90")
    if not -180 <= lon <= 180:
        raise ClipsearchError(f"{flag} {text!r}: longitude {lon:g} is outside -180..180")
    if not 0 < km <= 20_040:  # half the Earth's circumference: everywhere
        raise ClipsearchError(f"{flag} {text!r}: the radius must be more than 0 and at most 20040 km")
    return lat, lon, km * 1000


def build_where(after: str | None, before: str | None, camera: str | None, near: str | None,
                prefix: str = "--") -> Where:
    """The filter the flags ask for (empty when none is given); a bad value is one line
    naming its flag: `--after` for the CLI, `after=` for clipsearch serve's API (prefix)."""
    flag = {name: f"{prefix}{name}" if prefix else f"{name}=" for name in ("after", "before", "camera", "near")}
    # Given but empty (`--after "$START"` with START unset) is refused like any bad value:
    # read as no filter, it would widen the answer to every photo, undated ones included.
    taken_from = period_start(after, flag["after"]) if after is not None else None
    taken_before = period_start(before, flag["before"]) if before is not None else None
    if taken_from and taken_before and taken_from >= taken_before:
        raise ClipsearchError(f"{flag['after']} {after} is not before {flag['before']} {before}: "
                              "no photo can match both")
    words: tuple[str, ...] = ()
    if camera is not None:
        words = tuple(camera_words(camera))
        if not words:
            raise ClipsearchError(f"{flag['camera']} {camera!r} has no letters or digits to match")
    return Where(taken_from=taken_from, taken_before=taken_before, camera_words=words,
                 near=parse_near(near, flag["near"]) if near is not None else None)


def absent_folder_note(under: str | None, found_any: bool) -> str | None:
    """The line that explains an empty answer under `--in DIR` when DIR is not a folder
    here (a typo, a drive not mounted): the empty answer alone would not say which."""
    if under and not found_any and not os.path.isdir(under):
        return f"clipsearch: --in {shown(under)} is not a folder on this machine"
    return None
