"""Odd image files a data hoarder has (findings-formats): what ingest, search's image
queries and serve's upload decoder (all through clipsearch/images.py) make of them.

PostScript named .jpg never reaches Ghostscript; an extreme strip is cropped before the
model's resize; a mistyped EXIF tag costs no photo; float TIFFs with +-inf, JPEGs
missing only their end marker, ICO/PPM/PGM/TGA are read; HEIC without pillow-heif is
counted with what to install; NAS and OS system folders are left out, and --prune
drops what the walk leaves out."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import ClipsearchError
from clipsearch.images import IMAGE_EXTENSIONS, MAX_ASPECT_RATIO, SkipImage, image_extensions, load_image
from clipsearch.index import open_index
from clipsearch.ingest import walk_images

from support import draw_collection, draw_image, settings_for
from support import run_ingest as run
from support import stored_payloads as stored

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"


@pytest.fixture
def index(tmp_path, tiny_model_dir):
    with open_index(settings_for("edge", tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


def fake_ghostscript(folder: Path) -> Path:
    """A `gs` that notes every call in folder/GS_RAN (and answers --version, as Pillow asks)."""
    folder.mkdir(parents=True, exist_ok=True)
    gs = folder / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$*\" >> {folder / 'GS_RAN'}\n"
                  "if [ \"$1\" = \"--version\" ]; then echo 10.02.1; exit 0; fi\nexit 1\n")
    gs.chmod(0o755)
    return folder / "GS_RAN"


# -- 1. no external program runs on a file's content -------------------------------------

def test_postscript_named_jpg_is_not_an_image_and_no_ghostscript_runs(tmp_path, encoder, index, monkeypatch):
    """Pillow's own guess handed PostScript named .jpg to its EPS plugin, which ran
    Ghostscript on it: in ingest, in search --image and on serve's uploads (whose error
    then showed the client the gs command line and the server's temp paths). Checked in
    a fresh interpreter (Pillow looks for gs once a process) through decode_job, what
    ingest's decoders and serve's upload checker run, and through a real ingest."""
    ran = fake_ghostscript(tmp_path / "bin")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(POSTSCRIPT)
    draw_image(photos / "ok.jpg", "red")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    probe = ("import json, sys\nfrom clipsearch.images import decode_job\n"
             "print(json.dumps(decode_job((sys.argv[1], 224, 100.0))[2:]))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(photos / "holiday.jpg")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reason, lasting = json.loads(done.stdout)
    assert reason == "not an image Pillow can read (corrupt, or not the format its name says)" and lasting
    assert not ran.exists(), ran.read_text()

    from PIL import EpsImagePlugin

    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # looked for again, on this PATH
    report = tmp_path / "skipped.jsonl"
    summary = run([photos], encoder, index, report=str(report))
    assert (summary.embedded, summary.skipped) == (1, 1)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(Path(line["path"]).name, line["reason"]) for line in lines] == [("holiday.jpg", reason)]
    assert not ran.exists(), ran.read_text()


def test_a_jpeg_named_png_is_still_read(tmp_path):
    path = draw_image(tmp_path / "really-a-jpeg.png", "blue", fmt="JPEG")
    assert load_image(str(path)).image.size == (96, 72)


# -- 3. extreme aspect ratios --------------------------------------------------------------

def test_an_extreme_strip_is_cropped_before_the_models_resize(tmp_path):
    """A 144-byte 20000x1 PNG took 9.6 GB and 60 s: the model's resize scales its short
    side up to 224 first (4,480,000x224). Run as ingest's decoders run it (prepare_job,
    a 224-pixel model's preprocessing), in a process allowed 700 MB more than it holds
    once imported: without the crop that is a MemoryError ("out of memory")."""
    strip = tmp_path / "strip_20000x1.png"
    Image.new("RGB", (20000, 1), (10, 200, 30)).save(strip)
    decoded = load_image(str(strip))
    assert (decoded.width, decoded.height) == (20000, 1)  # the file's own size is recorded
    assert decoded.image.size == (MAX_ASPECT_RATIO, 1)  # its centre, 16:1
    tall = tmp_path / "tall.png"
    Image.new("RGB", (3, 9000), (10, 200, 30)).save(tall)
    assert load_image(str(tall)).image.size == (3, 3 * MAX_ASPECT_RATIO)

    probe = textwrap.dedent("""
        import json, resource, sys
        from clipsearch.encoders.onnx_image import Preprocess
        from clipsearch.images import plain_preprocess, prepare_job
        p = Preprocess.from_dict(dict(shortest_edge=224, size=None, resample=3, crop=(224, 224), rescale=1/255,
                                      mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27)))
        with open("/proc/self/status") as f:
            held = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = held + 700 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _, prepared, reason, _ = prepare_job((sys.argv[1], 224, 100.0, plain_preprocess(p)))
        print(json.dumps([reason, None if prepared is None else list(prepared.pixels.shape)]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", probe, str(strip)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [None, [224, 224, 3]]


def test_a_panorama_within_the_limit_is_left_whole(tmp_path):
    path = tmp_path / "pano.png"
    Image.new("RGB", (1500, 100), (1, 2, 3)).save(path)
    assert load_image(str(path)).image.size == (1500, 100)


# -- 4. a mistyped EXIF tag costs no photo -------------------------------------------------

def exif_blob(entries) -> bytes:
    """A little-endian EXIF block of (tag, type, count, value bytes) entries, as written."""
    n = len(entries)
    ifd = struct.pack("<H", n)
    extra = b""
    data_off = 8 + 2 + 12 * n + 4
    for tag, typ, count, val in entries:
        if len(val) <= 4:
            ifd += struct.pack("<HHI", tag, typ, count) + val.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, typ, count, data_off + len(extra))
            extra += val
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + extra


def test_a_rotated_photo_with_a_mistyped_tag_is_ingested_upright(tmp_path, encoder, index):
    """RowsPerStrip holding the text "Canon": ImageOps.exif_transpose raised writing the
    EXIF out again (struct.error), and the photo was skipped as a decoder error, on every
    run. Its orientation (6) reads fine: the photo is rotated and ingested."""
    picture = Image.new("RGB", (400, 240), (30, 120, 200))
    picture.paste((250, 250, 0), (0, 0, 100, 60))  # a corner that shows the rotation
    odd = [(274, 3, 1, struct.pack("<H", 6)), (278, 2, 6, b"Canon\0")]
    photos = tmp_path / "photos"
    photos.mkdir()
    for ext in ("jpg", "png"):
        picture.save(photos / f"rotated_with_odd_tag.{ext}", exif=exif_blob(odd))
    upright = np.asarray(picture.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    for ext in ("jpg", "png"):
        decoded = load_image(str(photos / f"rotated_with_odd_tag.{ext}"), target=400)
        assert (decoded.width, decoded.height) == (240, 400)
        assert np.abs(np.asarray(decoded.image, dtype=np.int16) - upright).mean() < 3
    summary = run([photos], encoder, index)
    assert (summary.embedded, summary.skipped) == (2, 0)
    assert {(p["width"], p["height"]) for p in stored(index).values()} == {(240, 400)}


# -- 5. HEIC -------------------------------------------------------------------------------

def test_heic_without_pillow_heif_is_counted_with_what_to_install(tmp_path, encoder, index):
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pillow-heif is installed here: the other test covers it")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0002.heic").write_bytes(b"x")
    (photos / "IMG_0003.HEIF").write_bytes(b"x")
    draw_image(photos / "ok.jpg", "red")
    report = tmp_path / "skipped.jsonl"
    summary = run([photos], encoder, index, report=str(report))
    # found counts every image file met, the two it cannot read among them (README)
    assert (summary.found, summary.embedded, summary.skipped) == (3, 1, 2)
    reasons = {json.loads(line)["reason"] for line in report.read_text().splitlines()}
    assert reasons == {"not read: this install has no HEIC/HEIF decoder: `pip install pillow-heif` adds them"}


def test_heic_with_pillow_heif_is_read(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "real.heic"
    pillow_heif.from_pillow(Image.new("RGB", (320, 240), (200, 30, 30))).save(str(path))
    assert ".heic" in image_extensions()
    assert load_image(str(path)).image.size == (299, 224)


# -- 6. float TIFF with +-inf --------------------------------------------------------------

@pytest.mark.parametrize("nodata", [np.inf, -np.inf, np.nan])
def test_a_float_tiff_with_a_non_finite_pixel_looks_like_its_clean_twin(tmp_path, nodata):
    """One +inf or -inf pixel (a nodata value) made the stretch infinite: a black square."""
    base = np.linspace(0, 1, 320 * 240, dtype=np.float32).reshape(240, 320)
    Image.fromarray(base, mode="F").save(tmp_path / "clean.tif")
    marked = base.copy()
    marked[5, 5] = nodata
    Image.fromarray(marked, mode="F").save(tmp_path / "marked.tif")
    clean = np.asarray(load_image(str(tmp_path / "clean.tif")).image, dtype=np.int16)
    seen = np.asarray(load_image(str(tmp_path / "marked.tif")).image, dtype=np.int16)
    assert seen.std() > 50
    assert np.abs(seen - clean).mean() < 0.1


# -- 7. a JPEG missing only its end marker -------------------------------------------------

@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_jpeg_missing_only_its_end_marker_is_read_whole(tmp_path, progressive):
    """Files recovered from cards lack the final FF D9 and decode pixel for pixel; a JPEG
    cut anywhere in its data (its last bytes of data included) stays skipped."""
    rng = np.random.default_rng(7)
    picture = Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", progressive=progressive)
    whole = buffer.getvalue()
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "no_eoi.jpg").write_bytes(whole[:-2])
    mended = load_image(str(tmp_path / "no_eoi.jpg"), target=600)
    intact = load_image(str(tmp_path / "whole.jpg"), target=600)
    assert np.array_equal(np.asarray(mended.image), np.asarray(intact.image))
    for name, cut in (("half", whole[:len(whole) // 2]), ("end_of_data", whole[:-4])):
        (tmp_path / f"{name}.jpg").write_bytes(cut)
        with pytest.raises(SkipImage, match="^corrupt or truncated: image file is truncated"):
            load_image(str(tmp_path / f"{name}.jpg"))


# -- 8. system folders and --prune ---------------------------------------------------------

SYSTEM = ["@eaDir/IMG_1.jpg", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information", "lost+found",
          "@Recycle", ".Trash-1000/files", ".thumbnails/normal"]


def test_nas_and_os_system_folders_are_left_out_and_pruned(tmp_path, encoder, index):
    """Synology's @eaDir (five thumbnails of every photo), recycle bins and snapshots
    are not walked. Points taken in before (by an older version; here each such folder
    is ingested as a root, which is never passed over) go with --prune, this shard's
    only; and so do those of an --exclude added since."""
    from clipsearch.ingest.pipeline import in_shard

    photos = tmp_path / "photos"
    kept = draw_collection(photos / "visible", 3)
    for i, sub in enumerate(SYSTEM):
        draw_image(photos / sub / "x.jpg", "purple", "triangle", mark=i + 1)
    found = {Path(e.path).relative_to(photos.resolve()).parts[0] for e in walk_images([str(photos)])}
    assert found == {"visible"}
    for sub in SYSTEM[:6]:
        run([photos / sub], encoder, index)
    system = {r.id for r in index.scroll()}
    assert len(system) == 6

    run([photos], encoder, index, shard=(0, 2), prune=True)
    assert {r.id for r in index.scroll()} & system == {pid for pid in system if in_shard(pid, (1, 2))}
    run([photos], encoder, index, shard=(1, 2), prune=True)
    assert sorted(stored(index)) == sorted(os.path.realpath(p) for p in kept)

    summary = run([photos], encoder, index, prune=True, exclude=["visible"])
    assert summary.removed == 3 and index.count() == 0


# -- 9, 10. one table of file types ---------------------------------------------------------

def test_ico_ppm_pgm_and_tga_are_ingested(tmp_path, encoder, index):
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = Image.new("RGB", (64, 64), (9, 9, 200))
    for name in ("a.jpg", "b.ico", "c.ppm", "d.tga", "e.pgm"):
        (picture.convert("L") if name.endswith(".pgm") else picture).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    summary = run([photos], encoder, index)
    assert (summary.found, summary.embedded, summary.skipped) == (5, 5, 0)


def test_a_query_naming_a_file_of_any_type_ingest_reads_is_an_image_query(tmp_path, monkeypatch):
    from clipsearch.search.terms import parse_term, query_term

    monkeypatch.chdir(tmp_path)
    for extension in sorted(image_extensions()):
        Image.new("RGB", (16, 16)).save(f"q{extension}", format="PNG")  # the content is not checked here
        assert query_term(f"q{extension}").kind == "image", extension
        assert parse_term(f"2:q{extension}").kind == "image", extension
    assert ".heic" in IMAGE_EXTENSIONS  # a type read with a plugin is an image query even without it
    Path("notes.txt").write_text("x")
    with pytest.raises(ClipsearchError, match=r"^the query notes.txt is a file, but not an image of a type clipsearch"):
        query_term("notes.txt")
    assert query_term("a photo.ico of a cat").kind == "text"
