"""Files a command writes where the user says (--report, --gallery): refused before the
work starts when they could not be written at all, not after an hour of it."""

from __future__ import annotations

import os

from .errors import ClipsearchError
from .names import shown


def check_output_file(path: str, flag: str, what: str) -> None:
    """A `flag` PATH whose folder is not there or not writable, or that names a folder,
    is a one-line error; `what` says what the file holds ("to append the skipped files
    to"). Opens nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ClipsearchError(f"{flag} {shown(path)} is a folder; give a file {what}")
    if not os.path.isdir(folder):
        raise ClipsearchError(f"{flag} {shown(path)}: folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) and not os.access(path, os.W_OK):
        raise ClipsearchError(f"{flag} {shown(path)}: folder {shown(folder)} is not writable")
