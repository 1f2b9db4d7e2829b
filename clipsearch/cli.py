"""The `clipsearch` command line. Each command is a thin call into a stage.

Heavy libraries (torch, sentence-transformers, qdrant-client) are imported inside the
commands that need them, so `clipsearch --help` and `clipsearch status` start fast.
Every option that configures the index or model has an environment-variable twin;
flags win over the environment, which wins over defaults (clipsearch/config.py).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .config import DEFAULT_COLLECTION, DEFAULT_MODEL, Settings
from .errors import ClipsearchError


class CliGroup(click.Group):
    """Turns a ClipsearchError anywhere below into `Error: <one line>` and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; everything committed so far is kept.", err=True)
            ctx.exit(130)


def index_options(fn):
    """--model, --index, --collection, --device: which model and which collection."""
    @click.option("--model", "-m", default=None, metavar="NAME|DIR",
                  help=f"CLIP model: hub id or local folder. Env: CLIPSEARCH_MODEL. Default: {DEFAULT_MODEL}")
    @click.option("--index", default=None, metavar="DIR|URL",
                  help="Index: a folder (embedded Qdrant), http(s)://host:6333 (Qdrant server) or :memory:. "
                       "Env: CLIPSEARCH_INDEX, then QDRANT_URL. Default: the user data dir.")
    @click.option("--collection", "-c", default=None,
                  help=f"Collection name. Env: CLIPSEARCH_COLLECTION. Default: {DEFAULT_COLLECTION}")
    @click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda", "mps"]),
                  help="Where the model runs. Env: CLIPSEARCH_DEVICE. Default: auto (cuda when available).")
    @click.option("--grpc/--rest", "grpc", default=None,
                  help="Protocol to a Qdrant server: gRPC (port 6334) or REST. Env: CLIPSEARCH_GRPC. Default: REST.")
    @functools.wraps(fn)
    def wrapper(model, index, collection, device, grpc, **kwargs):
        settings = Settings.resolve(model=model, index=index, collection=collection, device=device, grpc=grpc)
        return fn(settings=settings, **kwargs)

    return wrapper


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def cli():
    """Search your images with words. CLIP embeddings in a Qdrant index.

    \b
      clipsearch ingest ~/Pictures
      clipsearch search "a dog running on the beach" -k 5
      clipsearch status
    """


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@index_options
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True,
              envvar="CLIPSEARCH_BATCH_SIZE", show_envvar=True, help="Images per model batch.")
@click.option("--workers", "-w", type=click.IntRange(min=0), default=None, envvar="CLIPSEARCH_WORKERS",
              show_envvar=True, help="Decoding processes; 0 decodes in this process.  [default: cores]")
@click.option("--max-megapixels", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              envvar="CLIPSEARCH_MAX_MEGAPIXELS", show_envvar=True,
              help="Skip (and report) images larger than this instead of decoding them.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files and folders matching GLOB (repeatable).")
@click.option("--shard", default=None, metavar="I/N", envvar="CLIPSEARCH_SHARD", show_envvar=True,
              help="Take only shard I of N (by a stable hash of each path): N machines fill one server "
                   "collection with no overlap.")
@click.option("--prune", is_flag=True, help="Remove points whose files are gone under FOLDERS.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Append skipped files to this JSON-lines file (path, reason).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; print only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest(folders, settings, batch_size, workers, max_megapixels, exclude, shard, prune, report, quiet, as_json):
    """Embed the images under FOLDERS into the index (incremental: unchanged files are skipped)."""
    from ingest import IngestOptions, ingest as run_ingest
    from ingest.pipeline import parse_shard, resolve_roots

    from .index import open_index
    from .lazy_encoder import LazyEncoder

    if workers is None:
        workers = os.cpu_count() or 1
    options = IngestOptions(batch_size=batch_size, workers=workers, max_megapixels=max_megapixels,
                            exclude=exclude, prune=prune, report=report, quiet=quiet,
                            shard=parse_shard(shard) if shard else None)
    roots = resolve_roots(folders)  # before the index is created
    with open_index(settings, create=True) as index:
        # The model loads only when a file needs embedding: an unchanged re-run takes
        # the model's identity from the model cache and imports no torch.
        encoder = LazyEncoder(settings.model, settings.device)
        summary = run_ingest(roots, encoder, index, options)
    if as_json:
        click.echo(json.dumps(summary.__dict__))
    else:
        click.echo(summary.line())


@cli.command()
@click.argument("query", required=False)
@index_options
@click.option("-k", "--top", "k", type=int, default=10, show_default=True, help="How many hits.")
@click.option("--image", "-i", default=None, metavar="PATH",
              help="Search by an example image (left out of its own results). A QUERY that is an image file does the same.")
@click.option("--add", multiple=True, metavar="[W:]TEXT|IMAGE",
              help="Add a term to the query, optionally weighted: --add 2:sunset (repeatable).")
@click.option("--subtract", multiple=True, metavar="[W:]TEXT|IMAGE",
              help="Subtract a term from the query: --subtract people (repeatable).")
@click.option("--queries", type=click.File("r"), default=None,
              help="Answer each line of this file (text or image path) as its own query, loading the model once.")
@click.option("--in", "under", type=click.Path(file_okay=False), default=None,
              help="Only images under this folder (filtered inside the index, not afterwards).")
@click.option("--min-score", type=float, default=None, help="Drop hits scoring below this cosine similarity.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "paths", "json"]), default="table",
              show_default=True,
              help="table: rank, score, path; paths: bare paths for xargs; json: one object per hit "
                   "(with --queries: one object keyed by query).")
@click.option("--gallery", type=click.Path(dir_okay=False), default=None, metavar="FILE.html",
              help="Also write an HTML page of the hits as thumbnails with scores.")
@click.option("--verbose", "-v", is_flag=True,
              help="On stderr: whether the fast text path (cached ONNX text tower, no torch) or the full "
                   "model answered and why, and the time each step took.")
def search(query, settings, k, image, add, subtract, queries, under, min_score, fmt, gallery, verbose):
    """Find the images that best match QUERY (text, or an image file)."""
    from .timings import TIMINGS_ENV, Timings

    timings = Timings()
    say = (lambda message: click.echo(f"clipsearch: {message}", err=True)) if verbose else None
    with timings.phase("imports"):
        from search.engine import Searcher, build_terms, check_k

        from .fast_text import QueryEncoders
        from .index import open_index

    check_k(k)
    if queries is not None:
        lines = [line.strip() for line in queries if line.strip()]
        if not lines:
            raise ClipsearchError(f"{queries.name} holds no queries")
        if query is not None or image is not None:
            raise ClipsearchError("give either QUERY/--image or --queries, not both")
        batches = [(line, build_terms(line, None, add, subtract)) for line in lines]
    else:
        batches = [(query if query is not None else image, build_terms(query, image, add, subtract))]
    # The text encoder: the cached ONNX text tower (fast), or the full model (clipsearch/fast_text.py).
    encoders = QueryEncoders(settings, say=say, timings=timings)
    fast = encoders.fast()
    if fast is not None:  # its ONNX run goes on while the index opens (fast_text.py: prefetch)
        fast.prefetch([t.value for _, terms in batches for t in terms if t.kind == "text"])
    with timings.phase("index open"):
        index = open_index(settings)
    try:
        with timings.phase("index open"):
            index.require_collection()
        encoder = encoders.get()
        with timings.phase("index open"):  # the model check and the count
            searcher = Searcher(encoder, index)
        with timings.phase("search"):  # less the encoding, counted apart
            results = [(label, searcher.terms(terms, k=k, under=under, min_score=min_score))
                       for label, terms in batches]
    finally:
        with timings.phase("index close"):
            index.close()
    # Printed after the index is closed, so that a pipeline's next clipsearch finds it free.
    with timings.phase("output"):
        print_results(results, fmt, keyed=queries is not None)
        if gallery:
            from search import write_gallery

            write_gallery(gallery, results)
            click.echo(f"gallery: {os.path.abspath(gallery)}", err=True)
    if verbose:
        click.echo(f"clipsearch: {timings.line()}", err=True)
    sys.stdout.flush()
    encoders.finish()  # a first-use export, after the answer is out
    if os.environ.get(TIMINGS_ENV):  # for bench/cold_query.py
        timings.write(os.environ[TIMINGS_ENV], path=encoders.path)
    if _console_script:
        # The answer is out, the index closed, every cache file written: skip the
        # interpreter's teardown (unloading onnxruntime, numpy and the engine), which
        # costs about 0.1 s of a one-second cold query. Only for the console script:
        # a caller that invoked `cli` itself (tests, scripts) keeps its process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def print_results(results, fmt: str, keyed: bool) -> None:
    if fmt == "json" and keyed:
        click.echo(json.dumps({label: [h.to_dict() for h in hits] for label, hits in results}))
        return
    for label, hits in results:
        if keyed and fmt == "table":
            click.echo(f"# {label}")
        for hit in hits:
            if fmt == "paths":
                click.echo(hit.path)
            elif fmt == "json":
                click.echo(json.dumps(hit.to_dict()))
            else:
                click.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.path}")
        if not hits and fmt == "table":
            click.echo("no hits", err=True)


@cli.command()
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def status(settings, as_json):
    """Show the backend, collection, number of images and model of the index."""
    from .index import open_index

    with open_index(settings) as index:
        facts = index.describe()
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(format_status(facts))


@cli.command()
@index_options
@click.option("--to", "to", required=True, metavar="URL|DIR",
              help="Target index: a Qdrant server URL (the usual case), another folder, or :memory:.")
@click.option("--to-collection", default=None, help="Target collection name. Default: the source's name.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True,
              help="Points per request.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; print only the summary.")
def migrate(settings, to, to_collection, batch_size, quiet):
    """Copy a collection (vectors, payloads, model identity) to another index, e.g. a
    Qdrant server. Resumable: run it again after an interruption."""
    from .index import open_index
    from .migrate import migrate as run_migrate
    from .progress import Progress

    target_settings = settings.with_overrides(index=to, collection=to_collection or settings.collection)
    if (target_settings.index, target_settings.collection) == (settings.index, settings.collection):
        raise ClipsearchError("--to names the source collection itself")
    with open_index(settings) as source:
        source.require_collection()
        with open_index(target_settings, create=True) as target:
            summary = run_migrate(source, target, batch_size, Progress(quiet=quiet))
    click.echo(summary.line())


def format_status(facts: dict) -> str:
    model = facts.get("model")
    backend = facts["backend"] + (f" ({facts['protocol']})" if "protocol" in facts else "")
    lines = [f"backend:      {backend}", f"index:        {facts['location']}"]
    if "server_version" in facts:
        lines.append(f"server:       Qdrant {facts['server_version']}")
    lines += [
        f"collection:   {facts['collection']}" + ("" if facts["exists"] else " (does not exist yet)"),
        f"points:       {facts['points']}",
        "model:        " + (f"{model['name']} (image {model['image_fingerprint'][:12]}, dim {model['dim']})"
                            if model else "-"),
    ]
    if facts["exists"] and "indexed_vectors" in facts:
        indexed = facts["indexed_vectors"]
        state = (f"HNSW over {indexed} of {facts['points']} vectors" if indexed
                 else "exact scan (no HNSW graph yet; ingest builds one once the collection is large)")
        if facts.get("status"):
            state += f", collection status {facts['status']}"
        if facts.get("indexing_paused"):
            state += ("; indexing paused by an ingest (running now, or stopped before it finished: "
                      "the next ingest restores it)")
        lines.append(f"search index: {state}")
    return "\n".join(lines)


def _add_stage_commands() -> None:
    """Stages may bring their own commands (finetune/commands.py: `COMMANDS`). Those
    modules import only click at top level, so --help stays fast."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("finetune.commands") is None:
        return
    for command in importlib.import_module("finetune.commands").COMMANDS:
        cli.add_command(command)


_add_stage_commands()


# Set by main(), the console script's entry point (see the end of `search`).
_console_script = False


def main() -> None:
    global _console_script
    _console_script = True
    cli(prog_name="clipsearch")


if __name__ == "__main__":  # python -m clipsearch.cli
    main()
