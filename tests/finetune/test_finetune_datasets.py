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
    path.parent.mkdir(parents=True, exist_ok=True)
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


@pytest.mark.parametrize("name,text,message", [
    # Excel's CSV where the decimal separator is a comma: ; between columns
    ("excel.csv", "image_path;text_description\nimg/red.png;red\n", "the columns are separated by ;"),
    ("export.json", '[{"image_path": "img/red.png", "text_description": "red"}' + ', {"image_path": "x"}' * 200
     + "]\n", "holds a JSON array; clipsearch reads JSON lines"),
    ("wide.csv", ";".join(f"column number {i}" for i in range(100)) + "\n", "..."),
])
def test_a_file_that_is_no_such_table_is_one_short_line_saying_what_it_is(photos, name, text, message):
    with pytest.raises(ClipsearchError) as excinfo:
        load_pairs(_write(photos / name, text))
    assert message in str(excinfo.value) and len(str(excinfo.value)) < 500, str(excinfo.value)


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
    assert "and 3 more" in message and "pass --report FILE to list them all" in message
    # Stopped, the run still lists every bad row where --report says (not only with --skip-bad).
    with pytest.raises(ClipsearchError, match="all 6 are listed in .*stopped.jsonl"):
        load_pairs(data, report=photos / "stopped.jsonl")
    assert len((photos / "stopped.jsonl").read_text().splitlines()) == 6

    pair_set = load_pairs(data, skip_bad=True)
    assert [(p.image, p.text) for p in pair_set.pairs] == [(str(photos / "img" / "red.png"), "a red circle")]
    reasons = {int(p.where.rsplit(":", 1)[1]): p.reason for p in pair_set.problems}
    assert reasons[3] == "empty caption"
    assert reasons[4].startswith("image not found")
    assert reasons[5].startswith("unusable image: not an image Pillow can read")  # ingest's words for it
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
        load_pairs(_write(photos / "a.csv", "image_path,text_description\nimg/nope.png,x\nimg/red.png,\n"),
                   skip_bad=True)
    # Every image missing: the paths are read from another folder than meant, and it says which.
    moved = _write(photos / "elsewhere" / "a.csv", "image_path,text_description\nimg/red.png,x\nimg/blue.png,y\n")
    for skip_bad in (False, True):
        with pytest.raises(ClipsearchError, match=f"none of the 2 images in .* exists.*relative image paths are read "
                                                  f"from the data file's folder, {photos / 'elsewhere'}"):
            load_pairs(moved, skip_bad=skip_bad)
    with pytest.raises(ClipsearchError, match="does not exist"):
        load_pairs(photos / "nothing.csv")
    with pytest.raises(ClipsearchError, match="the file is empty"):
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


def test_the_same_scan_under_two_names_stays_on_one_side_of_the_split(tmp_path):
    """Held out under one name and trained on under another, a byte-identical file
    would inflate the "after" recall: equal files are one image to the split, and to
    --eval-data's overlap check."""
    import shutil

    from support import draw_collection

    images = draw_collection(tmp_path / "scans", 12)
    twin = shutil.copy(images[0], tmp_path / "scans" / "saved-again.png")
    pairs = [Pair(str(p), f"scan {i}", "") for i, p in enumerate([*images, twin])]
    for seed in range(20):
        train, held = split_by_image(pairs, 0.3, seed)
        sides = {str(images[0]) in {p.image for p in held}, str(twin) in {p.image for p in held}}
        assert len(sides) == 1, seed  # both held out, or both trained on
    with pytest.raises(ClipsearchError, match=f"e.g. {twin} \\(the same file as {images[0]}\\)"):
        check_disjoint(pairs[:1], pairs[-1:])
    # Two scans of one size, sharing their first MiB and last KiB (white margins) but not
    # their middle, are two images.
    page = bytearray(b"\xff" * ((1 << 20) + 300_000))
    (tmp_path / "page1.bmp").write_bytes(bytes(page))
    page[(1 << 20) + 1000] = 0
    (tmp_path / "page2.bmp").write_bytes(bytes(page))
    check_disjoint([Pair(str(tmp_path / "page1.bmp"), "page 1", "")], [Pair(str(tmp_path / "page2.bmp"), "p", "")])


# Reading with pandas: the line numbers and quirks it must not change.

def _problems(data) -> dict[int, str]:
    return {row.line: row.problem for row in read_rows(data)[1] if row.problem}


def test_quoted_csv_fields_with_commas_quotes_and_line_breaks(photos):
    data = _write(photos / "pairs.csv", "\n".join([
        "image_path,text_description",
        'img/red.png,"a red circle, small"',          # 2
        'img/blue.png,"a ""blue"" square"',             # 3
        'img/green.jpg,"first line',                   # 4
        "",                                            # 5 (a blank line inside the quotes)
        'last line"',                                  # 6
        "",                                            # 7 blank: no row
        "img/red.png,unquoted, comma",                 # 8 three fields
        "img/blue.png",                                # 9 one field
        "img/nope.png,x",                              # 10
    ]) + "\n")
    rows = read_rows(data)[1]
    assert [(r.line, r.text) for r in rows if not r.problem] == [
        (2, "a red circle, small"), (3, 'a "blue" square'), (4, "first line\n\nlast line"), (10, "x")]
    assert _problems(data) == {8: "has 3 fields, the header has 2 (quote captions that contain a comma)",
                               9: "has 1 fields, the header has 2"}
    with pytest.raises(ClipsearchError, match=r"pairs\.csv:10: image not found"):
        load_pairs(data)


def test_csv_line_breaks_crlf_and_lone_cr_count_as_lines(photos):
    data = photos / "pairs.csv"
    data.write_bytes(b'image_path,text_description\r\nimg/red.png,"two\r\nlines"\r\nimg/a.png,b,c\r\n'
                     b'img/blue.png,"three\rold mac\rlines"\rimg/b.png,b,c\r')
    rows = read_rows(data)[1]
    assert [(r.line, r.text) for r in rows if not r.problem] == [(2, "two\r\nlines"), (5, "three\rold mac\rlines")]
    assert sorted(_problems(data)) == [4, 8]


@pytest.mark.parametrize("name,fmt,line,text", [
    ("pairs.csv", "csv", 2, "image_path,text_description\nimg/red.png,red\n"),
    ("pairs.tsv", "tsv", 2, "image_path\ttext_description\nimg/red.png\tred\n"),
    ("pairs.md", "pipe", 2, "| image_path | text_description |\n| img/red.png | red |\n"),
    ("pairs.jsonl", "jsonl", 1, '{"image_path": "img/red.png", "text_description": "red"}\n'),
])
def test_utf8_bom_is_dropped(photos, name, fmt, line, text):
    data = photos / name
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert detect_format(data) == fmt
    assert [(r.line, r.image, r.text, r.problem) for r in read_rows(data)[1]] == [
        (line, str(photos / "img" / "red.png"), "red", None)]


def test_pipe_table_spaces_outer_pipes_escapes_and_line_numbers(photos):
    data = _write(photos / "pairs.md", "\n".join([
        "",                                              # 1
        "   | image_path |   text_description   |   ",  # 2 header, padded
        "|:---|---:|",                                   # 3 rule
        "|   img/red.png   |   a red \\| circle   |",    # 4
        "img/blue.png | a blue square",                  # 5 no outer pipes
        "| img/green.jpg | a green triangle",            # 6 leading pipe only
        "",                                              # 7
        '| img/red.png | "quotes" are text "here |',     # 8
        "| img/red.png | one | two |",                   # 9 three cells
        "| img/red.png |",                               # 10 one cell
        "| img/nope.png | x |",                          # 11
    ]) + "\n")
    assert detect_format(data) == "pipe"
    rows = read_rows(data)[1]
    assert [(r.line, r.image, r.text) for r in rows if not r.problem] == [
        (4, str(photos / "img" / "red.png"), "a red | circle"), (5, str(photos / "img" / "blue.png"), "a blue square"),
        (6, str(photos / "img" / "green.jpg"), "a green triangle"),
        (8, str(photos / "img" / "red.png"), '"quotes" are text "here'), (11, str(photos / "img" / "nope.png"), "x")]
    assert _problems(data) == {9: "has 3 cells, the header has 2 (write a | in a caption as \\|)",
                               10: "has 1 cells, the header has 2 (write a | in a caption as \\|)"}
    with pytest.raises(ClipsearchError, match=r"pairs\.md:9: has 3 cells"):
        load_pairs(data)


def test_tsv_quotes_are_text_and_rows_keep_their_lines(photos):
    data = _write(photos / "pairs.tsv", "\n".join([
        "id\timage_path\ttext_description",
        '1\timg/red.png\t"a red circle',   # 2: the quote does not open a field
        "2\timg/blue.png\ta\tb",            # 3: four fields
        "\t\t",                             # 4: blank
        "3\timg/nope.png\tx",               # 5
    ]) + "\n")
    rows = read_rows(data)[1]
    assert [(r.line, r.text) for r in rows if not r.problem] == [(2, '"a red circle'), (5, "x")]
    assert _problems(data) == {3: "has 4 fields, the header has 3"}


def test_values_stay_text_and_blank_lines_above_the_header_are_skipped(photos):
    data = _write(photos / "pairs.csv", "\n\nimage_path,text_description\n007,NA\nTrue,null\n,1e5\n")
    rows = read_rows(data)[1]
    assert [(r.line, r.image and r.image.rsplit("/", 1)[1], r.text) for r in rows] == [
        (4, "007", "NA"), (5, "True", "null"), (6, None, "1e5")]


def test_csv_rows_with_broken_quotes_are_bad_rows_with_their_lines(photos):
    data = _write(photos / "pairs.csv", "\n".join([
        "image_path,text_description",
        'img/red.png,"a red" circle',       # 2: text after the closing quote
        "img/blue.png,fine",                # 3
        'img/green.jpg,"never closed',      # 4: runs to the end of the file
        "img/red.png,swallowed",            # 5
    ]) + "\n")
    rows = read_rows(data)[1]
    assert [(r.line, r.text) for r in rows if not r.problem] == [(3, "fine")]
    problems = _problems(data)
    assert sorted(problems) == [2, 4]
    assert problems[2].startswith("could not be read: check its quotes") and "lines" not in problems[2]
    assert problems[4].endswith("(lines 4-5)")
    with pytest.raises(ClipsearchError, match=r"2 bad rows.*pairs\.csv:2: could not be read"):
        load_pairs(data)


def test_csv_header_that_cannot_be_read(photos):
    with pytest.raises(ClipsearchError, match=r"pairs\.csv:1: the header could not be read"):
        read_rows(_write(photos / "pairs.csv", '"image_path" x,text_description\nimg/red.png,red\n'))


def test_malformed_json_lines_are_reported_with_their_line(photos):
    data = _write(photos / "pairs.jsonl", "\n".join([
        '{"image_path": "img/red.png", "text_description": "red"}',  # 1
        "",                                                          # 2
        '{"image_path": "img/blue.png", "text_description": "blue"',   # 3 unclosed
        '{"image_path": "img/green.jpg", "text_description": 3}',      # 4
        '{"image_path": "img/nope.png", "text_description": "x"}',     # 5
    ]) + "\n")
    assert _problems(data) == {3: "is not valid JSON (Expecting ',' delimiter)",
                               4: "image_path and text_description must be strings"}
    with pytest.raises(ClipsearchError, match=r"3 bad rows.*pairs\.jsonl:3: is not valid JSON.*pairs\.jsonl:5: image"):
        load_pairs(data)


@pytest.mark.parametrize("name", ["pairs.csv", "pairs.jsonl"])
def test_not_utf8_names_byte_and_line(photos, name):
    data = photos / name
    head = "image_path,text_description\n" if name.endswith("csv") else ""
    data.write_bytes((head + "a.png,caption\n" * 1000).encode() + b"b.png,caf\xe9\n")
    offset = len(head) + 14 * 1000 + len("b.png,caf")
    line = 1000 + (2 if head else 1)
    with pytest.raises(ClipsearchError, match=rf"{name} is not UTF-8 text \(.* at byte {offset}, line {line}; "
                                              r"save it as UTF-8 \(an image whose file name is not UTF-8 can be "
                                              r"listed in JSON lines, its bytes as \\udcXX escapes"):
        read_rows(data)
