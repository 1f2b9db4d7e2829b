"""Exporting a tower to ONNX runs inside an app's process: it leaves the app's own
logging level as it was, and its stdout redirect (the exporter's prints kept off a
command's output) covers the exporting thread only, not the app's other threads."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from clipsearch.encoders import cache, location
from clipsearch.encoders.image_export import export_image_tower
from clipsearch.encoders.text_export import export_text_tower


@pytest.fixture
def app_logging_disabled_below_info():
    logging.disable(logging.DEBUG)  # the app's own choice
    yield
    logging.disable(logging.NOTSET)


def test_the_int8_export_keeps_the_apps_logging(tiny_model_dir, encoder, app_logging_disabled_below_info, capfd):
    root = logging.getLogger()
    handlers, filters = list(root.handlers), list(root.filters)
    folder, key, _ = location.locate(str(tiny_model_dir))
    export_image_tower(encoder, key, folder, str(tiny_model_dir), "int8")
    assert cache.read_entry(key, cache.IMAGE_INT8) is not None
    assert logging.root.manager.disable == logging.DEBUG
    assert (root.handlers, root.filters) == (handlers, filters)
    assert "pre-processing" not in capfd.readouterr().err  # the quantizer's advice stays unsaid


def test_another_threads_prints_stay_on_stdout_during_an_export(tiny_model_dir, encoder, capsys):
    exported = threading.Event()
    printed = threading.Event()
    lines = []

    def app_thread():
        while not exported.is_set():
            lines.append(f"the app's line {len(lines)}")
            print(lines[-1])
            printed.set()
            time.sleep(0.001)

    thread = threading.Thread(target=app_thread)
    thread.start()
    try:
        printed.wait(30)
        folder, key, _ = location.locate(str(tiny_model_dir))
        export_text_tower(encoder, key, folder, str(tiny_model_dir))
    finally:
        exported.set()
        thread.join(30)
    captured = capsys.readouterr()
    assert "the app's line" not in captured.err
    assert captured.out.splitlines() == lines
