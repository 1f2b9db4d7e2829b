"""The import contracts (pyproject.toml, checked by `make lint`) hold, and they fail
on the imports they forbid: checked on the installed layout with the real tool."""

from __future__ import annotations

import importlib.util

import pytest

from support import load_script


@pytest.fixture(scope="module")
def script():
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[lint]')")
    return load_script("lint_imports")


def test_the_contracts_hold(script, tmp_path):
    script.installed_layout(tmp_path)
    done = script.lint_imports(tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("clipsearch/ingest/walk.py", "import clipsearch.search.engine", "No stage imports another stage"),
    ("clipsearch/encoders/vectors.py", "from clipsearch.index import open_index", "does not use the index"),
    ("clipsearch/config.py", "import clipsearch.finetune.validation", "The kernel imports no stage"),
    ("clipsearch/images.py", "from clipsearch.testing import random_clip", "never imports the test tools"),
    ("clipsearch/encoders/onnx_text.py", "from . import query", "No import cycles"),
])
def test_a_forbidden_import_breaks_its_contract(script, tmp_path, module, line, contract):
    script.installed_layout(tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = script.lint_imports(tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[1]
    assert contract in broken.replace("\n", " "), done.stdout
