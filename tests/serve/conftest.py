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


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, for the page's tests (test_browser.py,
    test_page_*.py); skipped, saying why, where either is missing."""
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
