"""Turn one image file into a small RGB PIL image ready for the model, or say why not.

Shared by ingest (in its decoding worker processes, so this imports only PIL) and
search (query-by-example images). The work per image is kept small:
JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the photo is far larger than
the model input, and the result is shrunk to the model's input size here, in
parallel, instead of in the process that runs the model.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps

from .fingerprint import content_hash, covers_whole, fingerprint
from .photo_facts import photo_facts

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

DEFAULT_MAX_MEGAPIXELS = 100.0


class SkipImage(Exception):
    """This file cannot be used; the message is the reason, for the report. `lasting`:
    the reason is in the file's content (corrupt, not an image, too large), so it holds
    until the file changes; not lasting: it may pass (permissions, I/O, memory)."""

    def __init__(self, reason: str, lasting: bool = True):
        super().__init__(reason)
        self.lasting = lasting


@dataclass
class Decoded:
    path: str
    image: Image.Image  # RGB, shortest side about `target` pixels
    width: int  # of the original, after EXIF orientation
    height: int
    # What Pillow warned about while decoding a file it could still use (corrupt EXIF, a
    # tag larger than the file): for the skip report, not for stderr, where hundreds of
    # them buried the progress line and broke --json and --quiet runs.
    warnings: tuple[str, ...] = ()
    # When, with what and where it was taken (clipsearch/photo_facts.py), for the payload.
    facts: dict = field(default_factory=dict)
    # The file's content fingerprint (clipsearch/fingerprint.py): how a moved or copied
    # file is recognised later without decoding it. Set by decode_job.
    fingerprint: str | None = None
    content_hash: str | None = None  # of every byte, for files larger than the fingerprint reads


def _oriented_size(img: Image.Image, w: int, h: int) -> tuple[int, int]:
    """The size a viewer shows, from the file's size and its EXIF orientation. Called
    after the pixels are loaded: reading a PNG's EXIF before that decodes the image,
    and a decode error swallowed there left the next load() a half-black picture."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(path: str, target: int = 224, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Decoded:
    try:
        if os.path.getsize(path) == 0:
            raise SkipImage("empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                megapixels = w * h / 1e6
                if megapixels > max_megapixels:
                    raise SkipImage(
                        f"too large: {w}x{h} is {megapixels:.{0 if megapixels >= 10 else 2}f} megapixels "
                        f"(limit --max-megapixels {max_megapixels:g})"
                    )
                if img.format == "JPEG" and min(w, h) > 2 * target:
                    scale = target / min(w, h)
                    img.draft("RGB", (max(1, int(w * scale) + 1), max(1, int(h * scale) + 1)))
                img.load()  # first: a partial decode raises here, and the file is skipped
                width, height = _oriented_size(img, w, h)
                facts = photo_facts(img)
                img = ImageOps.exif_transpose(img) or img
                if img.mode != "RGB":
                    img = to_rgb(img)
                if min(img.size) > target:
                    scale = target / min(img.size)
                    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                    img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
                return Decoded(path, img, width, height, _one_each(caught), facts)
    except SkipImage:
        raise
    except FileNotFoundError:
        raise SkipImage("file vanished before it could be read", lasting=False) from None
    except PermissionError:
        raise SkipImage("unreadable: permission denied", lasting=False) from None
    except IsADirectoryError:
        raise SkipImage("is a folder", lasting=False) from None
    except Image.DecompressionBombError as exc:
        raise SkipImage(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise SkipImage("not an image Pillow can read (corrupt, or not the format its name says)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if unsupported(message):  # a valid file this Pillow cannot read: say so, not "corrupt"
            import PIL

            raise SkipImage(f"unsupported by this Pillow build ({PIL.__version__}): {message}") from None
        # Pillow's own complaints carry no errno; one that does is the disk or the
        # network share failing to read (EIO), which may pass.
        io_error = isinstance(exc, OSError) and exc.errno is not None
        raise SkipImage(f"{'read error' if io_error else 'corrupt or truncated'}: {message}",
                        lasting=not io_error) from None
    except MemoryError:
        raise SkipImage("out of memory while decoding", lasting=False) from None


def _one_each(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """Each distinct warning once, one line each."""
    return tuple(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))


# How Pillow says a file uses something it was not built to read (a TIFF compressed with
# WebP, a BMP bitfields layout, a codec left out of the build), as opposed to damage.
UNSUPPORTED = ("unsupported", "not supported", "not available", "unknown raw mode", "unknown compression")


def unsupported(message: str) -> bool:
    return any(words in message.lower() for words in UNSUPPORTED)


# Modes of one channel wider than 8 bits: 16-bit PNG and TIFF (scientific, medical and
# scanned images), 32-bit integer and float.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as a viewer shows the image. Transparent images go onto white, not black.
    A 16-bit (or 32-bit) grey image has its real range stretched onto 0-255: Pillow's
    own conversion clips every value above 255, and a 16-bit image came out solid white
    (so every such image got the same vector)."""
    if img.mode in WIDE_MODES:
        if img.mode != "F":
            img = img.convert("I")
        extrema = img.getextrema()  # one band: (low, high)
        low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
        scale = 255.0 / (high - low) if high > low else 0.0
        return img.point(lambda v: (v - low) * scale).convert("L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_job(args: tuple[str, int, float]) -> tuple[str, Decoded | None, str | None, bool]:
    """Pool entry point: (path, decoded, reason skipped, whether that reason lasts).
    Never raises, so one bad file cannot break the pool."""
    path, target, max_megapixels = args
    try:
        decoded = load_image(path, target, max_megapixels)
        try:
            decoded.fingerprint = fingerprint(path)  # just read: from the page cache
            if not covers_whole(os.path.getsize(path)):
                decoded.content_hash = content_hash(path)
        except FileNotFoundError:  # deleted (or its share unmounted) since it was decoded
            raise SkipImage("file vanished before it could be read", lasting=False) from None
        return path, decoded, None, False
    except SkipImage as exc:
        return path, None, str(exc), exc.lasting
    except Exception as exc:  # a Pillow plugin bug must not end a 10-hour run
        return path, None, f"decoder error: {type(exc).__name__}: {exc}", False


@dataclass
class Prepared:
    """What ingest's decoders hand the encoding process (prepare_job): a Decoded's facts
    about the file, and instead of its image the model's input itself, `pixels`: the
    (height, width, 3) uint8 crop the model's preprocessing makes of it (resized and
    centre-cropped; rescale and normalize are left to the encoding process, one
    vectorized table lookup per batch). `geometry`: the resize and crop that made it
    (encoders/onnx_image.Preprocess.geometry), so a crop made for another preprocessing
    is recognised and redone, never encoded.

    uint8, not the float32 tensor: measured with 2 spawn workers and 640 crops of
    224x224 (bench scratch, load average 3), receiving float32 tensors (600 KB each)
    cost the ingest process 1.7-2.5 ms of CPU an image, uint8 crops (150 KB) plus
    their normalize there 0.7-1.1 ms (the normalize alone, vectorized over a batch,
    0.36-0.4 ms): a quarter of the bytes through the pipe and in the results held in
    flight, and less work on the core the model needs."""

    path: str
    pixels: "np.ndarray"
    geometry: tuple
    width: int
    height: int
    warnings: tuple[str, ...] = ()
    facts: dict = field(default_factory=dict)
    fingerprint: str | None = None
    content_hash: str | None = None


def decoder_init() -> None:
    """Pool initializer for ingest's decoding processes: they ignore Ctrl-C, which a
    terminal sends to the whole process group (the ingest process stops them once it
    has committed what it holds, and no worker prints a traceback meanwhile). And they
    die with the ingest process: killed (kill -9, the OOM killer), it cannot stop them,
    and each printed a BrokenPipeError traceback on the terminal when it next wrote."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # PR_SET_PDEATHSIG (1): SIGKILL when the thread that started this process ends
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        import multiprocessing

        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it died before the line above
            os._exit(0)


_preprocess_cache: dict = {}


def _preprocess(plain: tuple):
    """The Preprocess that plain data (Preprocess.to_dict() items, as a job carries it)
    describe; built once per worker. Imports numpy only: no torch, transformers or
    onnxruntime in a decoding process."""
    preprocess = _preprocess_cache.get(plain)
    if preprocess is None:
        from .encoders.onnx_image import Preprocess

        preprocess = _preprocess_cache[plain] = Preprocess.from_dict(dict(plain))
    return preprocess


def plain_preprocess(preprocess) -> tuple:
    """A Preprocess as the plain, hashable data prepare_job takes."""
    def frozen(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return tuple(sorted((key, frozen(value)) for key, value in preprocess.to_dict().items()))


def prepare_job(args: tuple[str, int, float, tuple]) -> tuple[str, Prepared | None, str | None, bool]:
    """Pool entry point for ingest: decode_job, then the model's resize and centre crop
    (args[3]: plain_preprocess(the model's Preprocess)). Same outcome shape as
    decode_job, with a Prepared for a Decoded. Never raises."""
    path, target, max_megapixels, plain = args
    outcome_path, decoded, reason, lasting = decode_job((path, target, max_megapixels))
    if decoded is None:
        return outcome_path, None, reason, lasting
    try:
        preprocess = _preprocess(plain)
        pixels = preprocess.crop_pixels(decoded.image)
    except MemoryError:
        return path, None, "out of memory while decoding", False
    except Exception as exc:
        return path, None, f"decoder error: {type(exc).__name__}: {exc}", False
    return path, Prepared(path, pixels, preprocess.geometry, decoded.width, decoded.height, decoded.warnings,
                          decoded.facts, decoded.fingerprint, decoded.content_hash), None, False


# Truncated JPEGs are errors, not half-grey pictures in the index.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own megapixel limit (--max-megapixels) replaces Pillow's, checked before any
# decoding; set once here, not per call, so that no caller's messages depend on order.
Image.MAX_IMAGE_PIXELS = None
