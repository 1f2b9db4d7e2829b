"""`clipsearch status` and `clipsearch migrate`: commands about the index itself,
which belong to no stage."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import click

from ..config import refuse_host_port, valid_collection_name
from ..errors import ClipsearchError, UsageError
from ..names import path_fields, path_of, printable, shown
from ..options import index_options, layout_options, quiet_option, server_options

if TYPE_CHECKING:  # pragma: no cover
    from .base import Index

# How far a stored vector's length may be from 1: vectors are normalized float32
# (the engine normalizes cosine vectors again), so anything beyond rounding is wrong.
UNIT_TOLERANCE = 1e-3


@click.command()
@index_options(loads_model=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print the facts as JSON (with --server, also the server's own: \"server\": {version, pid, "
                   "watching}; with --check, the findings).")
@click.option("--check", is_flag=True,
              help="Verify the collection: the point count against the points read, a path on every point, "
                   "unit-length vectors of the model record's dimension, the model record itself. One line per "
                   "finding; exit status 1 when anything is wrong.")
@server_options(
    "Ask a running `clipsearch serve` (http://host:8765) for the facts of the index it holds, opening "
    "nothing here. With --server, --index, --collection and --grpc/--rest are ignored (a given --index or "
    "--collection is said ignored). Without the flag, an --index or --collection works here even with "
    "CLIPSEARCH_SERVER set, as does --check.")
def status(settings, as_json, check, server, token):
    """Show the backend, collection, number of images and model of the index."""
    if check:
        if click.get_current_context().params.get("server") is not None:  # CLIPSEARCH_SERVER alone: checked here
            raise UsageError("--check reads the index itself, alone: run it where the index is, without "
                             "--server, with `clipsearch serve` stopped")
        run_check(settings, as_json)
        return
    if server:
        from ..remote import ServeClient

        facts = ServeClient(server, token).status()
        if as_json:
            click.echo(json.dumps(status_json(facts)))
            return
        # The server's location as text, its bytes beside where not UTF-8: quoted as the local status quotes it.
        click.echo(format_status({**facts, "location": path_of({"path": facts.get("location", ""),
                                                                "path_bytes": facts.get("location_bytes")})}))
        serving = facts.get("server") or {}
        click.echo(f"serve:        {server} (pid {serving.get('pid', '?')}, version {serving.get('version') or '?'}"
                   + (", watching folders)" if serving.get("watching") else ")"))
        return
    from .open import open_index

    with open_index(settings) as index:
        facts = index.describe()
    if as_json:
        click.echo(json.dumps(status_json(facts)))
        return
    click.echo(format_status(facts))


@click.command()
@index_options(loads_model=False)
@layout_options
@click.option("--to", "to", required=True, metavar="URL|DIR",
              help="Target index: a Qdrant server URL (the usual case), another folder, or :memory:.")
@click.option("--to-collection", default=None, help="Target collection name. Default: the source's name.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True,
              help="Points per request.")
@quiet_option
def migrate(settings, to, to_collection, batch_size, quiet):
    """Copy a collection (vectors, payloads, model identity) to another index, e.g. a
    Qdrant server. Resumable: run it again after an interruption. The layout options
    (--shards, --quantization...) shape the target collection where migrate creates it."""
    from ..progress import Progress
    from .migrate import migrate as run_migrate
    from .open import open_index

    if not to.strip():  # `--to "$TARGET"` unset: not the current folder
        raise UsageError("--to is empty: give the target index, a folder or a server URL")
    if to != ":memory:" and "://" not in to and os.path.isfile(os.path.expanduser(to)):
        raise ClipsearchError(f"--to {shown(to)} is a file, not an index folder or a server URL")
    refuse_host_port(to, "--to")
    if to_collection is not None and not valid_collection_name(to_collection):
        raise UsageError(f"--to-collection {to_collection!r} is not a valid collection name")
    target_settings = settings.with_overrides(index=to, collection=to_collection or settings.collection)
    if (target_settings.index, target_settings.collection) == (settings.index, settings.collection):
        raise UsageError("--to names the source collection itself")
    with _open_source(settings) as source:
        source.require_collection()
        if _same_collection(source, settings, target_settings):
            raise UsageError(f"--to names the source collection itself: {target_settings.collection!r} and "
                             f"{settings.collection!r} are one collection in {settings.index} "
                             f"({source.meant()!r}); give --to-collection a new name, or --to another index")
        with open_index(target_settings, create=True) as target:
            summary = run_migrate(source, target, batch_size, Progress(quiet=quiet))
    click.echo(summary.line())


def _open_source(settings) -> "Index":
    """The collection to copy. An embedded one whose shard lost files (points gone with
    no delete) is opened all the same: what it still holds is whole, and copying it out
    is the way to keep it (the damage message says so); any other damage is refused."""
    from .edge import EdgeIndex
    from .open import open_index

    if settings.backend != "edge":
        return open_index(settings)
    source = open_index(settings, check=True)
    assert isinstance(source, EdgeIndex)
    other = [p for p in source.open_problems if p != source.lost_points_problem]
    if other:
        source.close()
        raise ClipsearchError(other[0])
    if source.lost_points:
        held, recorded = source.lost_points
        click.echo(f"note: collection {source.collection!r} in {source.root} held {recorded} points and holds {held}: "
                   f"copying the {held} it holds", err=True)
    return source


def _same_collection(source: "Index", settings, target_settings) -> bool:
    """Whether the target names the collection the source is, through a name a reindex
    switched (an embedded index's aliases.json, a server's alias) or by its own name."""
    if target_settings.backend != settings.backend:
        return False
    if settings.backend == "edge":
        if os.path.realpath(os.path.expanduser(target_settings.index)) != \
                os.path.realpath(os.path.expanduser(settings.index)):
            return False
        from pathlib import Path

        from .versions import read_aliases

        target = read_aliases(Path(target_settings.index)).get(target_settings.collection,
                                                               target_settings.collection)
        return target == source.meant()
    if target_settings.index != settings.index:
        return False
    aliases = getattr(source, "_aliases", None)
    if aliases is None:
        return False
    return aliases().get(target_settings.collection, target_settings.collection) == source.meant()


# Every key `status --json` prints, whatever the backend and whether the collection
# exists: null where a fact does not apply (`segments` on a server, `layout` on the
# embedded index, `means` where no reindex switched the name), so that a script reads
# facts["layout"] without first asking whether it is there. README: "JSON outputs".
STATUS_KEYS = ("backend", "location", "collection", "means", "exists", "points", "model", "segments",
               "indexed_vectors", "status", "indexing_paused", "embedded_layout", "layout", "cluster", "protocol",
               "server_version", "switching", "unfinished_copy", "versions", "server")


def status_json(facts: dict) -> dict:
    """`status --json`: the facts with every one of STATUS_KEYS present, and the model's
    `precision` given (a record that names none is fp32). Keys beyond them (a newer
    server's) are kept."""
    from ..config import PRECISIONS

    shaped = {key: facts.get(key) for key in STATUS_KEYS}
    shaped["versions"] = [_model_named(version) for version in facts.get("versions") or []]
    if facts.get("backend") == "server" and facts.get("exists"):  # said only when paused
        shaped["indexing_paused"] = bool(facts.get("indexing_paused"))
    if isinstance(shaped["model"], dict):
        shaped["model"] = {**shaped["model"], "precision": shaped["model"].get("precision") or PRECISIONS[0]}
        if isinstance(shaped["model"].get("name"), str):  # a model folder's name may be bytes
            shaped["model"].update(path_fields(shaped["model"]["name"], "name"))
    # JSON holds text: a name that is not UTF-8 as `stored` shows it, its bytes beside (names.py).
    located = path_fields(shaped["location"], "location") if isinstance(shaped["location"], str) else {}
    return {**shaped, **located, **{key: value for key, value in facts.items() if key not in shaped}}


def _model_named(version: object) -> object:
    """A version's facts, its model folder's name as JSON holds one that is not text."""
    if isinstance(version, dict) and isinstance(version.get("model"), str):
        return {**version, **path_fields(version["model"], "model")}
    return version


def format_status(facts: dict) -> str:
    model = facts.get("model")
    backend = facts["backend"] + (f" ({facts['protocol']})" if "protocol" in facts else "")
    # Names as the user gave them may hold a line break or bytes that are not UTF-8: quoted, never raw.
    lines = [f"backend:      {backend}", f"index:        {shown(facts['location'])}"]
    if "server_version" in facts:
        lines.append(f"server:       Qdrant {facts['server_version']}")
    lines += [
        f"collection:   {facts['collection']}" + (f" (means {facts['means']}, switched by reindex)"
                                                  if facts.get("means") else "")
        + ("" if facts["exists"] else " (does not exist yet)"),
        f"points:       {facts['points']}",
        "model:        " + (f"{shown(model['name'])} (image {model['image_fingerprint'][:12]}, dim {model['dim']}"
                            + (f", {model['precision']} vectors" if model.get("precision") else "") + ")"
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
    if facts.get("embedded_layout"):
        from .layout import format_embedded_layout

        lines.append(f"layout:       {format_embedded_layout(facts['embedded_layout'])}")
    if facts.get("layout"):
        from .layout import format_layout

        lines.append(f"layout:       {format_layout(facts['layout'])}")
    if facts.get("cluster"):
        from .layout import format_cluster

        lines += format_cluster(facts["cluster"])
    if facts.get("unfinished_copy"):
        lines.append(f"incomplete:   {unfinished_copy_text(facts['unfinished_copy'])}")
    if facts.get("switching"):
        since = facts["switching"].get("since")
        command = facts["switching"].get("command")
        lines.append("switching:    a reindex is switching this name to another collection"
                     + (f" (since {since})" if since else "") + ": ingests into it fail until it has (then they "
                     "go to the new one); if no reindex is running, one was stopped while it switched: "
                     + (f"`{command}` finishes it" if command else "run it again"))
    lines += _version_lines(facts)
    return "\n".join(lines)


def _version_lines(facts: dict) -> list[str]:
    """A name that does not exist but has versions (its record was lost): which, and
    how to use one. Versions kept by reindex beside the one the name means: which, and
    how to switch back. A version a reindex is building (or stopped building): that."""
    versions = facts.get("versions") or []
    lines = []
    if not facts["exists"] and versions:
        listed = ", ".join(repr(v["collection"]) + (f" (model {v['model']})" if v.get("model") else "")
                           for v in versions)
        lines.append(f"versions:     {listed}; use one with --collection NAME, or make {facts['collection']!r} "
                     "mean one again with `clipsearch reindex --model MODEL` given that version's model (nothing "
                     "is embedded)")
    kept = [v for v in versions if not v.get("unfinished")]  # a partial copy is no version to switch back to
    if facts["exists"] and kept:
        current = facts.get("model") or {}
        towers: dict[str, set] = {}  # model name -> the image towers recorded under it
        for holder in [*kept, {"model": current.get("name"), "image_fingerprint": current.get("image_fingerprint")}]:
            towers.setdefault(holder.get("model"), set()).add(holder.get("image_fingerprint"))

        def model_of(version: dict) -> str:
            """Its model; with its image tower's fingerprint where that name has had other
            weights (a model folder overwritten since: those weights are gone)."""
            if not version.get("model"):
                return ""
            overwritten = len(towers[version["model"]]) > 1 and version.get("image_fingerprint")
            return f" (model {shown(version['model'])}" + (f", image {version['image_fingerprint'][:12]}"
                                                            if overwritten else "") + ")"

        listed = ", ".join(repr(v["collection"]) + model_of(v) for v in kept)
        lines.append(f"versions:     {listed} kept; `clipsearch reindex --model MODEL` with a version's model "
                     "switches back to it, embedding only what was added since")
    for version in versions:
        mark = version.get("unfinished") or {}
        if mark.get("reindex"):
            points = mark.get("points")
            lines.append(f"reindex:      {version['collection']!r}" + (f" (model {version['model']})"
                                                                          if version.get("model") else "")
                         + " is being built by a reindex that is running or was stopped"
                         + (f" ({points} images)" if points is not None else "")
                         + f"; {facts['collection']!r} means the old collection until it finishes: "
                         + mark.get("resume", "run the same `clipsearch reindex` again"))
        elif mark:
            lines.append(f"incomplete:   {version['collection']!r}: {unfinished_copy_text(mark)}")
    return lines


def unfinished_copy_text(copy: dict) -> str:
    """What status, status --check and search say of a migrate that stopped."""
    points = copy.get("points")
    if copy.get("reindex"):
        return (f"a reindex of {copy['reindex']!r} into this version" + (f" ({points} images)" if points is not None
                                                                         else "")
                + " has not finished: this collection may hold only part of them; "
                + copy.get("resume", "run the same `clipsearch reindex` again"))
    return (f"a migrate from {copy.get('from', 'unknown')}" + (f" ({points} points)" if points is not None else "")
            + " has not finished: this collection may hold only part of them; "
            + copy.get("resume", "run the same migrate again"))


# -- status --check ---------------------------------------------------------------------


@dataclass
class Finding:
    ok: bool
    topic: str  # open, collection, model, count, paths, dimension, vectors, search index
    message: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM':8} {self.topic}: {self.message}"


@dataclass
class _Survey:
    """What one pass over every point found."""

    read: int = 0
    ids: set = field(default_factory=set)
    dims: dict = field(default_factory=dict)  # dimension -> how many vectors
    no_path: list = field(default_factory=list)
    no_vector: list = field(default_factory=list)
    not_unit: list = field(default_factory=list)  # (id, length)
    wrong_dim: list = field(default_factory=list)

    def add(self, record, dim: int | None) -> None:
        import numpy as np

        self.read += 1
        self.ids.add(record.id)
        path = record.payload.get("path")
        if not isinstance(path, str) or not path:
            self.no_path.append(record.id)
        if record.vector is None:
            self.no_vector.append(record.id)
            return
        vector = np.asarray(record.vector, dtype=np.float64).ravel()
        self.dims[vector.size] = self.dims.get(vector.size, 0) + 1
        if dim is not None and vector.size != dim:
            self.wrong_dim.append(record.id)
        length = float(np.linalg.norm(vector))
        if not math.isfinite(length) or abs(length - 1.0) > UNIT_TOLERANCE:
            self.not_unit.append((record.id, length))


def _some(ids: list) -> str:
    """How many, and the first: `3 (e.g. point ID and 2 more)`."""
    return f"{len(ids)} (e.g. point {ids[0]}" + (f" and {len(ids) - 1} more)" if len(ids) > 1 else ")")


def check_index(index: "Index") -> list[Finding]:
    """Every finding about the collection `index` opened, good ones included."""
    findings = [Finding(False, "open", problem) for problem in getattr(index, "open_problems", [])]
    if not index.exists():
        findings.append(Finding(False, "collection", f"collection {index.collection!r} does not exist at "
                                                     f"{index.location}; {index.missing_advice()}"))
        return findings
    dim = _check_model(index, findings)
    try:
        survey = _Survey()
        for record in index.scroll(with_vectors=True):
            survey.add(record, dim)
        count = index.count()
    except ClipsearchError as exc:  # the engine could not read its points: damage
        findings.append(Finding(False, "points", str(exc)))
        return findings
    findings += _point_findings(survey, count, dim)
    findings += _graph_findings(index)
    copy = index.unfinished_copy()
    if copy:
        findings.append(Finding(False, "migrate", unfinished_copy_text(copy)))
    return findings


def _check_model(index: "Index", findings: list[Finding]) -> int | None:
    """The model record's finding; its dimension when there is one."""
    try:
        identity = index.stored_identity()
    except ClipsearchError as exc:
        findings.append(Finding(False, "model", str(exc)))
        return None
    if identity is None:
        if not any(f.topic == "open" for f in findings):  # the open already said it
            findings.append(Finding(False, "model", f"collection {index.collection!r} has no clipsearch model "
                                                    "record: nothing says which model made its vectors"))
        return None
    findings.append(Finding(True, "model", identity.short()))
    return identity.dim


def _point_findings(survey: _Survey, count: int, dim: int | None) -> list[Finding]:
    found = []
    duplicates = survey.read - len(survey.ids)
    if survey.read == count and not duplicates:
        found.append(Finding(True, "count", f"{count} points, each read back once"))
    else:
        found.append(Finding(False, "count", f"the index counts {count} points, but {survey.read} were read back"
                                            + (f" ({duplicates} twice)" if duplicates else "")))
    if survey.no_path:
        found.append(Finding(False, "paths", f"points without a path: {_some(survey.no_path)}; search cannot "
                                            "show them"))
    else:
        found.append(Finding(True, "paths", "every point has a path"))
    if survey.wrong_dim:
        others = ", ".join(str(d) for d in sorted(survey.dims) if d != dim)
        found.append(Finding(False, "dimension", f"vectors not of the model record's {dim} dimensions: "
                                                f"{_some(survey.wrong_dim)}; they have {others}"))
    elif dim is not None and survey.read:
        found.append(Finding(True, "dimension", f"every vector has the model record's {dim} dimensions"))
    bad = survey.no_vector + [i for i, _ in survey.not_unit]
    if bad:
        lengths = ", ".join(f"{length:.3g}" for _, length in survey.not_unit[:3])
        found.append(Finding(False, "vectors", f"vectors missing or not of unit length: {_some(bad)}"
                                              + (f"; length {lengths}" if lengths else "")
                                              + "; search ranks them wrongly: touch those files and ingest again"))
    elif survey.read:
        found.append(Finding(True, "vectors", f"every vector is unit length (within {UNIT_TOLERANCE:g})"))
    return found


def _graph_findings(index: "Index") -> list[Finding]:
    """The embedded index's HNSW state: facts, never a problem (an exact scan answers)."""
    from .edge import EdgeIndex

    if not isinstance(index, EdgeIndex):
        return []
    facts = index.describe()
    text = (f"HNSW over {facts['indexed_vectors']} of {facts['points']} vectors" if facts["indexed_vectors"]
            else "exact scan (no HNSW graph)")
    if index.graph_pending():
        text += "; the graph is incomplete: the next ingest builds it"
    return [Finding(True, "search index", text)]


def run_check(settings, as_json: bool) -> None:
    """`status --check`: print the findings, exit 1 when any is a problem. An index
    that cannot be opened at all is one finding too."""
    from .lockfile import InUseError
    from .open import open_index

    try:
        with open_index(settings, check=True) as index:
            findings = check_index(index)
    except InUseError:
        raise  # not a finding about the index: it could not be examined now
    except ClipsearchError as exc:
        findings = [Finding(False, "open", str(exc))]
    problems = [f for f in findings if not f.ok]
    # The index as `status` shows it: quoted ($'...') where its name is not printable text.
    where = f"collection {settings.collection!r} at {shown(settings.index)}"
    if as_json:
        # `location`, as `status --json` names the index.
        click.echo(json.dumps({**path_fields(settings.index, "location"), "collection": settings.collection,
                               "healthy": not problems, "findings": [asdict(f) for f in findings]}))
    else:
        for finding in findings:
            click.echo(printable(finding.line()))  # a message may name the index's bytes
        click.echo(f"{where}: " + (f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found"
                                   if problems else "healthy"))
    if problems:
        raise click.exceptions.Exit(1)


COMMANDS = [status, migrate]
