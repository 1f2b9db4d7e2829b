"""The full CLIP: loaded through sentence-transformers (torch), both towers.

Turns images and texts into L2-normalized float32 vectors in one shared space, and
computes the model's identity (a hash of the image tower's weights and preprocessing).

torch and sentence-transformers are imported here, on first use, never at module
import: the import alone costs seconds and most CLI commands do not need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import ClipsearchError
from ..names import is_text, shown
from .identity import ModelIdentity
from .location import LOCAL_MODEL_HINT, hub_reachable, resolve_model_location
from .vectors import l2_normalize, require_finite

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .onnx_image import Preprocess

# Parameter name prefixes of the two towers inside transformers' CLIPModel.
IMAGE_PREFIXES = ("vision_model.", "visual_projection.")
TEXT_PREFIXES = ("text_model.", "text_projection.")


def quiet_libraries() -> None:
    """transformers and the hub print progress bars and advice on every load; a CLI
    that prints its own results should not interleave them."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "sentence_transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def fingerprint_tensors(named_tensors, extra: bytes = b"") -> str:
    """sha256 over each tensor's name, dtype, shape and raw bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest.update(extra)
    return digest.hexdigest()


class Encoder:
    """A loaded CLIP model. `encode_images` and `encode_texts` return (n, dim)
    float32 arrays with unit rows; `identity` says which model made them."""

    def __init__(self, model: str, device: str = "auto"):
        self.requested = model
        location, is_local = resolve_model_location(model)
        self.location = location
        quiet_libraries()
        import torch
        from sentence_transformers import SentenceTransformer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ClipsearchError(f"--device {device}: no CUDA device is available on this machine")
        self.device = device
        self.st = self._load(SentenceTransformer, location, is_local, device)
        self.clip = self._find_clip(self.st)
        # Truncate long texts to what the text tower can take: a tokenizer saved without
        # model_max_length (random or hand-built models) would let a long query crash it.
        max_positions = int(getattr(self.clip.config.text_config, "max_position_embeddings", 77))
        if not self.st.max_seq_length or self.st.max_seq_length > max_positions:
            self.st.max_seq_length = max_positions
        self.dim = int(self.st.get_embedding_dimension() or self.clip.config.projection_dim)
        # The model's input side: decoders shrink images to about this before encoding.
        self.image_size = int(self.clip.config.vision_config.image_size)
        self._identity: ModelIdentity | None = None
        self._pixel_preprocess: Preprocess | None = None
        self._preprocess_known = False

    @staticmethod
    def _load(SentenceTransformer, location: str, is_local: bool, device: str):
        if is_local and not is_text(location):  # safetensors' loader takes text paths only
            raise ClipsearchError(
                f"cannot load model {shown(location)}: its path is not valid UTF-8, which the model loader "
                "cannot open; rename the folder, or link to it from a name that is")
        try:
            if is_local:
                return SentenceTransformer(location, device=device, local_files_only=True)
            try:  # already in the local hub cache: no network needed
                return SentenceTransformer(location, device=device, local_files_only=True)
            except Exception:
                if not hub_reachable():
                    raise ClipsearchError(
                        f"cannot download model {location!r}: the Hugging Face hub is not reachable; "
                        f"{LOCAL_MODEL_HINT}"
                    ) from None
                return SentenceTransformer(location, device=device)
        except ClipsearchError:
            raise
        except Exception as exc:  # transformers raises many types for a bad folder
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClipsearchError(f"cannot load model {location!r}: {first_line}") from None

    def _find_clip(self, st):
        """The transformers model inside the first module; it must have both towers."""
        first = st[0]
        model = getattr(first, "auto_model", None) or getattr(first, "model", None)
        if model is None or not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ClipsearchError(
                f"{self.location} is not a CLIP model (it has no image and text towers); {LOCAL_MODEL_HINT}"
            )
        return model

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            params = list(self.clip.state_dict().items())
            processor = getattr(self.st[0], "processor", None)
            image_processor = getattr(processor, "image_processor", processor)
            try:
                preprocessing = image_processor.to_dict() if image_processor is not None else {}
            except Exception:  # pragma: no cover - exotic processors
                preprocessing = {}
            preprocessing = {k: v for k, v in preprocessing.items() if not k.startswith("_")}
            self._identity = ModelIdentity(
                name=self.location,
                image_fingerprint=fingerprint_tensors(
                    [(n, t) for n, t in params if n.startswith(IMAGE_PREFIXES)],
                    extra=json.dumps(preprocessing, sort_keys=True, default=str).encode(),
                ),
                text_fingerprint=fingerprint_tensors([(n, t) for n, t in params if n.startswith(TEXT_PREFIXES)]),
                dim=self.dim,
            )
        return self._identity

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 32) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.st.encode(
            list(images), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return require_finite(l2_normalize(vectors), self.location, "images")

    @property
    def preprocess(self) -> "Preprocess | None":
        """The model's image preprocessing as data (onnx_image.Preprocess), when pixels
        made by it can go straight into the image tower (encode_pixels) with the same
        vectors as encode_images: a CLIP image processor that Preprocess reproduces, and
        no module after the CLIP one but a Normalize. None otherwise."""
        if not self._preprocess_known:
            self._preprocess_known = True
            from .image_export import preprocess_of

            # By name: sentence-transformers moved the class between versions.
            if all(type(module).__name__ == "Normalize" for module in list(self.st)[1:]):
                try:
                    self._pixel_preprocess = preprocess_of(self)
                except Exception:  # a processor Preprocess does not reproduce: encode_images only
                    pass
        return self._pixel_preprocess

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Unit vectors for (n, 3, height, width) float32 pixels, already preprocessed
        (preprocess): the CLIP vision model and its projection, as
        sentence-transformers runs them for an image, without its image processor."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        param = next(self.clip.parameters())
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size]))
                features = self.clip.get_image_features(pixel_values=batch.to(device=param.device, dtype=param.dtype))
                if not torch.is_tensor(features):  # transformers 5: a BaseModelOutputWithPooling
                    features = features.pooler_output
                out.append(features.float().cpu().numpy())
        return require_finite(l2_normalize(np.concatenate(out)), self.location, "images")

    def encode_crops(self, crops: np.ndarray, geometry: tuple, batch_size: int = 32) -> np.ndarray:
        """Unit vectors for (n, height, width, 3) uint8 crops made with `geometry`
        (ingest's decoders, clipsearch/images.py prepare_job): rescaled and normalized
        in one vectorized step, then the model alone. CropsMismatch (onnx_image.py)
        when they are not what this model's preprocessing makes."""
        from .onnx_image import check_geometry

        preprocess = check_geometry(self.preprocess, geometry)
        return self.encode_pixels(preprocess.normalize(crops), batch_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.st.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return require_finite(l2_normalize(vectors), self.location, "texts")
