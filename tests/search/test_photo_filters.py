"""When, with what and where (issue #14): ingest reads the capture time, camera and GPS
position from EXIF (written here with Pillow), ignores broken or absurd fields one by
one while still embedding the image, and `search --after/--before/--camera/--near` filter
inside the index on every backend, combined with --in, and show the facts in JSON hits."""

from __future__ import annotations

import io
import json
import os

import pytest
from click.testing import CliRunner
from PIL.TiffImagePlugin import IFDRational

from clipsearch import IngestOptions, ingest
from clipsearch.cli import cli
from clipsearch.index import open_index
from clipsearch.index.where import Where
from clipsearch.search.engine import Searcher
from clipsearch.search.filters import build_where

from support import BACKENDS, LYON, PARIS, settings_for
from support import exif_photo as photo


@pytest.fixture(params=BACKENDS)
def library(request, tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    photo(photos / "trip/paris.jpg", "red", "2023:07:14 10:22:31", "Canon", "Canon EOS 5D Mark II", PARIS)
    photo(photos / "trip/lyon.jpg", "green", "2023:08:02 18:00:00", "NIKON CORPORATION", "NIKON D750", LYON)
    photo(photos / "home/old.jpg", "blue", "2019:12:31 23:59:59", "Canon", "Canon PowerShot G7 X", original=False)
    photo(photos / "home/none.jpg", "white")
    # Broken or absurd fields: ignored one by one, the image still embedded.
    photo(photos / "home/year0.jpg", "yellow", "0000:00:00 00:00:00", "\x00\x00", "   ")
    photo(photos / "home/feb30.jpg", "purple", "2023:02:30 12:00:00", "Canon", "Canon EOS R5", (123.0, 2.0))
    photo(photos / "home/badgps.jpg", "orange", "2024:01:01 00:00:00",
          raw_gps={1: "N", 2: (IFDRational(1), IFDRational(0)), 3: "E", 4: (IFDRational(5), IFDRational(0))})
    settings = settings_for(request.param, tmp_path, tiny_model_dir)
    summary = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (summary.embedded, summary.skipped) == (7, 0)
    return settings, photos


def found(settings, where: Where, under: str | None = None) -> set[str]:
    from clipsearch.encoders import Encoder

    with open_index(settings) as index:
        searcher = Searcher(Encoder(settings.model, "cpu"), index)
        hits = searcher.text("a photo", k=20, under=under, where=where)
    return {os.path.basename(h.path) for h in hits}


def test_facts_are_read_and_broken_ones_ignored(library):
    settings, _ = library
    with open_index(settings) as index:
        payloads = {os.path.basename(r.path): r.payload for r in index.scroll()}
    assert payloads["paris.jpg"]["taken"] == "2023-07-14T10:22:31"
    assert payloads["paris.jpg"]["camera"] == "Canon EOS 5D Mark II"
    assert payloads["paris.jpg"]["location"] == pytest.approx({"lat": PARIS[0], "lon": PARIS[1]}, abs=1e-4)
    assert payloads["old.jpg"]["taken"] == "2019-12-31T23:59:59"  # DateTime when there is no DateTimeOriginal
    assert payloads["lyon.jpg"]["camera"] == "NIKON D750"  # the make said once, not twice
    assert payloads["lyon.jpg"]["camera_words"][:3] == ["nikon", "corporation", "d750"]  # but all of it matched
    for name in ("none.jpg", "year0.jpg"):
        assert not {"taken", "camera", "location"} & set(payloads[name]), payloads[name]
    assert "taken" not in payloads["feb30.jpg"] and "location" not in payloads["feb30.jpg"]
    assert payloads["feb30.jpg"]["camera"] == "Canon EOS R5"
    assert payloads["badgps.jpg"]["taken"] == "2024-01-01T00:00:00" and "location" not in payloads["badgps.jpg"]
    assert all("mtime" in p for p in payloads.values())  # the file's own time is kept apart


@pytest.mark.parametrize("make, model, name, words", [
    ("LG Electronics", "LGE Nexus 5", "LG Electronics LGE Nexus 5", ["lg", "electronics", "lge", "nexus", "5"]),
    ("Canon", "Canon EOS-1D X", "Canon EOS-1D X", ["canon", "eos-1d", "eos", "1d", "x"]),
    ("SAMSUNG", "SAMSUNG-SM-G930A", "SAMSUNG-SM-G930A", ["samsung", "samsung-sm-g930a", "sm", "g930a"]),
    ("", "iPhone 12", "iPhone 12", ["iphone", "12"]),
    ("SONY", "", "SONY", ["sony"]),
])
def test_the_name_says_the_make_once_and_every_word_of_it_is_matched(make, model, name, words):
    from PIL import Image

    from clipsearch.photo_facts import MAKE, MODEL, photo_facts

    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = make, model
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    with Image.open(buffer) as img:
        facts = photo_facts(img)
    # the words first; then each word of letters' beginnings (photo_facts.word_beginnings)
    assert (facts["camera"], facts["camera_words"][:len(words)]) == (name, words)


@pytest.mark.parametrize("seconds, location", [
    (IFDRational(60), {"lat": -17.0, "lon": 179.95}),  # 179 56' 60": a rounded 59.9996, read as is
    (IFDRational(61), None),  # no such second: the position is dropped, the photo kept
])
def test_gps_seconds_of_60_are_a_rounding_not_an_absurd_value(seconds, location):
    from PIL import Image

    from clipsearch.photo_facts import photo_facts

    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "S", 2: (IFDRational(17), IFDRational(0), IFDRational(0)),
                                 3: "E", 4: (IFDRational(179), IFDRational(56), seconds)})
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    with Image.open(buffer) as img:
        facts = photo_facts(img)
    assert (facts.get("location") and pytest.approx(facts["location"], abs=1e-9)) == location


def test_date_camera_and_place_filters_run_in_the_index(library):
    settings, photos = library
    assert found(settings, build_where("2023", "2024", None, None)) == {"paris.jpg", "lyon.jpg"}
    assert found(settings, build_where("2023-08", None, None, None)) == {"lyon.jpg", "badgps.jpg"}
    assert found(settings, build_where(None, "2020", None, None)) == {"old.jpg"}
    assert found(settings, build_where(None, None, "canon", None)) == {"paris.jpg", "old.jpg", "feb30.jpg"}
    assert found(settings, build_where(None, None, "EOS 5d", None)) == {"paris.jpg"}
    assert found(settings, build_where(None, None, "Nikon Corporation", None)) == {"lyon.jpg"}
    assert found(settings, build_where(None, None, None, f"{PARIS[0]},{PARIS[1]},50")) == {"paris.jpg"}
    assert found(settings, build_where(None, None, None, f"{PARIS[0]},{PARIS[1]},500")) == {"paris.jpg", "lyon.jpg"}
    assert found(settings, build_where("2023", None, "canon", None)) == {"paris.jpg"}
    assert found(settings, build_where(None, None, "canon", None), under=str(photos / "home")) == {"old.jpg",
                                                                                                  "feb30.jpg"}



@pytest.mark.parametrize("backend", BACKENDS)
def test_a_photo_at_a_pole_is_found_by_a_circle_around_it(backend, tmp_path, tiny_model_dir):
    """The embedded engine's geo index never found a point stored at exactly 90 N."""
    photos = tmp_path / "photos"
    photo(photos / "north.jpg", "red", gps=(90.0, 0.0))
    photo(photos / "south.jpg", "blue", gps=(-90.0, 0.0))
    photo(photos / "near.jpg", "green", gps=(89.99, 45.0))
    settings = settings_for(backend, tmp_path, tiny_model_dir)
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert found(settings, build_where(None, None, None, "90,0,1")) == {"north.jpg"}
    assert found(settings, build_where(None, None, None, "90,120,2")) == {"north.jpg", "near.jpg"}
    assert found(settings, build_where(None, None, None, "-90,0,1")) == {"south.jpg"}


def test_a_joined_camera_word_matches_itself_or_all_its_parts(library):
    """--camera eos-5d found nothing for a "Canon EOS 5D Mark II" (its words: eos, 5d):
    a joined word of the query matches a photo by itself or by all its parts, so the
    hyphen people write is no longer a miss, and a point stored before parts were
    (its word "eos-1d" alone) is still found by it."""
    import numpy as np

    settings, _ = library
    assert found(settings, build_where(None, None, "EOS-5D", None)) == {"paris.jpg"}
    assert found(settings, build_where(None, None, "5d-mark-ii", None)) == {"paris.jpg"}
    assert found(settings, build_where(None, None, "g7-x", None)) == {"old.jpg"}
    assert found(settings, build_where(None, None, "eos-r6", None)) == set()  # every part, not any
    with open_index(settings) as index:
        before = next(r for r in index.scroll(with_vectors=True) if r.path.endswith("feb30.jpg"))
        index.upsert([before.id], np.asarray([before.vector], dtype=np.float32),
                     [{**before.payload, "camera": "Canon EOS-1D X", "camera_words": ["canon", "eos-1d", "x"]}])
    assert found(settings, build_where(None, None, "eos-1d", None)) == {"feb30.jpg"}

def test_the_cli_takes_the_flags_and_shows_the_facts(library):
    settings, photos = library
    env = {"CLIPSEARCH_INDEX": settings.index, "CLIPSEARCH_COLLECTION": settings.collection,
           "CLIPSEARCH_MODEL": settings.model, "CLIPSEARCH_DEVICE": "cpu"}
    if settings.index.startswith("http"):
        pytest.skip("the CLI leg runs on the local backends")
    if settings.index == ":memory:":
        pytest.skip("an in-memory index does not outlive its process")
    result = CliRunner(env=env).invoke(cli, ["search", "a photo", "-f", "json", "--camera", "canon", "--after",
                                             "2023-01", "--near", f"{PARIS[0]},{PARIS[1]},5"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(h["path"]) for h in hits] == ["paris.jpg"]
    assert hits[0]["taken"] == "2023-07-14T10:22:31" and hits[0]["camera"] == "Canon EOS 5D Mark II"
    assert hits[0]["location"]["lat"] == pytest.approx(PARIS[0], abs=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--after", "2023-13"], "--after '2023-13' is not a date"),
    (["--before", "yesterday"], "--before 'yesterday' is not a date"),
    (["--after", "2024", "--before", "2023"], "--after 2024 is not before --before 2023"),
    (["--near", "48.8,2.3"], "--near '48.8,2.3' must be LAT,LON,KM"),
    (["--near", "91,0,5"], "latitude 91 is outside -90..90"),
    (["--near", "0,0,0"], "the radius must be more than 0"),
    (["--camera", "--"], "--camera '--' has no letters or digits"),
    # `--after "$START"` with START unset: refused, not read as no filter (every photo)
    (["--after", ""], "--after '' is not a date"),
    (["--before", ""], "--before '' is not a date"),
    (["--near", ""], "--near '' must be LAT,LON,KM"),
])
def test_a_bad_flag_is_one_line_naming_it(flags, message, tmp_path):
    result = CliRunner().invoke(cli, ["search", "a photo", "--index", str(tmp_path / "none"), *flags])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output  # a bad flag value
    assert message in result.output


@pytest.mark.parametrize("make, model, name", [
    (b"\xff\xfe\x01\x02\xfd", "", None),  # binary junk: no camera at all
    ("\x1b[31m\x07", "\x00\x00\x00", None),  # terminal escapes and NULs
    ("Canon\x1b[2J", "EOS\x00 R5\x7f", "Canon EOS R5"),  # a name with junk around it: the name
    ("--", "?", None),  # no letter or digit
])
def test_a_camera_text_of_junk_is_no_camera(make, model, name):
    from PIL import Image

    from clipsearch.photo_facts import MAKE, MODEL, photo_facts

    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = make, model
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    with Image.open(buffer) as img:
        assert photo_facts(img).get("camera") == name
