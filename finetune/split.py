"""Hold out a fraction of the images, with all their captions, for evaluation.

The split is by image, so no image is both trained on and evaluated on, and it is
seeded, so a resumed run and a rerun see the same held-out set. Byte-identical files
under two names (a scan saved twice) are one image here: both on one side, or the
"after" figures would reward remembering a training image.
"""

from __future__ import annotations

import hashlib
import json
import random

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


def _content_key(path: str) -> str:
    """The file's content fingerprint (size, first MiB, last KiB: what ingest matches
    moved files by), or its path where it cannot be read now."""
    from clipsearch.fingerprint import fingerprint as content_fingerprint

    try:
        return content_fingerprint(path)
    except OSError:
        return path


def _same_content_groups(images: list[str]) -> list[list[str]]:
    """`images` (sorted) in groups of equal content, in the order of each group's first."""
    by_key: dict[str, list[str]] = {}
    for image in images:
        by_key.setdefault(_content_key(image), []).append(image)
    return sorted(by_key.values(), key=lambda group: group[0])


def check_disjoint(train: list[Pair], held: list[Pair]) -> None:
    """A separate evaluation file must not share images with the training data, by name
    or by content (the same scan saved under two names)."""
    trained = {_content_key(image): image for image in sorted({p.image for p in train})}
    shared = sorted((image, trained[key]) for image in {p.image for p in held}
                    if (key := _content_key(image)) in trained)
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
