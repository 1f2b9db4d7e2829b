"""The public Python API: `from clipsearch import Settings, search, ingest, open_index`."""

from __future__ import annotations

import subprocess
import sys

import clipsearch
from clipsearch import IngestOptions, Settings, ingest, open_index, search

from support import ROOT, draw_collection


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
