"""A process without stderr (pythonw, a GUI launcher, some service managers start
Python with sys.stderr None): ingest's progress and its one-time lines have nowhere to
go, and are left out instead of crashing the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support import draw_collection

SCRIPT = textwrap.dedent("""
    import sys
    sys.stderr = None
    from clipsearch import IngestOptions, Settings
    from clipsearch.ingest import ingest

    settings = Settings.resolve(index={index!r}, model={model!r}, device="cpu")
    print(ingest({photos!r}, settings=settings, options=IngestOptions(workers=0)).line())
""")


def test_ingest_without_stderr(tmp_path, tiny_model_dir):
    draw_collection(tmp_path / "photos", 4)
    script = SCRIPT.format(index=str(tmp_path / "index"), model=str(tiny_model_dir), photos=str(tmp_path / "photos"))
    # A first ingest with this model: its image tower is exported, which it says in a line.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("ingested 4,"), done.stdout
