"""The command line, end to end: ingest, search, status on the edge and :memory:
backends, env-var twins, one-line errors, and the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.images import load_image

from support import draw_collection, export_server

UNREACHABLE = "http://127.0.0.1:9"


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.stdout


def assert_one_line_error(result, *needles: str) -> str:
    """Exit != 0 through click (no stray exception), and exactly one line: `Error: ...`."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {result.output!r}"
    line = lines[0]
    assert line.startswith("Error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.fixture(params=["edge", "memory", "rest"])
def target(request, tmp_path, monkeypatch):
    """--index/--collection for a fresh collection on each backend (`rest`: a server
    URL, the REST double of tests/doubles/qdrant_rest_double.py, its key exported)."""
    collection = f"cli_{uuid.uuid4().hex[:10]}"
    backend, index = request.param, str(tmp_path / "index") if request.param == "edge" else ":memory:"
    if request.param == "rest":
        backend, index = "server", export_server("rest", monkeypatch)["QDRANT_URL"]
    return {"backend": backend, "index": index, "collection": collection,
            "args": ["--index", index, "--collection", collection]}


def ground_truth(encoder, paths, query: str) -> dict[str, float]:
    """Cosine between the query's text vector and each file's image vector, by path."""
    pil = [load_image(str(p), target=encoder.image_size).image for p in paths]
    image_vectors = encoder.encode_images(pil)
    text_vector = encoder.encode_texts([query])[0]
    scores = image_vectors @ text_vector
    return {os.path.realpath(p): float(s) for p, s in zip(paths, scores)}


def ingest_images(target, model, folder, *extra):
    return ok(run_cli("ingest", folder, "--model", model, *target["args"], "-w", "0", "-q", *extra))


# -- ingest, search, status --------------------------------------------------------------


def test_ingest_then_search_table(target, tiny_model_dir, images):
    out = ingest_images(target, tiny_model_dir, images[0].parent)
    assert out.strip().startswith("ingested 12, unchanged 0, skipped 0, removed 0")

    out = ok(run_cli("search", "a red circle", "-k", "3", "--model", tiny_model_dir, *target["args"]))
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3
    existing = {os.path.realpath(p) for p in images}
    for expected_rank, line in enumerate(lines, start=1):
        rank, score, path = line.split(None, 2)
        assert int(rank) == expected_rank
        assert -1.0 - 1e-4 <= float(score) <= 1.0 + 1e-4
        assert path in existing


def test_search_json_scores_match_numpy(target, tiny_model_dir, images, encoder):
    ingest_images(target, tiny_model_dir, images[0].parent)
    query = "a green square"
    out = ok(run_cli("search", query, "-k", "5", "--format", "json", "--model", tiny_model_dir, *target["args"]))
    hits = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(hits) == 5
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)

    truth = ground_truth(encoder, images, query)
    for hit in hits:
        assert hit["path"] in truth
        assert hit["score"] == pytest.approx(truth[hit["path"]], abs=1e-4)
        assert hit["width"] and hit["height"]
        uuid.UUID(hit["id"])
    # The hits are the true top 5 (compared by score, so exact ties cannot flake).
    best = sorted(truth.values(), reverse=True)[:5]
    np.testing.assert_allclose(scores, best, atol=1e-4)


def test_search_json_width_height(target, tiny_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    out = ok(run_cli("search", "anything", "-k", "12", "-f", "json", "--model", tiny_model_dir, *target["args"]))
    hits = [json.loads(line) for line in out.splitlines()]
    assert len(hits) == 12
    from PIL import Image

    for hit in hits:
        with Image.open(hit["path"]) as img:
            assert (hit["width"], hit["height"]) == img.size


def test_search_paths_format(target, tiny_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    out = ok(run_cli("search", "a yellow triangle", "-k", "4", "--format", "paths",
                     "--model", tiny_model_dir, *target["args"]))
    paths = out.splitlines()
    assert len(paths) == 4
    assert len(set(paths)) == 4
    for p in paths:
        assert Path(p).is_file()
        assert os.path.isabs(p)


def test_search_k_larger_than_collection(target, tiny_model_dir, tmp_path):
    folder = tmp_path / "few"
    draw_collection(folder, 3)
    ingest_images(target, tiny_model_dir, folder)
    out = ok(run_cli("search", "red", "-k", "50", "-f", "paths", "--model", tiny_model_dir, *target["args"]))
    assert len(out.splitlines()) == 3


def test_search_in_folder(target, tiny_model_dir, tmp_path):
    draw_collection(tmp_path / "lib" / "a", 4)
    draw_collection(tmp_path / "lib" / "b", 5)
    ingest_images(target, tiny_model_dir, tmp_path / "lib")
    out = ok(run_cli("search", "red", "-k", "20", "-f", "paths", "--in", tmp_path / "lib" / "b",
                     "--model", tiny_model_dir, *target["args"]))
    paths = out.splitlines()
    assert len(paths) == 5
    assert all(p.startswith(os.path.realpath(tmp_path / "lib" / "b") + os.sep) for p in paths)


# Modification times (ns) whose float seconds qdrant-edge's payload storage gives back
# one ulp off (about one real mtime in nine does this): the unchanged check must not
# depend on a float surviving the round trip.
ROUNDTRIP_UNSAFE_MTIME_NS = (1795735602708683700, 1761088697344380100, 1749357786646532500)


@pytest.mark.parametrize("backend", ["edge", "memory"])
def test_second_ingest_is_incremental(backend, tmp_path, tiny_model_dir, images):
    for i, path in enumerate(images):
        ns = ROUNDTRIP_UNSAFE_MTIME_NS[i] if i < len(ROUNDTRIP_UNSAFE_MTIME_NS) else (1_700_000_000 + i) * 10**9
        os.utime(path, ns=(ns, ns))
    index = str(tmp_path / "index") if backend == "edge" else ":memory:"
    target = {"args": ["--index", index, "--collection", f"cli_{uuid.uuid4().hex[:10]}"]}
    ingest_images(target, tiny_model_dir, images[0].parent)
    out = ok(run_cli("ingest", images[0].parent, "--model", tiny_model_dir, *target["args"],
                     "-w", "0", "-q", "--json"))
    summary = json.loads(out)
    assert summary["found"] == 12
    assert summary["embedded"] == 0
    assert summary["unchanged"] == 12
    assert summary["skipped"] == 0


def test_status(target, tiny_model_dir, images, encoder):
    ingest_images(target, tiny_model_dir, images[0].parent)
    out = ok(run_cli("status", *target["args"]))
    facts = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        facts[key.strip()] = value.strip()
    assert facts["backend"] == target["backend"] + (" (rest)" if target["backend"] == "server" else "")
    assert facts["collection"] == target["collection"]
    assert facts["points"] == "12"
    if target["backend"] == "server":
        assert facts["server"].startswith("Qdrant ")
    assert str(Path(tiny_model_dir).resolve()) in facts["model"]
    assert encoder.identity.image_fingerprint[:12] in facts["model"]
    assert "dim 16" in facts["model"]


def test_status_json(target, tiny_model_dir, images, encoder):
    ingest_images(target, tiny_model_dir, images[0].parent)
    facts = json.loads(ok(run_cli("status", "--json", *target["args"])))
    assert facts["backend"] == target["backend"]
    assert facts["collection"] == target["collection"]
    assert facts["exists"] is True
    assert facts["points"] == 12
    assert facts["model"]["image_fingerprint"] == encoder.identity.image_fingerprint
    assert facts["model"]["dim"] == encoder.dim
    assert facts["model"]["name"] == str(Path(tiny_model_dir).resolve())
    if target["backend"] == "edge":
        assert facts["location"] == str(Path(target["index"]).resolve())
    else:
        assert facts["location"] == target["index"]


def test_status_of_missing_collection(target):
    facts = json.loads(ok(run_cli("status", "--json", *target["args"])))
    assert facts["exists"] is False
    assert facts["points"] == 0
    assert facts["model"] is None
    out = ok(run_cli("status", *target["args"]))
    assert "does not exist yet" in out
    if target["backend"] == "edge":
        assert not Path(target["index"]).exists(), "status must not create an index folder"


def test_memory_index_is_shared_within_process(tiny_model_dir, images):
    collection = f"shared_{uuid.uuid4().hex[:8]}"
    args = ["--index", ":memory:", "--collection", collection]
    ok(run_cli("ingest", images[0].parent, "--model", tiny_model_dir, *args, "-w", "0", "-q"))
    facts = json.loads(ok(run_cli("status", "--json", *args)))
    assert facts["points"] == 12
    # Another collection in the same process is separate.
    other = json.loads(ok(run_cli("status", "--json", "--index", ":memory:", "--collection", collection + "x")))
    assert other["exists"] is False


def test_edge_index_persists_and_layout(tmp_path, tiny_model_dir, images):
    index = tmp_path / "idx"
    ok(run_cli("ingest", images[0].parent, "--model", tiny_model_dir, "--index", index, "-w", "0", "-q"))
    assert (index / "clipsearch-index.json").is_file()
    assert (index / "images" / "model.json").is_file()  # default collection name
    facts = json.loads(ok(run_cli("status", "--json", "--index", index)))
    assert facts["collection"] == "images"
    assert facts["points"] == 12


def test_ingest_with_workers_and_report(tmp_path, tiny_model_dir, images):
    (images[0].parent / "broken.jpg").write_bytes(b"not a jpeg at all")
    report = tmp_path / "skipped.jsonl"
    out = ok(run_cli("ingest", images[0].parent, "--model", tiny_model_dir, "--index", tmp_path / "idx",
                     "-w", "2", "-b", "5", "-q", "--json", "--report", report))
    summary = json.loads(out)
    assert summary["embedded"] == 12
    assert summary["skipped"] == 1
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["path"] for r in rows] == [os.path.realpath(images[0].parent / "broken.jpg")]
    assert rows[0]["reason"]


# -- environment variables ----------------------------------------------------------------


def test_env_vars_configure_everything(monkeypatch, tmp_path, tiny_model_dir, images):
    index = tmp_path / "env-index"
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(index))
    monkeypatch.setenv("CLIPSEARCH_COLLECTION", "envcoll")
    ok(run_cli("ingest", images[0].parent, "-w", "0", "-q"))
    assert (index / "envcoll").is_dir()
    facts = json.loads(ok(run_cli("status", "--json")))
    assert facts["location"] == str(index.resolve())
    assert facts["collection"] == "envcoll"
    assert facts["points"] == 12
    assert facts["model"]["name"] == str(Path(tiny_model_dir).resolve())
    out = ok(run_cli("search", "red circle", "-k", "2", "-f", "paths"))
    assert len(out.splitlines()) == 2


def test_flags_override_env(monkeypatch, tmp_path, tiny_model_dir, images):
    env_index, flag_index = tmp_path / "env-index", tmp_path / "flag-index"
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(tmp_path / "no-such-model"))
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(env_index))
    monkeypatch.setenv("CLIPSEARCH_COLLECTION", "envcoll")
    ok(run_cli("ingest", images[0].parent, "--model", tiny_model_dir, "--index", flag_index,
               "--collection", "flagcoll", "-w", "0", "-q"))
    assert not env_index.exists()
    assert (flag_index / "flagcoll").is_dir()
    facts = json.loads(ok(run_cli("status", "--json", "--index", flag_index, "--collection", "flagcoll")))
    assert facts["points"] == 12
    # The env collection in the flag index does not exist; the env index was never made.
    facts = json.loads(ok(run_cli("status", "--json", "--index", flag_index)))
    assert facts["collection"] == "envcoll" and facts["exists"] is False
    # --model beats the broken CLIPSEARCH_MODEL.
    out = ok(run_cli("search", "red", "-k", "1", "-f", "paths", "--model", tiny_model_dir,
                     "--index", flag_index, "--collection", "flagcoll"))
    assert len(out.splitlines()) == 1
    # ... and without the flag, the env's model is used, and fails naming it.
    result = run_cli("search", "red", "--index", flag_index, "--collection", "flagcoll")
    assert_one_line_error(result, str(tmp_path / "no-such-model"))


def test_clipsearch_index_beats_qdrant_url(monkeypatch, tmp_path):
    monkeypatch.setenv("QDRANT_URL", UNREACHABLE)
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "idx"))
    facts = json.loads(ok(run_cli("status", "--json")))
    assert facts["backend"] == "edge"


def test_qdrant_url_selects_server(monkeypatch):
    monkeypatch.setenv("QDRANT_URL", UNREACHABLE)
    monkeypatch.setenv("CLIPSEARCH_RETRY_SECONDS", "1")
    result = run_cli("status", "--json")
    assert_one_line_error(result, UNREACHABLE)


# -- bad input: one line, exit != 0 -------------------------------------------------------


def test_unknown_model_path_on_ingest(tmp_path, images):
    missing = tmp_path / "missing-model"
    result = run_cli("ingest", images[0].parent, "--model", missing, "--index", tmp_path / "idx", "-w", "0", "-q")
    assert_one_line_error(result, str(missing))
    assert not (tmp_path / "idx").exists()  # checked before the index is created: no empty one left behind


def test_unknown_model_path_on_search(target, tmp_path, tiny_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    missing = tmp_path / "missing-model"
    result = run_cli("search", "red", "--model", missing, *target["args"])
    assert_one_line_error(result, str(missing))


@pytest.mark.parametrize("command", [["status"], ["search", "red"], ["ingest", "PHOTOS", "-w", "0"]])
def test_folder_that_is_not_an_index(command, tmp_path, tiny_model_dir, images):
    not_index = tmp_path / "documents"
    not_index.mkdir()
    (not_index / "letter.txt").write_text("dear diary")
    args = [str(images[0].parent) if a == "PHOTOS" else a for a in command]
    result = run_cli(*args, "--index", not_index, "--model", tiny_model_dir)
    assert_one_line_error(result, str(not_index.resolve()), "not a clipsearch index")
    assert sorted(p.name for p in not_index.iterdir()) == ["letter.txt"], "the folder was written to"


def test_index_path_is_a_file(tmp_path):
    path = tmp_path / "index.db"
    path.write_text("x")
    result = run_cli("status", "--index", path)
    assert_one_line_error(result, str(path.resolve()))


@pytest.mark.parametrize("command", [["status"], ["search", "red"], ["ingest", "PHOTOS", "-w", "0"]])
def test_unreachable_qdrant_url(command, monkeypatch, tiny_model_dir, images):
    monkeypatch.setenv("QDRANT_URL", UNREACHABLE)
    monkeypatch.setenv("CLIPSEARCH_RETRY_SECONDS", "1")
    args = [str(images[0].parent) if a == "PHOTOS" else a for a in command]
    started = time.monotonic()
    result = run_cli(*args, "--model", tiny_model_dir)
    elapsed = time.monotonic() - started
    line = assert_one_line_error(result, UNREACHABLE)
    assert "unreachable" in line
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_an_unreachable_server_at_start_fails_within_seconds_even_with_long_retries(monkeypatch):
    """The retry budget is for a server lost mid-run; before it has ever answered, a
    wrong URL or a stopped server is told within about 10 s."""
    monkeypatch.setenv("CLIPSEARCH_RETRY_SECONDS", "600")
    started = time.monotonic()
    result = run_cli("status", "--index", UNREACHABLE)
    line = assert_one_line_error(result, UNREACHABLE)
    assert "after 10 s of retries" in line
    assert time.monotonic() - started < 13  # the backoff's last wait (up to 8 s) stops at the 10 s


def test_unreachable_index_flag(tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["status", "--index", UNREACHABLE], env={"CLIPSEARCH_RETRY_SECONDS": "1"})
    assert_one_line_error(result, "127.0.0.1:9")
    assert time.monotonic() - started < 15


def test_bad_retry_seconds(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_RETRY_SECONDS", "soon")
    result = run_cli("status", "--index", ":memory:")
    assert_one_line_error(result, "CLIPSEARCH_RETRY_SECONDS")


def test_empty_folder_to_ingest(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("ingest", empty, "--model", tiny_model_dir, "--index", tmp_path / "idx", "-w", "0", "-q")
    assert_one_line_error(result, str(empty.resolve()), "no image files")


def test_folder_without_images_to_ingest(tmp_path, tiny_model_dir):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    result = run_cli("ingest", folder, "--model", tiny_model_dir, "--index", tmp_path / "idx", "-w", "0", "-q")
    assert_one_line_error(result, str(folder.resolve()))


def test_missing_folder_to_ingest(tmp_path, tiny_model_dir):
    missing = tmp_path / "nope"
    result = run_cli("ingest", missing, "--model", tiny_model_dir, "--index", tmp_path / "idx", "-w", "0", "-q")
    assert_one_line_error(result, str(missing))
    assert not (tmp_path / "idx").exists()  # a typo leaves no empty index behind


def test_model_mismatch_on_search(target, tiny_model_dir, other_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    result = run_cli("search", "red", "--model", other_model_dir, *target["args"])
    assert_one_line_error(result, "model mismatch", target["collection"])


def test_model_mismatch_on_ingest(target, tiny_model_dir, other_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    draw_collection(images[0].parent / "more", 2)
    result = run_cli("ingest", images[0].parent, "--model", other_model_dir, *target["args"], "-w", "0", "-q")
    # A fine-tuned model is adopted by a reindex: the message says how.
    adopt = f"clipsearch reindex --model {other_model_dir}"
    assert_one_line_error(result, "model mismatch", target["collection"], adopt)
    facts = json.loads(ok(run_cli("status", "--json", *target["args"])))
    assert facts["points"] == 12, "the mismatched model must not have added points"


def test_same_weights_other_layout_can_search(target, tiny_model_dir, tiny_st_model_dir, images):
    """The identity compares weights, not folder names."""
    ingest_images(target, tiny_model_dir, images[0].parent)
    out = ok(run_cli("search", "red", "-k", "2", "-f", "paths", "--model", tiny_st_model_dir, *target["args"]))
    assert len(out.splitlines()) == 2


def test_search_missing_collection(target, tiny_model_dir, images):
    ingest_images(target, tiny_model_dir, images[0].parent)
    result = run_cli("search", "red", "--model", tiny_model_dir, "--index", target["index"], "--collection", "nosuch")
    assert_one_line_error(result, "'nosuch'", "does not exist")


def test_search_missing_index_folder(tmp_path, tiny_model_dir):
    index = tmp_path / "never-made"
    result = run_cli("search", "red", "--model", tiny_model_dir, "--index", index)
    assert_one_line_error(result, "does not exist")
    assert not index.exists(), "a search must not create an index"


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query(target, tiny_model_dir, images, query):
    ingest_images(target, tiny_model_dir, images[0].parent)
    result = run_cli("search", query, "--model", tiny_model_dir, *target["args"])
    assert_one_line_error(result, "query is empty")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_bad_k(target, tiny_model_dir, images, k):
    ingest_images(target, tiny_model_dir, images[0].parent)
    result = run_cli("search", "red", "-k", k, "--model", tiny_model_dir, *target["args"])
    assert_one_line_error(result, "-k", k)


def test_bad_collection_name(tmp_path):
    result = run_cli("status", "--index", tmp_path / "idx", "--collection", "a/b")
    assert_one_line_error(result, "a/b")


def test_bad_env_int(monkeypatch, tmp_path, images):
    monkeypatch.setenv("CLIPSEARCH_BATCH_SIZE", "lots")
    result = run_cli("ingest", images[0].parent, "--index", tmp_path / "idx")
    assert result.exit_code != 0
    assert "CLIPSEARCH_BATCH_SIZE" in result.output
    assert "Traceback" not in result.output


# -- the installed console script -----------------------------------------------------------


def console_script() -> str:
    candidate = Path(sys.executable).parent / "clipsearch"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("clipsearch")
    if not found:
        pytest.fail("the clipsearch console script is not installed")
    return found


def test_console_script_end_to_end(tmp_path, tiny_model_dir, images):
    exe = console_script()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "QDRANT_"))}
    env.update(HF_HUB_OFFLINE="1", XDG_DATA_HOME=str(tmp_path / "xdg"), CLIPSEARCH_CACHE_DIR=str(tmp_path / "cache"),
               CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_INDEX=str(tmp_path / "idx"))

    def run(*args, timeout=120):
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=tmp_path)

    help_ = run("--help")
    assert help_.returncode == 0, help_.stderr
    for command in ("ingest", "search", "status"):
        assert command in help_.stdout
    for command in ("ingest", "search", "status"):
        sub = run(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "CLIPSEARCH_" in sub.stdout

    version = run("--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout

    ing = run("ingest", images[0].parent, "-w", "1", "-q", "--json")
    assert ing.returncode == 0, ing.stderr
    assert "Traceback" not in ing.stderr
    assert json.loads(ing.stdout)["embedded"] == 12

    found = run("search", "a red circle", "-k", "3", "-f", "paths")
    assert found.returncode == 0, found.stderr
    paths = found.stdout.splitlines()
    assert len(paths) == 3 and all(Path(p).is_file() for p in paths)
    # Again, now on the fast path, which ends the process without the interpreter's
    # teardown: the output (piped, so block-buffered) and the gallery are all there.
    again = run("search", "a red circle", "-k", "3", "-f", "paths", "--gallery", tmp_path / "g.html", "--verbose")
    assert again.returncode == 0, again.stderr
    assert "fast path" in again.stderr
    assert again.stdout.splitlines() == paths
    assert (tmp_path / "g.html").read_text().count("<img") == 3

    # An error in a real process: stderr is exactly one line, exit status 2 (a bad value).
    bad = run("search", "red", "-k", "0")
    assert bad.returncode == 2
    assert bad.stdout == ""
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), bad.stderr

    env["CLIPSEARCH_MODEL"] = str(tmp_path / "absent-model")
    bad = run("search", "red")
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "absent-model") in lines[0], bad.stderr


def test_python_dash_m(tmp_path):
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    result = subprocess.run([sys.executable, "-m", "clipsearch", "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ingest" in result.stdout


@pytest.mark.parametrize("command, loads_model", [("status", False), ("migrate", False), ("duplicates", False),
                                                  ("ingest", True), ("search", True), ("serve", True)])
def test_only_commands_that_load_a_model_show_model_and_device(command, loads_model):
    shown = ok(run_cli(command, "--help"))
    assert ("--model" in shown, "--device" in shown) == (loads_model, loads_model)
    assert "--index" in shown and "--collection" in shown


def test_a_script_passing_model_and_device_to_status_still_works(tmp_path, tiny_model_dir, images):
    """The flags are only hidden: a script giving every command the same flags runs on,
    and the status it prints is the collection's own (nothing is loaded for them)."""
    index = tmp_path / "idx"
    ok(run_cli("ingest", images[0].parent, "--index", index, "--model", tiny_model_dir, "-w", "0", "-q"))
    facts = json.loads(ok(run_cli("status", "--json", "--index", index, "--model", "no/such-model",
                                  "--device", "cpu")))
    assert facts["points"] == 12
    assert facts["model"]["name"] == str(Path(tiny_model_dir).resolve())


@pytest.mark.parametrize("command, line", [
    (["status"], "Interrupted."),  # a read-only command commits nothing
    (["ingest", "."], "Interrupted; everything committed so far is kept."),
])
def test_ctrl_c_says_what_is_kept_only_where_something_was_written(command, line, monkeypatch, tmp_path):
    import clipsearch.index.open as opening
    import clipsearch.ingest.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(opening, "open_index", interrupted)
    monkeypatch.setattr(pipeline, "resolve_roots", interrupted)
    result = CliRunner().invoke(cli, [*command, "--index", str(tmp_path / "index")])
    assert result.exit_code == 130 and result.output.strip().splitlines()[-1] == line, result.output


def test_sighup_ignored_by_nohup_stays_ignored_and_handlers_are_put_back(monkeypatch, tmp_path):
    """`nohup clipsearch ingest` must outlive the terminal: an ignored SIGHUP is left
    ignored while the command runs; SIGTERM still stops it; both are put back after."""
    import signal

    import clipsearch.index.open as opening

    seen = {}

    def look(*args, **kwargs):
        seen["hup"], seen["term"] = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(opening, "open_index", look)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = CliRunner().invoke(cli, ["status", "--index", str(tmp_path / "index")])
        assert result.exit_code == 130, result.output
        assert seen["hup"] is signal.SIG_IGN and callable(seen["term"])
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_console_script_ignores_a_hangup_once_its_command_is_done(monkeypatch):
    """A terminal closing while a finished command's interpreter tears down killed it by
    SIGHUP (a death where the run had succeeded): once the command returns, the console
    script ignores SIGHUP until it exits."""
    import signal

    from clipsearch import cli as cli_module

    monkeypatch.setattr(cli_module.cli, "main", lambda **kwargs: (_ for _ in ()).throw(SystemExit(0)))
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit):
            cli_module.main()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("args, status", [(["status", "--json"], 0), (["status", "--collection", "../x"], 2)])
def test_a_sigterm_while_a_finished_command_tears_down_keeps_its_status(tmp_path, args, status):
    """A service manager's SIGTERM that came after the run was done but before the
    interpreter had exited turned a success into exit 143: it now ends the teardown at
    once, with the command's own status. Sent here from an exit handler, the last step
    of a real console-script process."""
    script = (
        "import atexit, os, signal, sys, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))\n"
        f"sys.argv = ['clipsearch', *{args!r}, '--index', {str(tmp_path / 'index')!r}]\n"
        "from clipsearch.cli import main\n"
        "main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == status, (done.returncode, done.stderr)


def test_status_check_through_a_server_says_where_and_how_it_can_run():
    """A check reads the index alone: the message must not send a serve admin to a
    command that serve's lock refuses (`status --check` while serve holds the index)."""
    result = CliRunner().invoke(cli, ["status", "--check", "--server", "http://127.0.0.1:9", "--token", "x" * 20])
    assert result.exit_code == 2
    assert "without --server" in result.output and "`clipsearch serve` stopped" in result.output


@pytest.mark.parametrize(("given", "named", "code"), [({"CLIPSEARCH_HOST": "bad host!"}, "CLIPSEARCH_HOST", 2),
                                                      ({"--host": "nas..local"}, "--host", 2)])
def test_a_host_serve_cannot_bind_is_told_before_anything_loads(tmp_path, given, named, code):
    """Not a failed bind after the model has loaded: the model named here does not exist."""
    env = {k: v for k, v in given.items() if not k.startswith("-")}
    flags = [part for k, v in given.items() if k.startswith("-") for part in (k, v)]
    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "index"), "--model",
                                      str(tmp_path / "no-model"), *flags], env=env)
    assert result.exit_code == code, result.output  # a bad setting or flag: a usage error either way
    assert named in result.output and "is not an IP address or host name" in result.output


def test_ingest_with_a_server_exported_says_searches_through_it_will_not_see_this_index(tmp_path, tiny_model_dir,
                                                                                          monkeypatch):
    """A laptop with CLIPSEARCH_SERVER exported searches the server; an ingest there
    writes the laptop's own index, which those searches never read: said, unless --index
    names the index meant."""
    draw_collection(tmp_path / "photos", 2)
    monkeypatch.setenv("CLIPSEARCH_SERVER", "http://nas.local:8765")
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "index"))
    args = ["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "-w", "0", "-q"]
    warned = CliRunner().invoke(cli, args)
    assert warned.exit_code == 0, warned.output
    assert warned.stderr.splitlines()[0] == (
        f"clipsearch: CLIPSEARCH_SERVER is set (http://nas.local:8765), but ingest writes the index here "
        f"({tmp_path / 'index'}), which searches through that server never read: ingest on the machine serve "
        "runs on (or let serve --watch take the folder); --index says this index is meant")
    meant = CliRunner().invoke(cli, [*args, "--index", str(tmp_path / "index")])
    assert meant.exit_code == 0 and "CLIPSEARCH_SERVER" not in meant.stderr, meant.output
    # The server is this machine (its index is this one, or serve holds it): nothing to say.
    monkeypatch.setenv("CLIPSEARCH_SERVER", "http://127.0.0.1:8765")
    here = CliRunner().invoke(cli, args)
    assert here.exit_code == 0 and "CLIPSEARCH_SERVER" not in here.stderr, here.output
    # Not ingest's setting: a malformed one does not stop it.
    monkeypatch.setenv("CLIPSEARCH_SERVER", "nas.local")
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code == 0 and bad.stderr == "", bad.output
