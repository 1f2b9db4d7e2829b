"""`clipsearch ingest`. Imports only click and the kernel's light modules at top level:
the pipeline (and the model, when a file needs it) loads inside the command."""

from __future__ import annotations

import json

import click

from clipsearch import config
from clipsearch.options import index_options, layout_options, quiet_option, setting_option


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@index_options
@layout_options
@setting_option("batch_size", "--batch-size", "-b", metavar="N")
@setting_option("workers", "--workers", "-w", metavar="N")
@setting_option("max_megapixels", metavar="MP")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files and folders matching GLOB (repeatable).")
@setting_option("shard", metavar="I/N")
@setting_option("precision", metavar="fp32|int8")
@click.option("--prune", is_flag=True, help="Remove points whose files are gone under FOLDERS.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Append skipped files to this JSON-lines file (path, reason).")
@quiet_option
@click.option("--verbose", "-v", is_flag=True,
              help="Say on stderr how images are encoded (ONNX image tower or torch) and why.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest(folders, settings, batch_size, workers, max_megapixels, exclude, shard, precision, prune, report, quiet,
           verbose, as_json):
    """Embed the images under FOLDERS into the index (incremental: unchanged files are skipped)."""
    from .pipeline import IngestOptions
    from .pipeline import ingest as run_ingest

    options = IngestOptions(batch_size=config.value("batch_size", batch_size),
                            workers=config.value("workers", workers),
                            max_megapixels=config.value("max_megapixels", max_megapixels),
                            exclude=exclude, prune=prune, report=report, quiet=quiet,
                            shard=config.value("shard", shard), precision=config.value("precision", precision),
                            verbose=verbose)
    # The model loads only when a file needs embedding: an unchanged re-run takes
    # the model's identity from the model cache and imports no torch; on a CPU, the
    # images go through the ONNX image tower, exported by the first run that needs it.
    summary = run_ingest(folders, settings=settings, options=options)
    if as_json:
        click.echo(json.dumps(summary.__dict__))
    else:
        click.echo(summary.line())


COMMANDS = [ingest]
