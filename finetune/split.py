"""Hold out a fraction of the images, with all their captions, for evaluation.

The split is by image, so no image is both trained on and evaluated on, and it is
seeded, so a resumed run and a rerun see the same held-out set.
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
    random.Random(seed).shuffle(images)
    count = min(len(images) - 2, max(1, round(fraction * len(images))))
    held = set(images[:count])
    return [p for p in pairs if p.image not in held], [p for p in pairs if p.image in held]


def check_disjoint(train: list[Pair], held: list[Pair]) -> None:
    """A separate evaluation file must not share images with the training data."""
    shared = sorted({p.image for p in train} & {p.image for p in held})
    if shared:
        raise ClipsearchError(
            f"{len(shared)} image(s) are both in the training data and in --eval-data, e.g. {shared[0]}; "
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
