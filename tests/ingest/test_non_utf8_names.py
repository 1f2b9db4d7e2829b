"""A file name is bytes (issue #15, defect 1). A name that is not valid UTF-8
(`m\\xe9lange.png` from an old archive or a network share) crashed ingest in the point
id's uuid5, and with it every later file of its lookup chunk, on every re-run. Such files
are ingested and searchable with stable ids, and every output format prints names
unambiguously: JSON escaped, table and paths quoted where a name holds a line break,
`-f paths0` exact for `xargs -0`.

Everything runs through the real console entry point in a subprocess, with names given
to it as bytes, as a shell would."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clipsearch.index.base import POINT_NAMESPACE, point_id

from support import draw_image

# Names as the file system holds them. Latin-1 bytes, a folder so named, a newline and
# a terminal escape in names that are valid UTF-8, and plain ones.
NAMES = [
    b"m\xe9lange.png",
    b"caf\xe9/inside.png",
    b"caf\xe9/\xff\xfe odd.png",
    b"two\nlines.png",
    b"\x1b[31mred.png",
    b"plain.png",
    b"sub/plain two.png",
]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]


def clipsearch(*args, env, check=True) -> subprocess.CompletedProcess:
    """The CLI as a user's shell runs it: arguments as bytes, output as bytes."""
    command = [os.fsencode(sys.executable), b"-m", b"clipsearch.cli",
               *(a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args)]
    done = subprocess.run(command, capture_output=True, env=env, timeout=240)
    if check:
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    return done


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_dir):
    """The photos with odd names, ingested once; the env every call of this module uses."""
    root = tmp_path_factory.mktemp("odd-names")
    photos = os.fsencode(root / "photos")
    for name, colour in zip(NAMES, COLOURS):
        path = os.path.join(photos, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        draw_image(Path(os.fsdecode(path)), colour=colour, shape="square" if b"caf" in name else "circle")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_INDEX=str(root / "index"), CLIPSEARCH_DEVICE="cpu",
               CLIPSEARCH_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1")
    broken = os.path.join(photos, b"bro\xefken\n.png")  # not an image, and its name not text
    with open(broken, "wb") as f:
        f.write(b"\x89PNG not really")
    report = os.fsencode(root / "skipped.jsonl")
    first = clipsearch("ingest", photos, "--workers", "0", "--report", report, env=env)
    again = clipsearch("ingest", photos, "--workers", "0", "--json", env=env)
    files = {os.path.join(photos, name) for name in NAMES}
    return {"photos": photos, "files": files, "env": env, "first": first, "again": again, "broken": broken,
            "report": report}


def test_every_file_is_ingested_once_with_an_id_stable_across_runs(library):
    first = library["first"]
    assert b"ingested 7," in first.stdout + first.stderr, first.stdout + first.stderr
    second = json.loads(library["again"].stdout)
    assert (second["embedded"], second["unchanged"], second["skipped"]) == (0, 7, 1)


def test_a_bad_file_so_named_is_reported_with_its_bytes(library):
    """The skip line on stderr stays one line; the report keeps the exact name."""
    stderr = library["first"].stderr.decode("utf-8")
    assert "bro\\xefken\\x0a.png: not an image" in stderr, stderr
    entry = json.loads(open(library["report"], "rb").read().splitlines()[0])
    assert base64.b64decode(entry["path_bytes"]) == library["broken"]


def test_the_id_of_a_name_that_is_not_text_hashes_its_bytes(tmp_path):
    """uuid5 over the bytes: the same id as uuid.uuid5 for every text name (no index
    changes its ids), a stable one for the rest."""
    text = str(tmp_path / "plain.png")
    assert point_id(text) == str(uuid.uuid5(POINT_NAMESPACE, text))
    raw = os.fsencode(tmp_path) + b"/m\xe9lange.png"
    digest = hashlib.sha1(POINT_NAMESPACE.bytes + raw).digest()
    assert point_id(os.fsdecode(raw)) == str(uuid.UUID(bytes=digest[:16], version=5))


def test_paths0_gives_every_name_exactly(library):
    done = clipsearch("search", "a photo", "-k", "50", "-f", "paths0", env=library["env"])
    assert done.stdout.endswith(b"\0")
    assert set(done.stdout[:-1].split(b"\0")) == library["files"]


def test_json_escapes_names_and_gives_their_bytes_back(library):
    done = clipsearch("search", "a photo", "-k", "50", "-f", "json", env=library["env"])
    assert done.stdout.isascii()  # every byte of every name escaped
    lines = done.stdout.decode("ascii").splitlines()
    assert len(lines) == len(NAMES)
    assert {os.fsencode(json.loads(line)["path"]) for line in lines} == library["files"]


def test_paths_and_table_output_cannot_be_split_by_a_name(library):
    paths = clipsearch("search", "a photo", "-k", "50", "-f", "paths", env=library["env"])
    lines = paths.stdout.split(b"\n")[:-1]
    assert len(lines) == len(NAMES)  # the newline in a name did not add a line
    raw = set(lines)
    # Names without control characters are their exact bytes, like find(1) prints them.
    assert {f for f in library["files"] if b"\n" not in f and b"\x1b" not in f} <= raw
    assert any(line.startswith(b"$'") and line.endswith(b"lines.png'") and b"\\n" in line for line in lines)
    assert not any(b"\x1b" in line for line in lines)  # no terminal escape reaches stdout
    assert b"-f paths0" in paths.stderr

    table = clipsearch("search", "a photo", "-k", "50", env=library["env"])
    rows = table.stdout.decode("utf-8").splitlines()  # the table is text: undecodable bytes shown as \xNN
    assert len(rows) == len(NAMES)
    assert any(row.endswith("m\\xe9lange.png'") for row in rows)
    assert not any("\x1b" in row for row in rows)


def test_search_by_an_image_whose_name_is_not_text(library):
    image = os.path.join(library["photos"], b"m\xe9lange.png")
    done = clipsearch("search", "--image", image, "-k", "50", "-f", "paths0", env=library["env"])
    found = done.stdout[:-1].split(b"\0")
    assert image not in found  # left out of its own results, so its id was found
    assert set(found) == library["files"] - {image}


def test_in_a_folder_whose_name_is_not_text(library):
    folder = os.path.join(library["photos"], b"caf\xe9")
    done = clipsearch("search", "a photo", "--in", folder, "-k", "50", "-f", "paths0", env=library["env"])
    assert set(done.stdout[:-1].split(b"\0")) == {f for f in library["files"] if f.startswith(folder + b"/")}


def test_the_gallery_shows_such_names(library, tmp_path):
    page = tmp_path / "hits.html"
    clipsearch("search", "a photo", "-k", "50", "--gallery", page, env=library["env"])
    html = page.read_text(encoding="utf-8")
    assert "m\\xe9lange.png" in html and html.count("<figure>") == len(NAMES)
    assert "file://" in html and "m%E9lange.png" in html  # the link keeps the bytes


def test_a_bidirectional_override_in_a_name_is_shown_escaped():
    """U+202E reverses what follows on screen: "rtl\u202egnp.jpg" reads "rtlgpj.png".
    Tables, paths and messages show it escaped, as bash would quote the name."""
    from clipsearch.names import printable, shown

    name = "/photos/rtl\u202egnp.jpg"
    assert shown(name) == "$'/photos/rtl\\xe2\\x80\\xaegnp.jpg'"
    assert printable(f"skipped {name}: corrupt") == "skipped /photos/rtl\\xe2\\x80\\xaegnp.jpg: corrupt"
    assert shown("/photos/a\u200bb.jpg") == "$'/photos/a\\xe2\\x80\\x8bb.jpg'"  # zero-width space, as the page
    hebrew = "/photos/\u05e9\u05dc\u05d5\u05dd.jpg"
    assert shown(hebrew) == hebrew  # right-to-left text itself is no trick


def test_an_index_in_a_folder_whose_name_is_not_text(library, tmp_path):
    """Not only photos: the index folder may sit under such a name too. The record of
    known bad files is keyed by the index's path, hashed as text: a traceback."""
    index = os.path.join(os.fsencode(tmp_path), b"caf\xe9", b"ind\xffex")
    env = {**library["env"], "CLIPSEARCH_INDEX": os.fsdecode(index)}
    clipsearch("ingest", library["photos"], "--workers", "0", env=env)
    known_bad = os.path.join(os.fsencode(env["CLIPSEARCH_CACHE_DIR"]), b"bad-files")
    assert len(os.listdir(known_bad)) == 2  # this index's record beside the library fixture's
    done = clipsearch("search", "a photo", "-k", "50", "-f", "paths0", env=env)
    assert set(done.stdout.split(b"\0")[:-1]) == library["files"]


def test_a_model_in_a_folder_whose_name_is_not_text_is_refused_in_one_line(library, tiny_model_dir, tmp_path):
    """The exported text tower's cache key hashed the model's path as text (a traceback);
    the model loader itself cannot open such a path, and says so."""
    import shutil

    model = os.path.join(os.fsencode(tmp_path), b"mod\xffel")
    shutil.copytree(tiny_model_dir, os.fsdecode(model))
    env = {**library["env"], "CLIPSEARCH_MODEL": os.fsdecode(model)}
    done = clipsearch("search", "a photo", env=env, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        b"Error: cannot load model $'" + model.replace(b"\xff", b"\\xff") + b"': its path is not valid UTF-8, which "
        b"the model loader cannot open; rename the folder, or link to it from a name that is")
