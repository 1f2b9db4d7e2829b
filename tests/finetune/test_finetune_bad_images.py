"""Images that cannot be used, in a fine-tune or eval dataset: each is found by the same
up-front check ingest uses (clipsearch.images), before anything is written or trained.

Each test builds its own bad files: a real decompression bomb (a 30000x30000 PNG
whose pixel data compresses to about 100 KB), a JPEG cut short, a PNG cut short.
Without --skip-bad the run stops with one `Error:` line naming the data file, the
row's line and the image; with it, training goes on and stderr says how many rows
were left out and where the report is.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.finetune.synthetic import write_dataset

from support import FreshRun, cli_in_a_fresh_process

DEVICE = os.environ.get("CLIPSEARCH_TEST_DEVICE", "cpu")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit PNG of side x side pixels (900 megapixels: decoded, 900 MB as
    Pillow holds it) whose rows of zeros compress to about 100 KB. Written a row at
    a time, so building it never holds the image."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def _noise(size: int = 128) -> Image.Image:
    """Random pixels: nothing compresses them, so a cut lands in the middle of the pixel data."""
    rng = random.Random(7)
    return Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))


def cut_file(path: Path, fmt: str, keep: float = 0.6) -> Path:
    """A real image saved whole, then cut to `keep` of its bytes: its header still reads."""
    _noise().save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


BAD = {
    "bomb": (lambda folder: bomb_png(folder / "bomb.png"), "too large: 30000x30000"),
    "truncated-jpeg": (lambda folder: cut_file(folder / "cut.jpg", "JPEG"), "truncated"),
    "cut-png": (lambda folder: cut_file(folder / "cut.png", "PNG"), "truncated"),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """36 training pairs, 18 held-out pairs (32x32 drawings)."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=1, per_heldout=1)


def _with_rows(shapes_csv: Path, target: Path, extra: list[tuple[str, str]]) -> Path:
    """The good rows (made absolute) and then `extra`, as a CSV at `target`."""
    images = shapes_csv.parent / "images"
    text = shapes_csv.read_text().replace("images/", f"{images}/")
    target.write_text(text + "".join(f"{image},{caption}\n" for image, caption in extra))
    return target


def _run(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, [*map(str, args), "--device", DEVICE])


def _run_forking(*args, setup: str = "") -> FreshRun:
    """_run, for a run whose DataLoader forks its workers: in a process of its own."""
    return cli_in_a_fresh_process([*args, "--device", DEVICE], setup)


def _one_error_line(result, data: Path, line: int, image: Path, reason: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), lines[0]
    assert f"{data}:{line}: unusable image: " in lines[0] and reason in lines[0] and str(image) in lines[0]


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_image_stops_finetune_with_one_line_naming_file_line_and_image(tmp_path, shapes, tiny_model_dir,
                                                                              kind):
    make, reason = BAD[kind]
    image = make(tmp_path)
    data = _with_rows(shapes[0], tmp_path / "pairs.csv", [(str(image), "a bad picture")])
    out = tmp_path / "out"
    result = _run("finetune", data, "--base", tiny_model_dir, "-o", out, "--quiet")
    _one_error_line(result, data, 38, image, reason)  # header + 36 good rows: the bad one is line 38
    assert not out.exists()  # stopped before anything was written


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_image_in_eval_data_stops_before_the_model_loads(tmp_path, shapes, tiny_model_dir, kind):
    make, reason = BAD[kind]
    image = make(tmp_path)
    held = _with_rows(shapes[1], tmp_path / "held.csv", [(str(image), "a bad picture")])
    out = tmp_path / "out"
    result = _run("finetune", shapes[0], "--eval-data", held, "--base", tiny_model_dir, "-o", out, "--quiet")
    _one_error_line(result, held, 20, image, reason)
    assert not out.exists()
    result = _run("eval", held, "--model", tiny_model_dir)
    _one_error_line(result, held, 20, image, reason)


@pytest.mark.slow
def test_skip_bad_leaves_every_bad_image_out_says_so_and_trains(tmp_path, shapes, tiny_model_dir):
    made = {kind: make(tmp_path) for kind, (make, _) in BAD.items()}
    data = _with_rows(shapes[0], tmp_path / "pairs.csv", [
        (str(made["bomb"]), "a bomb"),                    # 38
        (str(made["truncated-jpeg"]), "half a photo"),    # 39
        (str(made["cut-png"]), "half a drawing"),         # 40
        (str(tmp_path / "images" / "gone.png"), ""),      # 41: a bad field too
    ])
    out = tmp_path / "out"
    # --workers 2: the images are checked (in the check's worker pool, even for 39 images),
    # and then decoded for training, in worker processes.
    result = _run_forking("finetune", data, "--base", tiny_model_dir, "-o", out, "--skip-bad", "--epochs", 1,
                          "--batch-size", 16, "--eval-split", 0.25, "--workers", 2, "--quiet",
                          setup="from clipsearch.finetune import images; images.POOL_FROM = 1")
    assert result.exit_code == 0, result.output
    report = out / "skipped_rows.jsonl"
    assert f"left out 4 of 40 rows with bad images or fields; see {report}" in result.stderr
    rows = {json.loads(line)["where"]: json.loads(line)["reason"] for line in report.read_text().splitlines()}
    assert set(rows) == {f"{data}:{line}" for line in (38, 39, 40, 41)}
    assert rows[f"{data}:38"].startswith("unusable image: too large: 30000x30000 is 900 megapixels")
    assert "truncated" in rows[f"{data}:39"] and "truncated" in rows[f"{data}:40"]
    assert rows[f"{data}:41"] == "empty caption"
    run = json.loads((out / "finetune_run.json").read_text())
    assert run["status"] == "done" and run["data"]["skipped"] == 4
    assert run["data"]["train_images"] + run["data"]["eval_images"] == 36
    record = json.loads((out / "eval.json").read_text())
    assert record["before"] is not None and record["after"] is not None and record["train"]["steps"] == 2


def test_eval_skip_bad_says_how_many_rows_it_left_out_and_where_they_are_listed(tmp_path, shapes, tiny_model_dir):
    made = {kind: make(tmp_path) for kind, (make, _) in BAD.items()}
    held = _with_rows(shapes[1], tmp_path / "held.csv", [(str(path), kind) for kind, path in made.items()])
    report = tmp_path / "left-out.jsonl"
    result = _run("eval", held, "--model", tiny_model_dir, "--skip-bad", "--report", report, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 18 and json.loads(result.stdout)["skipped"] == 3
    assert f"left out 3 of 21 rows with bad images or fields; see {report}" in result.stderr
    assert len(report.read_text().splitlines()) == 3
    result = _run("eval", held, "--model", tiny_model_dir, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "left out 3 of 21 rows with bad images or fields; pass --report FILE to list them" in result.stderr


def test_an_image_that_breaks_after_the_check_stops_training_with_one_line(tmp_path, shapes, tiny_model_dir):
    """The file changes between the check and its batch (simulated: the check passes it).
    Decoded in a DataLoader worker, its error comes back as one line, not the worker's traceback."""
    image = cut_file(tmp_path / "cut.jpg", "JPEG")
    data = _with_rows(shapes[0], tmp_path / "pairs.csv", [(str(image), "half a photo")])
    out = tmp_path / "out"
    result = _run_forking("finetune", data, "--base", tiny_model_dir, "-o", out, "--eval-split", 0, "--epochs", 1,
                          "--batch-size", 37, "--workers", 2, "--quiet",
                          setup="from clipsearch.finetune import validation\n"
                                "validation.check_images = lambda paths, *args: {path: None for path in paths}")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"Error: cannot read image {image}: corrupt or truncated: image file is truncated")
    assert lines[0].endswith("(it could be read when the rows were checked)")
    assert not out.exists()  # stopped before its first checkpoint: nothing to resume


def test_max_megapixels_is_a_flag_of_eval_and_finetune_as_of_ingest(tmp_path, shapes, tiny_model_dir, monkeypatch):
    """The limit ingest applies, given as a flag or its environment twin: a larger image
    is a bad row naming the flag, the same in the check, eval and finetune."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300), "red").save(big)  # 0.12 megapixels
    held = _with_rows(shapes[1], tmp_path / "held.csv", [(str(big), "a red field")])
    assert _run("eval", held, "--model", tiny_model_dir, "--json").exit_code == 0  # under the default 100
    refused = _run("eval", held, "--model", tiny_model_dir, "--max-megapixels", "0.1")
    _one_error_line(refused, held, 20, big, "too large: 400x300 is 0.12 megapixels (limit --max-megapixels 0.1)")
    monkeypatch.setenv("CLIPSEARCH_MAX_MEGAPIXELS", "0.1")
    skipped = _run("eval", held, "--model", tiny_model_dir, "--skip-bad", "--json")
    assert skipped.exit_code == 0 and json.loads(skipped.stdout)["skipped"] == 1, skipped.output
    # the flag wins over the environment
    assert json.loads(_run("eval", held, "--model", tiny_model_dir, "--max-megapixels", "1", "--json").stdout)[
        "skipped"] == 0
    data = _with_rows(shapes[0], tmp_path / "pairs.csv", [(str(big), "a red field")])
    result = _run("finetune", data, "--base", tiny_model_dir, "-o", tmp_path / "out", "--max-megapixels", "0.1",
                  "--epochs", 1, "--quiet")
    _one_error_line(result, data, 38, big, "too large: 400x300")
