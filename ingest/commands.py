"""`clipsearch ingest`. Imports only click and the kernel's light modules at top level:
the pipeline (and the model, when a file needs it) loads inside the command."""

from __future__ import annotations

import json
import signal

import click

from clipsearch import config
from clipsearch.errors import ClipsearchError, Terminated, UsageError
from clipsearch.options import exclude_option, index_options, layout_options, quiet_option, setting_option


def pipeline_options(fn):
    """--batch-size, --workers, --max-megapixels: how images are decoded and encoded,
    for every command that embeds files (ingest, reindex)."""
    for decorate in reversed((setting_option("batch_size", "--batch-size", "-b", metavar="N"),
                              setting_option("workers", "--workers", "-w", metavar="N"),
                              setting_option("max_megapixels", metavar="MP"))):
        fn = decorate(fn)
    return fn


def report_options(fn):
    """--report, --quiet, --verbose, --json: what a command that embeds files says."""
    for decorate in reversed((
            click.option("--report", type=click.Path(dir_okay=False), default=None,
                         help="Append skipped files to this JSON-lines file (path, reason)."),
            quiet_option,
            click.option("--verbose", "-v", is_flag=True,
                         help="Say on stderr how images are encoded (ONNX image tower or torch) and why."),
            click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."))):
        fn = decorate(fn)
    return fn


def pipeline_settings(batch_size, workers, max_megapixels) -> dict:
    return {"batch_size": config.value("batch_size", batch_size), "workers": config.value("workers", workers),
            "max_megapixels": config.value("max_megapixels", max_megapixels)}


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@index_options
@layout_options
@pipeline_options
@exclude_option
@setting_option("shard", metavar="I/N")
@setting_option("precision", metavar="fp32|int8")
@click.option("--prune", is_flag=True,
              help="Remove points whose files are gone under FOLDERS, or that the walk now leaves out (under a "
                   "hidden or system folder, or --exclude'd); not those of another shard's files or in a folder "
                   "that cannot be read: they are still there.")
@click.option("--allow-missing", is_flag=True,
              help="Take files that look like a drive or share not mounted for gone: with --prune, prune even "
                   "where more than half of a folder's images (and more than 10) are gone (without it that is "
                   "left, and the run exits 1); a moved file's old point goes even where the folder left above "
                   "it is on another file system than the file was (without it, a copy).")
@click.option("--recheck", is_flag=True,
              help="Compare each file's content fingerprint too, not only its size and time: finds files edited "
                   "with their time kept (exiftool -P shifting dates), at the cost of reading up to 1 MiB of "
                   "every file.")
@report_options
def ingest(folders, settings, batch_size, workers, max_megapixels, exclude, shard, precision, prune, allow_missing,
           recheck, report, quiet, verbose, as_json):
    """Embed the images under FOLDERS into the index (incremental: unchanged files are skipped)."""
    from .pipeline import IngestOptions
    from .pipeline import ingest as run_ingest

    try:
        server = config.value("server", None)  # not ingest's setting: a bad one is not its error
    except ClipsearchError:
        server = None
    if server and settings.backend == "edge" and click.get_current_context().params.get("index") is None:
        from clipsearch.names import shown
        from clipsearch.progress import stderr_line
        from clipsearch.remote import on_this_machine

        # Searches here go to that server: photos ingested into this machine's own index
        # would never be in their answers, and nothing else would say so. Not where that
        # server is this machine's (its index is this one, or held by it), nor into a
        # Qdrant server's collection (serve may answer from it).
        if not on_this_machine(server):
            stderr_line(f"CLIPSEARCH_SERVER is set ({server}), but ingest writes the index here "
                        f"({shown(settings.index)}), which searches through that server never read: ingest on the "
                        "machine serve runs on (or let serve --watch take the folder); --index says this index is "
                        "meant")
    options = IngestOptions(**pipeline_settings(batch_size, workers, max_megapixels), exclude=exclude, prune=prune,
                            allow_missing=allow_missing, report=report, quiet=quiet, shard=config.value("shard", shard),
                            precision=precision or "", verbose=verbose, recheck=recheck)
    # The model loads only when a file needs embedding: an unchanged re-run takes
    # the model's identity from the model cache and imports no torch; on a CPU, the
    # images go through the ONNX image tower, exported by the first run that needs it.
    try:
        summary = run_ingest(folders, settings=settings, options=options)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: the CLI says so and exits 128 + the signal
        kept = getattr(stop, "summary", None)  # what the run committed (ingest/pipeline.py)
        if as_json and kept is not None:
            _echo_stopped_summary(summary_json(kept), stop)
        raise
    except ClipsearchError as failed:  # what it kept, for a script; the CLI's `Error:` line follows
        kept = getattr(failed, "summary", None)
        if as_json and kept is not None:
            try:
                click.echo(json.dumps(summary_json(kept, error=str(failed))))
            except OSError:
                pass  # the output cannot be written either (the same full disk): the error says why
        raise
    if as_json:
        click.echo(json.dumps(summary_json(summary)))
    else:
        click.echo(summary.line())
    # After the summary: the run's work is kept, and a nightly job fails visibly.
    problems = [line for line in (summary.unreached, summary.not_pruned) if line]
    if problems:
        raise ClipsearchError("; ".join(problems))


def summary_json(summary, stopped: str | None = None, error: str | None = None) -> dict:
    """`ingest --json`: the summary's counts, `stopped`, the signal that stopped the run
    (SIGINT, SIGTERM, SIGHUP) or null for a run that finished, and `error`, the line of an
    error that ended it (a full disk) or null. README: "JSON outputs"."""
    return {**summary.__dict__, "stopped": stopped, "error": error}


def _echo_stopped_summary(fields: dict, stop: KeyboardInterrupt) -> None:
    """A stopped run's summary `fields` as JSON on stdout, `stopped` the signal's name:
    what a service reading --json learns of what was kept, before the CLI's stderr line
    and exit status say it stopped."""
    signum = stop.signum if isinstance(stop, Terminated) else signal.SIGINT
    try:
        click.echo(json.dumps({**fields, "stopped": signal.Signals(signum).name}))
    except OSError:
        pass  # a terminal that hung up takes no more output; the exit status still says it


@click.command()
@index_options(model_help="Required: the model to embed the collection's images with, a hub id or local folder.",
               model_default=False)
@layout_options
@pipeline_options
@click.option("--precision", type=click.Choice(config.PRECISIONS), default=None,
              help="Image vectors of the new collection: fp32 or int8.  [default: the old collection's]")
@click.option("--keep-old/--drop-old", default=True, show_default=True,
              help="After the switch, keep the old collection (under the name printed, to switch back by "
                   "reindexing with its model, or to compare) or delete it, with any other version of the name.")
@click.option("--allow-missing", is_flag=True,
              help="Switch even if more than 1% of the images (or 10) are gone or unreadable (without it, a "
                   "drive or share that is not mounted stops the reindex before the switch).")
@report_options
def reindex(settings, batch_size, workers, max_megapixels, precision, keep_old, allow_missing, report, quiet, verbose,
            as_json):
    """Embed the collection's images again with --model (after a fine-tune), then switch to them.

    \b
    The images come from the paths the collection stores (no folder walk). The new
    vectors fill a new collection, <collection>-<key>, while searches keep reading the
    old one; when it holds every image, one switch makes the collection's name mean it
    (an alias on a Qdrant server; on the embedded index, a record in the index folder).
    Stopped or killed, the same command resumes. A model whose image tower is the
    collection's (fine-tuned with --freeze vision) needs no new vectors: reindex only
    records it. On a server, the new collection takes the old one's layout (shards,
    replicas, quantization...) unless layout flags are given. Then ingest, search and
    serve use the new model without --model. --model (or CLIPSEARCH_MODEL) is
    required: the default model is never assumed for hours of embedding.
    """
    from .pipeline import IngestOptions
    from .reindex import reindex as run_reindex

    if not settings.model_named:
        raise UsageError("reindex needs --model (or CLIPSEARCH_MODEL): the model to embed the collection's "
                         "images with, e.g. a fine-tuned folder")

    options = IngestOptions(**pipeline_settings(batch_size, workers, max_megapixels), report=report, quiet=quiet,
                            precision=precision or "", verbose=verbose, shard=None)  # every image: no shards
    try:
        summary = run_reindex(settings, options, keep_old=keep_old, allow_missing=allow_missing)
    except KeyboardInterrupt as stop:  # as ingest's: what it kept, then the CLI's line and 128 + the signal
        kept = getattr(stop, "summary", None)
        if as_json and kept is not None:
            _echo_stopped_summary(kept.__dict__, stop)
        raise
    if as_json:
        click.echo(json.dumps(summary.__dict__))
    elif summary.stopped:
        click.echo(summary.line() + "; stopped before the switch: run the same command to resume")
    else:
        click.echo(summary.line())


COMMANDS = [ingest, reindex]
