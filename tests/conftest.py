"""Shared test fixtures: a tiny random CLIP in both folder layouts, drawn images, and
index settings for every backend: edge, :memory:, `rest` (the Qdrant REST API served
by tests/doubles/qdrant_rest_double.py, so the server client runs in every CI run) and a real
server when QDRANT_URL is set.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clipsearch.config import SETTINGS, Settings
from clipsearch.testing.random_clip import build_random_clip

from support import BACKENDS, draw_collection, settings_for

# Every setting's variable, which could point tests at the user's real index, model or
# cache; but the server leg's protocol (CLIPSEARCH_GRPC=1 make test-server).
_ISOLATED_ENV = tuple(variable for setting in SETTINGS for variable in setting.env
                      if variable.startswith("CLIPSEARCH_") and setting.name not in ("grpc", "grpc_port"))


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test reads the developer's own index, model or settings. QDRANT_URL and
    QDRANT_API_KEY stay: they select the server leg of the contract suite."""
    for name in _ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    # Each test starts with no exported text tower or cached query vectors, and none
    # land in the developer's own ~/.cache/clipsearch.
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "clipsearch-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def interruptible():
    """Ctrl-C raises KeyboardInterrupt in this process, and the commands the tests start
    get SIGINT's default action, as in a terminal. A suite started as a background job
    of a non-interactive shell inherits an ignored SIGINT, and Python then installs no
    handler: every test that stops a command with Ctrl-C failed."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what Python installs at start
    yield


@pytest.fixture
def default_sighup():
    """SIGHUP's default action in this process while the test runs, so the commands it
    starts inherit it, as a terminal's job does: a run under `nohup` (or a CI runner
    that ignores SIGHUP) would hand them an ignored SIGHUP, which clipsearch leaves
    ignored on purpose."""
    import signal

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A plain transformers CLIP folder (config.json + weights + processor files)."""
    return build_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_st_model_dir(tmp_path_factory) -> Path:
    """The same weights in the hub's sentence-transformers layout (modules.json + 0_CLIPModel/)."""
    return build_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip-st", size="tiny", seed=0,
                             layout="sentence-transformers")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """A different random CLIP: its image vectors do not match the tiny one's."""
    return build_random_clip(tmp_path_factory.mktemp("models") / "other-clip", size="tiny", seed=1)


@pytest.fixture(scope="session")
def encoder(tiny_model_dir):
    from clipsearch.encoders import Encoder

    return Encoder(str(tiny_model_dir), device="cpu")


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return draw_collection(tmp_path / "photos", 12)


@pytest.fixture(params=BACKENDS)
def backend_settings(request, tmp_path, tiny_model_dir) -> Settings:
    return settings_for(request.param, tmp_path, tiny_model_dir)


@pytest.fixture
def tmpfs():
    """mount(path) / unmount(path): a tmpfs over a folder (made if missing), the tests'
    stand-in for a share or a drive; skipped where mounting is not allowed (it needs
    root). Whatever is still mounted at the end is unmounted, the last mount first (a
    test may mount the same folder twice, or unmount it itself)."""
    mounted: list[Path] = []

    class Mounts:
        @staticmethod
        def mount(path: Path) -> Path:
            path.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
            mounted.append(path)
            return path

        @staticmethod
        def unmount(path: Path) -> None:
            subprocess.run(["umount", str(path)], check=True)
            mounted.remove(path)

    try:
        yield Mounts
    finally:
        for path in reversed(mounted):
            if os.path.ismount(path) and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)
