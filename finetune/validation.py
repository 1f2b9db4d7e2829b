"""Check every pair before any training starts, and say exactly which rows are bad.

A bad row is one that could not be parsed, has an empty caption, names an image
that is missing or unreadable, or repeats an earlier (image, caption) pair. By
default any bad row stops the run with a message that names the first few by
file and line; with `skip_bad` they are left out and listed in a JSON-lines report.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsearch.errors import ClipsearchError

from .datasets import Row, read_rows
from .images import check_image

SHOWN_IN_ERROR = 3


@dataclass(frozen=True)
class Pair:
    image: str  # absolute path
    text: str
    where: str  # file:line it came from


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

    def write_report(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for problem in self.problems:
                handle.write(json.dumps(asdict(problem), ensure_ascii=False) + "\n")


def check_rows(rows: list[Row], check_images: bool = True) -> tuple[list[Pair], list[Problem]]:
    pairs: list[Pair] = []
    problems: list[Problem] = []
    first_seen: dict[tuple[str, str], str] = {}
    image_problem: dict[str, str | None] = {}  # each image is opened once, however many captions it has
    for row in rows:
        reason = row.problem
        if reason is None and not row.image:
            reason = "empty image path"
        if reason is None and not (row.text or "").strip():
            reason = "empty caption"
        if reason is None and check_images:
            if row.image not in image_problem:
                image_problem[row.image] = check_image(row.image)
            if image_problem[row.image]:
                reason = f"{image_problem[row.image]}: {row.image}"
        if reason is None:
            key = (row.image, " ".join(row.text.split()))
            if key in first_seen:
                reason = f"duplicate of {first_seen[key]}"
            else:
                first_seen[key] = row.where
        if reason is None:
            pairs.append(Pair(row.image, row.text.strip(), row.where))
        else:
            problems.append(Problem(row.where, row.image, row.text, reason))
    return pairs, problems


def load_pairs(data: str | os.PathLike, skip_bad: bool = False, check_images: bool = True) -> PairSet:
    """Read and check a dataset. Raises ClipsearchError naming the first bad rows,
    unless `skip_bad`; raises as well when no usable pair is left."""
    fmt, rows = read_rows(data)
    source = str(Path(data).expanduser().resolve())
    pairs, problems = check_rows(rows, check_images=check_images)
    if problems and not skip_bad:
        shown = "; ".join(p.line() for p in problems[:SHOWN_IN_ERROR])
        more = f"; and {len(problems) - SHOWN_IN_ERROR} more" if len(problems) > SHOWN_IN_ERROR else ""
        raise ClipsearchError(
            f"{len(problems)} bad row{'s' if len(problems) != 1 else ''} in {source}: {shown}{more}. "
            "Fix them, or pass --skip-bad to leave them out (they are listed in a report)"
        )
    if not pairs:
        raise ClipsearchError(f"{source} has no usable image/caption pairs ({len(problems)} bad rows)")
    return PairSet(source, fmt, pairs, problems)
