"""A procedural image/caption dataset: coloured shapes in three positions.

Used to show that fine-tuning learns something real when no photos or pretrained
weights are at hand (the tests and the notebook). 6 colours x 3 shapes x
3 positions make 54 captions such as "a red circle on the left". One position per
(colour, shape) is held out: those 18 captions are never trained on, while every
colour, shape and position, and every pair of them, still is. A model that scores
the held-out captions well has learned the parts, not memorised the captions.

`python -m finetune.synthetic FOLDER` writes train.csv and heldout.csv there.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220),
    "yellow": (240, 220, 40), "purple": (140, 40, 160), "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}


def caption(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} {POSITIONS[position]}"


def held_out(colour: str, shape: str, position: str) -> bool:
    """One position per (colour, shape), rotating, so the held-out set covers everything."""
    return (list(COLOURS).index(colour) + SHAPES.index(shape)) % 3 == list(POSITIONS).index(position)


def draw(path: Path, colour: str, shape: str, position: str, rng: random.Random, size: int = 32) -> None:
    """The shape at its position, with jittered size, height and background."""
    img = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    r = size * rng.uniform(0.13, 0.2)
    cx = size * {"left": 0.22, "middle": 0.5, "right": 0.78}[position] + rng.uniform(-size / 16, size / 16)
    cy = size * (0.5 + rng.uniform(-0.25, 0.25))
    box = (cx - r, cy - r, cx + r, cy + r)
    pen = ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLOURS[colour])
    img.save(path)


def write_dataset(folder: str | Path, per_train: int = 6, per_heldout: int = 2, size: int = 32,
                  seed: int = 0) -> tuple[Path, Path]:
    """Draw the images into FOLDER/images and write FOLDER/train.csv and FOLDER/heldout.csv
    (image paths relative to FOLDER). Returns the two CSV paths."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                hold = held_out(colour, shape, position)
                for i in range(per_heldout if hold else per_train):
                    name = f"images/{colour}-{shape}-{position}-{i}.png"
                    draw(folder / name, colour, shape, position, rng, size)
                    rows[hold].append((name, caption(colour, shape, position)))
    paths = folder / "train.csv", folder / "heldout.csv"
    for path, hold in zip(paths, (False, True)):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_path", "text_description"])
            writer.writerows(rows[hold])
    return paths


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(*write_dataset(sys.argv[1]), sep="\n")
