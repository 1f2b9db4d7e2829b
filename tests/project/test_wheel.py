"""The distribution installs one import name, `clipsearch`: the stages' folders at the
top of the repository (ingest/, search/, finetune/) become clipsearch.ingest, ... ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the lint extra installs tomli
    import tomli as tomllib

import pytest

from support import ROOT

# The stages' folders at the top of the repository, as pyproject maps them (package-dir).
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
STAGE_FOLDERS = tuple(PACKAGE_DIRS.values())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the distribution is made of: a build/ folder left in
    the checkout could carry modules that no longer exist into the wheel."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("clipsearch", *STAGE_FOLDERS):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    return next(out.glob("clipsearch-*.whl"))


def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(archive.read(n) for n in names if n.endswith(".dist-info/top_level.txt"))
    assert top_level.decode().split() == ["clipsearch"]
    assert {name.split("/")[0] for name in names} == {"clipsearch", wheel.name.split("-py3")[0] + ".dist-info"}
    for stage in STAGE_FOLDERS:
        assert f"clipsearch/{stage}/__init__.py" in names and f"clipsearch/{stage}/commands.py" in names
    assert "clipsearch/py.typed" in names
    # serve's page ships in the package (no build step, no CDN).
    for asset in ("index.html", "app.js", "style.css", "login.html"):
        assert f"clipsearch/serve/static/{asset}" in names


def test_the_installed_wheel_runs_from_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The test environment's packages (torch, qdrant...), but not its editable clipsearch:
    # a path in a .pth file is added to sys.path without running the .pth files there.
    (site / "test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "search.py").write_text("raise SystemExit('a user file named search.py was imported')\n")

    help_text = subprocess.run([str(venv / "bin" / "clipsearch"), "--help"], cwd=outside, env=env,
                               capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr
    for command in ("ingest", "search", "status", "migrate", "finetune", "eval"):
        assert command in help_text.stdout

    probe = (
        "import importlib, json, clipsearch\n"
        "mods = [importlib.import_module(m) for m in ('clipsearch.ingest.pipeline', 'clipsearch.search.engine',"
        " 'clipsearch.finetune.validation', 'clipsearch.encoders', 'clipsearch.index')]\n"
        "from clipsearch import Settings, search, ingest, open_index\n"
        "try:\n    import ingest as top\n    stray = top.__file__\nexcept ImportError:\n    stray = None\n"
        "print(json.dumps({'files': [m.__file__ for m in mods], 'stray': stray,"
        " 'callable': [callable(search), callable(ingest), callable(open_index)]}))\n"
    )
    done = subprocess.run([str(python), "-c", probe], cwd=outside, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert all(f.startswith(str(site)) for f in facts["files"]), facts["files"]
    assert facts["stray"] is None  # no top-level `ingest` is installed
    assert facts["callable"] == [True, True, True]
