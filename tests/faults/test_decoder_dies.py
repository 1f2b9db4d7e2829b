"""A decoding process that dies (the OOM killer, kill -9) while ingest runs.

multiprocessing.Pool replaced the dead worker and never answered the task it held:
ingest waited for ever at 0% CPU, printing nothing. Now the tasks of a dead worker are
named and skipped (a reason that does not last: the next run tries them again), the
decoders start again, and the run goes on to its end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from PIL import Image

from clipsearch.pools import WorkerDied, in_order

from faults.conftest import CLIPSEARCH, child_env, read_index


def dies_on(value: str) -> str:
    """A task that kills its own worker, for real, with SIGKILL, when given "die"."""
    if value == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return value.upper()


def test_the_task_a_killed_worker_held_is_named_and_the_rest_are_answered():
    said: list[str] = []
    tasks = [(i, dies_on, "die" if i in (3, 11) else f"t{i}") for i in range(16)]
    started = time.monotonic()
    results = list(in_order(tasks, 2, 4, say=said.append))
    assert time.monotonic() - started < 60
    died = WorkerDied("killed by SIGKILL: out of memory?")
    assert results == [(i, died if i in (3, 11) else f"T{i}") for i in range(16)]
    assert said == ["a decoding process died (killed by SIGKILL: out of memory?): the file it was reading skipped, "
                    "the decoders started again"] * 2


def _workers(parent: int) -> list[int]:
    """The decoding processes below `parent` (spawned, not the resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent and b"spawn_main" in command:
            found.append(int(entry))
    return found


def _resident_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def test_ingest_goes_on_when_a_decoder_is_killed_holding_a_file(tmp_path, tiny_model_dir):
    """A real ingest with 2 decoders; one is sent kill -9 while it decodes a large
    image (its memory shows it holds one). The run ends by itself, exit 0, names that
    file as skipped because its decoder died, embeds every other; the next run embeds
    the one skipped."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):  # 81 megapixels of grey each, a few hundred KB on disk: slow to decode
        big = Image.new("L", (9000, 9000), 100 + i)
        big.putpixel((i, i), 0)
        big.save(photos / f"big_{i}.png", compress_level=1)
    for i in range(20):
        Image.new("RGB", (60, 40), (i * 11 % 255, i * 7 % 255, 90)).save(photos / f"small_{i:03d}.png")
    index = tmp_path / "index"
    env = child_env(tmp_path / "cache", CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_DEVICE="cpu")
    args = [CLIPSEARCH, "ingest", str(photos), "--index", str(index), "--workers", "2", "--batch-size", "4",
            "--json"]
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None:
            assert run.poll() is None and time.monotonic() < deadline, "no decoder took a large image"
            victim = next((pid for pid in _workers(run.pid) if _resident_mb(pid) > 110), None)
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        out, err = run.communicate(timeout=120)  # a hang fails here
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    summary = json.loads(out)
    assert (summary["found"], summary["embedded"], summary["skipped"]) == (26, 25, 1), summary
    assert "a decoding process died (killed by SIGKILL: out of memory?): the file it was reading skipped" in err
    assert "the decoding process died while reading it (killed by SIGKILL: out of memory?)" in err
    assert "Traceback" not in err, err
    assert read_index(index).count == 25

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["embedded"] == 1
    assert read_index(index).count == 26


def test_a_finetune_image_check_goes_on_when_a_checker_is_killed(tmp_path):
    """finetune checks its pairs' images in a pool too (64 images and more): a checker
    killed holding a large image costs that image's row, named, not the whole run."""
    import threading

    from finetune.images import POOL_FROM, check_images

    for i in range(4):
        big = Image.new("L", (9000, 9000), 100 + i)
        big.putpixel((i, i), 0)
        big.save(tmp_path / f"big_{i}.png", compress_level=1)
    for i in range(POOL_FROM):
        Image.new("RGB", (60, 40), (i * 11 % 255, i * 7 % 255, 90)).save(tmp_path / f"small_{i:03d}.png")
    paths = sorted(str(p) for p in tmp_path.iterdir())
    verdicts: dict = {}
    checking = threading.Thread(target=lambda: verdicts.update(check_images(paths, workers=2)), daemon=True)
    checking.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:
        assert checking.is_alive() and time.monotonic() < deadline, "no checker took a large image"
        victim = next((pid for pid in _workers(os.getpid()) if _resident_mb(pid) > 110), None)
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    checking.join(timeout=120)
    assert not checking.is_alive(), "the check hung on its dead worker"
    died = [path for path, reason in verdicts.items() if reason and "process died" in reason]
    assert len(died) == 1 and "big_" in died[0], verdicts
    assert sum(reason is None for reason in verdicts.values()) == len(paths) - 1
