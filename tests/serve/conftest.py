"""A served index for the API tests: drawn photos in two folders, ingested with the tiny
CLIP into an embedded index, behind the real FastAPI application (in-process: the
tests' requests go through the whole ASGI stack, the real engine and the real model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from clipsearch.config import Settings

from support import draw_collection


@dataclass
class Served:
    root: Path
    photos: Path
    settings: Settings
    service: object
    app: object
    token: str | None


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


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        env.setenv("HF_HUB_OFFLINE", "1")
        result = build_served(root, tiny_model_dir)
    yield result
    result.service.index.close()


@pytest.fixture
def client(served):
    from fastapi.testclient import TestClient

    with TestClient(served.app) as test_client:
        yield test_client
