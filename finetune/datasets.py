"""Read image/caption pairs from the layouts people keep them in.

Five layouts, one result: a list of `Row`s, each remembering the file and line it
came from so that validation can point at it.

- CSV with the header `image_path,text_description` (other columns are ignored);
- the pipe-separated table of the original project's README
  (`image_path | text_description`, cells padded with spaces, optional outer pipes
  and a `---|---` rule under the header);
- TSV with the same header (no quoting: a tab separates, a quote is a quote);
- JSON lines, one `{"image_path": ..., "text_description": ...}` object a line;
- a folder in which each image has a same-name `.txt` beside it whose first
  non-empty line is its caption (Tux Paint's stamps are laid out this way; later
  lines, e.g. translations, are ignored).

Relative image paths resolve against the folder of the data file. One image may
appear on several rows with different captions. Nothing here opens an image:
see validation.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clipsearch.errors import ClipsearchError

IMAGE_COLUMN = "image_path"
TEXT_COLUMN = "text_description"
COLUMNS = (IMAGE_COLUMN, TEXT_COLUMN)
# Raster formats Pillow reads; a folder dataset pairs only these with captions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("csv", "pipe", "tsv", "jsonl", "folder")

_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


@dataclass(frozen=True)
class Row:
    """One pair as written in the data file. `problem` is set when the row could
    not even be parsed; `image` is an absolute path, or None when absent."""

    source: str  # the data file (or caption file) the row came from
    line: int  # 1-based line number in `source`
    image: str | None
    text: str | None
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _resolve(image: str, base: Path) -> str:
    path = Path(os.path.expanduser(image.strip()))
    if not path.is_absolute():
        path = base / path
    return os.path.normpath(str(path))


def _missing_columns(found: list[str], source: Path) -> ClipsearchError:
    missing = [c for c in COLUMNS if c not in found]
    return ClipsearchError(
        f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the header must name "
        f"{IMAGE_COLUMN} and {TEXT_COLUMN} (found: {', '.join(found) or 'nothing'})"
    )


def detect_format(path: Path) -> str:
    """By extension where it is unambiguous, else by the first non-blank line."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        first = next((line.strip() for line in handle if line.strip()), "")
    if first.startswith("{"):
        return "jsonl"
    if "|" in first and "," not in first.replace("\\|", ""):
        return "pipe"
    if "\t" in first and "," not in first:
        return "tsv"
    return "csv"


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    base = path.parent
    rows: list[Row] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        header = [cell.strip() for cell in header] if header else []
        if any(c not in header for c in COLUMNS):
            raise _missing_columns(header, path)
        image_at, text_at = header.index(IMAGE_COLUMN), header.index(TEXT_COLUMN)
        end_of_previous = reader.line_num
        for cells in reader:
            line = end_of_previous + 1  # a quoted caption may span lines: report where the row starts
            end_of_previous = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) != len(header):
                hint = " (quote captions that contain a comma)" if delimiter == "," and len(cells) > len(header) else ""
                rows.append(Row(str(path), line, None, None,
                                f"has {len(cells)} fields, the header has {len(header)}{hint}"))
                continue
            image = cells[image_at].strip()
            rows.append(Row(str(path), line, _resolve(image, base) if image else None, cells[text_at].strip()))
    return rows


def _split_pipe_row(line: str) -> list[str]:
    text = line.strip().replace("\\|", "\0")
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|"):
        text = text[:-1]
    return [cell.strip().replace("\0", "|") for cell in text.split("|")]


def _read_pipe_table(path: Path) -> list[Row]:
    base = path.parent
    rows: list[Row] = []
    header: list[str] | None = None
    with open(path, encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip() or _RULE.match(raw.strip()):
                continue
            cells = _split_pipe_row(raw)
            if header is None:
                header = cells
                if any(c not in header for c in COLUMNS):
                    raise _missing_columns(header, path)
                continue
            if len(cells) != len(header):
                rows.append(Row(str(path), number, None, None,
                                f"has {len(cells)} cells, the header has {len(header)} (write a | in a caption as \\|)"))
                continue
            image = cells[header.index(IMAGE_COLUMN)]
            rows.append(Row(str(path), number, _resolve(image, base) if image else None,
                            cells[header.index(TEXT_COLUMN)]))
    if header is None:
        raise _missing_columns([], path)
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    base = path.parent
    rows: list[Row] = []
    keys_seen: set[str] = set()
    with open(path, encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                rows.append(Row(str(path), number, None, None, f"is not valid JSON ({exc.msg})"))
                continue
            if not isinstance(record, dict):
                rows.append(Row(str(path), number, None, None, "is not a JSON object"))
                continue
            keys_seen.update(record)
            image, text = record.get(IMAGE_COLUMN), record.get(TEXT_COLUMN)
            absent = [c for c in COLUMNS if c not in record]
            if absent:
                rows.append(Row(str(path), number, None, None, f"has no {' or '.join(absent)}"))
            elif not isinstance(image, str) or not isinstance(text, str):
                rows.append(Row(str(path), number, None, None, f"{IMAGE_COLUMN} and {TEXT_COLUMN} must be strings"))
            else:
                rows.append(Row(str(path), number, _resolve(image, base) if image.strip() else None, text.strip()))
    if rows and any(c not in keys_seen for c in COLUMNS):
        raise _missing_columns(sorted(keys_seen), path)
    return rows


def _read_folder(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        names = set(filenames)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(dirpath, name)
            caption_file = os.path.join(dirpath, stem + ".txt")
            if stem + ".txt" not in names:
                rows.append(Row(caption_file, 1, image, None, "has no caption file (the image's name with .txt)"))
                continue
            try:
                with open(caption_file, encoding="utf-8-sig", errors="replace") as handle:
                    caption = next((line.strip() for line in handle if line.strip()), "")
            except OSError as exc:
                rows.append(Row(caption_file, 1, image, None, f"caption file unreadable ({exc.strerror})"))
                continue
            rows.append(Row(caption_file, 1, image, caption))
    return rows


def read_rows(data: str | os.PathLike) -> tuple[str, list[Row]]:
    """(format, rows) for a data file or folder. A file-level problem (no such
    file, missing columns) raises ClipsearchError; row-level ones are left on the
    rows for validation to report."""
    path = Path(data).expanduser().resolve()
    if not path.exists():
        raise ClipsearchError(f"data {path} does not exist")
    fmt = detect_format(path)
    try:
        if fmt == "folder":
            return fmt, _read_folder(path)
        if fmt == "jsonl":
            return fmt, _read_jsonl(path)
        if fmt == "pipe":
            return fmt, _read_pipe_table(path)
        return fmt, _read_delimited(path, "\t" if fmt == "tsv" else ",")
    except UnicodeDecodeError as exc:
        raise ClipsearchError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ClipsearchError(f"{path}: {exc}") from None
