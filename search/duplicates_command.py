"""`clipsearch duplicates`: groups of byte-identical files and, with --similar,
near-duplicates, from an index alone. It loads no model (the vectors are in the
index) and deletes nothing. Imports only click and the kernel's light modules at
top level: every CLI start imports this file."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Sequence

import click

from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.hits import name_bytes_field
from clipsearch.names import has_control, name_bytes, shown
from clipsearch.options import format_option, index_options, quiet_option, server_options
from clipsearch.output_files import check_output_file

if TYPE_CHECKING:  # pragma: no cover
    from clipsearch.progress import Progress
    from clipsearch.remote import ServeClient

    from .duplicates import DuplicateGroup, Duplicates


@click.command()
@index_options(loads_model=False)
@click.option("--similar", type=float, default=None, metavar="THRESHOLD",
              help="Also group near-duplicates (resized, re-encoded, lightly edited copies): images whose "
                   "vectors are at least this cosine similar, e.g. 0.95, joined transitively. One "
                   "nearest-neighbour query per image.")
@click.option("--in", "under", type=click.Path(file_okay=False), default=None,
              help="Only images under this folder (a copy outside it is not counted).")
@format_option(
              help="table: each group with its kind, scores and paths; paths: one path a line, a blank line "
                   "between groups; paths0: each path ending in NUL, and one more NUL after each group; "
                   "json: one object per group.")
@click.option("--gallery", type=click.Path(dir_okay=False), default=None, metavar="FILE.html",
              help="Also write an HTML page showing each group's images side by side.")
@quiet_option
@server_options(
    "Ask a running `clipsearch serve` (http://host:8765) to find them in the index it holds, which no other "
    "process can open meanwhile: its paths are the server's. With --server, --index, --collection and "
    "--grpc/--rest are ignored (a given --index or --collection is said ignored). Without the flag, an --index "
    "or --collection works here even with CLIPSEARCH_SERVER set.")
def duplicates(settings, similar, under, fmt, gallery, quiet, server, token):
    """Find duplicate images in the index: byte-identical files, and with --similar,
    near-duplicates. Lists them; never deletes anything."""
    from .duplicates import check_threshold
    from .filters import absent_folder_note
    from .gallery import attempted

    if similar is not None:
        try:
            check_threshold(similar)  # before the index is opened: a typo costs nothing
        except ClipsearchError as exc:  # a bad flag value: exit 2, as click's own type check gives
            raise UsageError(str(exc)) from None
    if gallery:
        check_output_file(gallery, "--gallery", "to write the page to")
    client = None
    if server:
        found, client = _find_remote(server, token, similar, under, quiet)
    else:
        found = _find(settings, similar, under, quiet)
    # Printed after the index is closed, so that a pipeline's next clipsearch finds it free.
    # The page before stdout, which a reader may close early (| head); its failure after the groups.
    gallery_failed = attempted(lambda: write_duplicates_gallery(gallery, found.groups, similar, client)) \
        if gallery else None
    print_groups(found.groups, fmt, similar)
    if gallery and not gallery_failed:
        click.echo(f"gallery: {shown(os.path.abspath(gallery))}", err=True)
    for line in notes(found, similar):
        click.echo(line, err=True)
    # A server's folders are not this machine's: its own note (found.note) says it there.
    note = found.note if server else absent_folder_note(under, bool(found.groups))
    if note:
        click.echo(note, err=True)
    if gallery_failed:
        raise gallery_failed


def _find(settings, similar: float | None, under: str | None, quiet: bool) -> "Duplicates":
    from clipsearch.index import open_index
    from clipsearch.progress import Progress

    from .duplicates import find_duplicates

    progress = Progress(quiet=quiet)
    with open_index(settings) as index:
        index.require_collection()
        found = find_duplicates(index, similar, under, progress=_reporter(progress) if similar is not None else None)
    progress.finish()
    return found


# How long a thin client waits for the server's answer: the near-duplicate pass takes
# about 90 s a 100k images on two cores (BENCHMARKS.md), and the server says nothing
# until it is done.
REMOTE_SECONDS = 3600.0


def _find_remote(server: str, token: str | None, similar: float | None, under: str | None,
                 quiet: bool) -> tuple["Duplicates", "ServeClient"]:
    """`duplicates --server`: the server finds them (POST /api/duplicates); the answer as
    the local run's Duplicates, each path the server's."""
    from clipsearch.names import path_of
    from clipsearch.progress import stderr_line
    from clipsearch.remote import ServeClient, server_folder

    from .duplicates import DuplicateGroup, Duplicates, Member

    client = ServeClient(server, token)
    if similar is not None and not quiet:  # the long pass: said once the server is known to answer
        points = client.status().get("points")
        stderr_line(f"clipsearch serve at {server} is looking for near-duplicates among {points} images "
                    "(one query per image there: minutes on a large library)")
    # The near-duplicate pass takes minutes on a large library; the identical one, a search's time.
    answer = client.duplicates(similar, server_folder(under), timeout=REMOTE_SECONDS if similar is not None else None)
    try:
        groups = [DuplicateGroup(group["kind"], [
            Member(path_of(entry), str(entry["id"]), entry.get("size"),
                   float("nan") if entry.get("score") is None else float(entry["score"]), rank)
            for rank, entry in enumerate(group["files"], start=1)]) for group in answer["groups"]]
        found = Duplicates(groups, int(answer.get("no_fingerprint") or 0),
                           [path_of(entry) for entry in answer.get("unreadable", [])],
                           [(path_of(path), path_of(kept)) for path, kept in answer.get("same_file", [])])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ClipsearchError(f"{server}/api/duplicates did not answer as clipsearch serve does") from None
    found.note = answer.get("note") if isinstance(answer.get("note"), str) else None
    return found, client


def _reporter(progress: "Progress"):
    """The similar pass's progress line: images done, rate, ETA (one query each)."""

    def report(done: int, total: int) -> None:
        rate, eta = progress.rate_and_eta(done, total)
        progress.update(f"similar: {done}/{total} images, {rate:.0f}/s, ETA {eta}", force=done == total)

    return report


def print_groups(groups: Sequence["DuplicateGroup"], fmt: str, similar: float | None = None) -> None:
    """Groups on stdout. Names are printed as `clipsearch search` prints them
    (search/commands.py print_results): `table` quotes a name that is not printable
    text ($'...'), `paths` writes exact bytes and quotes only a name holding a line
    break or control character, `paths0` writes exact bytes, `json` escapes (and adds
    `path_bytes` for a name that is not UTF-8)."""
    quoted = 0
    for number, group in enumerate(groups):
        if fmt == "json":
            click.echo(json.dumps(group_json(group)))
        elif fmt == "paths0":
            for member in group.members:
                click.echo(name_bytes(member.path) + b"\0", nl=False)
            click.echo(b"\0", nl=False)  # an empty name, which no file has, ends the group
        elif fmt == "paths":
            if number:
                click.echo("")
            for member in group.members:
                if has_control(member.path):  # its bytes would split or fake a line
                    quoted += 1
                    click.echo(shown(member.path))
                else:
                    click.echo(name_bytes(member.path))
        else:
            if number:
                click.echo("")
            click.echo(group_title(group, similar))
            for member in group.members:
                click.echo(f"  {member.score:.4f}  {shown(member.path)}")
    if quoted:
        were = "was" if quoted == 1 else "were"
        click.echo(f"{quoted} of the paths held a line break or control character and {were} written quoted "
                   "($'...'); -f paths0 gives every name exactly", err=True)


def group_json(group: "DuplicateGroup") -> dict:
    """One group as `-f json` prints it: each file's `path` as `search -f json` gives a
    hit's, with `path_bytes` (base64) beside a name that is not UTF-8."""
    data = group.to_dict()
    data["files"] = [{"path": entry["path"], **name_bytes_field(member.path),
                      **{key: value for key, value in entry.items() if key != "path"}}
                     for entry, member in zip(data["files"], group.members)]
    return data


def group_title(group: "DuplicateGroup", similar: float | None = None) -> str:
    """'identical: 2 files, 1.4 MB each' or 'similar: 3 files (each >= 0.95 to another of
    them; score: cosine to the first)': links join transitively, so a member may score
    below the threshold against the first."""
    count = len(group.members)
    if group.kind == "identical":
        size = group.members[0].size
        return f"identical: {count} files" + (f", {_bytes(size)} each" if size is not None else "")
    threshold = f"each >= {similar:g} to another of them; " if similar is not None else ""
    return f"similar: {count} files ({threshold}score: cosine to the first)"


def _bytes(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    scaled, unit = next((size / 1000 ** p, u) for p, u in ((3, "GB"), (2, "MB"), (1, "kB")) if size >= 1000 ** p)
    return f"{scaled:.1f} {unit}"


def write_duplicates_gallery(path: str, groups: Sequence["DuplicateGroup"], similar: float | None,
                             client: "ServeClient | None" = None) -> None:
    """search/gallery.py's page with one section per group, its members side by side
    (rank = place in the group, score = cosine to the first). From a server (`client`):
    its thumbnails embedded, each linking to the server's copy of the file."""
    from .gallery import write_gallery

    sections = [(f"{number}. {group_title(group, similar)}", group.members)
                for number, group in enumerate(groups, start=1)]
    if client is None:
        write_gallery(path, sections)
        return
    from .commands import write_remote_gallery

    write_remote_gallery(path, client, sections,
                         urls=lambda member: (f"/api/images/{member.id}/thumbnail", f"/api/images/{member.id}/file"))


def notes(found: "Duplicates", similar: float | None) -> list[str]:
    """The summary on stderr, and what the run could not look at."""
    lines = []
    kinds = [(kind, [g for g in found.groups if g.kind == kind]) for kind in ("identical", "similar")]
    parts = [f"{len(groups)} group{'s' if len(groups) != 1 else ''} of {kind} files "
             f"({sum(len(g.members) for g in groups)} files)" for kind, groups in kinds if groups]
    if parts:
        lines.append("found " + ", ".join(parts) + "; nothing was deleted")
    else:
        lines.append("no duplicates found" + ("" if similar is not None else " (byte-identical files only; "
                                               "--similar 0.95 also looks for near-duplicates)"))
    if found.no_fingerprint:
        lines.append(f"{found.no_fingerprint} images have no content fingerprint yet (indexed before "
                     "fingerprints existed): byte-identical copies among them are not found until "
                     "`clipsearch ingest` runs over their folders again")
    if found.same_file:
        path, other = found.same_file[0]
        lines.append(f"{len(found.same_file)} indexed path{'s are' if len(found.same_file) != 1 else ' is'} the very "
                     "file of another (a hard link, or one share mounted at two places), not a copy, and "
                     f"{'were' if len(found.same_file) != 1 else 'was'} left out: e.g. {shown(path)} is "
                     f"{shown(other)}")
    if found.unreadable:
        files, were = ("1 file", "was") if len(found.unreadable) == 1 else (f"{len(found.unreadable)} files", "were")
        lines.append(f"{files} in the index {were} gone or unreadable since ingest and left out of the groups, "
                     f"e.g. {shown(found.unreadable[0])}")
    return lines


COMMANDS = [duplicates]
