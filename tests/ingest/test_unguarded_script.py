"""A script that calls ingest without `if __name__ == "__main__":` (the README's
example saved as it was): the decoding pool's spawn runs the script again in every
worker, where it fails, and multiprocessing.Pool replaced those workers forever. It
must end at once with one line that says what to do, and leave the index usable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from clipsearch import IngestOptions, Settings, open_index
from clipsearch.ingest import ingest

from support import draw_collection

SCRIPT = textwrap.dedent("""
    from clipsearch import IngestOptions, Settings
    from clipsearch.ingest import ingest

    settings = Settings.resolve(index={index!r}, model={model!r}, device="cpu")
    print(ingest({photos!r}, settings=settings, options=IngestOptions(workers=2, batch_size=4)).line())
""")


def run_script(path, timeout: float) -> subprocess.CompletedProcess:
    """Run `path` as a user would; on a timeout its whole process group is killed (the
    workers too), so that a hang fails the test instead of outliving it."""
    process = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the unguarded script hung; its stderr ends:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_an_unguarded_script_ends_with_what_to_do(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos / "earlier", 3)
    # Enough for the decoding pool (2 batches of 4 and more); its first 3 are copies of
    # the earlier ones, which the run records before it needs the decoders.
    draw_collection(photos / "new", 12)
    settings = Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir), device="cpu")
    ingest(photos / "earlier", settings=settings, options=IngestOptions(workers=0, quiet=True))
    script = tmp_path / "app.py"
    script.write_text(SCRIPT.format(index=settings.index, model=settings.model, photos=str(photos)))

    done = run_script(script, timeout=180)

    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("clipsearch.errors.ClipsearchError: the decoding processes ended as they started")
    assert 'if __name__ == "__main__":' in last and "spawn" in last
    with open_index(settings) as opened:  # the lock was given back, and what was committed is kept
        assert opened.count() == 3 + 3


def test_the_same_script_guarded_ingests(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 12)
    script = tmp_path / "app.py"
    body = SCRIPT.format(index=str(tmp_path / "index"), model=str(tiny_model_dir), photos=str(photos))
    script.write_text('if __name__ == "__main__":\n' + textwrap.indent(body, "    "))

    done = run_script(script, timeout=300)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ingested 12,"), done.stdout


GUARDED = textwrap.dedent("""
    from clipsearch import IngestOptions, Settings
    from clipsearch.ingest import ingest


    def main():
        settings = Settings.resolve(index={index!r}, model={model!r}, device="cpu")
        print(ingest({photos!r}, settings=settings, options=IngestOptions(workers=2, quiet=True)).line())


    if __name__ == "__main__":
        main()
""")


def test_an_unguarded_script_is_warned_while_its_folder_is_still_small(tmp_path, tiny_model_dir):
    """Below two batches ingest decodes in its own process and the script works: the
    mistake is said now, with its line, not on the day the folder grows."""
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    unguarded, guarded = tmp_path / "app.py", tmp_path / "guarded.py"
    fields = {"index": str(tmp_path / "index"), "model": str(tiny_model_dir), "photos": str(photos)}
    unguarded.write_text(SCRIPT.format(**fields))
    guarded.write_text(GUARDED.format(**{**fields, "index": str(tmp_path / "index2")}))

    done = run_script(unguarded, timeout=180)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "warning: ingest() is called at the top level" in line]
    assert len(warning) == 1 and f"{unguarded}, line 6:" in warning[0], done.stderr
    assert 'if __name__ == "__main__":' in warning[0]

    done = run_script(guarded, timeout=180)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
