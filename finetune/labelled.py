"""Read a labelled folder: DATA/CLASS/.../*.jpg, a class per folder of images.

Every folder under DATA that holds images directly is a class (nested folders are
classes of their own: `birds/heron/` is the class `birds/heron`). Its label text is
the class's line in DATA/labels.txt, else the folder's own name (the leaf, `heron`;
underscores read as spaces). The rows this gives carry the label as their text:
templates (templates.py) make captions of it when a batch is built or scored.

labels.txt: UTF-8, one `FOLDER<TAB>LABEL TEXT` a line, FOLDER the class folder's path
under DATA with `/` between names; blank lines and lines starting with `#` are skipped.
A line that cannot be read, or names no class folder, stops the run (like a missing
column); a label that is empty is a bad class.

Bad classes are one row each, naming the folder, so that a bad folder is one line of
the report however many images it holds: an empty class folder, a label that is not
text (a folder name that is not UTF-8, an empty label), a label two folders share
(their images would be each other's false negatives). Images directly in DATA belong
to no class: a bad row each.

A folder is this layout (is_labelled_folder) when it has a labels.txt, or when none
of its images has a same-name .txt caption and some are in subfolders (one outside
any class folder is a bad row); otherwise it is the captioned-folder layout
(datasets.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsearch.errors import ClipsearchError
from clipsearch.names import is_text, shown

from .rows import IMAGE_EXTENSIONS, Row, caption_files

LABELS_FILE = "labels.txt"


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk(folder: Path):
    """os.walk in a stable order, hidden folders (.git, .thumbnails, .Trash-1000) left out:
    a trashed image and its caption are no training pair. Both folder layouts read
    through it."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, sorted(filenames)


def is_labelled_folder(folder: Path) -> bool:
    if (folder / LABELS_FILE).is_file():
        return True
    in_subfolders = False
    for dirpath, _, filenames in walk(folder):
        captions = caption_files(filenames)
        for name in filenames:
            if not _is_image(name):
                continue
            if os.path.splitext(name)[0] in captions:
                return False  # a captioned image
            # An image outside any class folder (a stray one) is a bad row of this layout,
            # which says so, not a reason to read every class folder as captions.
            in_subfolders = in_subfolders or dirpath != str(folder)
    return in_subfolders


def label_of_name(name: str) -> str:
    """A folder's name as label text: underscores are spaces, runs of spaces one."""
    return " ".join(name.replace("_", " ").split())


def read_labels_file(folder: Path) -> dict[str, tuple[str, int]]:
    """{class folder under DATA: (label text, line)} from DATA/labels.txt, if there is one."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClipsearchError(f"{shown(str(path))} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    labels: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" not in line:
            raise ClipsearchError(f"{shown(str(path))}:{number}: expected FOLDER<TAB>LABEL TEXT (no tab found)")
        name, label = line.split("\t", 1)
        name = name.strip().strip("/")
        if name in labels:
            raise ClipsearchError(f"{shown(str(path))}:{number}: {shown(name)} already has a label on line "
                                  f"{labels[name][1]}")
        labels[name] = (" ".join(label.split()), number)
    return labels


def read_labelled_folder(folder: Path) -> list[Row]:
    labels = read_labels_file(folder)
    rows: list[Row] = []
    classes: list[tuple[str, str, list[str]]] = []  # (folder, label, images)
    for dirpath, dirnames, filenames in walk(folder):
        images = [os.path.join(dirpath, name) for name in filenames if _is_image(name)]
        if dirpath == str(folder):
            rows += [Row(image, 0, image, None, "is not in a class folder: move it into its class's subfolder")
                     for image in images]
            continue
        relative = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        named = labels.pop(relative, None)
        if not images:
            if not dirnames:  # a folder of folders is no class; an empty leaf is a class with no images
                rows.append(Row(dirpath, 0, None, None, "class folder holds no images"))
            if named:
                raise ClipsearchError(f"{shown(str(folder / LABELS_FILE))}:{named[1]}: {shown(relative)} holds no "
                                      "images directly: name a class folder (one that holds images)")
            continue
        leaf = os.path.basename(dirpath)
        if named is not None:
            label, problem = named[0], None if named[0] else f"empty label ({LABELS_FILE}:{named[1]})"
        elif not is_text(leaf):
            label, problem = "", "folder name is not UTF-8 text: rename it, or label it in labels.txt"
        else:
            label = label_of_name(leaf)
            problem = None if label else f"folder name gives an empty label: label it in {LABELS_FILE}"
        if problem:
            rows.append(Row(dirpath, 0, None, None, problem))
        else:
            classes.append((dirpath, label, images))
    if labels:
        name, (_, number) = min(labels.items(), key=lambda item: item[1][1])
        raise ClipsearchError(f"{shown(str(folder / LABELS_FILE))}:{number}: no class folder {shown(name)} "
                              f"under {shown(str(folder))}")
    rows += _rows_of_classes(classes)
    return rows


def _rows_of_classes(classes: list[tuple[str, str, list[str]]]) -> list[Row]:
    """A row per image; a class whose label an earlier folder has is one bad row."""
    rows: list[Row] = []
    owner: dict[str, str] = {}
    for dirpath, label, images in classes:
        key = label.casefold()
        if key in owner:
            rows.append(Row(dirpath, 0, None, None, f"label {label!r} is also the label of {shown(owner[key])}: "
                                                     f"give one of them another in {LABELS_FILE}"))
            continue
        owner[key] = dirpath
        rows += [Row(dirpath, 0, image, label) for image in images]
    return rows
