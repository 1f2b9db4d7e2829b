"""ingest() and IngestOptions check what they are given before anything opens: a wrong
type is a TypeError naming the argument, a value out of range a UsageError (the CLI's
exit 2), and the settings' environment variables are the options' defaults, as on the
command line. One glob given alone to `exclude` is one glob, never its letters: "*"
of "*.png" matched every file, and with prune removed every point."""

from __future__ import annotations

import pytest

from clipsearch import IngestOptions, Settings, open_index
from clipsearch.errors import UsageError
from clipsearch.ingest import ingest

from support import draw_image


@pytest.fixture
def photos(tmp_path):
    for name in ("a.jpg", "b.png", "c.png"):
        draw_image(tmp_path / "photos" / name)
    return tmp_path / "photos"


@pytest.fixture
def settings(tmp_path, tiny_model_dir):
    return Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir), device="cpu")


def _paths(settings) -> set[str]:
    with open_index(settings) as opened:
        return {record.payload["path"].rsplit("/", 1)[1] for record in opened.scroll()}


def test_one_exclude_glob_given_alone_is_one_glob_and_prunes_only_what_it_matches(photos, settings):
    ingest(photos, settings=settings, options=IngestOptions(workers=0, quiet=True))
    summary = ingest(photos, settings=settings, options=IngestOptions(workers=0, quiet=True, exclude="*.png",
                                                                       prune=True))
    assert summary.removed == 2
    assert _paths(settings) == {"a.jpg"}


@pytest.mark.parametrize("options, error, message", [
    ({"batch_size": 0}, UsageError, "IngestOptions: batch_size= must be at least 1, got 0"),
    ({"workers": -1}, UsageError, "IngestOptions: workers= must be at least 0, got -1"),
    ({"max_megapixels": -1}, UsageError, "max_megapixels= must be a number of megapixels above 0, got -1"),
    ({"max_megapixels": float("nan")}, UsageError, "max_megapixels= must be a number of megapixels above 0, got nan"),
    ({"batch_size": "8"}, TypeError, "IngestOptions: batch_size= must be an int, got str"),
    ({"exclude": [3]}, TypeError, "IngestOptions: exclude= must be a glob (str) or a list of globs, got list"),
    ({"shard": (5, 2)}, UsageError, "IngestOptions: shard=(5, 2) must have 0 <= i < n"),
    ({"shard": "0/0"}, UsageError, "IngestOptions: shard='0/0' is not of the form I/N with 0 <= I < N"),
    ({"shard": [0, 2]}, TypeError, "IngestOptions: shard= must be (i, n), or 'I/N', got list"),
])
def test_ingest_options_refuse_what_they_cannot_take(options, error, message):
    with pytest.raises(error) as caught:
        IngestOptions(**options)
    assert message in str(caught.value)


@pytest.mark.parametrize("arguments, message", [
    ({"folders": 123}, "ingest(): folders= must be a folder (str, bytes or os.PathLike) or a list of them, got int"),
    ({"folders": [None]}, "ingest(): folders= must hold folders (str, bytes or os.PathLike), got NoneType in it"),
    ({"settings": {}}, "ingest(): settings= must be a clipsearch Settings"),
    ({"settings": "/data/idx"}, "ingest(): settings= must be a clipsearch Settings"),
    ({"options": {}}, "ingest(): options= must be a clipsearch IngestOptions, got dict"),
])
def test_ingest_names_an_argument_of_the_wrong_type_before_anything_opens(arguments, message, photos, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(TypeError) as caught:
        ingest(**{"folders": photos, **arguments})
    assert str(caught.value).startswith(message)
    assert not (tmp_path / "data").exists()  # the default index was not made


def test_ingest_of_no_folder_says_so(settings):
    with pytest.raises(UsageError, match=r"ingest\(\): folders= names no folder"):
        ingest([], settings=settings)


def test_the_settings_environment_gives_the_options_defaults(monkeypatch, photos, settings):
    monkeypatch.setenv("CLIPSEARCH_BATCH_SIZE", "7")
    monkeypatch.setenv("CLIPSEARCH_WORKERS", "0")
    monkeypatch.setenv("CLIPSEARCH_MAX_MEGAPIXELS", "0.001")  # 1000 pixels: the 96x72 drawings are larger
    options = IngestOptions(quiet=True)
    assert (options.batch_size, options.workers, options.max_megapixels) == (7, 0, 0.001)
    summary = ingest(photos, settings=settings, options=options)
    assert summary.skipped == 3 and summary.embedded == 0
    monkeypatch.setenv("CLIPSEARCH_BATCH_SIZE", "abc")
    with pytest.raises(UsageError, match="CLIPSEARCH_BATCH_SIZE='abc' is not a whole number of 1 or more"):
        IngestOptions()
    assert IngestOptions(batch_size=5).batch_size == 5  # a value given wins, and reads no variable


def test_exclude_and_shard_come_as_the_cli_takes_them():
    globs = (glob for glob in ["*.png", "tmp/*"])  # read once, not emptied by the check
    assert IngestOptions(exclude=globs).exclude == ("*.png", "tmp/*")
    assert IngestOptions(exclude=[b"*.png"]).exclude == ("*.png",)
    assert IngestOptions(shard="1/4").shard == (1, 4)


def test_a_folder_of_only_unusable_entries_says_they_were_skipped(tmp_path, settings):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(Exception, match=r"no image files that could be read \(1 skipped: see the lines above\)"):
        ingest(photos, settings=settings, options=IngestOptions(workers=0, quiet=True))
