"""Fast cold queries (issue 7): the exported ONNX text tower matches the full model,
the CLI takes the fast path once a model's tower is cached, falls back to the full
path (and rebuilds) when the cache is missing, damaged or unusable, and the fast
path, `--help` and `status` never import torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.encoders import Encoder, location
from clipsearch.encoders import cache as model_cache
from clipsearch.encoders.query import FEW_TEXTS
from clipsearch.encoders.text_export import export_text_tower
from clipsearch.testing.random_clip import build_random_clip

from support import draw_collection, fast_encoder_for

# A fixed set of queries: short, long, punctuation, case, non-ASCII, repeats.
QUERIES = [
    "a dog",
    "a red circle on a white background",
    "x",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "café, crème brûlée & 日本の桜!",
    "sunset sunset sunset",
    "  spaces   inside  ",
    "a photo of a yellow square next to a purple triangle, seen from above",
    "a red circle on a white background " * 10,  # over the tower's 77 tokens: truncated alike
]
HEAVY = ("torch", "sentence_transformers", "transformers")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Each test starts with an empty cache of its own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(folder))
    for name in ("CLIPSEARCH_FAST_PATH", "CLIPSEARCH_QUERY_CACHE", "CLIPSEARCH_TIMINGS"):
        monkeypatch.delenv(name, raising=False)
    return folder


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - np.sum(a * b, axis=1)


# -- vector parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["transformers", "sentence-transformers"])
def test_fast_vectors_match_the_full_model_tiny(layout, tiny_model_dir, tiny_st_model_dir, encoder):
    model_dir = tiny_model_dir if layout == "transformers" else tiny_st_model_dir
    full_encoder = encoder if layout == "transformers" else Encoder(str(model_dir), "cpu")
    fast = fast_encoder_for(model_dir, full_encoder)
    assert fast.identity == full_encoder.identity  # read from the manifest, not hashed again
    full = full_encoder.encode_texts(QUERIES)
    assert cosine_distances(fast.encode_texts(QUERIES), full).max() <= 1e-4  # one padded batch
    one_by_one = np.stack([fast.encode_texts([q])[0] for q in QUERIES])  # unpadded, and cached
    assert cosine_distances(one_by_one, full).max() <= 1e-4
    assert np.allclose(np.linalg.norm(one_by_one, axis=1), 1.0, atol=1e-5)
    # Different texts still get different vectors (the tower pools at the end token).
    assert cosine_distances(one_by_one[:1], one_by_one[1:2]).max() > 1e-3


@pytest.mark.slow
def test_fast_vectors_match_the_full_model_vit_b_32(tmp_path_factory):
    model_dir = build_random_clip(tmp_path_factory.mktemp("models") / "vit-b-32", size="vit-b-32", seed=0)
    full_encoder = Encoder(str(model_dir), "cpu")
    fast = fast_encoder_for(model_dir, full_encoder)
    full = full_encoder.encode_texts(QUERIES)
    assert cosine_distances(fast.encode_texts(QUERIES), full).max() <= 1e-4
    one_by_one = np.stack([fast.encode_texts([q])[0] for q in QUERIES])
    assert cosine_distances(one_by_one, full).max() <= 1e-4
    assert fast.dim == 512 and fast.identity == full_encoder.identity


def test_prefetched_vectors_are_the_ones_asked_for(tiny_model_dir, encoder):
    """The CLI starts encoding before it opens the index; what it collects later must
    be each text's own vector, and texts not prefetched are encoded then."""
    fast = fast_encoder_for(tiny_model_dir, encoder)
    fast.prefetch(["a dog", "a red circle", "a dog"])
    texts = ["a red circle", "x", "a dog"]
    got = fast.encode_texts(texts)
    assert np.all(cosine_distances(got, encoder.encode_texts(texts)) < 1e-4)
    assert "encode, overlapped with index open" in fast.owner.timings.seconds


def test_a_session_that_keeps_asking_gets_the_many_query_tower(tiny_model_dir, encoder, monkeypatch):
    """One Searcher held in a notebook: the first few queries use the quick-to-load
    single-thread tower; past FEW_TEXTS the all-cores, pre-packed one takes over."""
    monkeypatch.setenv("CLIPSEARCH_QUERY_CACHE", "0")  # every text through the tower
    fast = fast_encoder_for(tiny_model_dir, encoder)
    texts = [f"query number {i}" for i in range(FEW_TEXTS + 3)]
    got = []
    for i, text in enumerate(texts):
        got.append(fast.encode_texts([text])[0])
        assert fast._tower.many is (i + 1 > FEW_TEXTS), i
    assert np.all(cosine_distances(np.stack(got), encoder.encode_texts(texts)) < 1e-4)


def test_a_prefetch_that_fails_falls_back_to_the_full_model(tiny_model_dir, encoder, monkeypatch):
    fast = fast_encoder_for(tiny_model_dir, encoder)
    fast.encode_texts(["warm-up"])  # loads the tower

    def broken(*args, **kwargs):
        raise RuntimeError("ONNX run failed")

    monkeypatch.setattr(fast._tower, "encode", broken)
    fast.prefetch(["a dog"])
    got = fast.encode_texts(["a dog"])  # the thread's error surfaces here: the full model answers
    assert np.all(cosine_distances(got, encoder.encode_texts(["a dog"])) < 1e-4)
    assert fast._full is not None


def test_long_queries_are_truncated_like_the_full_model(tmp_path):
    """A tokenizer saved without a length limit: both paths cut long texts at the tower's 77 positions."""
    model_dir = build_random_clip(tmp_path / "clip-unlimited", size="tiny", seed=0)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 10**30}))
    full_encoder = Encoder(str(model_dir), "cpu")
    fast = fast_encoder_for(model_dir, full_encoder)
    texts = ["a very long query " * 20, "short"]
    assert cosine_distances(fast.encode_texts(texts), full_encoder.encode_texts(texts)).max() <= 1e-4
    assert fast.entry.manifest["max_length"] == 77


# -- the CLI: first use, fast path, fallbacks ---------------------------------------------------


@pytest.fixture
def index_args(tmp_path, tiny_model_dir):
    """An embedded index of 12 drawn images made with the tiny model; the search arguments."""
    photos = tmp_path / "photos"
    draw_collection(photos, 12)
    index = str(tmp_path / "index")
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", index, "--model", str(tiny_model_dir),
                                      "-w", "0", "-q"])
    assert result.exit_code == 0, result.output
    return ["--index", index, "--model", str(tiny_model_dir)]


def search(*args, env=None):
    result = CliRunner().invoke(cli, ["search", *[str(a) for a in args]], env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def hits(result) -> list[tuple[str, float]]:
    return [(h["path"], h["score"]) for h in map(json.loads, result.stdout.splitlines())]


def entries(cache_dir: Path) -> list[Path]:
    root = cache_dir / model_cache.TOWERS
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def assert_same_hits(a, b):
    (pa, sa), (pb, sb) = zip(*hits(a)), zip(*hits(b))
    assert pa == pb
    assert np.allclose(sa, sb, atol=1e-4)


def test_first_use_exports_then_queries_take_the_fast_path(index_args, cache_dir):
    first = search("a red circle", "-k", "5", "-f", "json", "-v", *index_args)
    assert "full path" in first.stderr and "first use" in first.stderr
    assert "exported the text tower" in first.stderr
    [entry] = entries(cache_dir)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["parity_max_cosine_distance"] <= 1e-5

    second = search("a red circle", "-k", "5", "-f", "json", "-v", *index_args)
    assert "fast path: text tower" in second.stderr and "full path" not in second.stderr
    assert "timings:" in second.stderr and "index open" in second.stderr
    assert_same_hits(first, second)
    forced = search("a red circle", "-k", "5", "-f", "json", "-v", *index_args, env={"CLIPSEARCH_FAST_PATH": "0"})
    assert "full path" in forced.stderr and "CLIPSEARCH_FAST_PATH=0" in forced.stderr
    assert_same_hits(first, forced)
    # Without --verbose, nothing on stderr.
    quiet = search("a red circle", "-k", "5", *index_args)
    assert quiet.stderr == ""


def test_mixed_queries_and_query_files_agree_with_the_full_path(index_args, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("a red circle\na green square\nsunset\n")
    args = ["--add", "2:blue", "--subtract", "yellow", "-k", "4", "-f", "json", *index_args]
    full = search("a red circle", *args, env={"CLIPSEARCH_FAST_PATH": "0"})
    search("warm-up", *index_args)  # first use: exports
    assert_same_hits(full, search("a red circle", *args))
    many_full = search("--queries", queries, "-f", "json", *index_args, env={"CLIPSEARCH_FAST_PATH": "0"})
    many_fast = search("--queries", queries, "-f", "json", "-v", *index_args)
    assert "fast path" in many_fast.stderr
    fast_answer, full_answer = json.loads(many_fast.stdout), json.loads(many_full.stdout)
    assert list(fast_answer) == list(full_answer)
    for query in full_answer:
        assert [h["path"] for h in fast_answer[query]] == [h["path"] for h in full_answer[query]]


def test_an_example_image_outside_the_index_loads_the_full_model(index_args, tmp_path):
    search("warm-up", *index_args)
    outside = draw_collection(tmp_path / "elsewhere", 1)[0]
    result = search("--image", outside, "--add", "red", "-k", "3", "-v", *index_args)
    assert "fast path" in result.stderr and "loading the full model" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_repeated_queries_are_served_from_the_vector_cache(index_args, cache_dir, monkeypatch):
    search("warm-up", *index_args)
    first = search("a green triangle", "-f", "json", *index_args)
    import clipsearch.encoders.query as fast_text

    def no_tower(*a, **kw):
        raise AssertionError("the ONNX tower was loaded for a cached query")

    monkeypatch.setattr(fast_text, "OnnxTextTower", no_tower)
    again = search("a green triangle", "-f", "json", "-v", *index_args)
    assert "from the query-vector cache" in again.stderr
    assert hits(again) == hits(first)


def test_the_vector_cache_can_be_turned_off(index_args, cache_dir):
    search("warm-up", *index_args, env={"CLIPSEARCH_QUERY_CACHE": "0"})
    search("a green triangle", *index_args, env={"CLIPSEARCH_QUERY_CACHE": "0"})
    vectors = cache_dir / model_cache.VECTORS
    assert not vectors.exists() or not any(vectors.rglob("*.f32"))


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGES = {
    "manifest not JSON": lambda e: (e / "manifest.json").write_text("{not json"),
    "manifest gone": lambda e: (e / "manifest.json").unlink(),
    "identity missing": lambda e: (e / "manifest.json").write_text(json.dumps(
        {k: v for k, v in json.loads((e / "manifest.json").read_text()).items() if k != "identity"})),
    "onnx truncated": lambda e: (e / "text.onnx").write_bytes((e / "text.onnx").read_bytes()[:100]),
    "onnx garbled": lambda e: _garble(e / "text.onnx"),
    "weights garbled": lambda e: _garble(e / "text.onnx.data"),
    "tokenizer gone": lambda e: (e / "tokenizer.json").unlink(),
    "tokenizer garbled": lambda e: (e / "tokenizer.json").write_text("[]"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_rebuilt_not_a_crash(damage, index_args, cache_dir):
    reference = search("a blue square", "-k", "5", "-f", "json", *index_args)  # first use: exports
    [entry] = entries(cache_dir)
    DAMAGES[damage](entry)
    # The vector cache would hide a damaged tower: use a query it has not seen.
    result = search("a blue circle", "-k", "5", "-f", "json", "-v", *index_args)
    assert "is damaged (" in result.stderr, result.stderr
    assert "exported the text tower" in result.stderr
    reference = search("a blue circle", "-k", "5", "-f", "json", *index_args, env={"CLIPSEARCH_FAST_PATH": "0"})
    assert_same_hits(result, reference)
    [rebuilt] = entries(cache_dir)
    assert model_cache.read_entry(rebuilt.name).manifest["probe"]
    after = search("a purple circle", "-f", "json", "-v", *index_args)
    assert "fast path: text tower" in after.stderr and "is damaged (" not in after.stderr


def test_without_onnxruntime_the_full_path_answers_and_says_why(index_args, cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    result = search("a red circle", "-k", "3", "-v", *index_args)
    assert "full path" in result.stderr and "onnxruntime is not installed" in result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert entries(cache_dir) == []  # nothing exported that could not be used


def test_a_failed_export_is_remembered_until_the_model_changes(index_args, cache_dir, monkeypatch, tmp_path,
                                                                tiny_model_dir):
    import clipsearch.encoders.text_export as text_export

    def broken(*a, **kw):
        raise RuntimeError("this model's graph cannot be traced")

    original = text_export.export_text_tower
    monkeypatch.setattr(text_export, "export_text_tower", broken)
    first = search("a red circle", "-v", *index_args)
    assert "could not export the text tower" in first.stderr and "cannot be traced" in first.stderr
    second = search("a red circle", "-v", *index_args)
    assert "failed before" in second.stderr and "could not export" not in second.stderr
    monkeypatch.setattr(text_export, "export_text_tower", original)
    # A copy of the model is other files: a new key, a new try.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    third = search("a red circle", "-v", *[str(copy) if a == str(tiny_model_dir) else a for a in index_args])
    assert "exported the text tower" in third.stderr


def test_changed_model_files_mean_a_new_export(tmp_path, cache_dir, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    key = location.folder_key(model)
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + "\n")
    assert location.folder_key(model) != key
    assert location.folder_key(tiny_model_dir) == location.folder_key(tiny_model_dir)


def test_a_mismatched_model_is_refused_on_the_fast_path(index_args, other_model_dir):
    other_encoder = Encoder(str(other_model_dir), "cpu")
    export_text_tower(other_encoder, location.folder_key(other_model_dir), other_model_dir, str(other_model_dir))
    result = CliRunner().invoke(cli, ["search", "a red circle", "-v", "--index", index_args[1],
                                      "--model", str(other_model_dir)])
    assert result.exit_code == 1
    assert "fast path" in result.stderr and "model mismatch" in result.output


def test_a_hub_model_in_the_hub_cache_takes_the_fast_path(tmp_path, monkeypatch, tiny_st_model_dir, cache_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--acme--tiny-clip"
    shutil.copytree(tiny_st_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants  # read the variable when first imported: set it there too

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert location.model_folder("acme/not-downloaded")[0] is None
    photos = tmp_path / "photos"
    draw_collection(photos, 6)
    args = ["--index", str(tmp_path / "index"), "--model", "acme/tiny-clip"]
    assert CliRunner().invoke(cli, ["ingest", str(photos), *args, "-w", "0", "-q"]).exit_code == 0
    first = search("a red circle", "-f", "json", "-v", *args)
    assert "full path" in first.stderr and "exported" in first.stderr
    second = search("a red circle", "-f", "json", "-v", *args)
    assert "fast path" in second.stderr
    assert_same_hits(first, second)


def test_a_hub_model_not_downloaded_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    folder, why = location.model_folder("sentence-transformers/clip-ViT-B-32")
    assert folder is None and "not in the Hugging Face cache" in why


def test_prune_drops_towers_of_vanished_models_and_the_least_recently_used(tmp_path, cache_dir, encoder,
                                                                           tiny_model_dir):
    made = []
    for i in range(3):
        model = tmp_path / f"m{i}"
        shutil.copytree(tiny_model_dir, model)
        key = location.folder_key(model)
        export_text_tower(encoder, key, model, str(model))
        os.utime(cache_dir / model_cache.TOWERS / key / "manifest.json", (1000 + i, 1000 + i))
        made.append((model, key))
    shutil.rmtree(made[0][0])  # that model is gone
    model_cache.prune(max_towers=1)
    assert [e.name for e in entries(cache_dir)] == [made[2][1]]  # m0: gone; m1: least recently used


# -- imports ----------------------------------------------------------------------------------


def modules_after(args: list[str], env: dict) -> set[str]:
    """Run the CLI in a fresh interpreter; which heavy modules did it import?"""
    code = (
        "import sys, json\n"
        "from clipsearch.cli import cli\n"  # not main(): the console script skips teardown (os._exit)
        f"sys.argv = ['clipsearch', *{args!r}]\n"
        "try:\n    cli(prog_name='clipsearch')\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"print(json.dumps([m for m in {HEAVY + ('qdrant_client', 'onnxruntime')!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_help_status_and_the_fast_path_import_no_torch(index_args, cache_dir):
    search("warm-up", *index_args)  # first use: exports the tower
    env = {**os.environ, "CLIPSEARCH_CACHE_DIR": str(cache_dir)}
    assert modules_after(["--help"], env) == set()
    assert modules_after(["search", "--help"], env) == set()
    assert modules_after(["status", "--index", index_args[1]], env) == set()
    assert modules_after(["search", "a red circle", *index_args], env) == {"onnxruntime"}
    # Asked again: the vector comes from the query-vector cache, onnxruntime is not even loaded.
    assert modules_after(["search", "a red circle", *index_args], env) == set()
    # The same query with the fast path off does load them: the check above can fail.
    assert modules_after(["search", "a red circle", *index_args], {**env, "CLIPSEARCH_FAST_PATH": "0"}) >= {
        "torch", "sentence_transformers"}


def test_the_python_api_takes_the_fast_path_too(index_args, cache_dir):
    """`search.search()` in a notebook: the first call exports the tower, the next ones
    import no torch, and both agree with the CLI's full path."""
    index, model = index_args[1], index_args[3]
    full = hits(search("a red circle", *index_args, "-k", "5", "--format", "json",
                       env={"CLIPSEARCH_FAST_PATH": "0"}))
    code = (
        "import json, sys\n"
        "from clipsearch.config import Settings\n"
        "from clipsearch.search import search\n"
        f"settings = Settings.resolve(index={index!r}, model={model!r})\n"
        "print(json.dumps([[h.path, h.score] for h in search('a red circle', k=5, settings=settings)]))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', 'PIL') if m in sys.modules)))\n"
    )
    env = {**os.environ, "CLIPSEARCH_CACHE_DIR": str(cache_dir), "CLIPSEARCH_QUERY_CACHE": "0"}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        answer, modules = map(json.loads, done.stdout.splitlines()[-2:])
        runs.append((answer, modules))
    assert len(entries(cache_dir)) == 1  # the first call exported the tower
    assert "torch" in runs[0][1]  # first use: the full model answered
    assert runs[1][1] == []  # then neither torch nor Pillow (the gallery is loaded only when asked for)
    for answer, _ in runs:
        assert [p for p, _ in answer] == [p for p, _ in full]
        assert np.allclose([s for _, s in answer], [s for _, s in full], atol=1e-4)


def test_a_named_device_is_where_the_query_runs_not_the_onnx_cpu_tower(index_args, cache_dir):
    search("warm-up", *index_args)  # first use: exports, so the fast path is there to take
    cpu = search("a red circle", "-v", "--device", "cpu", *index_args)
    assert "fast path: text tower" in cpu.stderr
    if torch_has_cuda():
        return
    result = CliRunner().invoke(cli, ["search", "a red circle", "--device", "cuda", *index_args])
    assert result.exit_code != 0
    assert "--device cuda: no CUDA device is available" in result.output


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
