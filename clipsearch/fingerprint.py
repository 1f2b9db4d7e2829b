"""A file's content fingerprint: how a moved or copied photo is recognised without
decoding it.

rclip's partial hash: the size, the first MiB and the last KiB, hashed (BLAKE2b, 128
bits). A photo's first MiB holds its headers, EXIF and the start of its compressed
data, and any edit to the pixels rewrites the compressed stream to the end, so two
different photos agree on all three only by construction. It costs one open and at most
two reads, whatever the file's size (a full hash of a 12 MP JPEG reads four times as
much, which is what a NAS over the network pays for): BENCHMARKS.md gives the figures.
`duplicates` compares the full bytes of a group before calling it byte-identical.

Two files can agree on those parts and differ in between (an uncompressed TIFF
retouched in the middle keeps its size, header and end), so a file larger than the
parts read also gets a `content_hash` of all its bytes, made in the decode worker while
the file is in the page cache; a moved or copied file of that size reuses a vector only
when its own full hash matches too. For a smaller file the fingerprint already reads
every byte.
"""

from __future__ import annotations

import hashlib
import os

HEAD = 1 << 20  # the first MiB
TAIL = 1 << 10  # the last KiB
# Recorded with the hash: a later change of algorithm must not match old fingerprints.
SCHEME = "p1"


def fingerprint(path: str | bytes, size: int | None = None) -> str:
    """'p1:<32 hex digits>'. Raises OSError when the file cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        digest.update(f.read(HEAD))
        if size > HEAD:
            f.seek(max(HEAD, size - TAIL))
            digest.update(f.read(TAIL))
    return f"{SCHEME}:{digest.hexdigest()}"


def covers_whole(size: int) -> bool:
    """Whether `fingerprint` reads every byte of a file of this size."""
    return size <= HEAD + TAIL


def content_hash(path: str | bytes) -> str:
    """'b2:<32 hex digits>': BLAKE2b of every byte."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):  # hashlib.file_digest is Python 3.11+
            digest.update(block)
    return "b2:" + digest.hexdigest()


def same_bytes(first: str | bytes, second: str | bytes, chunk: int = 1 << 20) -> bool:
    """Whether two files hold exactly the same bytes (for files whose fingerprints match)."""
    with open(first, "rb") as a, open(second, "rb") as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            return False
        while True:
            left, right = a.read(chunk), b.read(chunk)
            if left != right:
                return False
            if not left:
                return True
