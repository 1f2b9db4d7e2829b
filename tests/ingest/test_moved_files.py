"""Moved and copied files keep their vectors (issue #14): a new path whose content
fingerprint matches a point already indexed gets that point's vector, with no decode, no
encode and no model; a move removes the old point in the same run, a copy keeps both.
Points made before fingerprints get theirs on the next ingest, without re-encoding."""

from __future__ import annotations

import os
import shutil

import numpy as np
from test_ingest_lazy import HEAVY, ingest_in_fresh_process

from clipsearch import IngestOptions, Settings, ingest
from clipsearch.index import open_index, point_id

from support import draw_collection


def test_a_renamed_folder_is_relinked_without_the_model(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos / "2023", 10)
    draw_collection(photos / "2024", 4)
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    first, _ = ingest_in_fresh_process(args, env)
    assert (first["embedded"], first["copied"]) == (10, 4)  # 2024's four drawn as 2023's first four
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    with open_index(settings) as opened:
        before = {r.path: r.vector for r in opened.scroll(with_vectors=True)}

    os.rename(photos / "2023", photos / "archive-2023")
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["moved"], second["copied"], second["unchanged"]) == (0, 10, 0, 4), second
    assert not imported & HEAVY, sorted(imported & HEAVY)  # the model never loaded
    with open_index(settings) as opened:
        assert opened.count() == 14
        after = {r.path: r for r in opened.scroll(with_vectors=True)}
    assert not any("/2023/" in path for path in after)  # no old path lingers
    for old, vector in before.items():
        new = old.replace("/2023/", "/archive-2023/")
        assert new in after and np.allclose(after[new].vector, vector)
        assert after[new].id == point_id(new)
        assert after[new].payload["dirs"][0] == os.path.dirname(new)  # filters see the new folder


def test_a_move_shows_its_progress_while_it_walks(tmp_path, tiny_model_dir, monkeypatch):
    """A library-wide move embeds nothing for minutes: the progress line counts the
    moved files while the walk goes on, not only at the end."""
    from click.testing import CliRunner

    from clipsearch.cli import cli

    photos = tmp_path / "photos"
    draw_collection(photos / "2023", 10)
    args = ["ingest", str(photos), "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "-w", "0"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    os.rename(photos / "2023", photos / "archive-2023")
    monkeypatch.setenv("CLIPSEARCH_PROGRESS_SECONDS", "0")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    during = [line for line in result.stderr.splitlines() if line.startswith("found 10+")]
    assert any("embedded 0, unchanged 0, moved 10, skipped 0" in line for line in during), result.stderr


def test_a_copy_keeps_both_points(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos / "card", 6)
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    ingest_in_fresh_process(args, env)
    shutil.copytree(photos / "card", photos / "card-again")
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["moved"], second["copied"], second["unchanged"]) == (0, 0, 6, 6), second
    assert not imported & HEAVY
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    with open_index(settings) as opened:
        assert opened.count() == 12
        prints = [r.payload["fingerprint"] for r in opened.scroll()]
    assert len(set(prints)) == 6  # each content twice


def test_older_points_get_fingerprints_without_reencoding(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 5)
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    ingest_in_fresh_process(args, env)
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    with open_index(settings) as opened:  # as an index made before fingerprints looks
        records = list(opened.scroll(with_vectors=True))
        opened.upsert([r.id for r in records], np.stack([r.vector for r in records]),
                      [{k: v for k, v in r.payload.items() if k != "fingerprint"} for r in records])
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["upgraded"], second["unchanged"]) == (0, 5, 5), second
    assert not imported & HEAVY
    with open_index(settings) as opened:
        assert all(r.payload.get("fingerprint", "").startswith("p1:") for r in opened.scroll())
    os.rename(photos, tmp_path / "moved")  # and now they can be found by content
    third, _ = ingest_in_fresh_process([tmp_path / "moved", *args[1:]], env)
    assert (third["embedded"], third["moved"]) == (0, 5), third


def test_a_large_file_differing_only_in_the_middle_is_not_taken_for_a_move(tmp_path, tiny_model_dir):
    """Size, first MiB and last KiB agree (an uncompressed picture retouched in the
    middle): the full hash tells them apart; a true move of such a file still relinks."""
    from PIL import Image

    from clipsearch.fingerprint import fingerprint

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(photos / "scan.bmp")
    Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(photos / "other.bmp")
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    assert ingest_in_fresh_process(args, env)[0]["embedded"] == 2

    data = bytearray((photos / "scan.bmp").read_bytes())
    assert len(data) > (1 << 20) + 1024
    middle = len(data) - 4096
    data[middle - 1000:middle] = bytes(255 - b for b in data[middle - 1000:middle])
    (photos / "scan.bmp").unlink()
    (photos / "retouched.bmp").write_bytes(bytes(data))
    os.rename(photos / "other.bmp", photos / "moved.bmp")
    with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as opened:
        stored = {os.path.basename(r.path): r.payload for r in opened.scroll()}
    assert fingerprint(str(photos / "retouched.bmp")) == stored["scan.bmp"]["fingerprint"]
    summary, _ = ingest_in_fresh_process(args, env)
    assert (summary["embedded"], summary["moved"], summary["copied"]) == (1, 1, 0), summary


def test_a_source_deleted_after_the_lookup_leaves_the_file_to_embed(tmp_path):
    """Another writer (a server's) deletes the matched point between the lookup and the
    copy: the file is handed back to be embedded and not counted; a move whose source
    went that way deletes nothing else."""
    from types import SimpleNamespace

    from clipsearch.encoders.identity import ModelIdentity
    from clipsearch.fingerprint import fingerprint
    from clipsearch.ingest.relink import Relinker, place_payload
    from clipsearch.ingest.walk import walk_images

    photos = tmp_path / "photos"
    draw_collection(photos / "a", 3)
    shutil.copytree(photos / "a", photos / "b")
    first, second, third = sorted(walk_images([str(photos / "a")]), key=lambda e: e.path)
    identity = ModelIdentity(name="m", image_fingerprint="i" * 64, text_fingerprint="t" * 64, dim=4)
    returned = []

    class DeletesAfterFind:  # the other writer, acting between the lookup and copy_points
        def __init__(self, index):
            self.index = index

        def __getattr__(self, name):
            return getattr(self.index, name)

        def find(self, field, values, **kwargs):
            found = self.index.find(field, values, **kwargs)
            if values is not None:  # the lookup by fingerprint, not the probe for any
                self.index.delete(ids=[r.id for r in found if r.path in (first.path, third.path)])
            return found

        def copy_points(self, *args):
            returned.append(self.index.copy_points(*args))
            return returned[-1]

    with open_index(Settings.resolve(index=str(tmp_path / "index")), create=True) as index:
        index.ensure_collection(identity)
        index.upsert([point_id(e.path) for e in (first, second, third)], np.eye(4, dtype=np.float32)[:3],
                     [{**place_payload(e), "fingerprint": fingerprint(e.path)} for e in (first, second, third)])
        os.remove(third.path)  # b's copy of it is a move, whose source the other writer deletes
        counts = SimpleNamespace(moved=0, copied=0, upgraded=0, unchanged=0)
        arrived = sorted(walk_images([str(photos / "b")]), key=lambda e: e.path)
        left = Relinker(DeletesAfterFind(index), print, counts).relink(arrived)
        assert returned == [{point_id(arrived[0].path), point_id(arrived[2].path)}]
        assert sorted(e.path for e in left) == [arrived[0].path, arrived[2].path]  # their sources went: embed
        assert (counts.moved, counts.copied) == (0, 1)
        kept = {r.path: r.vector for r in index.scroll(with_vectors=True)}
    assert set(kept) == {second.path, arrived[1].path}  # the copy made, nothing else deleted
    assert np.allclose(kept[arrived[1].path], kept[second.path])


def _ingest(folders, index, model, **options):
    settings = Settings.resolve(index=str(index), model=str(model))
    return ingest([str(f) for f in folders], settings=settings, options=IngestOptions(workers=0, quiet=True, **options))


def _vectors(index, model) -> dict:
    with open_index(Settings.resolve(index=str(index), model=str(model))) as opened:
        return {r.path: np.asarray(r.vector) for r in opened.scroll(with_vectors=True)}


def _rewrite_payloads(index, model, change) -> None:
    with open_index(Settings.resolve(index=str(index), model=str(model))) as opened:
        records = list(opened.scroll(with_vectors=True))
        opened.upsert([r.id for r in records], np.stack([r.vector for r in records]),
                      [change(dict(r.payload)) for r in records])


def test_a_copy_of_a_photo_on_a_share_not_mounted_keeps_the_shares_point(tmp_path, tiny_model_dir):
    """A share's photos look gone while it is not mounted: their points record the file
    system they were on, and the mount point left is on another. A copy of one turning up
    on the laptop is a copy then, not a move that drops the share's point; --allow-missing
    says they are gone indeed."""
    nas, laptop, index = tmp_path / "mnt" / "nas", tmp_path / "laptop", tmp_path / "index"
    a, b, _ = draw_collection(nas / "2019", 3)
    assert _ingest([nas], index, tiny_model_dir).embedded == 3
    share_dev = os.stat(nas).st_dev + 1  # as if the share were a file system of its own
    _rewrite_payloads(index, tiny_model_dir, lambda p: {**p, "dev": share_dev} if "/nas/" in p["path"] else p)
    laptop.mkdir()
    shutil.copy2(a, laptop / a.name)
    shutil.move(str(nas / "2019"), tmp_path / "unmounted")  # the mount point stays, on the file system below
    summary = _ingest([laptop], index, tiny_model_dir)
    assert (summary.embedded, summary.moved, summary.copied) == (0, 0, 1), summary
    kept = _vectors(index, tiny_model_dir)
    assert str(a) in kept and np.allclose(kept[str(a)], kept[str(laptop / a.name)])

    shutil.copy2(tmp_path / "unmounted" / b.name, laptop / b.name)
    summary = _ingest([laptop], index, tiny_model_dir, allow_missing=True)
    assert (summary.embedded, summary.moved, summary.copied) == (0, 1, 0), summary
    assert str(b) not in _vectors(index, tiny_model_dir)
    # A folder that is gone beside others that are there is a rename: a move, as before.
    os.rename(laptop, tmp_path / "trip")
    summary = _ingest([tmp_path / "trip"], index, tiny_model_dir)
    assert (summary.embedded, summary.moved) == (0, 2), summary


def test_photos_sorted_out_of_a_folder_left_empty_are_moves(tmp_path, tiny_model_dir):
    """Emptying an import folder on the same file system is a move (the folder's file
    system is the one the points record), while a point from before `dev` was recorded
    takes an empty folder for a mount point and keeps its old point, as a copy."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    draw_collection(photos / "import", 4)
    assert _ingest([photos], index, tiny_model_dir).embedded == 4
    (photos / "2024").mkdir()
    for path in sorted((photos / "import").iterdir())[:2]:
        os.rename(path, photos / "2024" / path.name)
    _rewrite_payloads(index, tiny_model_dir, lambda p: p if "/import/" not in p["path"] or p["path"].endswith(
        ("000-red-circle.png", "001-green-circle.png")) else {k: v for k, v in p.items() if k != "dev"})
    for path in sorted((photos / "import").iterdir()):  # the last two: from before `dev`
        os.rename(path, photos / "2024" / path.name)
    summary = _ingest([photos], index, tiny_model_dir)
    assert (summary.embedded, summary.moved, summary.copied) == (0, 2, 2), summary
    left = {os.path.basename(p) for p in _vectors(index, tiny_model_dir) if "/import/" in p}
    assert left == {p.name for p in sorted((photos / "2024").iterdir())[2:]}


def test_renumbered_files_keep_their_vectors_and_leave_no_old_name(tmp_path, tiny_model_dir):
    """A reject deleted and the rest renumbered (what a batch renamer does): each name now
    holds the content of the next one. Every content keeps its vector; the last name,
    gone, leaves no point; a file only touched (same bytes) is not embedded again."""
    card, index = tmp_path / "card", tmp_path / "index"
    files = [card / f"IMG_{i:04d}.png" for i in range(1, 6)]
    for path, drawn in zip(files, draw_collection(tmp_path / "drawn", 5)):
        card.mkdir(exist_ok=True)
        shutil.copy2(drawn, path)
    assert _ingest([card], index, tiny_model_dir).embedded == 5
    before = _vectors(index, tiny_model_dir)
    files[0].unlink()
    for older, newer in zip(files, files[1:]):
        os.rename(newer, older)
    os.utime(files[3], ns=(1, 1))  # touched as well: same bytes, another mtime
    summary = _ingest([card], index, tiny_model_dir)
    assert (summary.embedded, summary.moved, summary.copied) == (0, 4, 0), summary
    after = _vectors(index, tiny_model_dir)
    assert sorted(after) == [str(p) for p in files[:4]]
    for older, newer in zip(files, files[1:]):
        assert np.allclose(after[str(older)], before[str(newer)])
    os.utime(files[0], ns=(2, 2))  # only touched: its own point, refreshed
    summary = _ingest([card], index, tiny_model_dir)
    assert (summary.embedded, summary.moved, summary.copied, summary.unchanged) == (0, 0, 0, 4), summary


def test_byte_identical_files_new_in_one_run_are_embedded_once(tmp_path, tiny_model_dir):
    """A card copied twice into a library ingested for the first time: each content is
    embedded once, its twins get its vector; twins of a file that cannot be decoded are
    each reported, not taken for copies of nothing."""
    library, index = tmp_path / "library", tmp_path / "index"
    draw_collection(library / "DCIM", 6)
    (library / "DCIM" / "broken.jpg").write_bytes(b"not a jpeg at all")
    shutil.copytree(library / "DCIM", library / "DCIM (2)")
    summary = _ingest([library], index, tiny_model_dir)
    assert (summary.embedded, summary.copied, summary.skipped) == (6, 6, 2), summary
    vectors = _vectors(index, tiny_model_dir)
    assert len(vectors) == 12
    for path in (library / "DCIM").glob("*.png"):
        assert np.allclose(vectors[str(path)], vectors[str(library / "DCIM (2)" / path.name)])


def test_recheck_finds_a_date_shifted_with_the_files_time_kept(tmp_path, tiny_model_dir):
    """exiftool -P shifts a capture date and keeps the file's size and mtime: by size and
    time the file is unchanged, and its old date would filter forever. --recheck reads
    each file's fingerprint and embeds the one whose bytes changed, and only it."""
    from support import exif_photo

    photos, index = tmp_path / "photos", tmp_path / "index"
    shifted = exif_photo(photos / "trip.jpg", "red", "2019:07:13 12:00:00")
    exif_photo(photos / "home.jpg", "blue", "2020:01:01 09:00:00")
    assert _ingest([photos], index, tiny_model_dir).embedded == 2
    st = os.stat(shifted)
    shifted.write_bytes(shifted.read_bytes().replace(b"2019:07:13", b"2018:07:13"))
    os.utime(shifted, ns=(st.st_atime_ns, st.st_mtime_ns))

    def taken() -> str:
        with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as opened:
            return next(r.payload["taken"] for r in opened.scroll() if r.path == str(shifted))

    assert _ingest([photos], index, tiny_model_dir).unchanged == 2 and taken().startswith("2019")
    summary = _ingest([photos], index, tiny_model_dir, recheck=True)
    assert (summary.embedded, summary.unchanged) == (1, 1), summary
    assert taken() == "2018-07-13T12:00:00"


def test_a_share_remounted_under_another_device_number_is_followed(tmp_path, tiny_model_dir):
    """A share or USB disk mounted again can get another device number. Its unchanged
    files' points take the new one (no re-embedding), so a rename on it is a move, not a
    copy that leaves the old paths searchable; and --prune leaves the photos of a share
    that is not mounted, however few, where the copy of one turned up elsewhere."""
    share, index = tmp_path / "share", tmp_path / "index"
    draw_collection(share / "trip", 3)
    assert _ingest([share], index, tiny_model_dir).embedded == 3
    _rewrite_payloads(index, tiny_model_dir, lambda p: {**p, "dev": p["dev"] + 1})  # the number it had before
    summary = _ingest([share], index, tiny_model_dir)
    assert (summary.unchanged, summary.embedded) == (3, 0), summary
    with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as opened:
        assert {r.payload["dev"] for r in opened.scroll()} == {os.stat(share).st_dev}
    os.rename(share / "trip", share / "Trip 2019")
    summary = _ingest([share], index, tiny_model_dir)
    assert (summary.embedded, summary.moved, summary.copied) == (0, 3, 0), summary

    library = tmp_path / "library"
    shutil.move(str(share), library / "share")
    (library / "main").mkdir()
    summary = _ingest([library], index, tiny_model_dir, prune=True)  # the share's points, moved along
    _rewrite_payloads(index, tiny_model_dir, lambda p: {**p, "dev": p["dev"] + 1})  # on a file system of its own
    photo = next((library / "share" / "Trip 2019").iterdir())
    shutil.copy2(photo, library / "main" / photo.name)
    shutil.move(str(library / "share" / "Trip 2019"), tmp_path / "unmounted")  # its mount point stays, empty
    summary = _ingest([library], index, tiny_model_dir, prune=True)
    assert (summary.copied, summary.removed) == (1, 0), summary
    assert summary.not_pruned and "whose file system is not the one there now" in summary.not_pruned
    assert len(_vectors(index, tiny_model_dir)) == 4


def _as_an_older_clipsearch_left_them(settings, change) -> None:
    with open_index(settings) as opened:
        records = list(opened.scroll(with_vectors=True))
        opened.upsert([r.id for r in records], np.stack([r.vector for r in records]),
                      [change(dict(r.payload)) for r in records])


def test_points_from_before_dev_get_it_and_a_folder_emptied_by_a_move_is_a_move(tmp_path, tiny_model_dir):
    """Points with fingerprints but no `dev` (made before it): the next ingest records
    it, counted as upgraded. Without it, photos all moved out of a folder into another
    looked like a drive not mounted: copied, their old points kept with no file."""
    photos = tmp_path / "photos"
    draw_collection(photos / "a", 5)
    (photos / "b").mkdir()
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    ingest_in_fresh_process(args, env)
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    _as_an_older_clipsearch_left_them(settings, lambda payload: {k: v for k, v in payload.items() if k != "dev"})
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["upgraded"], second["unchanged"]) == (0, 5, 5), second
    assert not imported & HEAVY
    for photo in (photos / "a").iterdir():
        os.rename(photo, photos / "b" / photo.name)
    third, _ = ingest_in_fresh_process(args, env)
    assert (third["embedded"], third["moved"], third["copied"]) == (0, 5, 0), third
    with open_index(settings) as opened:
        assert {os.path.dirname(r.payload["path"]) for r in opened.scroll()} == {str(photos / "b")}


def test_an_upgrade_replaces_facts_an_older_reader_kept(tmp_path, tiny_model_dir):
    """Facts are read again whole on an upgrade: a camera an older reader stored (text
    a fresh index drops) does not survive it and no --camera search finds it."""
    photos = tmp_path / "photos"
    draw_collection(photos, 3)  # no EXIF: no camera
    index = tmp_path / "index"
    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)
    ingest_in_fresh_process(args, env)
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    _as_an_older_clipsearch_left_them(settings, lambda payload: {
        **{k: v for k, v in payload.items() if k not in ("fingerprint", "dev")},
        "camera": "\x1b[31mEvil", "camera_words": ["evil"]})
    second, _ = ingest_in_fresh_process(args, env)
    assert second["upgraded"] == 3, second
    with open_index(settings) as opened:
        assert not [r.payload for r in opened.scroll() if "camera" in r.payload or "camera_words" in r.payload]
        assert all(isinstance(r.payload.get("dev"), int) for r in opened.scroll())
