"""Check the import contracts (pyproject.toml, [tool.importlinter]) on the package as
it is installed.

import-linter reads a package from its folder, and in this repository the stages
live beside the kernel (ingest/, search/, finetune/) and are mapped into the
`clipsearch` namespace only when installed (setuptools package-dir). So this lays the
installed tree out in a temporary folder, exactly as the wheel does, and runs
`lint-imports` there. Exit status: lint-imports'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


ROOT = Path(__file__).resolve().parent.parent


def installed_layout(target: Path) -> None:
    """Copy each package of pyproject's [tool.setuptools] to where it installs."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config.get("package-dir", {})
    for package in config["packages"]:
        source = ROOT / mapping.get(package, package.replace(".", "/"))
        dest = target / package.replace(".", "/")
        dest.mkdir(parents=True, exist_ok=True)
        for file in source.glob("*.py"):
            shutil.copy2(file, dest / file.name)


def lint_imports(tree: Path, **run_options) -> subprocess.CompletedProcess:
    """Run lint-imports on a laid-out tree (with pyproject.toml copied beside it)."""
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    lint = Path(sys.executable).parent / "lint-imports"
    command = [str(lint) if lint.exists() else "lint-imports", "--no-cache"]
    # The copy is what gets imported, not the editable install.
    return subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, **run_options)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="clipsearch-imports-") as tmp:
        installed_layout(Path(tmp))
        return lint_imports(Path(tmp)).returncode


if __name__ == "__main__":
    sys.exit(main())
