"""A row as a dataset layout gives it, before validation: the shape every reader
(datasets.py, labelled.py) returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from clipsearch.names import shown

# Raster formats Pillow reads; a folder dataset pairs only these with captions or labels.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def caption_files(names: Iterable[str]) -> dict[str, str]:
    """{image stem: its caption file's name} among one folder's `names`: `stem.txt`, else
    `stem.TXT` or any other case of the extension (images match in any case too)."""
    found: dict[str, str] = {}
    for name in sorted(names):
        if name[-4:].lower() == ".txt" and (name[:-4] not in found or name.endswith(".txt")):
            found[name[:-4]] = name
    return found


@dataclass(frozen=True)
class Row:
    """One pair as written in the data file. `problem` is set when the row could
    not even be parsed; `image` is an absolute path, or None when absent."""

    source: str  # the data file (or caption file, or class folder) the row came from
    line: int  # 1-based line number in `source`; 0 where it is a folder
    image: str | None
    text: str | None  # the caption; in a labelled folder, the label
    problem: str | None = None
    # The hard negative caption: None where the data has no negative column, "" where this row's is empty.
    negative: str | None = None

    @property
    def where(self) -> str:
        """FILE:LINE (a folder: its name) for a person: a name with a line break in it is
        quoted (names.shown)."""
        return f"{shown(self.source)}:{self.line}" if self.line else shown(self.source)
