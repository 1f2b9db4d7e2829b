"""`clipsearch search`. Imports only click and the kernel's light modules at top level:
a cold query's time budget is about one second (bench/cold_query.py)."""

from __future__ import annotations

import json
import os
import sys

import click

from clipsearch import config
from clipsearch.errors import ClipsearchError
from clipsearch.options import index_options


@click.command()
@click.argument("query", required=False)
@index_options
@click.option("-k", "--top", "k", type=int, default=10, show_default=True, help="How many hits.")
@click.option("--image", "-i", default=None, metavar="PATH",
              help="Search by an example image (left out of its own results). "
                   "A QUERY that is an image file does the same.")
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
    from clipsearch.timings import Timings

    timings = Timings()
    say = (lambda message: click.echo(f"clipsearch: {message}", err=True)) if verbose else None
    with timings.phase("imports"):
        from clipsearch.encoders import QueryEncoders
        from clipsearch.index import open_index

        from .engine import Searcher, build_terms, check_k

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
    # The text encoder: the cached ONNX text tower (fast), or the full model (clipsearch/encoders/query.py).
    encoders = QueryEncoders(settings, say=say, timings=timings)
    fast = encoders.fast()
    if fast is not None:  # its ONNX run goes on while the index opens (encoders/query.py: prefetch)
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
            from .gallery import write_gallery

            write_gallery(gallery, results)
            click.echo(f"gallery: {os.path.abspath(gallery)}", err=True)
    if verbose:
        click.echo(f"clipsearch: {timings.line()}", err=True)
    sys.stdout.flush()
    encoders.finish()  # a first-use export, after the answer is out
    timings_file = config.value("timings")
    if timings_file:  # for bench/cold_query.py
        timings.write(timings_file, path=encoders.path)
    if (click.get_current_context().find_root().obj or {}).get("console_script"):
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


COMMANDS = [search]
