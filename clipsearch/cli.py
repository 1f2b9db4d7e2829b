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
    @functools.wraps(fn)
    def wrapper(model, index, collection, device, **kwargs):
        settings = Settings.resolve(model=model, index=index, collection=collection, device=device)
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
    from ingest.pipeline import parse_shard

    from .encoder import Encoder
    from .index import open_index

    if workers is None:
        workers = os.cpu_count() or 1
    options = IngestOptions(batch_size=batch_size, workers=workers, max_megapixels=max_megapixels,
                            exclude=exclude, prune=prune, report=report, quiet=quiet,
                            shard=parse_shard(shard) if shard else None)
    for folder in folders:
        if not os.path.isdir(folder):
            raise ClipsearchError(f"{folder} is not a folder")
    with open_index(settings, create=True) as index:
        if index.exists():  # fail on a model mismatch before loading the model's weights twice
            index.require_collection()
        encoder = Encoder(settings.model, settings.device)
        summary = run_ingest(list(folders), encoder, index, options)
    if as_json:
        click.echo(json.dumps(summary.__dict__))
    else:
        click.echo(summary.line())


@cli.command()
@click.argument("query")
@index_options
@click.option("-k", "--top", "k", type=int, default=10, show_default=True, help="How many hits.")
@click.option("--in", "under", type=click.Path(file_okay=False), default=None,
              help="Only images under this folder.")
@click.option("--min-score", type=float, default=None, help="Drop hits scoring below this cosine similarity.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "paths", "json"]), default="table",
              show_default=True, help="table: rank, score, path; paths: bare paths for xargs; json: one object per line.")
def search(query, settings, k, under, min_score, fmt):
    """Find the images that best match QUERY."""
    from search import Searcher

    from .encoder import Encoder
    from .index import open_index

    if not query.strip():
        raise ClipsearchError("the query is empty; give some words to search for")
    if k < 1:
        raise ClipsearchError(f"-k must be at least 1, got {k}")
    with open_index(settings) as index:
        index.require_collection()
        encoder = Encoder(settings.model, settings.device)
        hits = Searcher(encoder, index).text(query, k=k, under=under, min_score=min_score)
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
    model = facts.get("model")
    lines = [
        f"backend:    {facts['backend']}",
        f"index:      {facts['location']}",
        f"collection: {facts['collection']}" + ("" if facts["exists"] else " (does not exist yet)"),
        f"points:     {facts['points']}",
        f"model:      {model['name'] + ' (image ' + model['image_fingerprint'][:12] + ', dim ' + str(model['dim']) + ')' if model else '-'}",
    ]
    if "hnsw_indexed_vectors" in facts:
        lines.append(f"hnsw:       {facts['hnsw_indexed_vectors']} vectors indexed")
    click.echo("\n".join(lines))


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


def main() -> None:
    cli(prog_name="clipsearch")


if __name__ == "__main__":  # python -m clipsearch.cli
    main()
