"""The public Python API: `from clipsearch import Settings, search, ingest, open_index`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: the lint extra installs tomli
    import tomli as tomllib

import clipsearch
from clipsearch import ClipsearchError, IngestOptions, Settings, ingest, open_index, search

from support import ROOT, draw_collection, draw_image


def test_every_public_name_resolves():
    for name in clipsearch.__all__:
        assert getattr(clipsearch, name) is not None, name
    assert set(clipsearch.__all__) <= set(dir(clipsearch))


def test_ingest_then_search_through_the_api(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 6)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    summary = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (summary.found, summary.embedded) == (6, 6)
    again = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (again.embedded, again.unchanged) == (0, 6)
    hits = search("a red circle", k=3, settings=settings)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(h.path.startswith(str(photos.resolve())) for h in hits)
    example = hits[0].path
    by_image = search(image=example, k=2, settings=settings)
    assert example not in [h.path for h in by_image]  # an example image is left out of its own results
    with open_index(settings) as index:
        assert index.count() == 6


def test_the_stages_stay_callable_after_their_modules_are_imported():
    """Importing clipsearch.search.engine binds clipsearch.search to the package; the
    package is what is callable, so the API works whatever was imported first."""
    probe = ("import clipsearch.search.engine, clipsearch.ingest.pipeline, clipsearch.cli\n"
             "import clipsearch\n"
             "from clipsearch import search, ingest\n"
             "print(callable(clipsearch.search), callable(search), callable(ingest),"
             " search.search is clipsearch.search.engine.search)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True"] * 4


def test_importing_clipsearch_loads_no_stage_and_nothing_heavy():
    probe = ("import sys, clipsearch, clipsearch.cli\n"
             "heavy = [m for m in ('numpy', 'torch', 'PIL', 'qdrant_client', 'pandas', 'tqdm',"
             " 'clipsearch.ingest.pipeline', 'clipsearch.search.engine') if m in sys.modules]\nprint(heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_readme_examples_use_only_the_public_api():
    import ast
    import re
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "clipsearch":
                for alias in node.names:
                    assert alias.name in clipsearch.__all__, alias.name


# -- the README's example type-checks --------------------------------------------------


def readme_api_examples() -> list[str]:
    """The python blocks of the README's Python API section."""
    section = (ROOT / "README.md").read_text().split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def installed_layout(site: Path) -> Path:
    """The package's modules as a wheel installs them (the stages inside clipsearch/,
    pyproject's package-dir), which is what a type checker sees of an installed clipsearch."""
    skip = shutil.ignore_patterns("__pycache__", "static")
    shutil.copytree(ROOT / "clipsearch", site / "clipsearch", ignore=skip)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dirs.items():
        shutil.copytree(ROOT / folder, site / package.replace(".", "/"), ignore=skip)
    return site


def test_the_readme_python_api_examples_type_check(tmp_path):
    """Checked by mypy, as a user's app would be, against the package as installed.
    Only the examples' own lines are reported (the stages are not typed yet), and no
    other site-packages are read: clipsearch must be found, or the import is an error."""
    examples = readme_api_examples()
    assert len(examples) >= 2  # the one-call functions, and the long-lived Searcher
    site = installed_layout(tmp_path / "site")
    files = []
    for i, example in enumerate(examples):
        files.append(tmp_path / f"example_{i}.py")
        files[-1].write_text(example)
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file=", "--no-site-packages",
                           "--follow-imports=silent", "--cache-dir", str(tmp_path / "mypy-cache"), *map(str, files)],
                          cwd=tmp_path, env={**os.environ, "MYPYPATH": str(site)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


# -- arguments as a caller gives them -----------------------------------------------------


@pytest.mark.parametrize("name", ["index", "collection", "model"])
@pytest.mark.parametrize("empty", ["", "  "])
def test_settings_resolve_refuses_an_empty_place(name, empty, tmp_path, monkeypatch):
    """An unset variable of the caller's, not the current folder or the default."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClipsearchError, match=f"^Settings: {name}=.* is empty") as info:
        Settings.resolve(**{name: empty})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["index", "collection", "model"])
def test_settings_built_by_hand_refuses_an_empty_place(name, tmp_path, monkeypatch):
    """As resolve() does: Settings(index="") was the current folder, and collection=""
    the index folder itself (its damage message advised deleting the folder whole)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClipsearchError, match=f"^Settings: {name}='' is empty"):
        Settings(**{name: ""})
    assert list(tmp_path.iterdir()) == []


def test_settings_resolve_takes_paths(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    settings = Settings.resolve(index=tmp_path / "index", model=tiny_model_dir, device="cpu")
    assert (settings.index, settings.model) == (str(tmp_path / "index"), str(tiny_model_dir))
    assert settings.backend == "edge" and settings.model_named
    summary = ingest(photos, settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert summary.embedded == 3


def test_one_folder_and_one_term_are_not_read_letter_by_letter(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 6)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    assert ingest(str(photos), settings=settings, options=IngestOptions(workers=0, quiet=True)).embedded == 6
    assert ingest(photos, settings=settings, options=IngestOptions(workers=0, quiet=True)).unchanged == 6
    example = draw_image(tmp_path / "example.png", "blue", "square")
    as_one = search("a red circle", k=6, settings=settings, add="a blue square", subtract=str(example))
    as_list = search("a red circle", k=6, settings=settings, add=["a blue square"], subtract=[str(example)])
    assert [h.path for h in as_one] == [h.path for h in as_list]
    # The first search exports the text tower, which the second one uses: float noise.
    assert [h.score for h in as_one] == pytest.approx([h.score for h in as_list], abs=1e-5)
