"""Reading pairs in every layout, validating them, and splitting by image. No model needed."""

from __future__ import annotations

import json

import pytest

from clipsearch.errors import ClipsearchError
from clipsearch.finetune.datasets import detect_format, read_rows
from clipsearch.finetune.split import check_disjoint, fingerprint, split_by_image
from clipsearch.finetune.validation import Pair, load_pairs
from support import draw_image


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "data"
    draw_image(folder / "img" / "red.png", "red", "circle")
    draw_image(folder / "img" / "blue.png", "blue", "square")
    draw_image(folder / "img" / "green.jpg", "green", "triangle", fmt="JPEG")
    return folder


EXPECTED = [("img/red.png", "a red circle"), ("img/blue.png", "a blue square, small"),
            ("img/green.jpg", "a green triangle"), ("img/red.png", "something round and red")]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _check(pair_set, folder):
    assert [(p.image, p.text) for p in pair_set.pairs] == [(str(folder / i), t) for i, t in EXPECTED]
    assert pair_set.problems == []
    assert len(pair_set.images) == 3  # one image, two captions


def test_csv(photos):
    data = _write(photos / "pairs.csv", "image_path,text_description\n" + "".join(
        f'{i},"{t}"\n' for i, t in EXPECTED))
    assert detect_format(data) == "csv"
    _check(load_pairs(data), photos)


def test_pipe_table_as_in_the_original_readme(photos):
    rows = "".join(f"| {i:<20} | {t:<30} |\n" for i, t in EXPECTED)
    data = _write(photos / "pairs.md", f"| image_path | text_description |\n|---|---|\n{rows}")
    assert detect_format(data) == "pipe"
    _check(load_pairs(data), photos)


def test_pipe_table_without_outer_pipes(photos):
    rows = "".join(f"{i}   |   {t}\n" for i, t in EXPECTED)
    data = _write(photos / "pairs.txt", "image_path | text_description\n" + rows)
    _check(load_pairs(data), photos)


def test_tsv(photos):
    data = _write(photos / "pairs.tsv", "image_path\ttext_description\n" + "".join(f"{i}\t{t}\n" for i, t in EXPECTED))
    assert detect_format(data) == "tsv"
    _check(load_pairs(data), photos)


def test_jsonl(photos):
    lines = [json.dumps({"image_path": i, "text_description": t, "extra": 1}) for i, t in EXPECTED]
    data = _write(photos / "pairs.jsonl", "\n".join(lines) + "\n")
    assert detect_format(data) == "jsonl"
    _check(load_pairs(data), photos)


def test_folder_with_same_name_txt_captions(photos):
    _write(photos / "img" / "red.txt", "a red circle\nfr.utf8=un cercle rouge\n")
    _write(photos / "img" / "blue.txt", "\n  a blue square  \n")
    _write(photos / "img" / "green.txt", "a green triangle")
    pair_set = load_pairs(photos / "img")
    assert pair_set.format == "folder"
    assert sorted((p.image, p.text) for p in pair_set.pairs) == sorted([
        (str(photos / "img" / "red.png"), "a red circle"), (str(photos / "img" / "blue.png"), "a blue square"),
        (str(photos / "img" / "green.jpg"), "a green triangle")])


def test_folder_image_without_caption_is_a_bad_row(photos):
    _write(photos / "img" / "red.txt", "a red circle")
    with pytest.raises(ClipsearchError, match=r"2 bad rows.*blue.txt:1: has no caption file"):
        load_pairs(photos / "img")


def test_absolute_paths_and_paths_relative_to_the_data_file(photos, tmp_path):
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    data = _write(elsewhere / "pairs.csv",
                  f"image_path,text_description\n../data/img/red.png,red\n{photos / 'img' / 'blue.png'},blue\n")
    assert [p.image for p in load_pairs(data).pairs] == [str(photos / "img" / "red.png"),
                                                         str(photos / "img" / "blue.png")]


@pytest.mark.parametrize("name,text", [
    ("a.csv", "path,caption\nimg/red.png,red\n"),
    ("a.tsv", "image_path\tcaption\nimg/red.png\tred\n"),
    ("a.md", "| image | text_description |\n| img/red.png | red |\n"),
    ("a.jsonl", '{"image": "img/red.png", "text": "red"}\n'),
])
def test_missing_columns_are_named(photos, name, text):
    with pytest.raises(ClipsearchError, match=r"missing column.*(image_path|text_description)"):
        load_pairs(_write(photos / name, text))


def test_bad_rows_stop_with_file_and_line(photos):
    (photos / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = _write(photos / "pairs.csv", "\n".join([
        "image_path,text_description",
        "img/red.png,a red circle",        # 2 fine
        "img/blue.png,",                   # 3 empty caption
        "img/nope.png,a ghost",            # 4 missing image
        "img/broken.png,a broken one",     # 5 unreadable
        "img/red.png,a red circle",        # 6 duplicate of 2
        "img/green.jpg,a green, triangle",  # 7 unquoted comma
        ",no image",                       # 8 empty path
    ]) + "\n")
    with pytest.raises(ClipsearchError) as caught:
        load_pairs(data)
    message = str(caught.value)
    assert "\n" not in message
    assert "6 bad rows" in message and "--skip-bad" in message
    assert f"{data}:3: empty caption" in message
    assert f"{data}:4: image not found" in message
    assert "and 3 more" in message

    pair_set = load_pairs(data, skip_bad=True)
    assert [(p.image, p.text) for p in pair_set.pairs] == [(str(photos / "img" / "red.png"), "a red circle")]
    reasons = {int(p.where.rsplit(":", 1)[1]): p.reason for p in pair_set.problems}
    assert reasons[3] == "empty caption"
    assert reasons[4].startswith("image not found")
    assert reasons[5].startswith("not an image Pillow can read") or reasons[5].startswith("image corrupt")
    assert reasons[6] == f"duplicate of {data}:2"
    assert "quote captions that contain a comma" in reasons[7]
    assert reasons[8] == "empty image path"

    report = photos / "report.jsonl"
    pair_set.write_report(report)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == 6 and {"where", "image", "text", "reason"} <= set(lines[0])


def test_multiline_quoted_caption_keeps_line_numbers(photos):
    data = _write(photos / "pairs.csv", 'image_path,text_description\nimg/red.png,"two\nlines"\nimg/nope.png,x\n')
    with pytest.raises(ClipsearchError, match=r"pairs.csv:4: image not found"):
        load_pairs(data)


def test_jsonl_bad_lines(photos):
    data = _write(photos / "pairs.jsonl", "\n".join([
        '{"image_path": "img/red.png", "text_description": "red"}',
        "{not json",
        '{"image_path": "img/blue.png"}',
        '["a", "list"]',
    ]))
    reasons = [p.reason for p in load_pairs(data, skip_bad=True).problems]
    assert reasons[0].startswith("is not valid JSON") and reasons[1] == "has no text_description"
    assert reasons[2] == "is not a JSON object"


def test_no_usable_pairs_and_missing_data(photos):
    with pytest.raises(ClipsearchError, match="no usable"):
        load_pairs(_write(photos / "a.csv", "image_path,text_description\nimg/nope.png,x\n"), skip_bad=True)
    with pytest.raises(ClipsearchError, match="does not exist"):
        load_pairs(photos / "nothing.csv")
    with pytest.raises(ClipsearchError, match="missing column"):
        load_pairs(_write(photos / "empty.csv", ""))


def test_rows_without_checking_images(photos):
    _, rows = read_rows(_write(photos / "a.csv", "image_path,text_description\nimg/nope.png,x\n"))
    assert rows[0].image == str(photos / "img" / "nope.png") and rows[0].line == 2


def _pairs(images: int, captions: int = 2) -> list[Pair]:
    return [Pair(f"/img/{i}.png", f"caption {i}.{c}", f"f:{i}") for i in range(images) for c in range(captions)]


def test_split_is_by_image_seeded_and_disjoint():
    pairs = _pairs(50)
    train, held = split_by_image(pairs, 0.2, seed=3)
    assert len({p.image for p in held}) == 10 and len(train) + len(held) == len(pairs)
    assert not {p.image for p in train} & {p.image for p in held}
    assert all(sum(q.image == p.image for q in held) == 2 for p in held)  # all captions go with their image
    assert split_by_image(pairs, 0.2, seed=3) == (train, held)
    assert split_by_image(pairs, 0.2, seed=4) != (train, held)
    assert split_by_image(pairs, 0, seed=3) == (pairs, [])
    assert len({p.image for p in split_by_image(_pairs(3), 0.01, 0)[1]}) == 1  # at least one
    with pytest.raises(ClipsearchError, match="too few"):
        split_by_image(_pairs(2), 0.5, 0)
    with pytest.raises(ClipsearchError, match="shared|both"):
        check_disjoint(pairs[:4], pairs[2:6])
    assert fingerprint(pairs) == fingerprint(list(reversed(pairs))) != fingerprint(pairs[1:])
