"""The ingest stage: embed image folders into the index, incrementally.

    from clipsearch import ingest

    if __name__ == "__main__":                       # the decoders run the script again (spawn)
        summary = ingest(["/photos"])                # the package is callable: ingest.ingest
        print(summary.line())

    walk.py        the image files under the roots (bytes-safe, excludes, extensions),
                   and the same rules for one path (walked_path, image_file)
    pipeline.py    walk -> skip unchanged -> decode pool -> batched encode -> upsert;
                   Ingestor.run(roots), run_files(paths) and remove(paths) for a watcher
    reindex.py     `clipsearch reindex`: the stored paths, embedded by another model
                   into a version of the collection, then the switch of its name
    cores.py       decoding workers and onnxruntime threads, chosen together
    known_bad.py   files an earlier run found unusable, not read again until they change
    report.py      the --report JSON lines of skipped files
    commands.py    `clipsearch ingest`, `clipsearch reindex`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipsearch.lazy_package import lazy_package

__all__ = ["IngestOptions", "IngestSummary", "Ingestor", "ingest",
           "FileEntry", "image_extensions", "walk_images", "walked_path", "image_file"]

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import IngestOptions, Ingestor, IngestSummary, ingest
    from .walk import FileEntry, image_extensions, image_file, walk_images, walked_path

_PIPELINE = ("IngestOptions", "IngestSummary", "Ingestor", "ingest")
lazy_package(__name__, {name: "pipeline" if name in _PIPELINE else "walk" for name in __all__}, call="ingest")
