"""The ingest stage: embed image folders into the index, incrementally.

    from ingest import ingest, IngestOptions
    summary = ingest(["/photos"], encoder, index, IngestOptions(batch_size=32))
"""

from .pipeline import IngestOptions, IngestSummary, Ingestor, ingest

__all__ = ["IngestOptions", "IngestSummary", "Ingestor", "ingest"]
