"""A row as a dataset layout gives it, before validation: the shape every reader
(datasets.py, labelled.py) returns."""

from __future__ import annotations

from dataclasses import dataclass

from clipsearch.names import shown

# Raster formats Pillow reads; a folder dataset pairs only these with captions or labels.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def caption_file_name(stem: str, names: set[str]) -> str | None:
    """The name of the caption file of the image named `stem` among a folder's `names`:
    `stem.txt`, else `stem.TXT` or any other case of the extension (as images are
    matched in any case); None when there is none."""
    if stem + ".txt" in names:
        return stem + ".txt"
    return next((n for n in sorted(names) if n[:-4] == stem and n[-4:].lower() == ".txt"), None)


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
