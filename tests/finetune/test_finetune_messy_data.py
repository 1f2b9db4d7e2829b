"""Reading and batching pairs: hidden folders of the captioned layout, a header that names
a column twice, paths written on Windows, and the lone pair an epoch's last batch would
leave out. No model needed."""

from __future__ import annotations

import pytest

from clipsearch.errors import ClipsearchError
from clipsearch.finetune.datasets import read_rows
from clipsearch.finetune.training import TrainSettings, _NoLoneRowSampler, _steps_per_epoch, training_rows
from clipsearch.finetune.validation import Pair, load_pairs

from support import draw_image


def _captioned(folder, name: str, caption: str) -> None:
    draw_image(folder / f"{name}.png", "red", "circle")
    (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")


def test_the_captioned_layout_leaves_hidden_folders_out(tmp_path):
    data = tmp_path / "data"
    _captioned(data, "kept", "a kept photo")
    _captioned(data / "holiday", "beach", "a beach")
    _captioned(data / ".Trash-1000" / "files", "deleted", "a photo thrown away")
    _captioned(data / ".thumbnails", "kept", "a thumbnail")
    fmt, rows = read_rows(data)
    assert fmt == "folder"
    assert sorted((r.image, r.text) for r in rows) == [
        (str(data / "holiday" / "beach.png"), "a beach"), (str(data / "kept.png"), "a kept photo")]


@pytest.mark.parametrize("name, text", [
    ("pairs.csv", "image_path,text_description,text_description\na.png,one,two\n"),
    ("pairs.tsv", "image_path\ttext_description\ttext_description\na.png\tone\ttwo\n"),
    ("pairs.md", "image_path | text_description | text_description\n---|---|---\na.png | one | two\n"),
])
def test_a_header_that_names_a_column_twice_is_one_error(tmp_path, name, text):
    data = tmp_path / name
    data.write_text(text, encoding="utf-8")
    with pytest.raises(ClipsearchError) as raised:
        read_rows(data)
    message = str(raised.value)
    assert "\n" not in message and str(data) in message
    assert "text_description 2 times (columns 2, 3)" in message


def test_windows_paths_are_told_so(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        draw_image(data / "imgs" / f"img0{i}.png", "red", "circle")
    pairs = data / "pairs.csv"
    pairs.write_text("image_path,text_description\nimgs\\img00.png,one\nimgs\\img01.png,two\n", encoding="utf-8")
    with pytest.raises(ClipsearchError) as raised:
        load_pairs(pairs)
    message = str(raised.value)
    assert "\n" not in message and "move the file there" not in message
    assert f"with / for \\, {data / 'imgs' / 'img00.png'} exists" in message and "write them with /" in message

    # one such row among good ones: its own reason says it
    pairs.write_text("image_path,text_description\nimgs/img00.png,one\nimgs\\img01.png,two\n", encoding="utf-8")
    kept = load_pairs(pairs, skip_bad=True)
    assert [p.reason for p in kept.problems] == [
        f"image not found (with / for \\, {data / 'imgs' / 'img01.png'} exists): {data / 'imgs'}\\img01.png"]


def _pairs(count: int, caption=lambda i: f"caption {i}") -> list[Pair]:
    return [Pair(f"/photos/{i}.png", caption(i), f"pairs.csv:{i + 2}") for i in range(count)]


def test_a_lone_remainder_pair_joins_another_batch(capfd):
    pairs = _pairs(33)  # one more than a batch of 32, every caption its own
    sampler = _NoLoneRowSampler(training_rows(pairs), batch_size=32, drop_last=False, valid_label_columns=None,
                                seed=0)
    batches = list(sampler)
    assert sorted(row for batch in batches for row in batch) == list(range(33)) and len(sampler) == 1
    assert sampler.lone_rows() == []

    assert _steps_per_epoch(pairs, 32, TrainSettings(batch_size=32)) == (1, 0)
    assert capfd.readouterr().err == ""  # nothing left out, nothing blamed on a caption


def test_rows_a_shared_caption_crowds_out_stay_out_and_are_said(capfd):
    # 40 pairs, half of them one catalogue caption, in batches of 8: that caption is in
    # every batch, so its other rows cannot join one
    pairs = _pairs(40, lambda i: "untitled" if i % 2 else f"caption {i}")
    sampler = _NoLoneRowSampler(training_rows(pairs), batch_size=8, drop_last=False, valid_label_columns=None,
                                seed=0)
    for batch in sampler:
        assert len(batch) > 1 and len({pairs[i].text for i in batch}) == len(batch)
    assert sampler.lone_rows() and all(pairs[i].text == "untitled" for i in sampler.lone_rows())
    steps, left_out = _steps_per_epoch(pairs, 8, TrainSettings(batch_size=8))
    assert left_out == len(sampler.lone_rows()) and steps == len(sampler)
    said = capfd.readouterr().err  # on stderr, --quiet or not
    assert said.startswith(f"clipsearch: {left_out} of 40 training pairs are left out of the first epoch")
    assert "the caption 'untitled' is on more pairs than the batches of an epoch" in said
