"""Check every pair before any training starts, and say exactly which rows are bad.

A bad row is one that could not be parsed, has an empty caption, names an image
that is missing or that ingest's decoder would skip (corrupt, cut short, too many
megapixels: images.check_images), or repeats an earlier (image, caption, negative)
row. Where the data has a negative column, a row whose negative is empty, or is a
caption of the row's own image, is bad too. By default any bad row stops the run
with a message that names the first few by file and line (a labelled folder's by
class folder); with `skip_bad` they are left out and listed in a JSON-lines report.
A labelled folder must keep at least two classes: fewer stops the run either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from clipsearch.errors import ClipsearchError
from clipsearch.names import shown

from .datasets import Row, read_rows
from .images import NOT_FOUND, check_images, with_slashes

SHOWN_IN_ERROR = 3


def json_line(value: dict) -> str:
    """JSON as text where it can be; \\u escapes where a file name is not UTF-8 (its
    bytes held as lone surrogates, which no UTF-8 file can take as they are)."""
    line = json.dumps(value, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(value)
    return line


@dataclass(frozen=True)
class Pair:
    image: str  # absolute path
    text: str  # the caption; in a labelled folder, the label (templates.py makes captions of it)
    where: str  # file:line (or class folder) it came from
    negative: str | None = None  # a caption that does not describe the image, where the data has them


@dataclass(frozen=True)
class Problem:
    where: str
    image: str | None
    text: str | None
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class PairSet:
    source: str
    format: str
    pairs: list[Pair]
    problems: list[Problem]

    @property
    def images(self) -> list[str]:
        return sorted({p.image for p in self.pairs})

    @property
    def labelled(self) -> bool:
        return self.format == "labelled"

    @property
    def labels(self) -> list[str]:
        """A labelled folder's label set (its classes' texts); empty for the other layouts."""
        return sorted({p.text for p in self.pairs}) if self.labelled else []

    def write_report(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for problem in self.problems:
                handle.write(json_line(asdict(problem)) + "\n")


def _field_problem(row: Row) -> str | None:
    if row.problem is not None:
        return row.problem
    if not row.image:
        return "empty image path"
    if not (row.text or "").strip():
        return "empty caption"
    if row.negative is not None and not row.negative.strip():
        return "empty negative (where the data has a negative column, every row needs one)"
    if any("\x00" in (value or "") for value in (row.image, row.text, row.negative)):
        return "holds a NUL character (a damaged file?)"
    return None


def _normal(text: str) -> str:
    return " ".join(text.split())


def check_rows(rows: list[Row], check_images_too: bool = True, workers: int = 0,
               on_checked: Callable[[int, int], None] | None = None,
               max_megapixels: float | None = None) -> tuple[list[Pair], list[Problem]]:
    """Every row's fields, then every distinct image (each decoded once, however many
    captions it has), then duplicates."""
    field_problems = [_field_problem(row) for row in rows]
    image_problem: dict[str, str | None] = {}
    if check_images_too:
        image_problem = check_images([row.image for row, problem in zip(rows, field_problems)
                                      if problem is None and row.image], workers, on_checked, max_megapixels)
    pairs: list[Pair] = []
    problems: list[Problem] = []
    first_seen: dict[tuple[str, str, str | None], str] = {}
    captions = {(row.image, _normal(row.text or "")): row.where for row, problem in zip(rows, field_problems)
                if problem is None}
    for row, reason in zip(rows, field_problems):
        image, text = row.image or "", row.text or ""  # both set when no field problem was found
        negative = row.negative.strip() if row.negative is not None else None
        if reason is None and image_problem.get(image):
            reason = f"{image_problem[image]}: {shown(image)}"
        if reason is None and negative is not None and (image, _normal(negative)) in captions:
            reason = f"the negative is a caption of this image (at {captions[(image, _normal(negative))]})"
        if reason is None:
            key = (image, _normal(text), None if negative is None else _normal(negative))
            if key in first_seen:
                reason = f"duplicate of {first_seen[key]}"
            else:
                first_seen[key] = row.where
        if reason is None:
            pairs.append(Pair(image, text.strip(), row.where, negative))
        else:
            problems.append(Problem(row.where, row.image, row.text, reason))
    return pairs, problems


def _count(problems: list[Problem]) -> str:
    return f"{len(problems)} bad row{'s' if len(problems) != 1 else ''}"


def _first(problems: list[Problem]) -> str:
    """The first few problems, each FILE:LINE: reason."""
    shown_here = "; ".join(p.line() for p in problems[:SHOWN_IN_ERROR])
    more = f"; and {len(problems) - SHOWN_IN_ERROR} more" if len(problems) > SHOWN_IN_ERROR else ""
    return shown_here + more


def load_pairs(data: str | os.PathLike, skip_bad: bool = False, check_images: bool = True, workers: int = 0,
               on_checked: Callable[[int, int], None] | None = None,
               max_megapixels: float | None = None, report: str | os.PathLike | None = None) -> PairSet:
    """Read and check a dataset. Raises ClipsearchError naming the first bad rows,
    unless `skip_bad`, after listing them all in `report` if given; raises as well when no
    usable pair is left. `workers`: processes that decode the images for the check;
    `on_checked(done, total)` follows it; `max_megapixels`: larger images are bad rows
    (None: the setting's value)."""
    fmt, rows = read_rows(data)
    source = str(Path(data).expanduser().resolve())
    pairs, problems = check_rows(rows, check_images, workers, on_checked, max_megapixels)
    if problems and not pairs and all(p.reason.startswith(NOT_FOUND) for p in problems):
        # Not a few bad rows: the paths are read from another folder than the one meant,
        # or written on Windows (the reason then names the file that exists with /).
        folder = source if os.path.isdir(source) else os.path.dirname(source)
        which = (f"none of the {len(problems)} images in {shown(source)} exists" if len(problems) > 1
                 else f"the only image in {shown(source)} does not exist")
        hint = (f"relative image paths are read from the data file's folder, {shown(folder)}: move the file "
                "there or give absolute paths")
        if any(p.image and with_slashes(p.image) for p in problems):
            hint = "the paths separate folders with \\ as on Windows: write them with /"
        raise ClipsearchError(f"{which}, e.g. {_first(problems[:1])}; {hint}")
    if problems and not skip_bad:
        listed = "all are named here" if len(problems) <= SHOWN_IN_ERROR else "pass --report FILE to list them all"
        if report is not None:
            try:
                PairSet(source, fmt, [], problems).write_report(report)
                listed = f"all {len(problems)} are listed in {shown(str(report))}"
            except OSError as exc:
                listed = f"--report {shown(str(report))} cannot be written ({exc.strerror})"
        raise ClipsearchError(
            f"{_count(problems)} in {shown(source)}: {_first(problems)}. "
            f"Fix them, or pass --skip-bad to leave them out ({listed})"
        )
    if not pairs:
        if not problems:
            raise ClipsearchError(f"{shown(source)} holds no image/caption pairs")
        raise ClipsearchError(f"{shown(source)} has no usable image/caption pairs: {_count(problems)}: "
                              f"{_first(problems)}")
    pair_set = PairSet(source, fmt, pairs, problems)
    if pair_set.labelled and len(pair_set.labels) < 2:
        kept = " kept" if problems else ""
        raise ClipsearchError(f"{shown(source)} holds one class{kept} ({pair_set.labels[0]!r} in "
                              f"{shown(os.path.dirname(pairs[0].image))}): a labelled folder needs two class "
                              "folders or more, as contrastive training and classification compare classes")
    return pair_set
