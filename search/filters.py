"""`search --after/--before/--camera/--near`: the flags' text as an index filter (Where).

Dates name a period: `2023`, `2023-07`, `2023-07-14` or a moment `2023-07-14T10:30`.
`--after D` keeps photos taken at or after the start of D and `--before D` those taken
before the start of D, so `--after 2023 --before 2024` is the year 2023. Times are the
camera's clock as EXIF records it (no time zone). `--camera` matches words of the
camera's make and model, any case, every word given (`--camera canon`, `--camera "eos 5d"`):
a word of letters also the beginning of one (`fuji`: FUJIFILM), a word with digits whole
(clipsearch/photo_facts.py). `--near LAT,LON,KM`: within KM kilometres of that point.
`--in DIR` is the index's own folder filter; absent_folder_note explains an empty answer.
"""

from __future__ import annotations

import os
import shlex

from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.index.where import Where, period_start
from clipsearch.names import shown
from clipsearch.photo_facts import camera_words, joined_parts


def parse_near(text: str, flag: str = "--near") -> tuple[float, float, float]:
    """'LAT,LON,KM' as (latitude, longitude, metres)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        lat, lon, km = (float(part) for part in parts) if len(parts) == 3 else (None, None, None)
    except ValueError:
        lat = lon = km = None
    if lat is None or lon is None or km is None:
        raise UsageError(f"{flag} {text!r} must be LAT,LON,KM (e.g. 48.8566,2.3522,10)")
    if not -90 <= lat <= 90:
        raise UsageError(f"{flag} {text!r}: latitude {lat:g} is outside -90..90")
    if not -180 <= lon <= 180:
        raise UsageError(f"{flag} {text!r}: longitude {lon:g} is outside -180..180")
    if not 0 < km <= 20_040:  # half the Earth's circumference: everywhere
        raise UsageError(f"{flag} {text!r}: the radius must be more than 0 and at most 20040 km")
    return lat, lon, km * 1000


def _date(text: str, flag: str) -> str:
    """--after's or --before's text as the start of its period; one that is no date is
    a usage error (exit 2), as every bad flag value is."""
    try:
        return period_start(text, flag)
    except UsageError:
        raise
    except ClipsearchError as exc:  # period_start only reads the text: nothing else can fail in it
        raise UsageError(str(exc)) from None


def build_where(after: str | None, before: str | None, camera: str | None, near: str | None,
                prefix: str = "--") -> Where:
    """The filter the flags ask for (empty when none is given); a bad value is one line
    naming its flag: `--after` for the CLI, `after=` for clipsearch serve's API (prefix)."""
    flag = {name: f"{prefix}{name}" if prefix else f"{name}=" for name in ("after", "before", "camera", "near")}
    # Given but empty (`--after "$START"` with START unset) is refused like any bad value:
    # read as no filter, it would widen the answer to every photo, undated ones included.
    taken_from = _date(after, flag["after"]) if after is not None else None
    taken_before = _date(before, flag["before"]) if before is not None else None
    if taken_from and taken_before and taken_from >= taken_before:
        raise UsageError(f"{flag['after']} {after} is not before {flag['before']} {before}: "
                         "no photo can match both")
    words: tuple[str, ...] = ()
    if camera is not None:
        words = tuple(camera_words(camera))
        if not words:
            raise UsageError(f"{flag['camera']} {camera!r} has no letters or digits to match")
    return Where(taken_from=taken_from, taken_before=taken_before, camera_words=words,
                 near=parse_near(near, flag["near"]) if near is not None else None)


def filters_line(after: str | None, before: str | None, camera: str | None, near: str | None,
                 under: str | None = None, min_score: float | None = None) -> str | None:
    """What chose the hits besides the query, as the flags were given
    ("filters: --after 2023 --camera 'eos 1d'"), for a gallery's page; None for none."""
    given = [("--after", after), ("--before", before), ("--camera", camera), ("--near", near), ("--in", under),
             ("--min-score", None if min_score is None else f"{min_score:g}")]
    flags = [f"{flag} {shlex.quote(str(value))}" for flag, value in given if value is not None]
    return "filters: " + " ".join(flags) if flags else None


# How many photos' camera words an empty answer's note looks through for close ones:
# bounded, so that the note costs milliseconds at any size (cameras are few; a library
# with more than this many cameras may miss one).
CLOSE_WORDS_SAMPLE = 2000


def empty_answer_note(index, where: Where) -> str | None:
    """Why a filtered search found nothing, where the index can say it cheaply (a few
    look-ups in its payload indexes): a --camera word no photo has (with close words
    that photos do have), or a fact no photo in the index carries at all. None when
    every filter is met by some photo: then only their combination, the query or
    --in/--min-score left nothing."""
    known = (lambda word: bool(index.find("camera_words", [word], limit=1, fields=[])))  # noqa: E731
    unknown = [word for word in where.camera_words
               if not known(word) and not (joined_parts(word) and all(map(known, joined_parts(word))))]
    if unknown:
        import difflib

        word = unknown[0]
        records = index.find("camera_words", None, limit=CLOSE_WORDS_SAMPLE, fields=["camera_words"])
        vocabulary = {w for r in records for w in _whole_words(r.payload.get("camera_words"))}
        close = [w for w in sorted(vocabulary) if w.startswith(word)][:3] or \
            difflib.get_close_matches(word, sorted(vocabulary), n=3, cutoff=0.6)
        hint = f"; close: {', '.join(close)}" if close else ("" if vocabulary else "; no photo has a camera at all")
        return f"clipsearch: no photo in the index has the camera word {word!r}{hint}"
    lacking = [what for field, what, asked in (("taken", "a capture date", where.taken_from or where.taken_before),
                                              ("location", "a GPS position", where.near))
               if asked and not index.find(field, None, limit=1, fields=[])]
    if lacking:
        return f"clipsearch: no photo in the index has {' or '.join(lacking)} (EXIF), which the filter needs"
    return None


def _whole_words(stored: object) -> list[str]:
    """A point's camera words less the beginnings stored beside them ("fuji" beside
    "fujifilm"): the words a note suggests."""
    words = [w for w in stored if isinstance(w, str)] if isinstance(stored, list) else []
    letters = [w for w in words if w.isalpha()]
    return [w for w in words if not any(other != w and other.startswith(w) for other in letters)]


def absent_folder_note(under: str | None, found_any: bool) -> str | None:
    """The line that explains an empty answer under `--in DIR` when DIR is not a folder
    here (a typo, a drive not mounted): the empty answer alone would not say which."""
    if under and not found_any and not os.path.isdir(under):
        return f"clipsearch: --in {shown(under)} is not a folder on this machine"
    return None
