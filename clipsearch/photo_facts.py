"""When, with what and where a photo was taken, from its EXIF: for the payload, where
`search --after/--before/--camera/--near` filter on it inside the index.

Every field is read on its own and dropped on its own when it is missing, broken or
absurd (year 0, a 30th of February, a latitude of 200, a MakerNote that throws): the
image is embedded all the same. The capture time is never invented from the file's
mtime, which the payload keeps apart as `mtime`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # search imports camera_words on its cold path, which loads no PIL
    from PIL import Image

# EXIF tags (IFD0 and its Exif and GPS sub-IFDs).
DATETIME, MAKE, MODEL = 0x0132, 0x010F, 0x0110
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL = 0x9003
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4

# Photography began in 1826; a clock years ahead is a camera that was never set.
FIRST_YEAR, LAST_YEAR = 1826, 2100
# A word is letters and digits of any script ("canon", "léica", "小米", "5d"), joined by
# hyphens or dots ("eos-5d"), read from the text casefolded and NFKC-normalised (full-width
# letters, a decomposed é), the same way on a photo's camera and on --camera.
_WORD = re.compile(r"[^\W_]+(?:[-.][^\W_]+)*")
_WORD_START = re.compile(r"[\W_]*([^\W_]+)")
# A word of letters alone also matches from its beginning: the stored words hold its
# beginnings of BEGINNING_FROM letters or more, so that --camera fuji finds FUJIFILM
# and pana a Panasonic, with one exact keyword match inside the index on every backend.
# A word with digits is a model number and matches whole: 5d does not find a 5DS.
BEGINNING_FROM = 3
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)?")  # CSI, OSC, or one char


# Every field photo_facts() may give: a point's facts are these, and only these, of its file.
FACT_FIELDS = ("taken", "camera", "camera_words", "location")

# Which reading of the file a point's facts come from, kept in its payload as
# FACTS_VERSION_FIELD beside them: raised whenever photo_facts() reads a file otherwise
# (another field, other words), so that the next ingest reads the EXIF of older points
# again (facts_outdated), or a filter would miss every photo indexed before the change.
# Absent: 1. 2: camera words with their beginnings (fuji: FUJIFILM), Unicode words, UTF-8
# names read as UTF-8.
FACTS_VERSION = 2
FACTS_VERSION_FIELD = "facts_version"


def facts_outdated(payload: dict) -> bool:
    """Whether a point's facts were read by an older photo_facts() than this one (one
    from a newer clipsearch is left as it is)."""
    version = payload.get(FACTS_VERSION_FIELD)
    return not isinstance(version, int) or version < FACTS_VERSION


def versioned(facts: dict) -> dict:
    """Facts photo_facts() read now, as a payload keeps them: with their version."""
    return {**facts, FACTS_VERSION_FIELD: FACTS_VERSION}


def photo_facts(img: Image.Image) -> dict:
    """{"taken": "YYYY-MM-DDTHH:MM:SS", "camera": "Make Model", "camera_words": [...],
    "location": {"lat", "lon"}}, each only where the file gives a sound value."""
    facts: dict = {}
    try:
        exif = img.getexif()
    except Exception:  # a broken EXIF block: the picture is still good
        return facts
    taken = _first(lambda: _exif_time(exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)),
                   lambda: _exif_time(exif.get(DATETIME)))
    if taken:
        facts["taken"] = taken
    camera = _first(lambda: _camera(exif.get(MAKE), exif.get(MODEL)))
    if camera:
        facts["camera"], facts["camera_words"] = camera
    location = _first(lambda: _location(exif.get_ifd(GPS_IFD)))
    if location:
        facts["location"] = location
    return facts


def camera_words(text: str) -> list[str]:
    """Casefolded words of a camera name: what `--camera` matches, every word given
    being one of them ("canon", "eos", "5d")."""
    return list(dict.fromkeys(_WORD.findall(_folded(text))))


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def word_beginnings(word: str) -> list[str]:
    """The beginnings a word of letters is also found by ("fujifilm": fuj, fuji, ...,
    fujifil); none for a short word or one with digits or joints."""
    if not word.isalpha():
        return []
    return [word[:end] for end in range(BEGINNING_FROM, len(word))]


def joined_parts(word: str) -> list[str]:
    """The parts of a joined camera word ("eos-5d": eos, 5d); none for a plain word.
    A photo matches a joined word of --camera by the word itself or by all its parts:
    "eos-5d" finds an "EOS 5D" as "eos 5d" finds an "EOS-5D"."""
    parts = [part for part in re.split(r"[-.]", word) if part]
    return parts if len(parts) > 1 else []


def _first(*readers):
    for read in readers:
        try:
            value = read()
        except Exception:  # one broken field never costs the others, nor the image
            value = None
        if value:
            return value
    return None


def _text(value) -> str:
    """An EXIF text's printable words: terminal escapes and NULs are never shown."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    value = _utf8_read_as_latin1(value)
    value = _ESCAPE.sub(" ", value)
    return " ".join("".join(c if c.isprintable() and c != "\ufffd" else " " for c in value).split())[:100]


def _utf8_read_as_latin1(text: str) -> str:
    """The text its bytes mean as UTF-8: Pillow reads an ASCII tag's bytes as Latin-1, so
    a make written in UTF-8 ("Léica", "小米") comes as "LÃ©ica". A byte that is not UTF-8
    is junk (binary, or a legacy code page no tag says), as in a tag read as bytes: it
    becomes U+FFFD, which _text drops, never a letter --camera would match."""
    if text.isascii():
        return text
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:  # beyond Latin-1: real text, not bytes read one by one
        return text
    return raw.decode("utf-8", "replace")


def _exif_time(value) -> str | None:
    """'YYYY:MM:DD HH:MM:SS' (seconds optional) as ISO 8601, if it is a real moment."""
    text = _text(value)
    for layout in ("%Y:%m:%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.strptime(text[:19], layout)
        except ValueError:
            continue
        if FIRST_YEAR <= moment.year <= LAST_YEAR:
            return moment.isoformat()
        return None
    return None


def _camera(make, model) -> tuple[str, list[str]] | None:
    """(the name shown, the words --camera matches). The name says the make once
    ("Canon" + "Canon EOS 5D": "Canon EOS 5D"; "NIKON CORPORATION" + "NIKON D850":
    "NIKON D850"), but every word of make and model is matched ("nikon corporation")."""
    make, model = _text(make), _text(model)
    shown_make = make
    make_first, model_first = (_WORD_START.match(_folded(text)) for text in (make, model))
    if make_first and model_first and make_first.group(1) == model_first.group(1):  # a word, not a prefix: LG, LGE
        shown_make = ""  # also "SAMSUNG" + "SAMSUNG-SM-G930A"
    name = " ".join(part for part in (shown_make, model) if part)
    words = stored_camera_words(f"{make} {model}")
    if not words:  # nothing --camera could match: junk bytes (Pillow reads them as Latin-1), not a name
        return None
    return name, words


def stored_camera_words(text: str) -> list[str]:
    """The words a photo's camera is matched by: its camera_words, the parts of a
    joined one ("eos-1d": also "eos" and "1d"), so that --camera "eos 1d" finds an
    EOS-1D while --camera eos-1d still finds it (and points stored before the parts),
    the joined word run together ("x-t3": "xt3"), and the beginnings of each word of
    letters ("fujifilm": "fuji", ...). The words themselves come first."""
    words = camera_words(text)
    found = [part for word in words for part in (word, *joined_parts(word))]
    found += ["".join(parts) for parts in map(joined_parts, words) if parts]
    found += [beginning for word in list(found) for beginning in word_beginnings(word)]
    return list(dict.fromkeys(found))


def _location(gps) -> dict | None:
    if not gps:
        return None
    lat, lon = _degrees(gps.get(GPS_LAT)), _degrees(gps.get(GPS_LON))
    if lat is None or lon is None:
        return None
    if _text(gps.get(GPS_LAT_REF)).upper().startswith("S"):
        lat = -lat
    if _text(gps.get(GPS_LON_REF)).upper().startswith("W"):
        lon = -lon
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):  # 0,0: no fix written as one
        return None
    # The engine's geo index loses a point at exactly 90 N (a radius around the pole
    # never finds it, though one at -90 is found): stored 1 cm south of it.
    return {"lat": min(round(lat, 7), POLE_LAT), "lon": round(lon, 7)}


POLE_LAT = 89.9999999


def _degrees(value) -> float | None:
    """(degrees, minutes, seconds) rationals as decimal degrees."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return None
    d, m, s = (float(part) for part in value)
    # 60 itself is a rounded 59.9996 (some phones and geotaggers write it): read as is.
    if not all(math.isfinite(x) and x >= 0 for x in (d, m, s)) or m > 60 or s > 60:
        return None
    return d + m / 60 + s / 3600
