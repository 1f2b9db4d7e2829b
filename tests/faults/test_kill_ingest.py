"""kill -9 at random moments of a real ingest, the HNSW build at its end included.

The real console script ingests 600 tiny PNGs with the tiny CLIP (one image per 4-image
batch upsert, decoded in-process), with CLIPSEARCH_HNSW_MIN_POINTS=300 so that the run
ends by building the HNSW graph, as a large collection's does. A seeded RNG draws each
kill moment: the progress count the run must reach, plus a delay of up to one batch.
After every kill the index must open (status, status --check healthy), count exactly
the points present (every batch upsert is whole: a multiple of 4; at least the batches
the run had reported committed), answer searches, and the next ingest must finish the
job: every image once, and the graph built.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

from clipsearch.index import canonical_path

from faults.conftest import ChildRun, Cli, export_text_tower, read_index, tiny_pngs

IMAGES = 600
BATCH = 4
MIN_POINTS = "300"
SEED = 15


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill") / "photos"
    tiny_pngs(folder, IMAGES)
    return folder


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory, tiny_model_dir, encoder) -> Cli:
    """A cache shared by the module's commands, with the text tower in it."""
    cache = tmp_path_factory.mktemp("kill") / "cache"
    export_text_tower(cache, tiny_model_dir, encoder)
    return Cli(tiny_model_dir, cache, {"CLIPSEARCH_HNSW_MIN_POINTS": MIN_POINTS,
                                       "CLIPSEARCH_PROGRESS_SECONDS": "0.02"})


class Run(ChildRun):
    """A `clipsearch ingest` in a child process; a thread reads its progress lines."""

    def __init__(self, cli: Cli, photos: Path, index: Path):
        super().__init__(cli, ["ingest", str(photos), "--index", str(index), "--model", str(cli.model),
                               "--workers", "0", "--batch-size", str(BATCH), "--json"])


def check_after_kill(cli: Cli, index: Path, photos: set[str], at_least: int) -> int:
    """Everything a user does after a crash works, and the count is exact; the count."""
    status = cli.status(index, "--json")
    assert status.returncode == 0, status.stderr
    points = json.loads(status.stdout)["points"]
    contents = read_index(index)
    assert contents.count == points == len(contents.paths) == len(contents.ids)  # no point twice, none uncounted
    assert set(contents.paths) <= photos and contents.ids_match_paths
    assert points >= at_least, f"{points} points, but the run had reported {at_least} committed"
    assert points % BATCH == 0, f"{points} points: a batch upsert was cut in part"
    assert contents.hits == min(5, points)
    check = cli.status(index, "--check")
    assert check.returncode == 0 and "healthy" in check.stdout, check.stdout + check.stderr
    if points:
        found = cli.search(index)
        assert found.returncode == 0, found.stderr
        hits = found.stdout.split()
        assert len(hits) == min(5, points) and set(hits) <= photos
    return points


def finish(cli: Cli, photos: Path, index: Path, before: int, **settings: str) -> dict:
    """The next ingest completes: every image once. Its JSON summary."""
    done = cli.ingest(photos, index, "--batch-size", str(BATCH), "--json", **settings)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["embedded"] == IMAGES - before and summary["unchanged"] == before
    contents = read_index(index)
    assert contents.count == len(contents.ids) == IMAGES
    return summary


@pytest.mark.slow
def test_kill_9_while_embedding_loses_no_committed_batch(module_cli, photos, tmp_path):
    """4 trials, chained on one index (each run resumes the last): kill -9 once the run
    has reported a random number of images embedded (drawn in the i-th fifth of the
    600, so every kill lands mid-load) plus a random delay of up to one batch. Then a
    complete run, and one with nothing to embed that builds the graph. ~70 s."""
    rng = random.Random(SEED)
    cli, index = module_cli, tmp_path / "index"
    names = {canonical_path(p) for p in photos.iterdir()}
    points = 0
    for trial in range(4):
        target = round(IMAGES * (trial + rng.uniform(0.2, 0.8)) / 5)
        run = Run(cli, photos, index)  # it resumes after the `points` already in
        run.wait_for_embedded(target - points)
        time.sleep(rng.uniform(0, 0.05))
        reported = run.kill()
        before, points = points, check_after_kill(cli, index, names, at_least=points + reported)
        print(f"trial {trial}: killed at {before} + {reported} reported, {points} points after")
        assert points < IMAGES, f"trial {trial}: the kill came after the load"
    # The default threshold: the run ends without a graph, as one killed before its
    # build does. The next run has nothing to embed and must build it all the same.
    summary = finish(cli, photos, index, points, CLIPSEARCH_HNSW_MIN_POINTS="20000")
    assert not summary["hnsw_built"] and read_index(index).indexed_vectors == 0
    again = cli.ingest(photos, index, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["hnsw_built"] and read_index(index).indexed_vectors == IMAGES


@pytest.fixture(scope="module")
def loaded_without_graph(module_cli, photos, tmp_path_factory) -> Path:
    """600 images ingested, no graph yet (the default threshold)."""
    index = tmp_path_factory.mktemp("kill") / "loaded"
    done = module_cli.ingest(photos, index, CLIPSEARCH_HNSW_MIN_POINTS="20000")
    assert done.returncode == 0, done.stderr
    assert read_index(index).indexed_vectors == 0
    return index


@pytest.mark.slow
def test_kill_9_inside_the_hnsw_build_keeps_every_point_and_the_next_run_builds_it(
        module_cli, photos, loaded_without_graph, tmp_path):
    """4 trials, each on a fresh copy of a loaded index without a graph: the ingest has
    nothing to embed, announces the build, and is killed a random 0-100 ms later
    (the build of 600 points takes ~0.1-0.3 s here). At least one kill must land
    inside the build. ~25 s."""
    rng = random.Random(SEED + 1)
    cli = module_cli
    names = {canonical_path(p) for p in photos.iterdir()}
    inside = 0
    for trial in range(4):
        index = tmp_path / f"index-{trial}"
        shutil.copytree(loaded_without_graph, index)
        run = Run(cli, photos, index)
        run.wait_for(run.building.is_set, "the HNSW build")
        time.sleep(rng.uniform(0, 0.1))
        run.kill()
        assert check_after_kill(cli, index, names, at_least=IMAGES) == IMAGES
        indexed = read_index(index).indexed_vectors
        print(f"trial {trial}: killed with {indexed} of {IMAGES} vectors in the graph")
        if indexed < IMAGES:
            inside += 1
            summary = finish(cli, photos, index, IMAGES)
            assert summary["hnsw_built"], f"trial {trial}: the next run did not finish the graph"
        assert read_index(index).indexed_vectors == IMAGES
    assert inside >= 1, "no kill landed inside the build: the trials proved nothing about it"


def test_kill_9_takes_the_decoders_with_it_silently(module_cli, tmp_path):
    """The OOM killer's kill -9 of the ingest process alone: its decoding processes end
    with it at once, and none prints a traceback (each printed a BrokenPipeError when it
    next handed back an image). ChildRun.kill checks the stderr they shared."""
    import os

    from support import COLOURS, draw_image

    big = tmp_path / "big"
    for i in range(24):  # slow to decode: decoders are busy when the kill lands
        draw_image(big / f"{i:02d}.png", list(COLOURS)[i % len(COLOURS)], "circle", size=(2000, 1500), mark=i + 1)
    run = ChildRun(module_cli, ["ingest", str(big), "--index", str(tmp_path / "index"), "--model",
                                str(module_cli.model), "--workers", "2", "--batch-size", "2", "--json"])
    run.wait_for_embedded(2)

    def children() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if entry.isdigit() and int(fields[1]) == run.process.pid:
                found.append(int(entry))
        return found

    decoders = children()
    assert len(decoders) >= 2, decoders  # two decoders (and the resource tracker)
    run.kill()
    def running(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):  # reaped meanwhile
            return False

    deadline = time.monotonic() + 10
    while alive := [pid for pid in decoders if running(pid)]:
        assert time.monotonic() < deadline, f"decoders {alive} outlived the killed ingest"
        time.sleep(0.05)
