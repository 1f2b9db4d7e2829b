"""Query terms: text or an example image, each with a weight.

`--add 2:sunset` is the text "sunset" with weight 2; `--subtract beach.jpg` is that
image with weight 1 taken away. A term names an image when it is an existing file
with the extension of a type ingest reads (clipsearch/image_types.py's IMAGE_TYPES, the
one table); anything else is text, but for one word with an image extension that
names no file (a mistyped path), or one that names an existing file of another type
(notes.txt, photo.psd): those are errors, not searches for the words "cam/nosuch.jpg".

A term that cannot be read (an empty one, a weight out of range, words that are not
UTF-8) is a UsageError, exit 2 in the CLI; one naming a file that is missing or no image
here is a ClipsearchError, exit 1, as a missing index is: the same words may work once
the drive is mounted.

The weight is a plain decimal number before the first colon (`2:`, `0.5:`, `1e-2:`).
Anything else before a colon is part of the text: "Nan: portrait", "inf: the show",
"Note: red". Text that itself starts with a number and a colon takes a weight in front
("1:10:30 train"), or "10" is read as its weight. A weight must be positive, between
MIN_WEIGHT and MAX_WEIGHT: the terms' unit vectors are float32, so a NaN or an infinite
weight would reach the index as a NaN query, and a weight beyond float32's range would
make the sum infinite; past a ratio of 1e12 between weights the lesser term is lost in
float32's precision anyway.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.names import is_text, shown

# ASCII digits only: float() also takes "1_000", "١" and "nan", which are read as text here.
_WEIGHT = re.compile(r"[ \t]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t]*")
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6



class UnusableQuery(ClipsearchError):
    """A query that cannot be answered for a reason of its own, not of the index, the
    model or the run: its example image cannot be decoded (`path`, `reason`), its terms
    cancel out. A --queries batch reports it against its line and answers the others."""

    def __init__(self, message: str, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Term:
    kind: str  # "text" or "image"
    value: str  # the text, or the image's path
    weight: float = 1.0


def _expand(path: str) -> str:
    """~ and ~user expanded; as given where that cannot be done ("~a\x00b/x.jpg" makes
    the password database raise ValueError): such a name is no file either."""
    try:
        return os.path.expanduser(path)
    except ValueError:  # UnicodeEncodeError included (a lone surrogate in the user name)
        return path


def _extension(value: str) -> str:
    """The extension of a word that could be a file name (`.jpg`), lower case; "" for
    none, or where the value holds white space around it ("photo.jpg " is words)."""
    if value != value.strip():
        return ""
    return os.path.splitext(value)[1].lower()


def _image_extension(extension: str) -> bool:
    """Whether `extension` is one of a type ingest reads (whether this install has its
    decoder or not: a .heic query is then told what to install, not searched as text).
    The table (clipsearch/image_types.py) imports no Pillow: a query naming a file,
    sent to a server (`search --server`), costs no Pillow import."""
    if not extension:
        return False
    from clipsearch.image_types import IMAGE_EXTENSIONS

    return extension in IMAGE_EXTENSIONS


def looks_like_image_path(value: str) -> bool:
    return _image_extension(_extension(value)) and os.path.isfile(_expand(value))


def refuse_missing_image(value: str, option: str) -> None:
    """One word ending in an image extension that is no file: a path mistyped, or of a
    file moved since; one word that names an existing file of another type (`search
    notes.txt`); or one word with a slash that is a folder (`search photos/`). Searched
    as text, each gave confident nonsense with exit 0."""
    word = value.strip()
    if not word or any(c.isspace() for c in word):
        return
    image = _image_extension(_extension(word))
    if image and not os.path.lexists(_expand(word)):
        raise ClipsearchError(f"{option} {shown(word)} looks like an image file, but there is none at that path; "
                              "give an image that exists, or words to search for")
    if not image and _extension(word) and os.path.isfile(_expand(word)):
        from clipsearch.image_types import IMAGE_EXTENSIONS

        raise ClipsearchError(f"{option} {shown(word)} is a file, but not an image of a type clipsearch reads "
                              f"({' '.join(sorted(IMAGE_EXTENSIONS))}); give an image file, or words to search for")
    if "/" in word and os.path.isdir(_expand(word)):
        raise ClipsearchError(f"{option} {shown(word)} is a folder: give an image file to search by, words to "
                              "search for, or --in FOLDER to search only the images under it")


def parse_term(spec: str, sign: float = 1.0, option: str = "--add", images: bool = True) -> Term:
    """'TEXT', 'IMAGE', 'W:TEXT' or 'W:IMAGE'. `images=False` reads every term as text:
    a server never opens a file because a client named its path. A bad term is a
    ClipsearchError (a UsageError where the term itself is malformed) of one line naming
    `option` and the term as given."""
    given = spec
    weight = 1.0
    head, sep, rest = spec.partition(":")
    if sep and rest and _WEIGHT.fullmatch(head):
        weight = float(head)
        spec = rest
    spec = spec.strip()
    if not spec:
        raise UsageError(f"{option} needs a text or an image path, got {given!r}")
    if weight <= 0:
        raise UsageError(f"{option} weight must be positive, got {weight:g} in {given!r}")
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # finite, as _WEIGHT reads no nan or inf; 1e999 is inf
        raise UsageError(f"{option} weight must be from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, got {head.strip()!r} "
                         f"in {given!r}")
    if images and looks_like_image_path(spec):
        return image_term(spec, sign * weight, option)
    if images:
        refuse_missing_image(spec, option)
    return text_term(spec, sign * weight, option)


def query_term(query: str) -> Term:
    """QUERY, or one line of a --queries file: an existing image file searches by that
    image, anything else is words (one word with an image extension that names no file
    is an error: refuse_missing_image)."""
    if not query.strip():
        raise UsageError("the query is empty; give some words to search for")
    if looks_like_image_path(query):
        return image_term(query)
    refuse_missing_image(query, "the query")
    return text_term(query.strip())


def text_term(text: str, weight: float = 1.0, option: str = "the query") -> Term:
    """Words to search for. Bytes that are not UTF-8 (a shell argument in another
    encoding) are no words a tokenizer can read: one line naming `option`."""
    if not is_text(text):
        raise UsageError(f"{option} {shown(text)} is not UTF-8 text; give the words in UTF-8")
    return Term("text", text, weight)


def image_term(path: str, weight: float = 1.0, option: str | None = None) -> Term:
    """An example image. `option` (e.g. "--image") leads the error messages."""
    path = _expand(path)
    flag = f"{option} " if option else ""
    if os.path.isdir(path):
        raise ClipsearchError(f"{flag}{path} is a folder, not an image; give one image file (or use --in FOLDER "
                              "to search within a folder)")
    if not os.path.isfile(path):
        raise ClipsearchError(f"{option or 'image'} {path} does not exist")
    return Term("image", os.path.realpath(path), weight)


def terms_title(terms: Sequence[Term]) -> str:
    """The terms as a person reads them, for a results page's heading:
    `sunset + 2 x ocean`, `beach.jpg - people`."""
    parts = []
    for i, term in enumerate(terms):
        weight = abs(term.weight)
        piece = term.value if weight == 1 else f"{weight:g} x {term.value}"
        parts.append(piece if i == 0 and term.weight > 0 else f"{'+' if term.weight > 0 else '-'} {piece}")
    return " ".join(parts)

