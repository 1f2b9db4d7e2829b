"""A served index for the API tests: drawn photos in two folders, ingested with the tiny
CLIP into an embedded index, behind the real FastAPI application (in-process: the
tests' requests go through the whole ASGI stack, the real engine and the real model)."""

from __future__ import annotations

import pytest

from support import build_served


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
