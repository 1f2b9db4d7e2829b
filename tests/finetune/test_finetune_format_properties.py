"""Property-based tests of the fine-tune data formats (CSV, pipe table, TSV, JSON lines,
captioned folders), with Hypothesis.

The property: loading a dataset gives either pairs that match what was written, or a
ClipsearchError whose message is one printable line naming the file and, for a problem
in a row, its line. Never another exception. Captions are drawn with quotes, commas,
pipes, tabs, line breaks of every kind, NUL, non-ASCII and Unicode line separators,
and sometimes 140,000 characters long; the written file is then, or not, given a
byte-order mark, CRLF line ends, Latin-1 bytes, a NUL byte, a cut, random bytes, a
missing column, or emptied.

Trials (CI budget, about 20 s in all on 2 cores): max_examples=150 for each of the
four table formats and 100 for captioned folders; no example database is kept, so
every run draws new examples. CLIPSEARCH_PROPERTY_TRIALS=N runs N of each instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from clipsearch.errors import ClipsearchError
from clipsearch.finetune.validation import PairSet, load_pairs
from clipsearch.names import printable

from support import draw_collection, draw_image

# CLIPSEARCH_PROPERTY_TRIALS=N runs N examples for every test instead (a deeper search, by hand).
TABLE_TRIALS = int(os.environ.get("CLIPSEARCH_PROPERTY_TRIALS", 150))
FOLDER_TRIALS = int(os.environ.get("CLIPSEARCH_PROPERTY_TRIALS", 100))
PROPERTY_SETTINGS = dict(deadline=None, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.data_too_large])

IMAGES = ("img/a.png", "img/b.jpg", "img/c d.png")  # real files, relative to the data file
FORMATS = {"csv": "pairs.csv", "pipe": "pairs.md", "tsv": "pairs.tsv", "jsonl": "pairs.jsonl"}
CORRUPTIONS = ("none", "bom", "crlf", "latin1", "nul", "cut", "garbage", "no-text-column", "empty")
CLEAN = ("none", "bom", "crlf")  # what was written must come back exactly

# Characters that break naive readers: separators, quotes, escapes, every line break
# str.splitlines knows, NUL, Latin-1 and wider characters.
ODD = ",\"'|\t\n\r\\ \x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ufeff\xe9\xff\u20ac\U0001f600#"
_caption_chars = st.one_of(st.sampled_from(ODD), st.characters(codec="utf-8"))
small_captions = st.text(_caption_chars, max_size=24)
huge_captions = st.builds(lambda unit, n: unit * n, st.sampled_from(["x", "ab, ", 'q"']),
                          st.integers(131_000 // 2, 140_000 // 2))
captions = st.one_of(small_captions, small_captions, small_captions, small_captions, huge_captions)
rows_strategy = st.lists(st.tuples(st.sampled_from(IMAGES), captions), max_size=6)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The images every example points at (each decoded by the real check)."""
    folder = tmp_path_factory.mktemp("formats")
    draw_image(folder / "img" / "a.png", "red", "circle", size=(16, 16))
    draw_image(folder / "img" / "b.jpg", "blue", "square", size=(16, 16), fmt="JPEG")
    draw_image(folder / "img" / "c d.png", "green", "triangle", size=(16, 16))
    return folder


# -- writing each format as its users would --------------------------------------------


def _csv_field(value: str) -> str:
    """RFC 4180 quoting. Not csv.writer's: with "\n" line ends it leaves a lone "\r"
    unquoted, which every reader (and the csv module itself) takes for a line break."""
    return '"' + value.replace('"', '""') + '"' if re.search('[,"\r\n]', value) else value


def _csv(rows, crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    return end.join(["image_path,text_description", *(f"{i},{_csv_field(t)}" for i, t in rows)]) + end


def _tsv(rows, crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    return end.join(["image_path\ttext_description", *(f"{i}\t{t}" for i, t in rows)]) + end


def _pipe(rows, crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    body = [f"| {i} | {t.replace('|', chr(92) + '|')} |" for i, t in rows]
    return end.join(["| image_path | text_description |", "|---|---|", *body]) + end


def _jsonl(rows, crlf: bool, ascii_only: bool = False) -> str:
    end = "\r\n" if crlf else "\n"
    return "".join(json.dumps({"image_path": i, "text_description": t}, ensure_ascii=ascii_only) + end
                   for i, t in rows)


WRITERS = {"csv": _csv, "tsv": _tsv, "pipe": _pipe, "jsonl": _jsonl}
_BREAKS = re.compile(r"\r\n|\r|\n")


def representable(fmt: str, caption: str) -> bool:
    """Whether the format can hold this caption as written (a TSV has no quoting; a pipe
    table no line breaks, and the spaces around its cells are padding)."""
    if fmt == "tsv":
        return not re.search(r"[\t\r\n]", caption)
    if fmt == "pipe":
        return not re.search(r"[\r\n]", caption)
    return True


def line_numbers(fmt: str, rows) -> list[int]:
    """The line each row starts on: after the header (and the pipe table's rule), a
    quoted CSV caption's line breaks count as lines."""
    line = {"csv": 2, "tsv": 2, "pipe": 3, "jsonl": 1}[fmt]
    numbers = []
    for _, caption in rows:
        numbers.append(line)
        line += 1 + (len(_BREAKS.findall(caption)) if fmt == "csv" else 0)
    return numbers


@dataclass
class Expected:
    pairs: list[tuple[str, str]]
    bad_lines: list[int]


def expected(base: Path, rows, lines: list[int]) -> Expected:
    """What validation makes of rows read as written: an empty caption, a NUL or a
    repeated (image, caption) is a bad row; the rest are pairs, captions stripped."""
    pairs, bad, seen = [], [], set()
    for (image, caption), line in zip(rows, lines):
        key = (image, " ".join(caption.split()))
        if not caption.strip() or "\x00" in caption or key in seen:
            bad.append(line)
            continue
        seen.add(key)
        pairs.append((str(base / image), caption.strip()))
    return Expected(pairs, bad)


# -- the property ---------------------------------------------------------------------


def check_error(exc: ClipsearchError, named: str) -> str:
    """One printable line that names the file; a row's problem comes with its line."""
    message = str(exc)
    assert message and message == printable(message), message  # no line break, control or stray byte
    assert len(message.splitlines()) == 1, message
    assert named in message, message
    if "bad row" in message:
        assert re.search(re.escape(named) + r".*?:\d+: ", message), message
    return message


def utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _short(value) -> str:
    """A failing example's repr, with a 140,000-character caption shown by its length."""
    text = repr(value)
    return text if len(text) < 2000 else f"{text[:1000]} ... ({len(text)} characters) ... {text[-200:]}"


def load(data: Path, skip_bad: bool) -> PairSet | ClipsearchError:
    try:
        return load_pairs(data, skip_bad=skip_bad)
    except ClipsearchError as exc:
        return exc  # anything else fails the test, with its traceback


def corrupt(data: bytes, text: str, how: str, draw) -> bytes:
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "latin1":
        return text.encode("latin-1", errors="replace")
    if how == "nul":
        at = draw(st.integers(0, len(data)))
        return data[:at] + b"\x00" + data[at:]
    if how == "cut":
        return data[:draw(st.integers(0, len(data)))]
    if how == "garbage":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "no-text-column":
        return data.replace(b"text_description", b"caption")
    if how == "empty":
        return b""
    return data


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
@settings(max_examples=TABLE_TRIALS, **PROPERTY_SETTINGS)
@given(rows=rows_strategy, how=st.sampled_from(CORRUPTIONS), ascii_json=st.booleans(), data=st.data())
def test_a_table_loads_as_written_or_fails_with_one_line_naming_file_and_line(root, fmt, rows, how,
                                                                             ascii_json, data):
    """max_examples=150 per format (4 formats)."""
    # What was written must come back exactly when the file is whole and the format can
    # hold every caption; otherwise only the outcome's form is checked.
    clean = how in CLEAN and all(representable(fmt, caption) for _, caption in rows)
    crlf = how == "crlf"
    text = _jsonl(rows, crlf, ascii_json) if fmt == "jsonl" else WRITERS[fmt](rows, crlf)
    path = root / FORMATS[fmt]
    written = corrupt(text.encode("utf-8"), text, how, data.draw)
    path.write_bytes(written)
    note(f"{fmt} {how}: {_short(rows)}; file {_short(written)}")

    for skip_bad in (True, False):
        outcome = load(path, skip_bad)
        if not utf8(written):  # Latin-1 bytes, a cut through a character, random bytes
            assert isinstance(outcome, ClipsearchError) and "is not UTF-8 text" in str(outcome), outcome
            assert re.search(r"at byte \d+, line \d+", str(outcome)), str(outcome)
        if isinstance(outcome, ClipsearchError):
            message = check_error(outcome, str(path))
            if how == "no-text-column" and rows:
                assert "missing column text_description" in message, message
        if not clean:
            continue
        want = expected(root, rows, line_numbers(fmt, rows))
        if isinstance(outcome, PairSet):
            assert [(p.image, p.text) for p in outcome.pairs] == want.pairs
            assert [int(p.where.rsplit(":", 1)[1]) for p in outcome.problems] == want.bad_lines
            assert not want.bad_lines or skip_bad
        elif want.bad_lines:  # stopped at the first bad row, named with its line
            assert f"{path}:{want.bad_lines[0]}: " in str(outcome), str(outcome)
            assert not skip_bad or not want.pairs, str(outcome)
        else:
            assert not want.pairs and "holds no image/caption pairs" in str(outcome), str(outcome)


# -- captioned folders ----------------------------------------------------------------

# Names as a file system holds them: any bytes but "/" and NUL, so also line breaks and
# bytes that are not UTF-8 (a name from an old archive).
stems = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_")).filter(
    lambda b: b.strip(b".") != b"")  # "..png" has no extension to Python: not an image name
caption_files = st.one_of(st.none(), captions.map(lambda t: t.encode("utf-8")),
                          st.builds(lambda t: t.encode("latin-1", errors="replace"), small_captions),
                          st.binary(max_size=16))


def first_line(raw: bytes) -> str | None:
    """What the folder format promises: the first non-blank line of a UTF-8 .txt (a BOM
    dropped); None for a file that is not UTF-8 text."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return next((line.strip() for line in _BREAKS.split(text) if line.strip()), "")


@pytest.mark.slow
@settings(max_examples=FOLDER_TRIALS, **PROPERTY_SETTINGS)
@given(items=st.dictionaries(stems, caption_files, max_size=5), bom=st.booleans())
def test_a_captioned_folder_loads_as_written_or_fails_with_one_line_naming_the_caption_file(root, items, bom):
    """max_examples=100."""
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        picture = (root / "img" / "a.png").read_bytes()
        want: list[tuple[str, str]] = []
        bad = 0
        for stem, raw in items.items():
            image = os.fsdecode(os.fsencode(folder) + b"/" + stem + b".png")
            Path(image).write_bytes(picture)
            if raw is None:  # no caption file
                bad += 1
                continue
            Path(image[:-4] + ".txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
            caption = first_line((b"\xef\xbb\xbf" if bom else b"") + raw)
            if caption and "\x00" not in caption:
                want.append((image, caption))
            else:
                bad += 1
        for skip_bad in (True, False):
            outcome = load(folder, skip_bad)
            if isinstance(outcome, PairSet):
                assert sorted((p.image, p.text) for p in outcome.pairs) == sorted(want)
                assert len(outcome.problems) == bad and (skip_bad or not bad)
            else:
                check_error(outcome, str(folder))
                assert bad or not want, str(outcome)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the same names through a whole fine-tune -----------------------------------------


@pytest.mark.slow
def test_a_folder_whose_names_are_not_text_fine_tunes_end_to_end(tmp_path, tiny_model_dir):
    """One example, through the real CLI: names with bytes that are not UTF-8 and with
    a line break get through the check, the split, the training data, the report, the
    run record and the model card."""
    from click.testing import CliRunner

    from clipsearch.cli import cli
    from clipsearch.finetune.split import split_by_image
    from clipsearch.names import is_text

    folder = tmp_path / "stamps"
    odd = {0: b"m\xe9lange", 1: b"two\nlines", 2: b"caf\xc3\xa9 \xff"}
    for i, path in enumerate(draw_collection(folder, 12)):
        stem = os.fsencode(folder) + b"/" + odd.get(i, path.stem.encode())
        os.rename(path, stem + b".png")
        Path(os.fsdecode(stem + b".txt")).write_text(f"a {path.stem.split('-')[1]} {path.stem.split('-')[2]}")
    stray = os.fsdecode(os.fsencode(folder) + b"/no caption \xfe.png")
    shutil.copy(folder / "003-yellow-circle.png", stray)  # an image without its .txt: a bad row

    trained_on, held_out = split_by_image(load_pairs(folder, skip_bad=True).pairs, 0.25, seed=0)
    assert any(not is_text(p.image) for p in trained_on) and any(not is_text(p.image) for p in held_out)

    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["finetune", str(folder), "--base", str(tiny_model_dir), "-o", str(out),
                                      "--epochs", "1", "--batch-size", "4", "--eval-split", "0.25", "--skip-bad",
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    report = out / "skipped_rows.jsonl"
    assert f"left out 1 of 13 rows with bad images or fields; see {report}" in result.stderr
    [row] = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert row["image"] == stray and "has no caption file" in row["reason"]
    run = json.loads((out / "finetune_run.json").read_text(encoding="utf-8"))
    assert run["status"] == "done" and run["data"]["train_images"] + run["data"]["eval_images"] == 12
    assert "recall@1" in (out / "README.md").read_text(encoding="utf-8")
