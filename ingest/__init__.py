"""The ingest stage: embed image folders into the index, incrementally.

    from clipsearch import ingest
    summary = ingest(["/photos"])                    # the package is callable: ingest.ingest
    print(summary.line())

    walk.py        the image files under the roots (bytes-safe, excludes, extensions)
    pipeline.py    walk -> skip unchanged -> decode pool -> batched encode -> upsert
    known_bad.py   files an earlier run found unusable, not read again until they change
    report.py      the --report JSON lines of skipped files
    commands.py    `clipsearch ingest`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipsearch.lazy_package import lazy_package

__all__ = ["IngestOptions", "IngestSummary", "Ingestor", "ingest"]

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import IngestOptions, Ingestor, IngestSummary, ingest

lazy_package(__name__, {name: "pipeline" for name in __all__}, call="ingest")
