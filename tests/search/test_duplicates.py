"""`clipsearch duplicates`: byte-identical groups (fingerprint, then bytes compared),
near-duplicate groups through the index's own neighbour queries, --in, the output
formats, the gallery, the errors, and that it deletes nothing and loads no model.

The library is real image files ingested on every backend: copies of a photo in three
folders, a resized and a JPEG quality 60 copy of another, two large BMPs that share a
fingerprint but not their bytes, copies under names that are not UTF-8 or hold a
newline, and unrelated images. The grouping logic itself (chains, groups larger than
the neighbour count) is also checked on vectors upserted by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import CliGroup
from clipsearch.errors import ClipsearchError
from clipsearch.fingerprint import HEAD, TAIL, fingerprint
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search.duplicates import NEIGHBOURS, find_duplicates, similar_groups
from clipsearch.search.duplicates_command import duplicates, group_title

from support import draw_collection, draw_image, export_server, settings_for

# The tiny random CLIP maps a resized or re-encoded copy to within 1 - 4e-6 of its
# original, and unrelated images no closer than 1 - 8e-4 (checked by
# test_the_threshold_separates_copies_from_unrelated_images): 0.9999 lies between.
# A real CLIP's figure is nearer 0.95; the random model's vectors are all alike.
THRESHOLD = 0.9999

CAFE = os.fsdecode(b"caf\xe9.png")  # not UTF-8
TWO_LINES = "two\nlines.png"  # a line break: quoted in table and paths


def photo(seed: int, size=(640, 480)) -> Image.Image:
    """Photo-like: smooth random colour fields plus grain, so a resize or a lossy
    re-encode changes many pixels a little, as it does to a photo."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize(size, Image.BICUBIC)
    grain = np.asarray(low, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path, **how) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **how)
    return path


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def same_print_other_bytes(source: Path, target: Path) -> Path:
    """A copy of `source` changed only between its first MiB and its last KiB: the same
    size and content fingerprint, other bytes (and still a valid BMP: raw pixels)."""
    data = bytearray(source.read_bytes())
    assert len(data) > HEAD + TAIL + 1000
    middle = HEAD + (len(data) - HEAD - TAIL) // 2
    data[middle:middle + 300] = bytes(255 - b for b in data[middle:middle + 300])
    target.write_bytes(bytes(data))
    return target


def build_library(photos: Path) -> dict[str, list[Path]]:
    """The files, and which of them are duplicates of which (canonical paths)."""
    beach = save(photo(1), photos / "a" / "beach.png")
    beaches = [beach, copy(beach, photos / "b" / "beach.png"), copy(beach, photos / "b" / "deep" / "beach (2).png")]
    forest = save(photo(2), photos / "a" / "forest.png")
    forests = [forest, save(photo(2).resize((320, 240), Image.LANCZOS), photos / "a" / "forest-small.png"),
               save(photo(2), photos / "b" / "forest.jpg", quality=60)]
    scan = save(photo(3, (800, 600)), photos / "c" / "scan.bmp")  # 1.44 MB of raw pixels
    scans = [scan, copy(scan, photos / "c" / "scan-copy.bmp")]
    edited = same_print_other_bytes(scan, photos / "c" / "scan-edited.bmp")
    odd = save(photo(4), photos / "c" / CAFE)
    odd_names = [odd, copy(odd, photos / "c" / TWO_LINES)]
    save(photo(5), photos / "a" / "mountain.png")
    save(photo(6), photos / "b" / "city.jpg", quality=90)
    draw_collection(photos / "a" / "drawn", 6)
    for colour in ("red", "green", "blue", "black"):  # a/drawn has circles: these are other pictures
        draw_image(photos / "b" / "drawn" / f"{colour}-triangle.jpg", colour, "triangle")
    real = {name: [p.resolve() for p in paths] for name, paths in
            [("beaches", beaches), ("forests", forests), ("scans", scans), ("edited", [edited]),
             ("odd_names", odd_names)]}
    return {name: [Path(os.path.realpath(p)) for p in paths] for name, paths in real.items()}


def strs(paths) -> list[str]:
    return sorted(str(p) for p in paths)


def expected(groups: list[tuple[str, list[Path]]]) -> list[tuple[str, list[str]]]:
    """The order the command promises: identical groups first, then similar ones, each
    kind by its first path; members by path."""
    rows = [(kind, strs(paths)) for kind, paths in groups]
    return sorted(rows, key=lambda row: (row[0] != "identical", row[1][0]))


@pytest.fixture(scope="module", params=["edge", "memory", "rest", "grpc"])
def library(request, tmp_path_factory, encoder, tiny_model_dir):
    """The library ingested once per backend: (backend, settings, photos folder, duplicates)."""
    root = tmp_path_factory.mktemp(f"dups-{request.param}")
    with pytest.MonkeyPatch.context() as env:  # the function-scoped isolated_env does not reach here
        env.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        photos = root / "photos"
        dups = build_library(photos)
        settings = settings_for(request.param, root, tiny_model_dir)
        with open_index(settings, create=True) as index:
            ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
    return request.param, settings, photos.resolve(), dups


def invoke(library, *args, monkeypatch, env=None):
    """`clipsearch duplicates ARGS` through a group as the CLI builds it (one-line errors)."""
    backend, settings, _, _ = library
    if backend in ("rest", "grpc"):
        export_server(backend, monkeypatch)
    group = CliGroup(commands=[duplicates])
    where = ["--index", settings.index, "--collection", settings.collection]
    return CliRunner().invoke(group, ["duplicates", *where, *args], env=env, catch_exceptions=False)


def groups_of(result) -> list[tuple[str, list[str]]]:
    assert result.exit_code == 0, result.output
    return [(g["kind"], [f["path"] for f in g["files"]]) for g in map(json.loads, result.stdout.splitlines())]


def test_byte_identical_copies_are_grouped_and_a_shared_fingerprint_is_not_enough(library, monkeypatch):
    _, _, _, dups = library
    scan, _ = dups["scans"]
    edited = dups["edited"][0]
    # The constructed pair really does share its fingerprint: only the bytes tell them apart.
    assert fingerprint(str(scan)) == fingerprint(str(edited))
    assert scan.read_bytes() != edited.read_bytes()
    result = invoke(library, "-f", "json", monkeypatch=monkeypatch)
    assert groups_of(result) == expected([("identical", dups["beaches"]), ("identical", dups["scans"]),
                                          ("identical", dups["odd_names"])])
    assert "found 3 groups of identical files (7 files); nothing was deleted" in result.stderr


def test_similar_groups_resized_and_reencoded_copies(library, monkeypatch):
    _, _, _, dups = library
    result = invoke(library, "--similar", str(THRESHOLD), "-f", "json", "-q", monkeypatch=monkeypatch)
    # Exact copies are also alike; a set already listed as identical is not listed again,
    # but the edited scan joins its originals as a near-duplicate.
    assert groups_of(result) == expected([
        ("identical", dups["beaches"]), ("identical", dups["scans"]), ("identical", dups["odd_names"]),
        ("similar", dups["forests"]), ("similar", dups["scans"] + dups["edited"])])
    for line in result.stdout.splitlines():
        group = json.loads(line)
        files = group["files"]
        assert files[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert all(f["score"] >= THRESHOLD for f in files)
        assert all(f["size"] == os.path.getsize(os.fsencode(f["path"])) for f in files)
    assert "2 groups of similar files (6 files)" in result.stderr
    assert "similar:" not in result.stderr  # -q: no progress line


def test_the_threshold_separates_copies_from_unrelated_images(library):
    """What the tests above rest on, from the vectors the index holds: every pair of
    copies scores above THRESHOLD, every other pair below it, with room either side."""
    _, settings, _, dups = library
    with open_index(settings) as index:
        records = list(index.scroll(with_vectors=True))
    vectors = {r.path: np.asarray(r.vector, dtype=np.float64) for r in records}
    sets = [set(strs(dups["forests"])), set(strs(dups["scans"] + dups["edited"])), set(strs(dups["beaches"])),
            set(strs(dups["odd_names"]))]
    near, far = [], []
    paths = sorted(vectors)
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            cosine = vectors[a] @ vectors[b] / (np.linalg.norm(vectors[a]) * np.linalg.norm(vectors[b]))
            (near if any(a in s and b in s for s in sets) else far).append(cosine)
    assert min(near) > 1 - (1 - THRESHOLD) / 10, min(near)
    assert max(far) < 1 - (1 - THRESHOLD) * 3, max(far)


def test_in_limits_both_sides_to_the_folder(library, monkeypatch):
    _, _, photos, dups = library
    only_a = groups_of(invoke(library, "--in", str(photos / "a"), "--similar", str(THRESHOLD), "-f", "json",
                              monkeypatch=monkeypatch))
    # One beach copy is in a/, the others are not: no identical group; b/forest.jpg is outside.
    assert only_a == [("similar", strs(p for p in dups["forests"] if p.parent.name == "a"))]
    only_c = groups_of(invoke(library, "--in", str(photos / "c"), "--similar", str(THRESHOLD), "-f", "json",
                              monkeypatch=monkeypatch))
    assert only_c == expected([("identical", dups["scans"]), ("identical", dups["odd_names"]),
                               ("similar", dups["scans"] + dups["edited"])])
    typo = invoke(library, "--in", str(photos / "cc"), "-f", "json", monkeypatch=monkeypatch)
    assert groups_of(typo) == []
    assert f"--in {photos / 'cc'} is not a folder on this machine" in typo.stderr
    assert "not a folder" not in invoke(library, "--in", str(photos / "c"), monkeypatch=monkeypatch).stderr


def test_table_and_paths_quote_odd_names_and_paths0_is_exact(library, monkeypatch):
    _, _, photos, dups = library
    groups = expected([("identical", dups["beaches"]), ("identical", dups["scans"]),
                       ("identical", dups["odd_names"])])
    paths0 = invoke(library, "-f", "paths0", monkeypatch=monkeypatch)
    assert paths0.stdout_bytes == b"".join(b"".join(os.fsencode(p) + b"\0" for p in paths) + b"\0"
                                           for _, paths in groups)
    plain = invoke(library, "-f", "paths", monkeypatch=monkeypatch)
    cafe, two_lines = os.fsencode(photos / "c" / CAFE), str(photos / "c") + "/two\\nlines.png"
    blocks = plain.stdout_bytes.split(b"\n\n")
    assert len(blocks) == 3
    assert blocks[0].split(b"\n") == [os.fsencode(p) for p in groups[0][1]]
    assert cafe + b"\n" in plain.stdout_bytes  # exact bytes, as find(1) prints them
    assert f"$'{two_lines}'".encode() in plain.stdout_bytes  # a line break cannot split the list
    assert "1 of the paths held a line break or control character and was written" in plain.stderr
    table = invoke(library, monkeypatch=monkeypatch)
    lines = table.stdout.splitlines()
    assert lines[0] == f"identical: 3 files, {os.path.getsize(dups['beaches'][0]) / 1000:.1f} kB each"
    assert lines[1] == f"  1.0000  {groups[0][1][0]}"
    assert f"  1.0000  $'{photos / 'c'}/caf\\xe9.png'" in lines
    assert f"  1.0000  $'{two_lines}'" in lines
    assert table.stdout.count("identical: ") == 3


def test_gallery_has_one_section_per_group_showing_every_member(library, monkeypatch, tmp_path):
    _, _, _, dups = library
    page = tmp_path / "dups.html"
    result = invoke(library, "--similar", str(THRESHOLD), "--gallery", str(page), "-f", "json",
                    monkeypatch=monkeypatch)
    groups = groups_of(result)
    assert f"gallery: {page}" in result.stderr

    class Sections(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sections: list[list[str]] = []  # per <h2>: its figure captions
            self.images: list[int] = []  # per section: thumbnails shown
            self.in_caption = False

        def handle_starttag(self, tag, attrs):
            self.in_caption |= tag == "figcaption"
            if tag == "h2":
                self.sections.append([])
                self.images.append(0)
            elif tag == "img" and dict(attrs)["src"].startswith("data:image/jpeg;base64,"):
                self.images[-1] += 1

        def handle_data(self, data):
            if self.in_caption and not data.startswith("#"):  # the path, after the rank and score
                self.sections[-1].append(data)

        def handle_endtag(self, tag):
            self.in_caption &= tag != "figcaption"

    parser = Sections()
    parser.feed(page.read_text())
    from clipsearch.search.gallery import readable

    assert parser.sections == [[readable(p) for p in paths] for _, paths in groups]  # caf\ufffd.png, not $'...'
    assert parser.images == [len(paths) for _, paths in groups]  # every member shown, none a placeholder


def test_nothing_is_deleted(library, monkeypatch, tmp_path):
    _, settings, photos, _ = library

    def files():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}

    def points():
        with open_index(settings) as index:
            return index.count()

    before_files, before_points = files(), points()
    for args in ([], ["-f", "paths0"], ["--similar", "0.5", "-f", "json"], ["--gallery", str(tmp_path / "g.html")]):
        assert invoke(library, *args, "-q", monkeypatch=monkeypatch).exit_code == 0
    assert files() == before_files
    assert points() == before_points


def test_progress_of_the_similar_pass_is_on_stderr(library, monkeypatch):
    _, _, photos, _ = library
    total = sum(1 for p in photos.rglob("*") if p.is_file())
    result = invoke(library, "--similar", str(THRESHOLD), "-f", "paths", monkeypatch=monkeypatch,
                    env={"CLIPSEARCH_PROGRESS_SECONDS": "0"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("similar: ")]
    assert len(lines) >= 2  # a line per image here (interval 0), the last one forced
    assert lines[-1].startswith(f"similar: {total}/{total} images, ") and "/s, ETA " in lines[-1]


# -- errors and edges ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan"])
def test_a_threshold_outside_0_1_is_one_line_naming_similar(value, tmp_path):
    group = CliGroup(commands=[duplicates])
    # A folder that holds no index: the threshold is checked before anything is opened.
    result = CliRunner().invoke(group, ["duplicates", "--index", str(tmp_path / "none"), "--similar", value])
    assert result.exit_code == 2  # a bad flag value, as click's own type check gives
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: --similar must be a cosine similarity in (0, 1]")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("backend", ["edge", "memory"])
def test_a_missing_collection_is_the_usual_one_line_error(backend, tmp_path, tiny_model_dir, encoder):
    settings = settings_for(backend, tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 2)
    with open_index(settings, create=True) as index:  # the index exists, the collection asked for does not
        ingest([str(tmp_path / "photos")], encoder, index, IngestOptions(workers=0, quiet=True))
    group = CliGroup(commands=[duplicates])
    result = CliRunner().invoke(group, ["duplicates", "--index", settings.index, "--collection", "absent"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: collection 'absent' does not exist at ")


def test_no_duplicates_exits_0_with_a_note(tmp_path, tiny_model_dir, encoder):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    with open_index(settings, create=True) as index:
        ingest([str(tmp_path / "photos")], encoder, index, IngestOptions(workers=0, quiet=True))
    group = CliGroup(commands=[duplicates])
    result = CliRunner().invoke(group, ["duplicates", "--index", settings.index, "--collection",
                                        settings.collection, "-f", "json"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.startswith("no duplicates found")


def test_the_command_loads_no_model(tmp_path, tiny_model_dir, encoder):
    """Duplicates reads vectors from the index: torch and sentence-transformers stay
    out, and --model may name nothing at all."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = tmp_path / "photos"
    copy(draw_collection(photos, 2)[0], photos / "again.png")
    with open_index(settings, create=True) as index:
        ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
    probe = (
        "import json, sys\n"
        "from clipsearch.cli import CliGroup\n"
        "from clipsearch.search.duplicates_command import duplicates\n"
        f"args = ['duplicates', '--index', {settings.index!r}, '--collection', {settings.collection!r},\n"
        "        '--model', '/no/such/model', '--similar', '0.9', '-f', 'json']\n"
        "try:\n    CliGroup(commands=[duplicates])(args, prog_name='clipsearch')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'onnxruntime')"
        " if m in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert json.loads(lines[0])["kind"] == "identical"  # it did find the copy
    assert json.loads(lines[-1]) == []


# -- the grouping logic, on vectors placed by hand ------------------------------------------

DIM = 32


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def vector_index(tmp_path):
    """A :memory: collection to upsert vectors into; paths need no files for the similar pass."""
    from clipsearch.encoders.identity import ModelIdentity
    from clipsearch.index import ancestor_dirs, point_id

    settings = settings_for("memory", tmp_path, "unused")
    index = open_index(settings)
    index.ensure_collection(ModelIdentity("synthetic", "test", "test", DIM))

    def put(named: dict[str, np.ndarray]) -> None:
        paths = list(named)
        index.upsert([point_id(p) for p in paths], np.stack([named[p] for p in paths]),
                     [{"path": p, "dirs": ancestor_dirs(p), "size": 1} for p in paths])

    yield index, put
    index.close()


def test_chains_join_and_members_are_scored_against_the_first(vector_index):
    index, put = vector_index
    rng = np.random.default_rng(0)
    base, step = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    step = unit(step - (step @ base) * base)  # orthogonal to base
    # a~b and b~c at 0.97; a and c only 0.88 apart: one group, through b.
    angle = np.arccos(0.97)
    chain = {f"/v/{n}.jpg": np.cos(i * angle) * base + np.sin(i * angle) * step for i, n in enumerate("abc")}
    noise = {f"/v/noise{i}.jpg": v for i, v in enumerate(unit(rng.normal(size=(30, DIM))))}
    put({**chain, **noise})
    seen = []
    groups = similar_groups(index, 0.95, progress=lambda done, total: seen.append((done, total)))
    assert [[m.path for m in g.members] for g in groups] == [["/v/a.jpg", "/v/b.jpg", "/v/c.jpg"]]
    scores = [m.score for m in groups[0].members]
    assert scores == pytest.approx([1.0, 0.97, np.cos(2 * angle)], abs=1e-5)
    assert seen[-1] == (33, 33) and len(seen) == 33
    # c scores 0.88 against a: the title promises links, not a floor for every score
    assert group_title(groups[0], 0.95) == ("similar: 3 files (each >= 0.95 to another of them; "
                                            "score: cosine to the first)")


def test_a_group_larger_than_the_neighbour_count_is_found_whole(vector_index):
    index, put = vector_index
    rng = np.random.default_rng(1)
    size = 2 * NEIGHBOURS + 1
    centre = unit(rng.normal(size=DIM))
    copies = {f"/v/copy{i:02d}.jpg": unit(centre + rng.normal(0, 0.01, DIM)) for i in range(size)}
    put({**copies, **{f"/v/other{i}.jpg": v for i, v in enumerate(unit(rng.normal(size=(20, DIM))))}})
    groups = similar_groups(index, 0.95)
    assert [sorted(m.path for m in g.members) for g in groups] == [sorted(copies)]


def test_the_python_api_checks_the_threshold_first(vector_index):
    index, _ = vector_index
    with pytest.raises(ClipsearchError, match="--similar"):
        find_duplicates(index, similar=1.01)
    assert find_duplicates(index).groups == []


def test_unreadable_copies_are_left_out_and_named(tmp_path, tiny_model_dir, encoder):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = tmp_path / "photos"
    first = draw_collection(photos, 1)[0]
    copies = [copy(first, photos / f"copy{i}.png") for i in range(2)]
    with open_index(settings, create=True) as index:
        ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
        first.unlink()  # gone since ingest: the index still lists it
        found = find_duplicates(index)
    assert [[m.path for m in g.members] for g in found.groups] == [strs(p.resolve() for p in copies)]
    assert found.unreadable == [str(first.resolve())]


def test_one_file_reached_by_two_paths_is_not_its_own_duplicate(tmp_path, encoder, tiny_model_dir):
    """A hard link ingested by two runs (or a share mounted at two places: the same device
    and inode) is one file: listed as two identical copies, deleting "the copy" could
    delete the photo. It is left out of every group, and the notes say so."""
    photos = tmp_path / "photos"
    only = save(photo(7), photos / "a" / "only.png")
    copied = copy(only, photos / "c" / "real-copy.png")
    (photos / "b").mkdir()
    os.link(only, photos / "b" / "only.png")
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    for folder in ("a", "b", "c"):  # one run would meet the inode once; three runs index each path
        with open_index(settings, create=True) as index:
            ingest([str(photos / folder)], encoder, index, IngestOptions(workers=0, quiet=True))
    with open_index(settings) as index:
        assert index.count() == 3
        found = find_duplicates(index, similar=0.99)
    assert [(g.kind, strs(m.path for m in g.members)) for g in found.groups] == [
        ("identical", strs([photos / "a" / "only.png", copied]))]
    assert found.same_file == [(str(photos / "b" / "only.png"), str(photos / "a" / "only.png"))]
    result = CliRunner().invoke(CliGroup(commands=[duplicates]), ["duplicates", "--index", settings.index,
                                                                   "--collection", settings.collection])
    assert result.exit_code == 0, result.output
    assert (f"1 indexed path is the very file of another (a hard link, or one share mounted at two places), "
            f"not a copy, and was left out: e.g. {photos / 'b' / 'only.png'} is {photos / 'a' / 'only.png'}"
            in result.stderr)
