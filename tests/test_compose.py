"""docker-compose.yml: a Qdrant server pinned to the client's minor version.

No Docker engine runs where these tests run; the file is checked statically, and
with `docker-compose config` where that validator is installed.
"""

import os
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def test_qdrant_image_matches_client_minor_version():
    text = COMPOSE.read_text()
    match = re.search(r"image:\s*qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", text)
    assert match, "the qdrant image must be pinned to an exact vX.Y.Z tag"
    client_major, client_minor = version("qdrant-client").split(".")[:2]
    assert (match.group(1), match.group(2)) == (client_major, client_minor)
    for port in ("6333:6333", "6334:6334"):
        assert port in text
    assert "QDRANT__SERVICE__API_KEY: ${QDRANT_API_KEY" in text
    assert re.search(r"^volumes:\s*\n\s+qdrant_storage:", text, re.M)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose validator not installed")
def test_compose_file_validates():
    env = dict(os.environ, QDRANT_API_KEY="test-key")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
