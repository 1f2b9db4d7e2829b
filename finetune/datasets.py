"""Read image/caption pairs from the layouts people keep them in.

Six layouts, one result: a list of `Row`s, each remembering the file and line it
came from (or, in a labelled folder, the class folder) so that validation can point at it.

- CSV with the header `image_path,text_description` (other columns are ignored);
- the pipe-separated table of the original project's README
  (`image_path | text_description`, cells padded with spaces, optional outer pipes
  and a `---|---` rule under the header);
- TSV with the same header (no quoting: a tab separates, a quote is a quote);
- JSON lines, one `{"image_path": ..., "text_description": ...}` object a line;
- a folder in which each image has a same-name `.txt` beside it whose first
  non-empty line is its caption (Tux Paint's stamps are laid out this way; later
  lines, e.g. translations, are ignored);
- a labelled folder: class subfolders of images, a label each (labelled.py).

The four files may have a `negative` column (JSON lines: key): a caption that does
not describe the row's image, a hard negative for the loss. The column is all or
none: where the header has it, a row with an empty one is a bad row (the trainer
takes the same columns for every row of a batch); validation.py says so.

Relative image paths resolve against the folder of the data file. One image may
appear on several rows with different captions. Nothing here opens an image:
see validation.py.

The tables are split by pandas.read_csv (python engine, imported only when a file
is read), the lines of JSON one json.loads each. A row is numbered by the line it
starts on even when a quoted CSV field spans lines, and a UTF-8 byte-order mark is
dropped. pandas' csv reader is strict about quotes where csv.reader is lenient: a
row it cannot read (`x,"a" b`, or a quote never closed) becomes a bad row naming
its line(s), not a guess at what was meant. A field may be any length (the csv
module's 128 KiB limit is lifted while a table is read), as in the JSON lines and
pipe-table readers. A data file must be UTF-8 text: one that is not, or whose header
holds NUL bytes (UTF-16 saved without a byte-order mark), fails as a whole, naming
its line. Messages show paths and header cells with `names.shown`, so a line break
or a control character in one cannot split or fake a line of the message.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from clipsearch.errors import ClipsearchError
from clipsearch.names import shown

from .labelled import is_labelled_folder, read_labelled_folder, walk
from .rows import IMAGE_EXTENSIONS, Row, caption_files

IMAGE_COLUMN = "image_path"
TEXT_COLUMN = "text_description"
COLUMNS = (IMAGE_COLUMN, TEXT_COLUMN)
NEGATIVE_COLUMN = "negative"  # optional
FORMATS = ("csv", "pipe", "tsv", "jsonl", "folder", "labelled")

_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LINE_END = re.compile(r"\r\n|\r|\n")
_PIPE = r"\s*(?<!\\)\|\s*"  # an unescaped pipe and the spaces around it
# Why pandas' csv reader (strict, unlike csv.reader's default) could not read a row, by separator.
_UNPARSED = {
    ",": 'check its quotes: a field that starts with " must end with " right before a comma or the end '
         'of the line; write a " inside it as ""',
    "\t": "the csv module could not split it at its tabs",
}


def _resolve(image: str, base: Path) -> str:
    path = Path(os.path.expanduser(image.strip()))
    if not path.is_absolute():
        path = base / path
    return os.path.normpath(str(path))


def _column_names(cells: list[str]) -> list[str]:
    """Header cells, a column named in another case (Image_Path) as the column itself."""
    known = {name.casefold(): name for name in (*COLUMNS, NEGATIVE_COLUMN)}
    return [known.get(cell.casefold(), cell) for cell in cells]


def _looks_like_a_row(found: list[str]) -> bool:
    """A first line whose first cell names an image file: a data row where the header goes."""
    return bool(found) and os.path.splitext(found[0].strip())[1].lower() in IMAGE_EXTENSIONS


def _missing_columns(found: list[str], source: Path) -> ClipsearchError:
    if not found:
        return ClipsearchError(f"{shown(str(source))}: the file is empty; it needs the header "
                               f"{IMAGE_COLUMN},{TEXT_COLUMN} and a row for each pair")
    missing = [c for c in COLUMNS if c not in found]
    header = ", ".join(map(shown, found)) or "nothing"
    if len(header) > 200:  # a file that is not a table at all: its whole first line
        header = header[:200] + "..."
    hint = ""
    if len(found) == 1 and ";" in found[0]:
        hint = "; the columns are separated by ;: save it with commas (CSV), tabs (TSV) or |"
    elif _looks_like_a_row(found):
        hint = "; the first line looks like a data row: add the header line above it"
    return ClipsearchError(
        f"{shown(str(source))}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the header "
        f"must name {IMAGE_COLUMN} and {TEXT_COLUMN} (found: {header}){hint}"
    )


def _check_header(header: list[str], source: Path, line: int) -> None:
    """The columns read are each named once: a table whose header repeats one (two
    text_description columns) was read from the first, the other silently ignored."""
    if any(c not in header for c in COLUMNS):
        raise _missing_columns(header, source)
    for column in (*COLUMNS, NEGATIVE_COLUMN):
        at = [number for number, cell in enumerate(header, start=1) if cell == column]
        if len(at) > 1:
            raise ClipsearchError(f"{shown(str(source))}:{line}: the header names the column {column} "
                                  f"{len(at)} times (columns {', '.join(map(str, at))}): keep one")


def detect_format(path: Path) -> str:
    """By extension where it is unambiguous, else by the first non-blank line."""
    if path.is_dir():
        return "labelled" if is_labelled_folder(path) else "folder"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        first = next((line.strip() for line in handle if line.strip()), "")
    if first.startswith("{"):
        return "jsonl"
    if first.startswith("["):
        raise ClipsearchError(f"{shown(str(path))} holds a JSON array; clipsearch reads JSON lines: one "
                              f"{{\"{IMAGE_COLUMN}\": ..., \"{TEXT_COLUMN}\": ...}} object a line (e.g. "
                              "jq -c '.[]' FILE > pairs.jsonl)")
    if "|" in first and "," not in first.replace("\\|", ""):
        return "pipe"
    if "\t" in first and "," not in first:
        return "tsv"
    return "csv"


def _read_text(path: Path) -> str:
    """The whole file as text, a UTF-8 byte-order mark dropped. A decoding error
    names the byte and the line, counted from the start of the file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_LINE_END.findall(data[: exc.start].decode("utf-8"))) + 1
        if data[:2] in _UTF16_BOMS:
            advice = "; it starts with a UTF-16 byte-order mark: save it as UTF-8"
        else:  # a file name that is not UTF-8 has a way in: JSON lines, as search -f json writes it
            advice = ("; save it as UTF-8 (an image whose file name is not UTF-8 can be listed in JSON lines, "
                      "its bytes as \\udcXX escapes: search -f json writes names so)")
        raise ClipsearchError(
            f"{shown(str(path))} is not UTF-8 text ({exc.reason} at byte {exc.start}, line {line}{advice})"
        ) from None
    text = text[1:] if text.startswith("\ufeff") else text
    first = next(((number, line) for number, line in enumerate(_lines(text), start=1) if line.strip()), None)
    if first and "\x00" in first[1]:
        # ASCII saved as UTF-16 without a byte-order mark decodes as "i\0m\0a\0..."
        raise ClipsearchError(f"{shown(str(path))}:{first[0]}: the first line holds NUL bytes: is the file UTF-16? "
                              "Save it as UTF-8 text")
    return text


def _lines(text: str) -> list[str]:
    """Physical lines, ends kept, split where the csv module and universal newlines
    split them (\\n, \\r\\n, a lone \\r); str.splitlines would split at more."""
    return io.StringIO(text, newline="").readlines()


def _parse_table(path: Path, lines: list[tuple[int, str]], sep: str, quoting: int = csv.QUOTE_NONE,
                 marker: str | None = None) -> list[tuple[int, list[str]]]:
    """(line, cells) for each row pandas parses from the numbered `lines`, in order.

    pandas keeps no line numbers, so each line goes in prefixed with its number and
    `marker` (the separator, unless that is a pattern): the first field of a row is
    the line it starts on, and a line break inside a quoted field comes back
    followed by the next line's prefix (see _unmark). Rows with more fields than
    the first are taken aside by on_bad_lines and merged back; pandas pads short
    rows with None, which is dropped, so every row keeps its own length."""
    if not lines:
        return []
    import pandas

    longer: list[list[str]] = []

    def keep_longer(fields: list[str]) -> None:
        longer.append(fields)
        return None  # not in the frame: merged back below

    marked = "".join(f"{number}{marker or sep}{line}" for number, line in lines)
    try:
        with _any_field_size():
            frame = pandas.read_csv(
                io.StringIO(marked, newline=""), sep=sep, header=None, index_col=False, dtype=object,
                na_filter=False, skip_blank_lines=False, quoting=quoting, engine="python", on_bad_lines=keep_longer,
            )
    except pandas.errors.EmptyDataError:
        return []
    except (pandas.errors.ParserError, csv.Error) as exc:
        raise ClipsearchError(f"{shown(str(path))}: {' '.join(str(exc).split())}") from None
    rows = [(int(row[0]), [cell for cell in row[1:] if cell is not None])
            for row in [*frame.itertuples(index=False, name=None), *longer]]
    return sorted(rows, key=lambda row: row[0])


@contextmanager
def _any_field_size():
    """The csv module refuses a field over 128 KiB (a long caption, a whole document
    pasted in one): lift the limit while pandas reads a table, then put it back."""
    previous = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _unmark(cells: list[str], continued: re.Pattern[str]) -> tuple[list[str], int]:
    """The cells without the line prefixes that follow their line breaks, and how
    many line breaks they hold."""
    breaks = 0
    for at, cell in enumerate(cells):
        if "\n" in cell or "\r" in cell:
            cells[at], found = continued.subn(r"\1", cell)
            breaks += found
    return cells, breaks


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    """CSV (a quoted field may hold commas, quotes doubled and line breaks) or TSV
    (no quoting). A row is numbered by the line it starts on."""
    base = path.parent
    lines = list(enumerate(_lines(_read_text(path)), start=1))
    while lines and not lines[0][1].strip():
        lines.pop(0)  # blank lines above the header
    if not lines:
        raise _missing_columns([], path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    parsed = _parse_table(path, lines, delimiter, quoting)
    if not parsed or parsed[0][0] != lines[0][0]:
        raise ClipsearchError(
            f"{shown(str(path))}:{lines[0][0]}: the header could not be read: {_UNPARSED[delimiter]}")
    continued = re.compile(r"(\r\n|\r|\n)\d+" + re.escape(delimiter))
    header, breaks = _unmark(parsed[0][1], continued)
    header = _column_names([cell.strip() for cell in header])
    _check_header(header, path, parsed[0][0])
    image_at, text_at = header.index(IMAGE_COLUMN), header.index(TEXT_COLUMN)
    negative_at = header.index(NEGATIVE_COLUMN) if NEGATIVE_COLUMN in header else None
    rows: list[Row] = []
    expected = parsed[0][0] + breaks + 1  # where the next row should start

    def dropped(until: int) -> None:
        # pandas' csv reader is strict, and silently drops what it cannot read
        if until > expected:
            span = f" (lines {expected}-{until - 1})" if until - 1 > expected else ""
            rows.append(Row(str(path), expected, None, None, f"could not be read: {_UNPARSED[delimiter]}{span}"))

    for line, cells in parsed[1:]:
        dropped(line)
        cells, breaks = _unmark(cells, continued)
        expected = line + breaks + 1
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            hint = " (quote captions that contain a comma)" if delimiter == "," and len(cells) > len(header) else ""
            rows.append(Row(str(path), line, None, None,
                            f"has {len(cells)} fields, the header has {len(header)}{hint}"))
            continue
        image = cells[image_at].strip()
        rows.append(Row(str(path), line, _resolve(image, base) if image else None, cells[text_at].strip(),
                        negative=_negative(cells, negative_at)))
    dropped(lines[-1][0] + 1)
    return rows


def _read_pipe_table(path: Path) -> list[Row]:
    """Cells split at unescaped pipes with the spaces around them; one outer pipe
    on either side of a row is dropped, and `\\|` is a literal pipe. Blank lines
    and `---|---` rules never reach pandas."""
    base = path.parent
    lines = [(number, raw) for number, raw in enumerate(_lines(_read_text(path)), start=1)
             if raw.strip() and not _RULE.match(raw.strip())]
    rows: list[Row] = []
    header: list[str] | None = None
    for number, cells in _parse_table(path, lines, _PIPE, marker="|"):
        if len(cells) > 1 and cells[0] == "":
            cells = cells[1:]  # a leading pipe
        if len(cells) > 1 and cells[-1] == "":
            cells = cells[:-1]  # a trailing pipe
        cells = [cell.replace("\\|", "|") for cell in cells]
        if header is None:
            header = _column_names(cells)
            _check_header(header, path, number)
            continue
        if len(cells) != len(header):
            rows.append(Row(str(path), number, None, None,
                            f"has {len(cells)} cells, the header has {len(header)} (write a | in a caption as \\|)"))
            continue
        image = cells[header.index(IMAGE_COLUMN)]
        negative_at = header.index(NEGATIVE_COLUMN) if NEGATIVE_COLUMN in header else None
        rows.append(Row(str(path), number, _resolve(image, base) if image else None,
                        cells[header.index(TEXT_COLUMN)], negative=_negative(cells, negative_at)))
    if header is None:
        raise _missing_columns([], path)
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    """One json.loads a line: pandas.read_json(lines=True) fails the whole file at
    the first bad line and keeps no line numbers."""
    base = path.parent
    rows: list[Row] = []
    keys_seen: set[str] = set()
    objects = 0
    for number, raw in enumerate(_lines(_read_text(path)), start=1):
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
        objects += 1
        keys_seen.update(record)
        image, text, negative = record.get(IMAGE_COLUMN), record.get(TEXT_COLUMN), record.get(NEGATIVE_COLUMN, "")
        absent = [c for c in COLUMNS if c not in record]
        if absent:
            rows.append(Row(str(path), number, None, None, f"has no {' or '.join(absent)}"))
        elif not isinstance(image, str) or not isinstance(text, str):
            rows.append(Row(str(path), number, None, None, f"{IMAGE_COLUMN} and {TEXT_COLUMN} must be strings"))
        elif not isinstance(negative, str):
            rows.append(Row(str(path), number, None, None, f"{NEGATIVE_COLUMN} must be a string"))
        else:
            rows.append(Row(str(path), number, _resolve(image, base) if image.strip() else None, text.strip(),
                            negative=negative.strip()))
    # A file whose lines are all broken JSON has no "columns" to miss: its rows say why.
    if objects and any(c not in keys_seen for c in COLUMNS):
        raise _missing_columns(sorted(keys_seen), path)
    if NEGATIVE_COLUMN not in keys_seen:  # no line has the key: no negative column at all
        rows = [replace(row, negative=None) for row in rows]
    return rows


def _negative(cells: list[str], at: int | None) -> str | None:
    return cells[at].strip() if at is not None else None


def _read_folder(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for dirpath, _, filenames in walk(folder):
        captions = caption_files(filenames)
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(dirpath, name)
            caption_name = captions.get(stem)
            caption_file = os.path.join(dirpath, caption_name or stem + ".txt")
            if caption_name is None:
                rows.append(Row(caption_file, 1, image, None, "has no caption file (the image's name with .txt)"))
                continue
            try:
                with open(caption_file, "rb") as handle:
                    raw = handle.read()
            except OSError as exc:
                rows.append(Row(caption_file, 1, image, None, f"caption file unreadable ({exc.strerror})"))
                continue
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                rows.append(Row(caption_file, 1, image, None,
                                f"caption file is not UTF-8 text ({exc.reason} at byte {exc.start})"))
                continue
            caption = next((line.strip() for line in _LINE_END.split(text) if line.strip()), "")
            rows.append(Row(caption_file, 1, image, caption))
    return rows


def read_rows(data: str | os.PathLike) -> tuple[str, list[Row]]:
    """(format, rows) for a data file or folder. A file-level problem (no such
    file, missing columns) raises ClipsearchError; row-level ones are left on the
    rows for validation to report."""
    path = Path(data).expanduser().resolve()
    if not path.exists():
        raise ClipsearchError(f"data {shown(str(path))} does not exist")
    try:
        fmt = detect_format(path)
        if fmt == "folder":
            return fmt, _read_folder(path)
        if fmt == "labelled":
            return fmt, read_labelled_folder(path)
        if fmt == "jsonl":
            return fmt, _read_jsonl(path)
        if fmt == "pipe":
            return fmt, _read_pipe_table(path)
        return fmt, _read_delimited(path, "\t" if fmt == "tsv" else ",")
    except csv.Error as exc:
        raise ClipsearchError(f"{shown(str(path))}: {' '.join(str(exc).split())}") from None
    except OSError as exc:  # permission denied, an I/O error on a network share
        raise ClipsearchError(f"cannot read {shown(str(path))}: {exc.strerror or exc}") from None
