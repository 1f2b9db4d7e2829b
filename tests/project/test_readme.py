"""The README's generated sections (configuration table, CLI reference) match the
code, and its hand-written parts name what exists."""

from pathlib import Path

from support import ROOT, load_script


def test_cli_reference_in_readme_is_current():
    updater = load_script("update_readme")
    text = (ROOT / "README.md").read_text()
    assert updater.render(text) == text, "README is stale: run python scripts/update_readme.py"


def test_readme_quick_start_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start and "make test" in quick_start
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_development_tree_names_every_folder_of_the_house():
    """The README's layout tree lists each top-level folder and each kernel package,
    and every folder it lists exists."""
    text = (ROOT / "README.md").read_text()
    tree = text.split("## Development", 1)[1].split("```", 2)[1]
    listed = {line.split()[0].rstrip("/") for line in tree.splitlines() if line.strip()}
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
           and (ROOT / ".git").exists() and _tracked(p)}
    kernel = {p.name for p in (ROOT / "clipsearch").iterdir() if (p / "__init__.py").exists()}
    assert top - listed == set(), f"add to the README's Development tree: {top - listed}"
    assert kernel - listed == set(), f"add to the README's Development tree: {kernel - listed}"
    for name in listed:
        assert (ROOT / name).exists() or (ROOT / "clipsearch" / name).exists(), name


def _tracked(folder: Path) -> bool:
    import subprocess

    out = subprocess.run(["git", "ls-files", str(folder)], cwd=ROOT, capture_output=True, text=True)
    return bool(out.stdout.strip())
