"""Check the import contracts (pyproject.toml, [tool.importlinter]) on the package as
it is installed.

import-linter reads a package from its folder, and in this repository the stages
live beside the kernel (ingest/, search/, finetune/) and are mapped into the
`clipsearch` namespace only when installed (setuptools package-dir). So this lays the
installed tree out in a temporary folder, exactly as the wheel does, and runs
`lint-imports` there. Exit status: lint-imports'.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="clipsearch-imports-") as tmp:
        installed_layout(Path(tmp))
        shutil.copy2(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        lint_imports = Path(sys.executable).parent / "lint-imports"
        command = [str(lint_imports)] if lint_imports.exists() else ["lint-imports"]
        # cwd first on the path: the copy is what gets imported, not the editable install.
        return subprocess.run(command + ["--no-cache"], cwd=tmp,
                              env={**__import__("os").environ, "PYTHONPATH": tmp}).returncode


if __name__ == "__main__":
    sys.exit(main())
