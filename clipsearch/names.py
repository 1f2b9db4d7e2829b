"""A file name is bytes. How clipsearch keeps, stores and prints one that is not text.

Python hands a name that is not valid UTF-8 (`m\\xe9lange.jpg` from an old archive or a
network share) over as a str holding lone surrogates (PEP 383, os.fsdecode); such a str
opens the file, but cannot be encoded as UTF-8, and so cannot go into JSON, a Qdrant
payload, a uuid5 or a UTF-8 terminal as it is. This module is the one place that says
what happens to it instead:

- ids hash the name's bytes (`name_bytes`): the same id as before for every text name;
- a payload keeps a text stand-in (`stored`) for people and filters, and the exact bytes
  beside it (`PATH_BYTES`), from which `path_of` gives the real path back;
- a person sees `shown`: the name itself when it is printable text, otherwise a bash
  `$'...'` quoted form, which a newline or escape character in a name cannot split or
  fake, and which pastes back into a shell as the same bytes.
"""

from __future__ import annotations

import base64
import os
import re

# The payload field that holds a non-UTF-8 path's bytes (base64); absent for text paths,
# so that indexes made before it are unchanged.
PATH_BYTES = "path_bytes"

# C0 and C1 control characters, DEL, and the lone surrogates that stand for bytes.
# Bidirectional marks, embeddings, overrides and isolates too ("rtl\u202egnp.jpg" shows
# as "rtlgpj.png", a name passing for another), and the invisible zero-width space, word
# joiners and BOM: the same set the page shows escaped (serve/static/app.js HIDDEN).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069"
                     "\ufeff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def name_bytes(path: str) -> bytes:
    """The name as the file system has it."""
    return os.fsencode(path)


def is_text(path: str) -> bool:
    """Whether the name is valid UTF-8 (holds no surrogate escapes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stored(path: str) -> str:
    """Valid text for a payload or a filter: the path itself, or, for a name that is not
    UTF-8, each byte that is not as `\\xNN`. Filters compare these forms on both sides
    (ancestor folders in `dirs`, `--in FOLDER`), so a folder named with such bytes
    filters like any other."""
    if is_text(path):
        return path
    return re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", path)


def path_fields(path: str, key: str = "path") -> dict:
    """The payload (or JSON) fields that name a file: `path` (or `key`), plus its bytes,
    base64, as `path_bytes` (`KEY_bytes`) where it is not text."""
    if is_text(path):
        return {key: path}
    return {key: stored(path), f"{key}_bytes": base64.b64encode(name_bytes(path)).decode("ascii")}


def path_of(payload: dict) -> str:
    """The real path a payload names (surrogate-escaped where it is not text)."""
    raw = payload.get(PATH_BYTES)
    if isinstance(raw, str):
        try:
            return os.fsdecode(base64.b64decode(raw, validate=True))
        except ValueError:
            pass  # a damaged field: the text stand-in is the best there is
    path = payload.get("path", "")
    return path if isinstance(path, str) else ""


def shown(path: str) -> str:
    """For a person (a terminal, a log line, an HTML caption): the path itself when it is
    printable text, else bash's ANSI-C quoting ($'a\\nb.jpg', $'m\\xe9lange.jpg')."""
    if not _UNSAFE.search(path):
        return path
    out = []
    for char in path:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif _UNSAFE.match(char):
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "$'" + "".join(out) + "'"


def printable(text: str) -> str:
    """A message that mentions a path, made safe for one line of a terminal: control
    characters and bytes that are not UTF-8 as \\xNN, the rest as it is."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: "".join(f"\\x{b:02x}" for b in name_bytes(m.group())), text)


def has_control(path: str) -> bool:
    """Whether the name holds a character that would split or fake a line of output (a
    line break, an escape sequence); bytes that are not UTF-8 do not count."""
    return _CONTROL.search(path) is not None
