"""How ingest turns images into vectors: the ONNX image tower when it can, else torch.

Importing torch and sentence-transformers and loading a model costs about 9 s, most
of the time an ingest of a few new photos takes, and torch encodes more slowly than
onnxruntime on a CPU. So on a CPU, ingest encodes with the model's image tower
exported to ONNX (encoders/image_export.py) into the model cache (encoders/cache.py),
keyed like the text tower by the model folder's file listing: once the export exists,
an ingest imports neither torch nor sentence-transformers.

    towers = ImageTowers(model, device, precision, load_full, say=..., tell=...)
    towers.image_size                  # from the export's manifest, or the loaded model
    towers.encode_images(images)       # onnxruntime, or the full model
    towers.preprocess                  # what the decoders do to each image (None: nothing)
    towers.encode_crops(crops, geometry)  # their uint8 crops: normalize, then the model alone

The first ingest of a model with files to embed loads the full model once to export
(one line on stderr says so and how long it took), then encodes with the export. The
torch path answers, and `say` (ingest --verbose) is told why, when the fast path is
off (CLIPSEARCH_FAST_PATH=0), the model runs on a GPU (--device cuda, or auto with a
CUDA torch), onnxruntime is missing, the model folder cannot be keyed, or its export
failed before (remembered until its files change). A damaged export is removed and
rebuilt, never used. int8 exists only as an export: where there is none, the run
stops with one line instead of writing fp32 vectors into an int8 collection.

Imports only the standard library and numpy at import time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import config
from ..errors import ClipsearchError
from ..progress import stderr_line
from . import cache
from .identity import INT8, ModelIdentity
from .location import locate
from .onnx_image import OnnxImageTower, Preprocess, check_geometry, preprocess_from_folder
from .tower_export import export_once
from .tower_export import first_line as _first_line
from .vectors import require_finite

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def torch_would_use_a_gpu() -> bool:
    """Whether `--device auto` would put torch on a GPU here, answered without
    importing torch (seconds): a torch built for CUDA or ROCm, and a GPU device node.
    A torch already imported is asked directly."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        version = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return False
    built_for_gpu = any(line.split("=", 1)[1].strip() not in ("None", "")
                        for line in version.splitlines()
                        if line.startswith(("cuda", "hip")) and "=" in line)
    return built_for_gpu and any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def configured_image_size(folder: Path) -> int | None:
    """The model's input side from its config.json (a transformers CLIP folder, or the
    first module of a sentence-transformers one), as the loaded model reports it; None
    where the files do not say."""
    try:
        config_file = folder / "config.json"
        if not config_file.is_file():
            modules = json.loads((folder / "modules.json").read_text())
            config_file = folder / str(modules[0]["path"]) / "config.json"
        vision = json.loads(config_file.read_text())["vision_config"]
        return int(vision.get("image_size", 224))  # transformers' CLIPVisionConfig default
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


class ImageTowers:
    """Chooses once, at the first image, between the ONNX image tower and the full
    model, and encodes with the choice. `load_full` loads (or returns) the full
    Encoder; `identity` gives the identity the run checked the index against, which
    the export must have been made from."""

    def __init__(self, model: str, device: str, precision: str, load_full: Callable[[], Any],
                 identity: Callable[[], ModelIdentity], say: Say | None = None, tell: Say | None = None,
                 threads: int | None = None, spin: bool = False):
        self.model = model
        self.identity = identity
        self.device = device
        self.precision = precision
        self.load_full = load_full
        self.say = say if say is not None else _quiet  # --verbose: which path, and why not the fast one
        self.tell = tell if tell is not None else stderr_line  # always: the one-time export
        self.threads = threads
        self.spin = spin
        self.path = ""  # "onnx" or "torch", once decided
        self.why_torch: str | None = None
        self._tower: OnnxImageTower | None = None
        self._entry: cache.TowerEntry | None = None
        self._key: str | None = None
        self._folder: Path | None = None

    @property
    def kind(self) -> cache.TowerKind:
        return cache.image_kind(self.precision)

    # -- choosing ---------------------------------------------------------------------
    def blocker(self) -> str | None:
        """Why this run cannot use an ONNX image tower at all (nothing is loaded to
        find out), or None."""
        if not config.enabled("fast_path"):
            return f"the fast path is turned off ({config.where_set('fast_path')})"
        if self.device not in ("auto", "cpu"):
            return f"--device {self.device}: the model runs on it through torch"
        if self.device == "auto" and torch_would_use_a_gpu():
            return "--device auto found a GPU for torch: the model runs on it through torch"
        try:
            if importlib.util.find_spec("onnxruntime") is None:
                return "onnxruntime is not installed (pip install onnxruntime)"
        except (ImportError, ValueError):  # ValueError: sys.modules["onnxruntime"] is None
            return "onnxruntime cannot be imported"
        folder, key, why = locate(self.model)
        if key is None:
            return why
        self._folder, self._key = folder, key
        return None

    def check_precision(self) -> None:
        """int8 vectors come only from the quantized export: refuse, before anything
        is written, a run that could not make them."""
        if self.precision == INT8:
            reason = self.blocker()
            if reason is not None:
                raise ClipsearchError(f"--precision int8 needs the ONNX image tower, and {reason}; "
                                      "use --precision fp32")

    def decide(self) -> None:
        if self.path:
            return
        reason = self.blocker()
        if reason is None:
            reason = self._open_or_export()
        if self._tower is not None:
            self.path = "onnx"
            return
        if self.precision == INT8:
            raise ClipsearchError(f"--precision int8 needs the ONNX image tower, and {reason}")
        self.path, self.why_torch = "torch", reason
        self.say(f"image tower: torch + sentence-transformers: {reason}")

    def _open_or_export(self) -> str | None:
        """Open the export, exporting it first when there is none (or it is damaged).
        Returns why the torch path must answer, or None with self._tower set."""
        assert self._key is not None and self._folder is not None
        kind = self.kind
        entry, damaged = cache.read_or_discard(self._key, kind)
        if damaged:
            self.say(f"{damaged}; removed it, exporting it again")
        if entry is not None and entry.failed:
            return f"exporting its {kind.what} failed before: {entry.failed}"
        if entry is not None:
            problem = self._open(entry)
            if problem is None:
                return None
            self.say(f"{kind.what} cache {entry.folder} is damaged ({problem}); removed it, exporting it again")
            cache.remove_entry(entry.folder)
        return self._export()

    def _open(self, entry: cache.TowerEntry) -> str | None:
        """Load the tower of `entry` (its probe image checked); why not, or None."""
        m = entry.manifest
        expected = self.identity()
        if (entry.identity.image_fingerprint, entry.identity.dim) != (expected.image_fingerprint, expected.dim):
            raise ClipsearchError(
                f"the files of model {self.model!r} changed during this run (the index was checked against "
                f"{expected.short()}, the files now hold {entry.identity.short()}); run the command again")
        try:
            tower = OnnxImageTower(entry.onnx_path, Preprocess.from_dict(m["preprocess"]), threads=self.threads,
                                   spin=self.spin, probe=(int(m["probe"]["side"]), m["probe"]["vector"]))
        except Exception as exc:  # onnxruntime's errors for a bad file, a moved probe, a bad manifest
            return _first_line(exc)
        self._tower, self._entry = tower, entry
        entry.touch()
        self.say(f"image tower: onnxruntime {self.precision} from {entry.folder} (no torch)")
        return None

    def _export(self) -> str | None:
        from .image_export import export_image_tower

        assert self._key is not None and self._folder is not None
        kind = self.kind
        encoder = self.load_full()
        start = time.perf_counter()
        key, model_folder = self._key, self._folder
        outcome = export_once(lambda: export_image_tower(encoder, key, model_folder, self.model, self.precision),
                              key, self.model, model_folder, kind)
        if outcome.failure is not None:  # the model's failure is remembered: the full path from now on
            return f"could not export the {kind.what}: {outcome.failure}" + (
                "" if outcome.lasting else "; it is exported again once there is room")
        folder, distance = outcome.result
        self.tell(f"exported the {kind.what} to ONNX in {time.perf_counter() - start:.1f} s, once (this needed torch; "
                  f"later ingests of this model do not); largest cosine distance to the model {distance:.1e}")
        entry, damaged = cache.read_or_discard(self._key, kind)
        if entry is None or entry.failed:
            return f"the new {kind.what} export could not be read back ({damaged or 'gone'})"
        return self._open(entry)

    # -- encoding -------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The decoders' target size, asked for before the first file is decoded. The
        choice of path (and an export) waits for the first image to encode: a run
        whose files to decode all turn out bad loads no model and exports nothing."""
        if not self.path:
            folder, _, _ = locate(self.model) if self._folder is None else (self._folder, None, None)
            side = configured_image_size(folder) if folder is not None else None
            if side is not None:
                return side
            self.decide()
        if self._entry is not None:
            return int(self._entry.manifest["image_size"])
        return int(self.load_full().image_size)

    @property
    def preprocess(self) -> Preprocess | None:
        """The preprocessing ingest's decoders apply, up to the uint8 crop, so that
        this process only runs the model (encode_crops); None: hand over whole images
        (encode_images). Once the path is decided, the model's own (the export's
        manifest, or the loaded model's processor); before, asked for before the first
        file is decoded, an existing export's manifest, else the model folder's
        processor files, read without loading anything."""
        if self.path:
            return self._model_preprocess()
        if self.blocker() is None and self._key is not None:
            try:
                entry = cache.read_entry(self._key, self.kind)
            except cache.DamagedEntry:
                entry = None
            if entry is not None and not entry.failed:
                try:
                    return Preprocess.from_dict(entry.manifest["preprocess"])
                except (KeyError, TypeError, ValueError):
                    pass
        folder = self._folder if self._folder is not None else locate(self.model)[0]
        return preprocess_from_folder(folder) if folder is not None else None

    def _model_preprocess(self) -> Preprocess | None:
        if self._tower is not None:
            return self._tower.preprocess
        return getattr(self.load_full(), "preprocess", None)

    def encode_crops(self, crops: np.ndarray, geometry: tuple, batch_size: int = 32) -> np.ndarray:
        """Unit vectors for (n, height, width, 3) uint8 crops made with `geometry`
        (Preprocess.geometry): rescaled and normalized here, with the model's own
        parameters, in one vectorized step, then the model alone. CropsMismatch when
        the model's resize and crop are not `geometry` (or it takes only images)."""
        self.decide()
        if self._tower is None:
            return self.load_full().encode_crops(crops, geometry, batch_size)
        preprocess = check_geometry(self._tower.preprocess, geometry)
        out = [self._tower.run(preprocess.normalize(crops[start:start + batch_size]))
               for start in range(0, len(crops), batch_size)]
        return require_finite(np.concatenate(out), self.model, "images") if out else self.encode_images([], batch_size)

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        self.decide()
        if self._tower is not None:
            return require_finite(self._tower.encode_images(images, batch_size), self.model, "images")
        return self.load_full().encode_images(images, batch_size)
