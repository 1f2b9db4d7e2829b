"""The index contract suite's backends: every one of tests/support.py's BACKENDS, and
collections created quantized (int8, originals on disk), so that the same calls give
the same answers there: in qdrant-client's :memory: engine (which keeps no quantized
copy: the create call is what runs) and through the REST double, where each search also
carries the rescoring parameters (clipsearch/index/layout.py, client.py), and in the
embedded engine, which keeps int8 copies and rescores with the originals (edge.py)."""

from __future__ import annotations

import pytest

from support import BACKENDS, settings_for

QUANTIZED = {"memory-int8": "memory", "rest-int8": "rest", "edge-int8": "edge"}


@pytest.fixture(params=[*BACKENDS, *QUANTIZED])
def backend_settings(request, tmp_path, tiny_model_dir):
    if request.param in QUANTIZED:
        settings = settings_for(QUANTIZED[request.param], tmp_path, tiny_model_dir)
        return settings.with_overrides(quantization="int8", vectors_on_disk=True)
    return settings_for(request.param, tmp_path, tiny_model_dir)
