"""Turn one image file into a small RGB PIL image ready for the model, or say why not.

Shared by ingest (in its decoding worker processes, so this imports only PIL) and
search (query-by-example images). The work per image is kept small:
JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the photo is far larger than
the model input, and the result is shrunk to the model's input size here, in
parallel, instead of in the process that runs the model.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image, ImageFile

from .fingerprint import content_hash, covers_whole, fingerprint
from .image_types import IMAGE_EXTENSIONS, IMAGE_TYPES, PLUGIN_PACKAGES  # noqa: F401 - re-exported (no Pillow there)
from .photo_facts import photo_facts

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

DEFAULT_MAX_MEGAPIXELS = 100.0
# What a too-large message tells the user to change: ingest's flag, unless the caller
# names its own setting (serve: CLIPSEARCH_MAX_MEGAPIXELS, it has no such flag).
MAX_MEGAPIXELS_FLAG = "--max-megapixels"


def _register_plugins() -> None:
    """Pillow's openers for HEIC/HEIF and AVIF, where their packages are installed:
    pillow-heif's must be registered; pillow-avif-plugin registers on import."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        pass
    else:
        register_heif_opener()
    try:
        import pillow_avif  # noqa: F401
    except ImportError:
        pass


def readable_formats() -> tuple[str, ...]:
    """The formats of IMAGE_TYPES that this Pillow (and its installed plugins) decodes."""
    Image.init()
    return tuple(name for name in IMAGE_TYPES if name in Image.OPEN)


def image_extensions() -> set[str]:
    """The extensions of the file types this install reads (lower case, with the dot)."""
    return {extension for name in readable_formats() for extension in IMAGE_TYPES[name]}


def unreadable_extensions() -> dict[str, str]:
    """The extensions of IMAGE_TYPES this install cannot read, each with the reason a
    file of it is skipped for: which package reads it."""
    readable = readable_formats()
    reasons = {}
    for name, extensions in IMAGE_TYPES.items():
        if name not in readable:
            package, label = PLUGIN_PACKAGES.get(name, (None, name))
            how = f": `pip install {package}` adds them" if package else ""
            reasons.update(dict.fromkeys(extensions, f"not read: this install has no {label} decoder{how}"))
    return reasons


# The ISO base media "ftyp" brands of the image types a plugin reads: an upload has no
# trustworthy name, so its type is told by its first bytes.
_FTYP_BRANDS = {b"heic": ".heic", b"heix": ".heic", b"hevc": ".heic", b"hevx": ".heic", b"heim": ".heic",
                b"heis": ".heic", b"mif1": ".heif", b"msf1": ".heif", b"avif": ".avif", b"avis": ".avif"}


def missing_decoder(head: bytes) -> str | None:
    """Why bytes beginning with `head` are not read, where they are an image type this
    install has no decoder for (an iPhone's HEIC without pillow-heif): the reason a
    file of it is skipped for, with what to install; else None."""
    extension = _FTYP_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None
    return unreadable_extensions().get(extension) if extension else None


def open_image(source) -> Image.Image:
    """Image.open restricted to the formats clipsearch reads (IMAGE_TYPES): every image
    file clipsearch opens goes through this, never through Pillow's guess among all its
    plugins."""
    return Image.open(source, formats=readable_formats())


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


# How each EXIF orientation (2-8) is undone, as ImageOps.exif_transpose does it.
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 where there is none or it cannot be read. Read
    after the pixels are loaded: reading a PNG's EXIF before that decodes the image,
    and a decode error swallowed there left the next load() a half-black picture."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return orientation if isinstance(orientation, int) and orientation in UPRIGHT else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """The picture as a viewer shows it. Not ImageOps.exif_transpose: it also writes
    the EXIF out again without the orientation, which raised on any other tag whose
    value does not fit its type (RowsPerStrip holding "Canon"), and the photo, fine
    and its orientation readable, was skipped as a decoder error. Nothing here needs
    the EXIF after this (photo_facts has read it)."""
    method = UPRIGHT.get(orientation)
    return img.transpose(method) if method is not None else img


def upright(img: Image.Image) -> Image.Image:
    """The picture as a viewer shows it (its EXIF orientation undone), loaded: for a
    thumbnail or a gallery, as ingest decodes it."""
    img.load()
    return _upright(img, _orientation(img))


# The longest side kept, as a multiple of the shortest. The model's preprocessing scales
# the shortest side up to its input size before its centre crop: a 108-byte 8000x1
# strip took 4 GB to embed, a 20000x1 one 9.6 GB and 60 s. A model that crops sees only
# the centre square, which the centre 16:1 of a longer image holds whole: so such an
# image is cropped to that before anything is resized (its recorded size is its own).
MAX_ASPECT_RATIO = 16


def _within_aspect(img: Image.Image) -> Image.Image:
    """The centre of an image longer than MAX_ASPECT_RATIO times its shortest side."""
    w, h = img.size
    short = min(w, h)
    longest = max(1, short) * MAX_ASPECT_RATIO
    if max(w, h) <= longest:
        return img
    if w > h:
        left = (w - longest) // 2
        return img.crop((left, 0, left + longest, h))
    top = (h - longest) // 2
    return img.crop((0, top, w, top + longest))


def load_image(path: str, target: int = 224, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               limit_name: str = MAX_MEGAPIXELS_FLAG) -> Decoded:
    """The image of `path`, shrunk towards `target`, or a SkipImage saying why not.
    `limit_name`: the flag or setting a too-large message names as the one that sets
    `max_megapixels`."""
    try:
        if os.path.getsize(path) == 0:
            raise SkipImage("empty file (0 bytes)")
        try:
            return _decode(path, path, target, max_megapixels, limit_name)
        except OSError as exc:
            whole = _missing_only_its_end(path, exc)
            if whole is None:
                raise
            return _decode(path, io.BytesIO(whole), target, max_megapixels, limit_name)
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


def _decode(path: str, source, target: int, max_megapixels: float, limit_name: str) -> Decoded:
    """load_image's work on `source` (the file's path, or its bytes mended)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_image(source) as img:
            w, h = img.size
            megapixels = w * h / 1e6
            if megapixels > max_megapixels:
                raise SkipImage(
                    f"too large: {w}x{h} is {megapixels:.{0 if megapixels >= 10 else 2}f} megapixels "
                    f"(limit {limit_name} {max_megapixels:g})"
                )
            if img.format == "JPEG" and min(w, h) > 2 * target:
                scale = target / min(w, h)
                img.draft("RGB", (max(1, int(w * scale) + 1), max(1, int(h * scale) + 1)))
            img.load()  # first: a partial decode raises here, and the file is skipped
            orientation = _orientation(img)
            width, height = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            facts = photo_facts(img)
            img = _upright(img, orientation)
            if img.mode != "RGB":
                img = to_rgb(img)
            img = _within_aspect(img)
            if min(img.size) > target:
                scale = target / min(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            return Decoded(path, img, width, height, _one_each(caught), facts)


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def _missing_only_its_end(path: str, error: OSError) -> bytes | None:
    """A JPEG's bytes with its end marker (EOI) put back, where that marker is all it
    lacks (files recovered from cards, some cameras and scanners); None otherwise.
    Pillow calls any JPEG whose data stops before EOI truncated, and its
    LOAD_TRUNCATED_IMAGES fills a JPEG cut anywhere with grey. The test: the file
    decodes to the same pixels whatever follows its last byte. Every scan complete,
    the decoder reads nothing past it; a scan cut short takes what follows as the rest
    of its data, so bytes that decode to something (0x55...) give other pixels than
    the end marker alone, after which the decoder leaves the missing blocks empty."""
    if not str(error).startswith("image file is truncated"):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(JPEG_START) or data.endswith(JPEG_END):
        return None
    ended = data + JPEG_END
    try:
        with Image.open(io.BytesIO(ended), formats=["JPEG"]) as plain, \
                Image.open(io.BytesIO(data + b"\x55" * 64 + JPEG_END), formats=["JPEG"]) as padded:
            # Decoded at a fraction of full size (every scan's data is still read): two full
            # decodes of a 100-megapixel file took gigabytes in each decoding process.
            for img in (plain, padded):
                img.draft(img.mode, (256, 256))
            same = plain.tobytes() == padded.tobytes()
    except (OSError, SyntaxError, ValueError, EOFError):
        return None
    return ended if same else None


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
    if img.mode == "F":
        return _stretched_float(img)
    if img.mode in WIDE_MODES:
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


def _stretched_float(img: Image.Image) -> Image.Image:
    """A float image's finite range stretched onto 0-255. A nodata value of +-inf (common
    in scientific and remote-sensing TIFFs) made the whole range infinite, and the image
    a black square; NaN and -inf are drawn as the low end, +inf as the high end."""
    import numpy as np

    # One float32 copy, worked in place: float64 copies took gigabytes at 100 megapixels.
    values = np.array(img, dtype=np.float32)
    finite = np.isfinite(values)
    if finite.any():
        low, high = float(values.min(where=finite, initial=np.inf)), float(values.max(where=finite, initial=-np.inf))
    else:
        low = high = 0.0
    np.nan_to_num(values, copy=False, nan=low, posinf=high, neginf=low)
    if high > low:
        values -= low
        values *= 255.0 / (high - low)
    else:
        values[:] = 0.0
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def decode_job(args: tuple) -> tuple[str, Decoded | None, str | None, bool]:
    """Pool entry point: (path, decoded, reason skipped, whether that reason lasts).
    `args`: (path, target, max_megapixels), and optionally the name of the setting that
    sets the limit (load_image's limit_name). Never raises, so one bad file cannot break
    the pool."""
    path, target, max_megapixels = args[:3]
    limit_name = args[3] if len(args) > 3 else MAX_MEGAPIXELS_FLAG
    try:
        decoded = load_image(path, target, max_megapixels, limit_name)
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
_register_plugins()
# Our own megapixel limit (--max-megapixels) replaces Pillow's, checked before any
# decoding; set once here, not per call, so that no caller's messages depend on order.
Image.MAX_IMAGE_PIXELS = None
