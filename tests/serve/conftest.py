"""A served index for the API tests: drawn photos in two folders, ingested with the tiny
CLIP into an embedded index, behind the real FastAPI application (in-process: the
tests' requests go through the whole ASGI stack, the real engine and the real model)."""

from __future__ import annotations

import pytest

from support import serving_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    with serving_app(tmp_path_factory.mktemp("served"), tiny_model_dir) as served:
        yield served


@pytest.fixture
def client(served):
    from fastapi.testclient import TestClient

    with TestClient(served.app, base_url="http://127.0.0.1") as test_client:
        yield test_client
