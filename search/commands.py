"""`clipsearch search`. Imports only click and the kernel's light modules at top level:
a cold query's time budget is about one second (bench/cold_query.py)."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import NamedTuple

import click

from clipsearch import config
from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.names import has_control, name_bytes, printable, shown
from clipsearch.options import format_option, index_options, server_options
from clipsearch.output_files import check_output_file


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # nan passed every hit and kept none
        raise click.BadParameter(f"{value} is not a finite number")
    return value


# -k's ceiling: any more is an export, not a search (and 2**64 overflowed the engine's beam width).
MAX_TOP = 1_000_000
LOCAL_ONLY = ("With --server, --model, --index, --collection, --device and --grpc/--rest are ignored: "
              "the server answers with its own (a given --index or --collection is said ignored). Without "
              "the flag, an --index or --collection works here even with CLIPSEARCH_SERVER set.")


@click.command()
@click.argument("query", required=False)
@index_options
@click.option("-k", "--top", "k", type=click.IntRange(max=MAX_TOP), default=10, show_default=True,
              help="How many hits.")
@click.option("--image", "-i", default=None, metavar="PATH",
              help="Search by an example image (left out of its own results). "
                   "A QUERY that is an image file does the same (one word with an image extension that "
                   "names no file, or a path of a folder, is an error, not text).")
@click.option("--add", multiple=True, metavar="[W:]TEXT|IMAGE",
              help="Add a term to the query, optionally weighted: --add 2:sunset (repeatable).")
@click.option("--subtract", multiple=True, metavar="[W:]TEXT|IMAGE",
              help="Subtract a term from the query: --subtract people (repeatable).")
@click.option("--queries", type=click.File("rb"), default=None,
              help="Answer each line of this file (text or image path) as its own query, loading the model once. "
                   "A line that cannot be answered (an unusable or missing image) is named on stderr as FILE:LINE "
                   "and left out of the output; the others are answered, and the exit status is 1. With -f "
                   "paths an empty line ends each line's hits, with -f paths0 an empty name (a skipped line's "
                   "group is empty: the n-th group answers the n-th distinct line).")
@click.option("--in", "under", type=click.Path(file_okay=False), default=None,
              help="Only images under this folder (filtered inside the index, not afterwards).")
@click.option("--min-score", type=float, default=None, callback=lambda ctx, param, value: _finite(value),
              help="Drop hits scoring below this cosine similarity.")
@click.option("--after", metavar="DATE", default=None,
              help="Only photos taken at or after the start of DATE (YYYY, YYYY-MM, YYYY-MM-DD or "
                   "YYYY-MM-DDTHH:MM; EXIF capture time, the camera's clock).")
@click.option("--before", metavar="DATE", default=None,
              help="Only photos taken before the start of DATE: --after 2023 --before 2024 is the year 2023.")
@click.option("--camera", metavar="TEXT", default=None,
              help="Only photos from a camera whose make and model hold every word of TEXT, any case "
                   "(--camera canon, --camera \"eos 5d\"); a word of letters also matches a word it begins "
                   "(fuji: FUJIFILM), a word with digits only whole (5d: not 5DS).")
@click.option("--near", metavar="LAT,LON,KM", default=None,
              help="Only photos taken within KM kilometres of LAT,LON (EXIF GPS).")
@format_option(
              help="table: rank, score, path; paths: bare paths, one a line; paths0: paths ending in NUL, "
                   "exact for `xargs -0`; json: one object per hit (with --queries: one object keyed by query). "
                   "Names with control characters are quoted $'...' in table and paths.")
@click.option("--gallery", type=click.Path(dir_okay=False), default=None, metavar="FILE.html",
              help="Also write an HTML page of the hits as thumbnails with scores.")
@click.option("--verbose", "-v", is_flag=True,
              help="On stderr: whether the fast text path (cached ONNX text tower, no torch) or the full "
                   "model answered and why, and the time each step took.")
@server_options(
    "Ask a running `clipsearch serve` (http://host:8765) instead of opening the index here: no model "
    "and no index are loaded in this process. --image and an image QUERY upload the file; --add/--subtract "
    "take text only. " + LOCAL_ONLY)
def search(query, settings, k, image, add, subtract, queries, under, min_score, after, before, camera, near, fmt,
           gallery, verbose, server, token):
    """Find the images that best match QUERY (text, or an image file)."""
    from .filters import absent_folder_note, build_where, empty_answer_note, filters_line

    where = build_where(after, before, camera, near)  # a bad value fails before anything loads
    if gallery:
        check_output_file(gallery, "--gallery", "to write the page to")
    if server:  # the server parses the filters' text again, as here
        photo = {"after": after, "before": before, "camera": camera, "near": near}
        return search_remote(server, token, query, k, image, add, subtract, queries,
                             under, min_score, fmt, gallery, verbose, photo)
    chosen_by = filters_line(after, before, camera, near, under, min_score)
    from clipsearch.timings import Timings

    timings = Timings()
    say = (lambda message: click.echo(f"clipsearch: {message}", err=True)) if verbose else None
    with timings.phase("imports"):
        from clipsearch.encoders import QueryEncoders
        from clipsearch.index import names_no_model, open_index, with_collection_model, with_recorded_model

        from .engine import Searcher, build_terms, check_k, extra_terms
        from .terms import Term, UnusableQuery, query_term, terms_title

    check_k(k)
    skipped: list[tuple[int, str]] = []  # (line number, why): --queries lines that cannot be answered
    batches: list[tuple[str, list[Term], int]] = []  # (label, terms, line number: 0 for QUERY/--image)
    if queries is not None:
        lines = query_lines(queries, query, image)
        extra = extra_terms(add, subtract)  # a bad --add or --subtract is every query's: it stops the run
        for line in lines:
            try:
                if line.error is not None:
                    raise ClipsearchError(line.error)
                batches.append((line.text, [query_term(line.text), *extra], line.number))
            except ClipsearchError as exc:  # the line's own: a missing image, a folder, words not UTF-8
                skipped.append((line.number, str(exc)))
    else:
        batches = [(query if query is not None else image, build_terms(query, image, add, subtract), 0)]
    # The text encoder: the cached ONNX text tower (fast), or the full model (clipsearch/encoders/query.py),
    # of the model the collection records where none is named, known before the index opens when embedded.
    with timings.phase("index open"):
        settings = with_recorded_model(settings, say)
    encoders = QueryEncoders(settings, say=say, timings=timings)
    fast = encoders.fast()
    if fast is not None:  # its ONNX run goes on while the index opens (encoders/query.py: prefetch)
        fast.prefetch([t.value for _, terms, _ in batches for t in terms if t.kind == "text"])
    with timings.phase("index open"):
        index = open_index(settings)
    try:
        with timings.phase("index open"):
            index.require_collection()
            # A named model (or one adopted before the open) needs no record read here:
            # the model check below reads it.
            adopted = with_collection_model(settings, index.stored_identity(), say) \
                if names_no_model(settings) else settings
        if adopted is not settings:  # a server's record: known only now
            encoders = QueryEncoders(adopted, say=say, timings=timings)
        encoder = encoders.get()
        # The model check reads the record again, after the model load: a reindex that
        # switched the name meanwhile (seconds, on the torch path) is refused here, not
        # answered with another model's vectors. On a server that is one request more.
        with timings.phase("index open"):  # the model check and the count
            searcher = Searcher(encoder, index)
            copy = index.unfinished_copy()  # a server's: from the record the model check has just read
        with timings.phase("search"):  # less the encoding, counted apart
            results = []
            titles: list[str] = []  # each result's heading in a --gallery: the terms, --add's too
            answered: list[int] = []  # the --queries line of each result
            for label, terms, number in batches:
                try:
                    results.append((label, searcher.terms(terms, k=k, under=under, min_score=min_score,
                                                          where=where)))
                    titles.append(terms_title(terms))
                    answered.append(number)
                except UnusableQuery as exc:
                    # The line's own image, or its terms cancelling out; an --add image that
                    # cannot be used is every line's, and stops the run.
                    if not number or exc.path not in (None, terms[0].value):
                        raise
                    reason = (f"cannot use {shown(label)} as a query image: {exc.reason}" if exc.path is not None
                              else str(exc))
                    skipped.append((number, reason))
            # An empty filtered answer says which filter no photo meets, while the index is open.
            why_empty = empty_answer_note(index, where) if where and not any(h for _, h in results) else None
    finally:
        with timings.phase("index close"):
            index.close()
    # Printed after the index is closed, so that a pipeline's next clipsearch finds it free.
    with timings.phase("output"):
        gallery_failed = None
        if gallery:  # before stdout, which a reader may close early (| head): the page is still made
            from .gallery import attempted, write_gallery

            sections = [(title, hits) for title, (_, hits) in zip(titles, results)]
            gallery_failed = attempted(lambda: write_gallery(gallery, sections, filters=chosen_by))
        print_results(results, fmt, keyed=queries is not None, lines=(answered, skipped))
        report_skipped(queries, skipped)
        note = absent_folder_note(under, any(hits for _, hits in results))
        for line in (note, why_empty):
            if line:
                click.echo(line, err=True)
        if copy:
            from clipsearch.index.commands import unfinished_copy_text

            click.echo(f"note: {unfinished_copy_text(copy)}", err=True)
        if gallery_failed:  # the hits are out all the same
            raise gallery_failed
        if gallery:
            click.echo(f"gallery: {shown(os.path.abspath(gallery))}", err=True)
    if verbose:
        click.echo(f"clipsearch: {timings.line()}", err=True)
    if sys.stdout is not None:  # None where the shell closed it (>&-)
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
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(1 if skipped else 0)
    if skipped:  # the answers are out; a script still notices the lines left unanswered
        click.get_current_context().exit(1)


class QueryLine(NamedTuple):
    """A --queries line: its number in the file (blank lines counted) and its text, or
    why it cannot be a query (`error`, then `text` is the line as decoded for a key)."""

    number: int
    text: str
    error: str | None = None


def query_lines(queries, query, image) -> list[QueryLine]:
    """The --queries file's distinct non-blank lines, in order, with their line numbers
    in the file (a repeated one is answered once, under its first number: the JSON output
    is keyed by the query); it stands alone. A line that is not UTF-8 is an image's path
    when a file has that name (a file name is bytes: `find` writes them as they are),
    else a line that cannot be answered. Where no line beyond ASCII is UTF-8 text or a
    file's name, the file is in another encoding (Latin-1, UTF-16): an error for the
    whole file, naming its first such line."""
    if query is not None or image is not None:  # before the file is read: it may be stdin
        raise UsageError("give either QUERY/--image or --queries, not both")
    lines: list[QueryLine] = []
    undecodable: list[tuple[int, int]] = []  # (line number, the first byte that is not UTF-8)
    other_encoding = True  # until a line beyond ASCII is UTF-8 text or a file's name
    for number, raw in enumerate(queries, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # the BOM some editors write: not part of the query
            raw = raw[3:]
            other_encoding = False  # it says UTF-8
        error = None
        try:
            line = raw.decode("utf-8").strip()
            other_encoding = other_encoding and raw.isascii()
        except UnicodeDecodeError as exc:
            line = os.fsdecode(raw.rstrip(b"\r\n"))
            if os.path.isfile(line):
                other_encoding = False
            else:
                undecodable.append((number, exc.object[exc.start]))
                error = (f"the line is not UTF-8 text (it holds the byte {exc.object[exc.start]:#04x}) nor the name "
                         "of a file")
        if line:
            lines.append(QueryLine(number, line, error))
    if undecodable and other_encoding:
        number, byte = undecodable[0]
        raise ClipsearchError(f"--queries {shown(queries.name)} line {number} is not UTF-8 text (it holds "
                              f"the byte {byte:#04x}) nor the name of a file; save it as UTF-8")
    if not lines:
        raise ClipsearchError(f"--queries {shown(queries.name)} holds no queries")
    first: dict[str, QueryLine] = {}
    for entry in lines:
        first.setdefault(entry.text, entry)
    return list(first.values())


def report_skipped(queries, skipped: list[tuple[int, str]]) -> None:
    """One line on stderr for each --queries line left unanswered, in the file's order,
    as FILE:LINE: why (the form of a compiler's message, which editors jump to)."""
    for number, reason in sorted(skipped):
        click.echo(printable(f"{shown(queries.name)}:{number}: {reason}"), err=True)


def search_remote(server, token, query, k, image, add, subtract, queries, under, min_score, fmt, gallery,
                  verbose, photo=None) -> None:
    """`search --server`: each query is one request to clipsearch serve (an image
    QUERY or --image uploads the file); printed as a local search prints."""
    import time

    from clipsearch.remote import ServeClient, ServeRefused, server_folder

    from .terms import (
        Term,
        UnusableQuery,
        looks_like_image_path,
        parse_term,
        query_term,
        refuse_missing_image,
        terms_title,
    )

    started = time.perf_counter()
    if k < 1:  # as engine.check_k, which imports numpy: a remote search loads none
        raise UsageError(f"-k must be at least 1, got {k}")
    given = [*((a, 1.0, "--add") for a in add), *((s, -1.0, "--subtract") for s in subtract)]
    for spec, sign, option in given:
        if parse_term(spec, sign, option).kind == "image":
            raise UsageError(f"{option} {spec!r} names an image file: with --server, {option} takes text "
                             "only (the server opens no file a client names); use --image for one example image")
    skipped: list[tuple[int, str]] = []  # (line number, why), as a local search reports them
    asks: list[tuple[str | None, str | None, int]] = []  # (label, image to upload or None, line number or 0)
    if queries is not None:
        for line in query_lines(queries, query, image):
            try:
                if line.error is not None:
                    raise ClipsearchError(line.error)
                term: Term = query_term(line.text)  # as locally: a missing image, words not UTF-8
                if term.kind == "image" and (problem := _upload_problem(os.path.expanduser(line.text))):
                    raise UnusableQuery(f"cannot use {shown(line.text)} as a query image: {problem}")
            except ClipsearchError as exc:
                skipped.append((line.number, str(exc)))
                continue
            asks.append((line.text, line.text if term.kind == "image" else None, line.number))
    elif image is not None:
        if query is not None:
            raise UsageError("with --server, give either QUERY or --image, not both (the server searches by "
                             "one uploaded image alone)")
        asks = [(image, image, 0)]
    else:
        if query is not None and not query.strip():
            raise UsageError("the query is empty; give some words to search for")
        asks = [(query, query if query is not None and looks_like_image_path(query) else None, 0)]
        if query is not None:
            refuse_missing_image(query, "the query")
    if (add or subtract) and any(image_path is not None for _, image_path, _ in asks):  # before any request
        raise UsageError("with --server, an example image cannot be mixed with --add/--subtract "
                         "(the server searches by one uploaded image alone)")
    folder = server_folder(under)
    client = ServeClient(server, token)
    results = []
    answered: list[int] = []  # the --queries line of each result
    for label, image_path, number in asks:
        if image_path is None:
            hits = client.search(query=label.strip() if label is not None else None, add=add, subtract=subtract,
                                 k=k, under=folder, min_score=min_score, photo=photo)
        else:
            wanted = k + 1 if k < 1000 else k  # one more: the image itself may come back first
            try:
                found = client.search_image(os.path.expanduser(image_path), k=wanted, under=folder,
                                            min_score=min_score, photo=photo)
            except ServeRefused as exc:  # the server refused the upload as an image (415) or its size (413)
                if not number or exc.status not in (413, 415):
                    raise
                skipped.append((number, f"cannot use {shown(image_path)} as a query image: {exc}"))
                continue
            hits = _without_itself(found, image_path, k)
        results.append((label, hits))
        answered.append(number)
    from .filters import filters_line
    from .gallery import attempted

    # The page before stdout, which a reader may close early (| head); its failure after the hits.
    extra = [parse_term(spec, sign, option, images=False) for spec, sign, option in given]
    sections = [(terms_title([Term("text", label or "", 1.0), *extra]), hits) for label, hits in results]
    photo = photo or {}
    chosen_by = filters_line(photo.get("after"), photo.get("before"), photo.get("camera"), photo.get("near"),
                             under, min_score)
    gallery_failed = (attempted(lambda: write_remote_gallery(gallery, client, sections, chosen_by)) if gallery
                      else None)
    print_results(results, fmt, keyed=queries is not None, lines=(answered, skipped))
    report_skipped(queries, skipped)
    if gallery_failed:
        raise gallery_failed
    if gallery:
        click.echo(f"gallery: {shown(os.path.abspath(gallery))}", err=True)
    if verbose:
        click.echo(f"clipsearch: answered by clipsearch serve at {server} ({len(results)} request(s), "
                   f"{time.perf_counter() - started:.3f} s)", err=True)
    if skipped:  # the answers are out; a script still notices the lines left unanswered
        click.get_current_context().exit(1)


def _upload_problem(path: str) -> str | None:
    """Why a --queries line's image cannot be uploaded, found here (in the words a local
    search uses) rather than as the server's refusal; None when it can be read."""
    try:
        with open(path, "rb") as handle:
            return None if handle.read(1) else "empty file (0 bytes)"
    except PermissionError:
        return "unreadable: permission denied"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"


def _without_itself(hits, image_path: str, k: int):
    """An uploaded image that is itself indexed (the server's paths are this machine's)
    is left out of its own results, as a local search leaves it out; k hits at most."""
    import dataclasses

    own = os.path.realpath(os.path.expanduser(image_path))
    kept = [hit for hit in hits if hit.path != own][:k]
    return [dataclasses.replace(hit, rank=rank) for rank, hit in enumerate(kept, start=1)]


def write_remote_gallery(path: str, client, results, filters: str | None = None,
                         urls=lambda hit: (hit.thumbnail, hit.file)) -> None:
    """search/gallery.py's page, its thumbnails fetched from the server (with the token)
    and embedded as data URIs; each links to the server's copy of the file. `urls(item)`:
    an item's thumbnail and file paths on the server (a hit's own, by default)."""
    from clipsearch.remote import data_uri

    from .gallery import write_gallery

    def thumbnail(item):
        try:
            return data_uri(client.thumbnail(urls(item)[0])) if urls(item)[0] else None
        except ClipsearchError:  # gone or changed since ingest (410), or not an image any more
            return None

    write_gallery(path, results, thumbnail=thumbnail, link=lambda item: client.url + (urls(item)[1] or ""),
                  filters=filters)


def print_results(results, fmt: str, keyed: bool, lines: tuple[list[int], list[tuple[int, str]]] = ([], [])) -> None:
    """Hits on stdout. A file name is bytes, and a name may hold a newline: `json` escapes
    it (ASCII JSON; a name that is not UTF-8 as Python's surrogate escapes, which
    os.fsencode turns back into its bytes), `table` quotes such a name as bash would
    ($'...', clipsearch/names.py), `paths` writes each name's bytes on a line and quotes
    only a name holding a line break or control character, `paths0` writes exact bytes
    ending in NUL, for `xargs -0`. `lines`: the --queries line of each result, and the
    skipped lines: bare paths, which carry no query, give a skipped line an empty group,
    so that the n-th group answers the n-th query line."""
    if fmt == "json" and keyed:
        click.echo(json.dumps({label: [h.to_dict() for h in hits] for label, hits in results}))
        return
    answered, skipped = lines
    if keyed and fmt in ("paths", "paths0") and skipped:
        by_line = dict(zip(answered, results))
        results = [by_line.get(line, ("", [])) for line in sorted({*answered, *(n for n, _ in skipped)})]
    quoted = 0
    for label, hits in results:
        if keyed and fmt == "table":
            click.echo(f"# {shown(label)}")
        for hit in hits:
            if fmt == "paths0":
                click.echo(name_bytes(hit.path) + b"\0", nl=False)
            elif fmt == "paths":
                if has_control(hit.path):  # its bytes would split or fake a line
                    quoted += 1
                    click.echo(shown(hit.path))
                else:  # exact bytes, as find(1) prints them
                    click.echo(name_bytes(hit.path))
            elif fmt == "json":
                click.echo(json.dumps(hit.to_dict()))
            else:
                click.echo(f"{hit.rank:>3}  {hit.score:7.4f}  {shown(hit.path)}")  # a minus sign keeps the column
        if keyed and fmt == "paths0":
            click.echo(b"\0", nl=False)  # an empty name, which no file has, ends a query's hits
        elif keyed and fmt == "paths":
            click.echo("")  # and an empty line: an empty group is one line, not lost between two
        if not hits and fmt == "table":
            click.echo("no hits", err=True)
    if quoted:
        were = "was" if quoted == 1 else "were"
        click.echo(f"{quoted} of the paths held a line break or control character and {were} written quoted "
                   "($'...'); -f paths0 gives every name exactly, for xargs -0", err=True)


COMMANDS = [search]
