"""Open a training or evaluation image, and check every image before training.

Pairs hold image paths; pixels are decoded only when a batch needs them, by the
same decoder ingest uses (clipsearch.images: EXIF orientation, transparency onto
white, shrunk to about the model's input size), so the model learns from the
pixels it will later embed.

The up-front check is that same decoder run to the end (clipsearch.images.decode_job),
not a cheaper look at the header: Pillow's `verify` passed a JPEG cut short, which
then stopped training at its first batch, and raised on a decompression bomb where
ingest reports one. What ingest would skip, fine-tune leaves out (or refuses), for
the same reason, worded the same way.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from PIL import Image

from clipsearch import config
from clipsearch.errors import ClipsearchError
from clipsearch.images import SkipImage, decode_job, load_image
from clipsearch.names import shown
from clipsearch.pools import WorkerDied, in_order
from clipsearch.progress import stderr_line

# The decode target of the check: CLIP's input size. Only JPEG draft mode depends on it,
# and a JPEG cut short fails at any draft scale (its whole entropy stream is read).
CHECK_TARGET = 224
# Fewer images than this are checked in this process: a pool of spawned workers costs
# about a second to start.
POOL_FROM = 64


def max_megapixels(given: float | None = None) -> float:
    """The limit ingest applies too (--max-megapixels, CLIPSEARCH_MAX_MEGAPIXELS), so
    that a dataset never trains on an image its model's index would refuse."""
    return float(config.value("max_megapixels", given))


def load_rgb(path: str, target: int = 224, limit: float | None = None) -> Image.Image:
    """An RGB image whose shorter side is at most about `target` pixels. Called only on
    images check_images passed (with the same `limit`: None, the setting's value)."""
    try:
        return load_image(path, target, max_megapixels(limit)).image
    except SkipImage as exc:
        raise ClipsearchError(f"cannot read image {shown(path)}: {exc} "
                              "(it could be read when the rows were checked)") from None


def _verdict(job: tuple[str, int, float]) -> tuple[str, str | None]:
    """Pool entry point: (path, why it cannot be used or None). The decoded pixels stay
    in the worker: only the verdict crosses back."""
    path, _, reason, _ = decode_job(job)
    return path, reason


NOT_FOUND = "image not found"


def with_slashes(path: str) -> str | None:
    """For a path not found that separates folders with \\ (written on Windows): the same
    path with /, where that file exists. On POSIX a backslash is part of a name."""
    if "\\" not in path or os.path.exists(path):
        return None
    slashed = path.replace("\\", "/")
    return slashed if os.path.exists(slashed) else None


def _missing(path: str) -> str | None:
    """Reasons found without opening the file, worded as a row's problem."""
    if not os.path.exists(path):  # a dangling link included
        slashed = with_slashes(path)
        return f"{NOT_FOUND} (with / for \\, {shown(slashed)} exists)" if slashed else NOT_FOUND
    if os.path.isdir(path):
        return "image path is a folder"
    return None


def check_images(paths: Iterable[str], workers: int = 0,
                 on_checked: Callable[[int, int], None] | None = None,
                 limit: float | None = None) -> dict[str, str | None]:
    """Why each image cannot be used (None: it decodes). `workers` > 0 decodes in that
    many processes when there are many images; the pool is ended on every way out,
    Ctrl-C included, so no worker outlives the check."""
    paths = list(dict.fromkeys(paths))
    limit = max_megapixels(limit)
    verdicts: dict[str, str | None] = {}
    jobs = []
    for path in paths:
        verdicts[path] = _missing(path)
        if verdicts[path] is None:
            jobs.append((path, CHECK_TARGET, limit))
    done = len(paths) - len(jobs)

    def record(path: str, reason: str | None) -> None:
        nonlocal done
        verdicts[path] = f"unusable image: {reason}" if reason else None
        done += 1
        if on_checked:
            on_checked(done, len(paths))

    if workers == 0 or len(jobs) < POOL_FROM:
        for job in jobs:
            record(*_verdict(job))
        return verdicts
    # A checker that dies (the OOM killer on a huge image, kill -9) costs only the image it held.
    checked = in_order(((job[0], _verdict, job) for job in jobs), workers, window=workers * 8, say=stderr_line)
    try:
        for path, outcome in checked:
            if isinstance(outcome, WorkerDied):
                record(path, f"the checking process died while reading it ({outcome.how})")
            else:
                record(*outcome)
    finally:
        checked.close()  # a stop: the workers end here, not at garbage collection
    return verdicts
