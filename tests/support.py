"""Helpers the tests share: drawn images, and settings that point at each index
backend (edge, :memory:, the Qdrant REST and gRPC doubles in tests/doubles/, a real
server when QDRANT_URL is set). Fixtures are in conftest.py."""

from __future__ import annotations

import importlib.util
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from PIL.TiffImagePlugin import IFDRational

from clipsearch.config import Settings

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40),
    "purple": (140, 40, 160), "orange": (250, 140, 20), "black": (10, 10, 10), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")

def draw_image(path: Path, colour: str = "red", shape: str = "circle", size=(96, 72), fmt=None,
               mark: int = 0) -> Path:
    """A real image file: a coloured shape on a contrasting background. A non-zero
    `mark` tints the top-left pixel with it, so that otherwise equal pictures differ in
    their bytes (ingest recognises equal bytes as a copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (255, 255, 255) if colour != "white" else (0, 0, 0))
    d = ImageDraw.Draw(img)
    w, h = size
    box = (w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(w * 0.5, h * 0.15), (w * 0.85, h * 0.85), (w * 0.15, h * 0.85)], fill=COLOURS[colour])
    if mark:
        img.putpixel((0, 0), (mark % 251, mark // 251 % 251, 128))
    img.save(path, format=fmt)
    return path


def draw_collection(folder: Path, count: int = 12, ext: str = ".png") -> list[Path]:
    """`count` distinct images, every colour x shape in turn. Pictures repeat every 120
    (24 colour-shapes x 15 sizes); each repeat is marked, so no two files are byte-equal."""
    paths = []
    combos = [(c, s) for s in SHAPES for c in COLOURS]
    for i in range(count):
        colour, shape = combos[i % len(combos)]
        paths.append(draw_image(folder / f"{i:03d}-{colour}-{shape}{ext}", colour, shape,
                                size=(80 + i % 5 * 8, 64 + i % 3 * 8), mark=i // 120))
    return paths


# Where the EXIF photos were taken (exif_photo).
PARIS = (48.8566, 2.3522)
LYON = (45.7640, 4.8357)


def dms(value: float) -> tuple:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = (value - degrees - minutes / 60) * 3600
    return (IFDRational(degrees), IFDRational(minutes), IFDRational(round(seconds * 1000), 1000))


def exif_photo(path: Path, colour: str, taken: str | None = None, make: str | None = None, model: str | None = None,
          gps: tuple[float, float] | None = None, raw_gps: dict | None = None, original: bool = True) -> Path:
    """A JPEG with the EXIF a camera writes: capture time (DateTimeOriginal, or DateTime
    when not `original`), make, model, GPS position; `raw_gps` sets GPS tags as given."""
    exif = Image.Exif()
    if taken is not None:
        if original:
            exif.get_ifd(0x8769)[0x9003] = taken
        else:
            exif[0x0132] = taken
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if gps is not None:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2] = ("N" if gps[0] >= 0 else "S"), dms(gps[0])
        ifd[3], ifd[4] = ("E" if gps[1] >= 0 else "W"), dms(gps[1])
    if raw_gps is not None:
        exif.get_ifd(0x8825).update(raw_gps)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, "JPEG", exif=exif.tobytes())
    return path


BACKENDS = ["edge", "memory", "rest", "grpc", pytest.param("server", marks=pytest.mark.server)]

# The key the REST double asks for: its legs run with an API key, as a shared server does.
REST_DOUBLE_KEY = "rest-double-key-5f1c"
_rest_double = None


def rest_double():
    """The one REST double of this test session, started on first use."""
    global _rest_double
    if _rest_double is None:
        from doubles.qdrant_grpc_double import serve_grpc
        from doubles.qdrant_rest_double import QdrantRestDouble

        _rest_double = QdrantRestDouble(api_key=REST_DOUBLE_KEY).start()
        _rest_double.grpc_server, _rest_double.grpc_port = serve_grpc(_rest_double)
    return _rest_double


def server_under_test(kind: str) -> dict[str, str]:
    """The settings, as environment variables, that point a client at the double
    (`rest`, or `grpc`: the same double over gRPC) or at the real server at QDRANT_URL
    (`server`; skips without it)."""
    if kind in ("rest", "grpc"):
        double = rest_double()
        env = {"QDRANT_URL": double.url, "QDRANT_API_KEY": REST_DOUBLE_KEY, "CLIPSEARCH_GRPC": "0"}
        if kind == "grpc":
            env.update(CLIPSEARCH_GRPC="1", CLIPSEARCH_GRPC_PORT=str(double.grpc_port))
        return env
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("QDRANT_URL is not set: no Qdrant server to test against")
    return {name: os.environ[name] for name in ("QDRANT_URL", "QDRANT_API_KEY", "CLIPSEARCH_GRPC",
                                                "CLIPSEARCH_GRPC_PORT") if os.environ.get(name)}


def export_server(kind: str, monkeypatch) -> dict[str, str]:
    """server_under_test(kind), exported for the commands a test runs."""
    env = server_under_test(kind)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def settings_for(backend: str, tmp_path: Path, model: Path | str) -> Settings:
    """Settings for a fresh collection on `backend`; skips the server leg without QDRANT_URL."""
    collection = f"test_{uuid.uuid4().hex[:12]}"
    if backend == "edge":
        index = str(tmp_path / "index")
    elif backend == "memory":
        index = ":memory:"
    else:
        env = server_under_test(backend)
        return Settings.resolve(env, model=str(model), collection=collection, device="cpu")
    return Settings.resolve(model=str(model), index=index, collection=collection, device="cpu")




ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """A script of scripts/ (not a package) as a module: scripts/NAME.py."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fast_encoder_for(model_dir: Path, encoder):
    """Export `encoder`'s text tower, then load it the way a query does."""
    from clipsearch.encoders import FastTextEncoder, QueryEncoders, location
    from clipsearch.encoders.text_export import export_text_tower

    folder, _ = location.model_folder(str(model_dir))
    export_text_tower(encoder, location.folder_key(folder), folder, str(model_dir))
    encoders = QueryEncoders(Settings.resolve(model=str(model_dir), index=":memory:"))
    fast = encoders.get()
    assert isinstance(fast, FastTextEncoder), encoders.path
    return fast


# -- clipsearch serve ------------------------------------------------------------------


@dataclass
class Served:
    """An ingested index behind the real serve application (in-process)."""

    root: Path
    photos: Path
    settings: Settings
    service: object
    app: object
    token: str | None


@contextmanager
def serving_app(root: Path, model: Path, token: str | None = None):
    """build_served for a module-scoped fixture: its own cache folder (the function-scoped
    isolated_env does not reach module fixtures), the index closed at the end."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        env.setenv("HF_HUB_OFFLINE", "1")
        served = build_served(root, model, token=token)
    try:
        yield served
    finally:
        served.service.index.close()


def build_served(root: Path, model: Path, token: str | None = None, upload_bytes: int = 2_000_000) -> Served:
    from clipsearch import IngestOptions, ingest
    from clipsearch.index import open_index
    from clipsearch.serve.app import create_app
    from clipsearch.serve.files import Thumbnails
    from clipsearch.serve.security import Guard
    from clipsearch.serve.service import SearchService, load_encoder
    from clipsearch.serve.uploads import UploadDecoder

    photos = root / "photos"
    draw_collection(photos / "garden", 16)
    draw_collection(photos / "beach", 8, ext=".jpg")
    settings = Settings.resolve(model=str(model), index=str(root / "index"), device="cpu")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    index = open_index(settings)
    service = SearchService(settings, index, load_encoder(settings, lambda _: None))
    app = create_app(service, Guard(token), Thumbnails(root / "thumbnails"), UploadDecoder(4.0), upload_bytes,
                     version="test")
    return Served(root, photos, settings, service, app, token)


class ServeProcess:
    """A real `clipsearch serve` in a child process, on a free loopback port, for the
    tests that need the whole program: its stderr goes to a log file, read on failure."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, timeout: float = 120.0):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "w")
        # Not the developer's own settings (module fixtures start before isolated_env runs).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "QDRANT_"))}
        full_env = {**inherited, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", str(self.port),
                                         *args], stdout=self._out, stderr=subprocess.STDOUT, env=full_env)
        try:
            self.wait_until(lambda: self.get("/api/health")[0] == 200, timeout, "serve to start")
        except BaseException:
            self.stop(kill=True)
            raise

    def output(self) -> str:
        return self.log.read_text()

    def get(self, path: str, headers: dict | None = None) -> tuple[int, object]:
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        except OSError:
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def wait_until(self, condition, timeout: float, what: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited ({self.process.returncode}) waiting for {what}:\n{self.output()}")
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}:\n{self.output()[-3000:]}")

    def ingest_state(self) -> dict:
        status, state = self.get("/api/ingest")
        return state if status == 200 and isinstance(state, dict) else {}

    def wait_idle(self, timeout: float = 180.0) -> dict:
        """Until the watched ingest has nothing queued or in work."""
        self.wait_until(lambda: self.ingest_state().get("state") == "watching"
                        and not self.ingest_state().get("pending"), timeout, "the watched ingest to settle")
        return self.ingest_state()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, kill: bool = False) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except Exception:
                self.process.kill()
                self.process.wait()
        self._out.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def groups_of(out: bytes, end: bytes) -> list[list[bytes]]:
    """The groups of a bare-paths output (search --queries -f paths/paths0): names
    ending in `end`, each group ended by an empty name (an empty line, an empty name)."""
    groups: list[list[bytes]] = [[]]
    for name in out.split(end)[:-1]:
        if name:
            groups[-1].append(name)
        else:
            groups.append([])
    assert groups.pop() == [], "the last group is ended too"
    return groups


def run_ingest(roots, encoder, index, **options):
    """ingest() of `roots` with this encoder and index, in-process and quiet unless told."""
    from clipsearch.ingest import IngestOptions, ingest

    options.setdefault("workers", 0)
    options.setdefault("quiet", True)
    return ingest([str(r) for r in roots], encoder, index, IngestOptions(**options))


def stored_payloads(index) -> dict[str, dict]:
    """path -> payload of every point in the collection."""
    return {r.payload["path"]: r.payload for r in index.scroll()}


def nan_copy(model_dir: Path, to: Path) -> Path:
    """`model_dir` copied to `to` with every floating-point weight NaN: what a fine-tune
    that diverged used to save. Every command that loads it must refuse its vectors."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, to)
    for file in to.rglob("*.safetensors"):
        tensors = load_file(str(file))
        save_file({name: np.full_like(t, np.nan) if np.issubdtype(t.dtype, np.floating) else t
                   for name, t in tensors.items()}, str(file), metadata={"format": "pt"})
    return to


def overflowing_copy(model_dir: Path, to: Path) -> Path:
    """`model_dir` (the tiny CLIP) copied to `to` with its patch embedding weights 1e17:
    a sound model but for bright or dark images, whose embedded patches (about 400
    times 1e17) overflow float32 when the layer norm squares them; a mid-grey image,
    or one of middling colours, still gives a finite vector. As a half-precision tower
    can overflow on some images."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, to)
    for file in to.rglob("*.safetensors"):
        tensors = load_file(str(file))
        name = "vision_model.embeddings.patch_embedding.weight"
        tensors[name] = np.full_like(tensors[name], 1e17)
        save_file(tensors, str(file), metadata={"format": "pt"})
    return to


def stop_training_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C in a fine-tune right after its training step `step` (its callbacks run)."""
    from clipsearch.finetune import training

    original = training._ProgressCallback.on_step_end

    def interrupt(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        if state.global_step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(training._ProgressCallback, "on_step_end", interrupt)


@contextmanager
def listening(app):
    """`app` behind uvicorn and serve's own connection protocol, on a loopback port in a
    thread of this process; yields its base URL. Requests wait in the listen backlog
    until it runs: nothing to wait for before using it."""
    import threading

    import uvicorn

    from clipsearch.serve import connections
    from clipsearch.serve.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="critical",
                                           http=connections.protocol_class(30.0, 1000)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass
class FreshRun:
    """What `clipsearch ARGS` did in a process of its own: as click's Result has it."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_in_a_fresh_process(args: list, setup: str = "", timeout: float = 600.0) -> FreshRun:
    """Run `clipsearch ARGS` in a new Python process, after the Python statements of
    `setup` (a test's stand-in for what it would monkeypatch), with this test's environment.

    For commands that fork (a DataLoader's workers): this test process holds the gRPC
    double's threads, and a fork taken while one of them is inside gRPC can leave the
    child dead on an inherited lock (abseil's mutex check). A user's command forks from a
    process of its own, as this one does."""
    import subprocess
    import sys

    driver = "\n".join([setup, "from clipsearch.cli import main", "main()"])
    done = subprocess.run([sys.executable, "-c", driver, *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout, env=os.environ.copy())
    return FreshRun(done.returncode, done.stdout, done.stderr)
