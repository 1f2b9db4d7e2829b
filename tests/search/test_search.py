"""`clipsearch search`: text, example images, mixed queries, filters, output formats,
the gallery, many queries, the Python API and bad input; rankings checked against
numpy cosine over the vectors in the index."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.encoders import l2_normalize
from clipsearch.index import open_index, point_id
from clipsearch.ingest import IngestOptions, ingest

from support import draw_collection, export_server, groups_of, settings_for

K = 5


@pytest.fixture(params=["edge", "memory", "rest", "grpc"])
def indexed(request, tmp_path, encoder, tiny_model_dir, monkeypatch):
    """An index of 24 drawn images in two folders, with every stored vector. `rest` and
    `grpc`: the server double, its settings exported for the commands."""
    if request.param in ("rest", "grpc"):
        export_server(request.param, monkeypatch)
    photos = tmp_path / "photos"
    draw_collection(photos / "a", 12)
    draw_collection(photos / "b", 12, ext=".jpg")
    settings = settings_for(request.param, tmp_path, tiny_model_dir)
    with open_index(settings, create=True) as index:
        ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
        records = list(index.scroll(with_vectors=True))
    vectors = {r.payload["path"]: r.vector for r in records}
    return settings, photos.resolve(), vectors


def args_for(settings):
    return ["--index", settings.index, "--collection", settings.collection, "--model", settings.model]


def run(settings, *args):
    result = CliRunner().invoke(cli, ["search", *args, *args_for(settings)], catch_exceptions=False)
    return result


def expected_order(vectors: dict, query: np.ndarray, k: int, exclude=(), under: Path | None = None):
    paths = [p for p in vectors if p not in exclude and (under is None or p.startswith(str(under) + "/"))]
    scores = np.array([vectors[p] @ query for p in paths])
    order = np.argsort(-scores, kind="stable")[:k]
    return [paths[i] for i in order], scores[order]


def json_hits(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_text_query_matches_numpy_cosine(indexed, encoder):
    settings, _, vectors = indexed
    result = run(settings, "a red circle", "-k", str(K), "--format", "json")
    assert result.exit_code == 0, result.output
    hits = json_hits(result.stdout)
    paths, scores = expected_order(vectors, encoder.encode_texts(["a red circle"])[0], K)
    assert [h["path"] for h in hits] == paths
    assert np.allclose([h["score"] for h in hits], scores, atol=1e-4)
    assert [h["rank"] for h in hits] == list(range(1, K + 1))
    assert set(hits[0]) == {"rank", "score", "path", "width", "height", "id", "taken", "camera", "location"}
    assert hits[0]["id"] == point_id(hits[0]["path"])
    with Image.open(hits[0]["path"]) as img:
        assert (hits[0]["width"], hits[0]["height"]) == img.size


def test_table_output_has_rank_score_path(indexed):
    settings, _, _ = indexed
    result = run(settings, "a blue square", "-k", "3")
    assert result.exit_code == 0
    rows = [line.split() for line in result.output.splitlines()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert all(Path(r[2]).is_file() for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("how", ["--image", "argument"])
def test_query_by_example_image_leaves_the_example_out(indexed, how):
    settings, photos, vectors = indexed
    example = str(photos / "a" / "003-yellow-circle.png")
    args = ["--image", example] if how == "--image" else [example]
    hits = json_hits(run(settings, *args, "-k", str(K), "-f", "json").stdout)
    paths, scores = expected_order(vectors, l2_normalize(vectors[example])[0], K, exclude={example})
    assert example not in [h["path"] for h in hits]
    assert [h["path"] for h in hits] == paths
    assert np.allclose([h["score"] for h in hits], scores, atol=1e-4)


def test_an_image_outside_the_index_is_embedded(indexed, encoder, tmp_path):
    from clipsearch.images import load_image

    from support import draw_image

    settings, _, vectors = indexed
    outside = draw_image(tmp_path / "elsewhere" / "q.png", "green", "triangle")
    hits = json_hits(run(settings, "--image", str(outside), "-k", "3", "-f", "json").stdout)
    query = encoder.encode_images([load_image(str(outside), encoder.image_size).image])[0]
    paths, _ = expected_order(vectors, query, 3)
    assert [h["path"] for h in hits] == paths


def test_mixed_query_combines_weighted_unit_vectors(indexed, encoder):
    settings, photos, vectors = indexed
    example = str(photos / "b" / "001-green-circle.jpg")
    result = run(settings, "a red circle", "--add", "2:a blue square", "--subtract", example, "-k", str(K),
                 "-f", "json")
    assert result.exit_code == 0, result.output
    text = encoder.encode_texts(["a red circle", "a blue square"])
    query = l2_normalize(text[0] + 2 * text[1] - l2_normalize(vectors[example])[0])[0]
    paths, scores = expected_order(vectors, query, K)
    hits = json_hits(result.stdout)
    assert [h["path"] for h in hits] == paths
    assert np.allclose([h["score"] for h in hits], scores, atol=1e-4)


def test_in_folder_filters_inside_the_index(indexed, encoder):
    settings, photos, vectors = indexed
    hits = json_hits(run(settings, "a red circle", "--in", str(photos / "b"), "-k", str(K), "-f", "json").stdout)
    paths, _ = expected_order(vectors, encoder.encode_texts(["a red circle"])[0], K, under=photos / "b")
    assert len(hits) == K  # filtered before top-k, so k hits even if better ones live in a/
    assert [h["path"] for h in hits] == paths


def test_in_a_folder_that_is_not_there_says_so(indexed):
    settings, photos, _ = indexed
    missing = run(settings, "a red circle", "--in", str(photos / "bb"), "-f", "json")
    assert missing.exit_code == 0 and missing.stdout == ""
    assert f"--in {photos / 'bb'} is not a folder on this machine" in missing.stderr
    # A folder that is there but holds nothing indexed gets no such line.
    (photos / "empty").mkdir()
    empty = run(settings, "a red circle", "--in", str(photos / "empty"), "-f", "json")
    assert empty.exit_code == 0 and empty.stdout == "" and "not a folder" not in empty.stderr


def test_min_score_drops_weak_hits(indexed):
    settings, _, _ = indexed
    hits = json_hits(run(settings, "a red circle", "-k", "24", "-f", "json").stdout)
    middle = len(hits) // 2
    threshold = (hits[middle]["score"] + hits[middle + 1]["score"]) / 2  # between two hits, clear of rounding
    kept = json_hits(run(settings, "a red circle", "-k", "24", "--min-score", str(threshold), "-f", "json").stdout)
    assert all(h["score"] >= threshold for h in kept)
    assert [h["path"] for h in kept] == [h["path"] for h in hits[:middle + 1]]


def test_paths_output_pipes_into_another_program(indexed):
    settings, _, _ = indexed
    result = run(settings, "a purple square", "-k", "4", "-f", "paths")
    lines = result.output.splitlines()
    assert len(lines) == 4
    sizes = subprocess.run(["xargs", "-d", "\n", "stat", "-c", "%s"], input=result.output, capture_output=True,
                           text=True, check=True).stdout.split()
    assert [int(s) for s in sizes] == [Path(p).stat().st_size for p in lines]


class _GalleryParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text += data


def test_gallery_is_a_self_contained_page_of_thumbnails(indexed, tmp_path):
    settings, _, _ = indexed
    page = tmp_path / "hits.html"
    result = run(settings, "a black triangle", "-k", "4", "-f", "json", "--gallery", str(page))
    hits = json_hits(result.stdout)
    parser = _GalleryParser()
    parser.feed(page.read_text())
    assert len(parser.images) == 4
    for src, hit in zip(parser.images, hits):
        assert src.startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert max(thumb.size) <= 256
        assert hit["path"] in parser.text and f"{hit['score']:.4f}" in parser.text


def test_the_gallery_heading_names_every_term(indexed, tmp_path):
    settings, photos, _ = indexed
    page = tmp_path / "hits.html"
    run(settings, "a black triangle", "--add", "2:a red circle", "--subtract", "blue", "--gallery", str(page))
    assert "<h2>a black triangle + 2 x a red circle - blue</h2>" in page.read_text()
    example = str(photos / "a" / "003-yellow-circle.png")
    run(settings, "--image", example, "--subtract", "0.5:blue", "--gallery", str(page))
    assert f"<h2>{example} - 0.5 x blue</h2>" in page.read_text()


def test_many_queries_load_the_model_once_and_key_json_by_query(indexed, encoder, tmp_path, monkeypatch):
    settings, photos, vectors = indexed
    import clipsearch.encoders.torch_clip as encoder_module

    loads = []
    original = encoder_module.Encoder.__init__

    def counting_init(self, *a, **kw):
        loads.append(1)
        original(self, *a, **kw)

    monkeypatch.setattr(encoder_module.Encoder, "__init__", counting_init)
    example = str(photos / "a" / "000-red-circle.png")
    queries = tmp_path / "queries.txt"
    queries.write_text(f"a red circle\n\na green square\n{example}\n")
    result = run(settings, "--queries", str(queries), "-k", "3", "-f", "json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert list(answer) == ["a red circle", "a green square", example]
    assert len(loads) == 1
    paths, _ = expected_order(vectors, encoder.encode_texts(["a green square"])[0], 3)
    assert [h["path"] for h in answer["a green square"]] == paths
    assert example not in [h["path"] for h in answer[example]]


def test_queries_answers_a_repeat_once_and_reads_a_name_that_is_not_utf8(indexed, tmp_path):
    settings, photos, _ = indexed
    odd = photos.parent / "outside" / "caf\udce9.png"  # the byte 0xe9 of a Latin-1 name
    odd.parent.mkdir()
    shutil.copy(photos / "a" / "000-red-circle.png", odd)
    queries = tmp_path / "queries.txt"
    # a BOM first (as Notepad saves), CRLF line ends, a repeat, and a name that is not UTF-8
    queries.write_bytes(b"\xef\xbb\xbfa red circle\r\na green square\r\na red circle\r\n" + os.fsencode(str(odd))
                        + b"\r\n")
    table = run(settings, "--queries", str(queries), "-k", "2")
    answer = json.loads(run(settings, "--queries", str(queries), "-k", "2", "-f", "json").stdout)
    assert table.exit_code == 0, table.output
    assert list(answer) == ["a red circle", "a green square", str(odd)]
    assert table.stdout.count("# ") == 3  # one block a query, as many as the JSON's keys
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red circle\nno such caf\xe9\n")
    failed = run(settings, "--queries", str(bad))
    _one_line_error(failed, "line 2 is not UTF-8 text (it holds the byte 0xe9) nor the name of a file")


def _batch_files(folder: Path, example: Path) -> list[str]:
    """queries.txt, whose lines 4 (an empty image), 6 (a broken one), 7 (a missing one)
    and 8 (not UTF-8, no file) cannot be answered, behind a BOM, a blank line and a
    repeat that the line numbers must count; clean.txt, its other lines alone; and the
    lines expected on stderr (without the JSON, whose keys say which lines were
    answered)."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "queries.txt").write_bytes(
        b"\xef\xbb\xbfa red circle\n\na red circle\nempty.jpg\na green square\nbroken.jpg\ngone.jpg\nno such caf\xe9\n"
        + "café au lait\n".encode() + os.fsencode(str(example)) + b"\nempty.jpg\n")
    (folder / "clean.txt").write_text(f"a red circle\na green square\ncafé au lait\n{example}\n")
    reasons = ["queries.txt:4: cannot use empty.jpg as a query image: empty file (0 bytes)",
               "queries.txt:6: cannot use broken.jpg as a query image: ",
               "queries.txt:7: the query gone.jpg looks like an image file, but there is none at that path",
               "queries.txt:8: the line is not UTF-8 text (it holds the byte 0xe9) nor the name of a file"]
    return reasons


def _same_answers(mixed: bytes, answered: bytes, fmt: str, skipped: int) -> None:
    """The mixed file's output is the clean file's, but bare paths (which carry no query)
    give each skipped line an empty group, so that the n-th group answers the n-th line."""
    if fmt not in ("paths", "paths0"):
        assert mixed == answered, fmt
        return
    end = b"\n" if fmt == "paths" else b"\0"
    groups, clean = groups_of(mixed, end), groups_of(answered, end)
    assert [g for g in groups if g] == clean and len(groups) == len(clean) + skipped, fmt


def _skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("queries.txt:")]


def test_queries_skips_the_lines_it_cannot_answer_and_answers_the_others(indexed, tmp_path, monkeypatch):
    """One unusable --queries line (an empty or broken image, a missing one, bytes that
    are not UTF-8) stopped the whole batch with one error naming no line: each is named
    FILE:LINE on stderr (the file's real line numbers), the others are answered exactly
    as a file of them alone is, in every format, and the exit status is 1."""
    settings, photos, _ = indexed
    monkeypatch.chdir(tmp_path)
    reasons = _batch_files(tmp_path, photos / "a" / "000-red-circle.png")
    for fmt in ("table", "paths", "paths0", "json"):
        answered = run(settings, "--queries", "clean.txt", "-k", "3", "-f", fmt)
        assert answered.exit_code == 0 and answered.stdout, answered.output
        mixed = run(settings, "--queries", "queries.txt", "-k", "3", "-f", fmt)
        assert mixed.exit_code == 1, fmt
        _same_answers(mixed.stdout_bytes, answered.stdout_bytes, fmt, len(reasons))
        skipped = _skipped_lines(mixed.stderr)
        assert len(skipped) == len(reasons) and all(line.startswith(reason) for line, reason in zip(skipped, reasons))
        assert "Error" not in mixed.stderr and "Traceback" not in mixed.output
    answer = json.loads(mixed.stdout)  # a skipped line has no key: never taken for a query with no hits
    assert list(answer) == ["a red circle", "a green square", "café au lait", str(photos / "a" / "000-red-circle.png")]
    # Nothing left to answer: an empty answer, every line named, exit 1.
    (tmp_path / "bad.txt").write_text("empty.jpg\n")
    none = run(settings, "--queries", "bad.txt", "-f", "json")
    assert none.exit_code == 1 and json.loads(none.stdout) == {}
    assert none.stderr.splitlines() == ["bad.txt:1: cannot use empty.jpg as a query image: empty file (0 bytes)"]


def test_queries_still_stops_at_once_for_what_concerns_every_line(indexed, tmp_path, monkeypatch):
    """An --add or --subtract image that cannot be used, a bad -k, a file in another
    encoding: one error, no answers."""
    settings, _, _ = indexed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "good.txt").write_text("a red circle\na green square\n")
    _one_line_error(run(settings, "--queries", "good.txt", "--subtract", "empty.jpg"),
                    f"cannot use {tmp_path / 'empty.jpg'} as a query image: empty file (0 bytes)")
    _one_line_error(run(settings, "--queries", "good.txt", "--add", "gone.jpg"), "--add gone.jpg looks like")
    _one_line_error(run(settings, "--queries", "good.txt", "-k", "0"), "-k must be at least 1")
    (tmp_path / "latin1.txt").write_bytes(b"a red circle\n\xe9t\xe9\nempty.jpg\n")
    _one_line_error(run(settings, "--queries", "latin1.txt"),
                    "--queries latin1.txt line 2 is not UTF-8 text (it holds the byte 0xe9)")


@pytest.mark.slow
def test_queries_through_a_server_skip_the_same_lines(tmp_path, tiny_model_dir, monkeypatch):
    """`search --server URL --queries FILE` (one request a line) skips and names the
    same lines as a local search, the server's refusal of an upload included, and
    answers the others."""
    from support import ServeProcess

    photos = tmp_path / "photos"
    draw_collection(photos, 8)
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    with open_index(settings, create=True) as index:
        ingest([str(photos)], settings=settings, index=index, options=IngestOptions(workers=0, quiet=True))
    monkeypatch.chdir(tmp_path)
    reasons = _batch_files(tmp_path, sorted(photos.resolve().glob("*.png"))[0])
    args = ["--index", settings.index, "--collection", settings.collection, "--model", str(tiny_model_dir)]
    cache = {"CLIPSEARCH_CACHE_DIR": str(tmp_path / "serve-cache")}
    with ServeProcess(args, tmp_path / "serve.log", env=cache) as served:
        def remote(*extra):
            return CliRunner().invoke(cli, ["search", *extra, "--server", served.url], catch_exceptions=False)

        for fmt in ("table", "paths", "paths0", "json"):
            answered = remote("--queries", "clean.txt", "-k", "3", "-f", fmt)
            assert answered.exit_code == 0 and answered.stdout, answered.output
            mixed = remote("--queries", "queries.txt", "-k", "3", "-f", fmt)
            assert mixed.exit_code == 1, fmt
            _same_answers(mixed.stdout_bytes, answered.stdout_bytes, fmt, len(reasons))
            skipped = _skipped_lines(mixed.stderr)
            assert len(skipped) == len(reasons), mixed.stderr
            assert all(line.startswith(reason) for line, reason in zip(skipped, reasons)), skipped
            assert "Error" not in mixed.stderr and "Traceback" not in mixed.output
        assert "the upload is not a usable image" in skipped[1]  # the server's refusal, named against its line
        assert len(json.loads(mixed.stdout)) == 4
        # A bad -k, or an image line with --add (the server takes one image alone): stopped before any answer.
        _one_line_error(remote("--queries", "queries.txt", "-k", "0"), "-k must be at least 1")
        _one_line_error(remote("--queries", "queries.txt", "--add", "sunset"), "cannot be mixed with --add")


def test_python_api_returns_typed_hits(indexed, encoder):
    from clipsearch.search import SearchHit, search

    settings, _, vectors = indexed
    hits = search("a red circle", k=3, settings=settings)
    assert all(isinstance(h, SearchHit) for h in hits)
    paths, _ = expected_order(vectors, encoder.encode_texts(["a red circle"])[0], 3)
    assert [h.path for h in hits] == paths


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args, needle", [
    (["   "], "empty"),
    (["--image", "/no/such/photo.jpg"], "/no/such/photo.jpg"),
    (["x", "-k", "0"], "-k"),
    (["x", "-k", "-3"], "-k"),
    (["--add", "-1:cat"], "weight"),
    ([], "nothing to search for"),
    (["caf\udce9"], "the query $'caf\\xe9' is not UTF-8 text"),  # a Latin-1 shell's argument
    (["x", "--add", "2:caf\udce9"], "--add $'caf\\xe9' is not UTF-8"),
])
def test_bad_queries_fail_with_one_line(indexed, args, needle):
    settings, _, _ = indexed
    _one_line_error(CliRunner().invoke(cli, ["search", *args, *args_for(settings)]), needle)


def test_bad_files_and_counts_fail_with_one_line(indexed, tmp_path):
    settings, _, _ = indexed
    latin1 = tmp_path / "queries.txt"
    latin1.write_bytes(b"caf\xe9\nred\n")
    _one_line_error(CliRunner().invoke(cli, ["search", "--queries", str(latin1), *args_for(settings)]),
                    "--queries", "is not UTF-8 text", "0xe9")
    # a gallery that cannot be written is named before the search (test_output.py: one
    # that fails later costs no hits)
    result = CliRunner().invoke(cli, ["search", "x", "-f", "paths", "--gallery", str(tmp_path / "no" / "g.html"),
                                      *args_for(settings)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: --gallery {tmp_path / 'no' / 'g.html'}: folder {tmp_path / 'no'} does not exist")
    nan = CliRunner().invoke(cli, ["search", "x", "--min-score", "nan", *args_for(settings)])
    assert nan.exit_code == 2 and "Invalid value for '--min-score': nan is not a finite number" in nan.output
    huge = CliRunner().invoke(cli, ["search", "x", "-k", "99999999999999999999", *args_for(settings)])
    assert huge.exit_code == 2 and "Traceback" not in huge.output
    assert "Invalid value for '-k'" in huge.output.strip().splitlines()[-1]



def test_a_mistyped_image_path_is_an_error_not_a_text_search(indexed, tmp_path, monkeypatch):
    """A query that is one word ending in an image extension and names no file was
    embedded as the text "cam/nosuch.jpg" and answered with confident nonsense, exit 0:
    the QUERY, --add, --subtract and a --queries line say so in one line instead. Words
    around a file name stay text."""
    settings, photos, _ = indexed
    monkeypatch.chdir(tmp_path)
    _one_line_error(CliRunner().invoke(cli, ["search", "cam/nosuch.jpg", *args_for(settings)]),
                    "the query cam/nosuch.jpg looks like an image file, but there is none at that path")
    _one_line_error(CliRunner().invoke(cli, ["search", "red", "--add", "2:gone.PNG", *args_for(settings)]),
                    "--add gone.PNG looks like an image file")
    _one_line_error(CliRunner().invoke(cli, ["search", "red", "--subtract", "~/nope.webp", *args_for(settings)]),
                    "--subtract ~/nope.webp looks like an image file")
    lines = tmp_path / "queries.txt"
    lines.write_text("a red circle\nlib/missing.jpg\n")
    batch = CliRunner().invoke(cli, ["search", "--queries", "queries.txt", "-f", "json", *args_for(settings)])
    assert batch.exit_code == 1 and list(json.loads(batch.stdout)) == ["a red circle"]  # the other line answered
    assert batch.stderr.splitlines() == ["queries.txt:2: the query lib/missing.jpg looks like an image file, but "
                                         "there is none at that path; give an image that exists, or words to search "
                                         "for"]
    assert run(settings, "the photo IMG_0001.jpg of a red circle", "-k", "2", "-f", "paths").stdout.strip()


def test_a_folder_given_as_the_query_is_an_error_not_a_text_search(indexed, tmp_path, monkeypatch):
    """`search photos/` embedded the text "photos/"; a folder path is refused, pointing at
    --in. One word without a slash stays words, folder or not ("cats")."""
    settings, photos, _ = indexed
    monkeypatch.chdir(photos)
    _one_line_error(CliRunner().invoke(cli, ["search", "a/", *args_for(settings)]),
                    "the query a/ is a folder: give an image file to search by, words to search for, or --in FOLDER")
    _one_line_error(CliRunner().invoke(cli, ["search", "red", "--add", f"{photos}/b", *args_for(settings)]),
                    f"--add {photos}/b is a folder")
    assert run(settings, "a", "-k", "2", "-f", "paths").exit_code == 0  # "a" is a folder here, and a word

def test_missing_and_empty_collections_fail_with_one_line(tmp_path, encoder, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    _one_line_error(CliRunner().invoke(cli, ["search", "cat", *args_for(settings)]), "does not exist")
    with open_index(settings, create=True) as index:
        index.ensure_collection(encoder.identity)
    _one_line_error(CliRunner().invoke(cli, ["search", "cat", *args_for(settings)]), "empty")


def test_a_mismatched_model_gets_no_results(indexed, other_model_dir):
    settings, _, _ = indexed
    args = ["search", "cat", "--index", settings.index, "--collection", settings.collection,
            "--model", str(other_model_dir)]
    _one_line_error(CliRunner().invoke(cli, args), "model mismatch")


def test_a_folder_given_as_the_query_image_is_named_a_folder(indexed, tmp_path):
    """Issue #15, defect 5: it was "does not exist"."""
    settings, photos, _ = indexed
    result = CliRunner().invoke(cli, ["search", "--image", str(photos), *args_for(settings)])
    _one_line_error(result, "is a folder, not an image")


def test_a_bad_query_image_is_refused_before_the_full_model_loads(indexed, encoder, tmp_path, monkeypatch):
    """Issue #15, defect 5: a broken example image outside the index was refused only
    after the image tower loaded (seconds); it is checked first."""
    from support import fast_encoder_for

    settings, _, _ = indexed
    fast_encoder_for(Path(settings.model), encoder)  # text queries take the fast path: no full model yet
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = CliRunner().invoke(cli, ["search", "--image", str(broken), "-v", *args_for(settings)])
    assert result.exit_code == 1
    assert "cannot use" in result.output and "broken.jpg" in result.output
    assert "loading the full model" not in result.output


def test_table_columns_stay_aligned_when_scores_change_sign(indexed):
    settings, _, _ = indexed
    # The query's opposite puts every score's sign the other way: between the two,
    # some rows have a minus sign whatever this model's scores are.
    lines = []
    for args in (["a blue square"], ["a blue square", "--subtract", "3:a blue square"]):
        lines += run(settings, *args, "-k", str(K)).output.splitlines()
    scores = [float(line.split()[1]) for line in lines]
    assert min(scores) < 0 < max(scores)
    assert len({line.index("/") for line in lines}) == 1, "\n".join(lines)
