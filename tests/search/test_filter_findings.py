"""A tester's findings on photo filters, duplicates and galleries, each checked on real
files: files deleted since ingest never appear in a near-duplicate group (above all not
first, the copy a person keeps); --camera matches a word's beginning (fuji: FUJIFILM)
inside the index on every backend, and an empty filtered answer says which filter no
photo meets; Where checks and normalises its values; UTF-8 camera names are read as
UTF-8 and matched as Unicode words; the galleries show the filters, each hit's facts and
odd names readably, and the `gallery:` line quotes its path."""

from __future__ import annotations

import io
import json
import os
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.index.where import Where
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search.duplicates import find_duplicates
from clipsearch.search.engine import Searcher
from clipsearch.search.filters import build_where

from support import BACKENDS, PARIS, exif_photo, settings_for

# A resized or re-encoded copy scores within 1 - 4e-6 of its original under the tiny
# random CLIP, unrelated photos no closer than 1 - 8e-4 (tests/search/test_duplicates.py).
THRESHOLD = 0.9999


def photo(seed: int, size=(640, 480)) -> Image.Image:
    """Photo-like (smooth colour fields and grain): a copy's vector stays near its own."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize(size, Image.BICUBIC)
    grain = np.asarray(low, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def env_for(settings) -> dict[str, str]:
    return {"CLIPSEARCH_INDEX": settings.index, "CLIPSEARCH_COLLECTION": settings.collection,
            "CLIPSEARCH_MODEL": settings.model, "CLIPSEARCH_DEVICE": "cpu"}


def hits_of(settings, where: Where) -> set[str]:
    from clipsearch.encoders import Encoder

    with open_index(settings) as index:
        hits = Searcher(Encoder(settings.model, "cpu"), index).text("a photo", k=20, where=where)
    return {os.path.basename(h.path) for h in hits}


# -- 1. duplicates --similar and files gone since ingest ---------------------------------


def test_a_file_gone_since_ingest_is_in_no_similar_group_nor_first(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    lib = tmp_path / "lib"
    lib.mkdir()
    first = photo(1)
    first.save(lib / "IMG_0001.png")
    first.save(lib / "IMG_0001 (copy).jpg", quality=60)  # sorts first: the copy a person would keep
    first.resize((480, 360)).save(lib / "IMG_0001 small.png")
    second = photo(2)
    second.save(lib / "original.png")
    second.resize((320, 240)).save(lib / "small_copy.png")
    photo(3).save(lib / "other.png")
    ingest([str(lib)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    (lib / "IMG_0001 (copy).jpg").unlink()  # cleaned up since: the index still lists them
    (lib / "small_copy.png").unlink()

    with open_index(settings) as index:
        found = find_duplicates(index, similar=THRESHOLD)
    assert [[os.path.basename(m.path) for m in g.members] for g in found.groups] == \
        [["IMG_0001 small.png", "IMG_0001.png"]]  # the pair left with one file is no group
    assert [m.rank for m in found.groups[0].members] == [1, 2]
    assert found.groups[0].members[1].score == pytest.approx(1.0, abs=1e-4)  # scored against a file that is there
    assert [os.path.basename(p) for p in found.unreadable] == ["IMG_0001 (copy).jpg", "small_copy.png"]

    result = CliRunner(env=env_for(settings)).invoke(
        cli, ["duplicates", "--similar", str(THRESHOLD), "-q", "-f", "paths"])
    assert result.exit_code == 0, result.output
    assert [os.path.basename(p) for p in result.stdout.splitlines()] == ["IMG_0001 small.png", "IMG_0001.png"]
    assert "found 1 group of similar files (2 files)" in result.stderr
    assert "2 files in the index were gone or unreadable since ingest and left out of the groups" in result.stderr


# -- 2. --camera by a word's beginning, and why an answer is empty ---------------------


@pytest.fixture(params=BACKENDS)
def cameras(request, tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    exif_photo(photos / "fuji.jpg", "red", "2019:06:10 14:00:00", "FUJIFILM", "X-T3")
    exif_photo(photos / "5ds.jpg", "green", "2019:06:11 14:00:00", "Canon", "Canon EOS 5DS")
    exif_photo(photos / "pana.jpg", "blue", None, "Panasonic", "DMC-GX80")
    settings = settings_for(request.param, tmp_path, tiny_model_dir)
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    return settings


def test_a_camera_word_of_letters_finds_the_words_it_begins_in_the_index(cameras):
    assert hits_of(cameras, build_where("2019", "2020", "fuji", None)) == {"fuji.jpg"}
    assert hits_of(cameras, build_where(None, None, "FujiFilm", None)) == {"fuji.jpg"}  # the whole word still
    assert hits_of(cameras, build_where(None, None, "pana gx80", None)) == {"pana.jpg"}
    assert hits_of(cameras, build_where(None, None, "xt3", None)) == {"fuji.jpg"}  # X-T3 run together
    assert hits_of(cameras, build_where(None, None, "canon eos", None)) == {"5ds.jpg"}
    # a model number matches whole: an EOS 5D is not an EOS 5DS
    assert hits_of(cameras, build_where(None, None, "5d", None)) == set()
    assert hits_of(cameras, build_where(None, None, "fu", None)) == set()  # two letters are no beginning


def test_stored_camera_words_hold_the_beginnings_of_words_of_letters():
    from clipsearch.photo_facts import stored_camera_words

    words = stored_camera_words("FUJIFILM X-T3")
    assert words[:4] == ["fujifilm", "x-t3", "x", "t3"]  # the words themselves first
    assert {"fuj", "fuji", "fujifil", "xt3"} <= set(words)
    assert not {"fu", "t"} & set(words)
    assert not any(w.startswith("5d") and w != "5ds" for w in stored_camera_words("Canon EOS 5DS"))


def test_an_empty_filtered_answer_says_which_filter_no_photo_meets(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = tmp_path / "photos"
    exif_photo(photos / "fuji.jpg", "red", "2019:06:10 14:00:00", "FUJIFILM", "X-T3")
    exif_photo(photos / "scan.jpg", "blue")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    runner = CliRunner(env=env_for(settings))

    result = runner.invoke(cli, ["search", "a photo", "--camera", "fujifulm"])
    assert result.exit_code == 0, result.output
    assert "no hits" in result.stderr
    assert "no photo in the index has the camera word 'fujifulm'; close: fujifilm" in result.stderr
    result = runner.invoke(cli, ["search", "a photo", "--camera", "fu", "-f", "json"])
    assert "close: fujifilm\n" in result.stderr  # the words photos have, not the beginnings stored beside them
    result = runner.invoke(cli, ["search", "a photo", "--near", "48.85,2.35,10"])
    assert "no photo in the index has a GPS position (EXIF)" in result.stderr
    result = runner.invoke(cli, ["search", "a photo", "--camera", "fuji", "--before", "2019"])  # each alone matches
    assert result.stdout == "" and "no hits" in result.stderr and "no photo in the index" not in result.stderr


# -- 3. Where in the Python API --------------------------------------------------------


def test_where_normalises_what_the_cli_would_accept():
    assert Where(camera_words="Canon EOS").camera_words == ("canon", "eos")  # not read letter by letter
    assert Where(camera_words=("Canon", "eos 5d")).camera_words == ("canon", "eos", "5d")
    assert Where(camera_words="ＦＵＪＩ Straße").camera_words == ("fuji", "strasse")  # NFKC, casefolded
    assert Where(taken_from="2023").taken_from == "2023-01-01T00:00:00"
    assert Where(taken_from=datetime(2023, 7, 14, 10, 30)).taken_from == "2023-07-14T10:30:00"
    assert Where(taken_before=date(2024, 1, 1)).taken_before == "2024-01-01T00:00:00"
    assert Where(near=(48.8566, 2.3522, 25_000)).near == (48.8566, 2.3522, 25_000.0)
    assert build_where("2023", None, "Canon EOS", "48.8566,2.3522,25") == \
        Where("2023-01-01T00:00:00", None, ("canon", "eos"), (48.8566, 2.3522, 25_000.0))


@pytest.mark.parametrize("given, message", [
    ({"taken_from": "2023-13"}, r"Where\(taken_from=...\): '2023-13' is not a date"),
    ({"taken_from": 2023}, r"Where\(taken_from=...\) takes a date, a datetime or text"),
    ({"taken_before": datetime(2023, 1, 1, tzinfo=timezone.utc)}, r"taken_before=.* has a time zone"),
    ({"taken_from": "2024", "taken_before": "2023"}, "is not before taken_before"),
    ({"camera_words": 5}, r"Where\(camera_words=...\) takes a camera's text"),
    ({"camera_words": "--"}, "has no letters or digits"),
    ({"near": (200, 2, 3)}, "latitude 200 is outside"),
    ({"near": (48, 2, 0)}, "the radius is in metres"),
    ({"near": (48, 2)}, r"Where\(near=.*\) must be \(latitude, longitude, radius in metres\)"),
    ({"near": "48.8,2.3,25"}, r"search\(near='LAT,LON,KM'\) takes --near's text"),
])
def test_where_refuses_a_wrong_value_naming_the_field(given, message):
    with pytest.raises(ClipsearchError, match=message):
        Where(**given)


def test_the_python_api_filters_as_the_cli_does(tmp_path, tiny_model_dir):
    from clipsearch.search import search

    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = tmp_path / "photos"
    exif_photo(photos / "paris.jpg", "red", "2023:07:14 10:22:31", "Canon", "Canon EOS 5D", PARIS)
    exif_photo(photos / "other.jpg", "blue", "2019:01:01 00:00:00", "NIKON", "D750")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert hits_of(settings, Where(camera_words="Canon")) == {"paris.jpg"}
    assert hits_of(settings, Where(taken_from="2023")) == {"paris.jpg"}
    hits = search("a photo", settings=settings, after="2023", camera="canon eos", near=(*PARIS, 25))
    assert [os.path.basename(h.path) for h in hits] == ["paris.jpg"]
    assert search("a photo", settings=settings, after=date(2024, 1, 1)) == []
    with pytest.raises(ClipsearchError, match="not both"):
        search("a photo", settings=settings, where=Where(camera_words="canon"), camera="canon")


# -- 4. camera names in UTF-8 ------------------------------------------------------------


def utf8_camera_photo(path: Path, make: str, model: str, colour: str) -> Path:
    """A JPEG whose Make and Model hold UTF-8 bytes (Pillow writes ASCII only: they
    replace placeholders of the same length)."""
    make_b, model_b = make.encode(), model.encode()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "M" * len(make_b), "N" * len(model_b)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG", exif=exif.tobytes())
    data = buffer.getvalue().replace(b"M" * len(make_b) + b"\0", make_b + b"\0", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.replace(b"N" * len(model_b) + b"\0", model_b + b"\0", 1))
    return path


def test_utf8_camera_names_are_read_and_matched_as_unicode_words(tmp_path, tiny_model_dir):
    from clipsearch.photo_facts import photo_facts

    photos = tmp_path / "photos"
    leica = utf8_camera_photo(photos / "leica.jpg", "Léica", "Q2 Ü", "green")
    utf8_camera_photo(photos / "xiaomi.jpg", "小米", "红米 Note", "blue")
    with Image.open(leica) as img:
        facts = photo_facts(img)
    assert facts["camera"] == "Léica Q2 Ü"
    assert facts["camera_words"][:3] == ["léica", "q2", "ü"]
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert hits_of(settings, build_where(None, None, "小米", None)) == {"xiaomi.jpg"}
    assert hits_of(settings, build_where(None, None, "LÉICA", None)) == {"leica.jpg"}
    result = CliRunner(env=env_for(settings)).invoke(cli, ["search", "a photo", "--camera", "红米", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["camera"] for line in result.stdout.splitlines()] == ["小米 红米 Note"]


# -- 5. galleries ------------------------------------------------------------------------


def test_the_search_gallery_shows_the_filters_the_facts_and_odd_names_readably(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = tmp_path / "photos"
    odd = photos / os.fsdecode(b"caf\xe9.jpg")
    exif_photo(odd, "red", "2023:07:14 10:22:31", "Canon", "Canon EOS-1D X", PARIS)
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    page = tmp_path / os.fsdecode(b"we\xffird\".html")
    result = CliRunner(env=env_for(settings)).invoke(
        cli, ["search", "harbour", "--camera", "eos 1d", "--after", "2023", "--gallery", str(page), "-f", "paths"])
    assert result.exit_code == 0, result.output
    assert f"gallery: $'{tmp_path}/we\\xffird\".html'\n" in result.stderr  # quoted as every other name
    html = page.read_text(encoding="utf-8")
    assert "filters: --after 2023 --camera &#x27;eos 1d&#x27;" in html
    assert "2023-07-14 10:22 \u00b7 Canon EOS-1D X \u00b7 48.85660, 2.35220" in html
    assert "caf\ufffd.jpg</span>" in html and "alt='caf\ufffd.jpg'" in html  # readable, not $'caf\xe9.jpg'
    assert "title='$&#x27;" in html  # the exact bytes on hover


def test_the_duplicates_gallery_line_quotes_its_path(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    lib = tmp_path / "lib"
    lib.mkdir()
    photo(1).save(lib / "a.png")
    photo(1).save(lib / "b.png")
    ingest([str(lib)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    page = tmp_path / os.fsdecode(b"we\xffird\".html")
    result = CliRunner(env=env_for(settings)).invoke(cli, ["duplicates", "-q", "--gallery", str(page)])
    assert result.exit_code == 0, result.output
    assert f"gallery: $'{tmp_path}/we\\xffird\".html'\n" in result.stderr
