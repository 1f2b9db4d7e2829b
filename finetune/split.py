"""Hold out a fraction of the images, with all their captions, for evaluation.

The split is by image, so no image is both trained on and evaluated on, and it is
seeded, so a resumed run and a rerun see the same held-out set. Byte-identical files
under two names (a scan saved twice) are one image here: both on one side, or the
"after" figures would reward remembering a training image.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter

from clipsearch.errors import ClipsearchError

from .validation import Pair


def split_by_image(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held_out). fraction 0 holds nothing out."""
    if not 0 <= fraction < 1:
        raise ClipsearchError(f"--eval-split must be at least 0 and below 1, got {fraction:g}")
    images = sorted({p.image for p in pairs})
    if fraction == 0:
        return list(pairs), []
    if len(images) < 3:
        raise ClipsearchError(
            f"only {len(images)} distinct image(s): too few to hold some out for evaluation; "
            "add images or pass --eval-split 0"
        )
    groups = _same_content_groups(images)  # one group an image where no two files are equal
    random.Random(seed).shuffle(groups)
    count = min(len(images) - 2, max(1, round(fraction * len(images))))
    held: set[str] = set()
    for group in groups:
        if len(held) >= count:
            break
        if len(held) + len(group) <= len(images) - 2:
            held.update(group)
    return [p for p in pairs if p.image not in held], [p for p in pairs if p.image in held]


def _content_keys(images: list[str]) -> dict[str, str]:
    """Each image's content key: equal only for byte-identical files. Files are told
    apart by size first; only where sizes collide is the fingerprint read (size, first
    MiB, last KiB: what ingest matches moved files by), and a file larger than that
    also gets its full hash (two scans can share margins and differ in the middle). A
    file that cannot be read now keys by its path."""
    from clipsearch.fingerprint import content_hash, covers_whole
    from clipsearch.fingerprint import fingerprint as content_fingerprint

    sizes: dict[str, int | None] = {}
    for image in images:
        try:
            sizes[image] = os.path.getsize(image)
        except OSError:
            sizes[image] = None
    count = Counter(size for size in sizes.values() if size is not None)
    keys = {}
    for image, size in sizes.items():
        if size is None or count[size] == 1:
            keys[image] = image
            continue
        try:
            keys[image] = content_fingerprint(image, size) + ("" if covers_whole(size) else content_hash(image))
        except OSError:
            keys[image] = image
    return keys


def _same_content_groups(images: list[str]) -> list[list[str]]:
    """`images` (sorted) in groups of equal content, in the order of each group's first."""
    by_key: dict[str, list[str]] = {}
    for image, key in _content_keys(images).items():
        by_key.setdefault(key, []).append(image)
    return sorted(by_key.values(), key=lambda group: group[0])


def check_disjoint(train: list[Pair], held: list[Pair]) -> None:
    """A separate evaluation file must not share images with the training data, by name
    or by content (the same scan saved under two names)."""
    trained_images, held_images = sorted({p.image for p in train}), sorted({p.image for p in held})
    keys = _content_keys(sorted({*trained_images, *held_images}))
    trained = {keys[image]: image for image in trained_images}
    shared = sorted((image, trained[keys[image]]) for image in held_images if keys[image] in trained)
    if shared:
        image, twin = shared[0]
        same = "" if image == twin else f" (the same file as {twin})"
        raise ClipsearchError(
            f"{len(shared)} image(s) are both in the training data and in --eval-data, e.g. {image}{same}; "
            "held-out images must not be trained on"
        )


def fingerprint(pairs: list[Pair]) -> str:
    """Identifies a set of pairs, so that --resume can tell it is the same data."""
    # A negative joins a pair's entry only where there is one: data without them hashes as before.
    payload = json.dumps(sorted((p.image, p.text) if p.negative is None else (p.image, p.text, p.negative)
                                for p in pairs), ensure_ascii=False)
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes (and the same
    # as before for every name that is text)
    return hashlib.sha256(payload.encode("utf-8", "surrogateescape")).hexdigest()[:16]
