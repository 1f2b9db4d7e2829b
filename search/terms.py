"""Query terms: text or an example image, each with a weight.

`--add 2:sunset` is the text "sunset" with weight 2; `--subtract beach.jpg` is that
image with weight 1 taken away. A term names an image when it is an existing file
with an image extension; anything else is text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from clipsearch.errors import ClipsearchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif")


@dataclass(frozen=True)
class Term:
    kind: str  # "text" or "image"
    value: str  # the text, or the image's path
    weight: float = 1.0


def looks_like_image_path(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.expanduser(value))


def parse_term(spec: str, sign: float = 1.0, option: str = "--add", images: bool = True) -> Term:
    """'TEXT', 'IMAGE', 'W:TEXT' or 'W:IMAGE'. `images=False` reads every term as text:
    a server never opens a file because a client named its path."""
    weight = 1.0
    head, sep, rest = spec.partition(":")
    if sep and rest:
        try:
            weight = float(head)
            spec = rest
        except ValueError:
            pass  # a colon inside ordinary text
    spec = spec.strip()
    if not spec:
        raise ClipsearchError(f"{option} needs a text or an image path, got {spec!r}")
    if weight <= 0:
        raise ClipsearchError(f"{option} weight must be positive, got {weight:g}")
    if images and looks_like_image_path(spec):
        return image_term(spec, sign * weight)
    return Term("text", spec, sign * weight)


def image_term(path: str, weight: float = 1.0) -> Term:
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise ClipsearchError(f"{path} is a folder, not an image; give one image file (or use --in FOLDER "
                              "to search within a folder)")
    if not os.path.isfile(path):
        raise ClipsearchError(f"image {path} does not exist")
    return Term("image", os.path.realpath(path), weight)
