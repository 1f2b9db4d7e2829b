"""`make demo` end to end, with the tiny test model standing in for the hub's CLIP."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAMP = Path(sys.prefix) / "bin" / ".installed"


def run_make(tmp_path, env_extra, timeout=300):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    env.update(env_extra)
    # -o: treat the install stamp as up to date, so the test uses this very venv
    # instead of reinstalling; VENV points make at it.
    cmd = ["make", "-C", str(ROOT), "-o", f"{sys.prefix}/bin/.installed", f"VENV={sys.prefix}",
           f"DEMO_PHOTOS={tmp_path / 'photos'}", f"DEMO_INDEX={tmp_path / 'index'}", "demo"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_make_demo_ingests_photos_and_answers_a_query(tmp_path, tiny_model_dir):
    result = run_make(tmp_path, {"CLIPSEARCH_MODEL": str(tiny_model_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    photos = sorted((tmp_path / "photos").iterdir())
    assert len(photos) >= 10
    assert f"ingested {len(photos)}, unchanged 0, skipped 0" in result.stdout
    hits = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit() and "  " in line]
    hits = [h for h in hits if len(h) == 3 and Path(h[2]).exists()]
    assert [h[0] for h in hits] == ["1", "2", "3"]
    scores = [float(h[1]) for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(h[2]).parent == (tmp_path / "photos").resolve() for h in hits)


def test_make_demo_without_network_or_local_model_says_how_to_fix_it(tmp_path):
    result = run_make(tmp_path, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "CLIPSEARCH_MODEL" in errors[0] and "local" in errors[0]
    assert "Traceback" not in result.stderr
