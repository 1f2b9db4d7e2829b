"""Open a training or evaluation image, and check one cheaply before training.

Pairs hold image paths; pixels are decoded only when a batch needs them, by the
same decoder ingest uses (clipsearch.images: EXIF orientation, transparency onto
white, shrunk to about the model's input size), so the model learns from the
pixels it will later embed.
"""

from __future__ import annotations

from PIL import Image

from clipsearch.errors import ClipsearchError
from clipsearch.images import SkipImage, load_image


def load_rgb(path: str, target: int = 224) -> Image.Image:
    """An RGB image whose shorter side is at most about `target` pixels."""
    try:
        return load_image(path, target).image
    except SkipImage as exc:
        raise ClipsearchError(f"cannot read image {path}: {exc}") from None


def check_image(path: str) -> str | None:
    """Why `path` cannot be used as an image, or None when Pillow can read it.

    Reads the header and checks the file's structure (`verify`), which is much
    cheaper than decoding every pixel of every image before training starts.
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        return "image not found"
    except IsADirectoryError:
        return "image path is a folder"
    except PermissionError:
        return "image unreadable (permission denied)"
    except Image.UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"image corrupt ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    return None
