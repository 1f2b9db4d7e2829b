"""One Settings object: CLI flags > environment variables > defaults.

The CLI passes the flags it was given (None where absent) to `Settings.resolve`,
which fills the rest from the environment and the defaults. The Python API calls the
same function, so a notebook and the CLI agree on what an unset option means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ClipsearchError

DEFAULT_MODEL = "sentence-transformers/clip-ViT-B-32"
DEFAULT_COLLECTION = "images"
MEMORY_INDEX = ":memory:"

# Each setting and the environment variables it reads, first match wins.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "model": ("CLIPSEARCH_MODEL",),
    "index": ("CLIPSEARCH_INDEX", "QDRANT_URL"),
    "collection": ("CLIPSEARCH_COLLECTION",),
    "device": ("CLIPSEARCH_DEVICE",),
    "api_key": ("QDRANT_API_KEY",),
    "retry_seconds": ("CLIPSEARCH_RETRY_SECONDS",),
    "grpc": ("CLIPSEARCH_GRPC",),
    "grpc_port": ("CLIPSEARCH_GRPC_PORT",),
}

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def default_index_path() -> str:
    """The embedded index lives in the user's data dir, e.g. ~/.local/share/clipsearch/index."""
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("clipsearch")) / "index")


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    index: str = field(default_factory=default_index_path)
    collection: str = DEFAULT_COLLECTION
    device: str = "auto"
    api_key: str | None = field(default=None, repr=False)  # never printed
    # How long calls to a Qdrant server are retried before giving up.
    retry_seconds: float = 30.0
    # Talk to a Qdrant server over gRPC (port 6334) instead of REST: faster bulk upserts.
    grpc: bool = False
    # The server's gRPC port: Qdrant's 6334 unless a proxy or port mapping moved it.
    grpc_port: int = 6334

    @classmethod
    def resolve(cls, env: dict[str, str] | None = None, **flags) -> "Settings":
        """Build settings from explicit flags (None = not given), then env, then defaults."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, env_names in ENV_VARS.items():
            given = flags.pop(name, None)
            if given is None:
                given = next((env[v] for v in env_names if env.get(v)), None)
            if given is not None:
                values[name] = given
        if flags:
            raise TypeError(f"unknown settings: {', '.join(sorted(flags))}")
        settings = cls(**values)  # type: ignore[arg-type]
        return settings.validated()

    def validated(self) -> "Settings":
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ClipsearchError(
                f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps (--device / CLIPSEARCH_DEVICE)"
            )
        if not self.collection or "/" in self.collection or self.collection.startswith("."):
            raise ClipsearchError(
                f"collection name {self.collection!r} is not valid (--collection / CLIPSEARCH_COLLECTION)"
            )
        try:
            retry = float(self.retry_seconds)
        except (TypeError, ValueError):
            raise ClipsearchError(
                f"CLIPSEARCH_RETRY_SECONDS={self.retry_seconds!r} is not a number of seconds"
            ) from None
        grpc = self.grpc
        if isinstance(grpc, str):
            if grpc.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ClipsearchError(f"CLIPSEARCH_GRPC={grpc!r} is not one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")
            grpc = grpc.strip().lower() in TRUE_WORDS
        try:
            grpc_port = int(self.grpc_port)
            if not 0 < grpc_port < 65536:
                raise ValueError
        except (TypeError, ValueError):
            raise ClipsearchError(f"CLIPSEARCH_GRPC_PORT={self.grpc_port!r} is not a port number (1-65535)") from None
        index = self.index
        if self.backend == "edge":
            index = str(Path(index).expanduser().resolve())
        return replace(self, retry_seconds=retry, index=index, grpc=bool(grpc), grpc_port=grpc_port)

    @property
    def backend(self) -> str:
        """`server` for http(s) URLs, `memory` for :memory:, else `edge` (a folder)."""
        if self.index.startswith(("http://", "https://")):
            return "server"
        if self.index == MEMORY_INDEX:
            return "memory"
        return "edge"

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes).validated()
