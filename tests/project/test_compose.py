"""docker-compose.yml: a Qdrant server pinned to the client's minor version;
docker-compose.cluster.yml: three of them as one cluster.

No Docker engine runs where these tests run; the file is checked statically, and
with `docker-compose config` where that validator is installed.
"""

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
CLUSTER = COMPOSE.with_name("docker-compose.cluster.yml")


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
@pytest.mark.parametrize("compose", [COMPOSE, CLUSTER], ids=lambda path: path.name)
def test_compose_file_validates(compose):
    env = dict(os.environ, QDRANT_API_KEY="test-key", CLIPSEARCH_TOKEN="test-token-0123456789")
    result = subprocess.run(["docker-compose", "-f", str(compose), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_cluster_is_three_nodes_of_the_pinned_image_joined_through_a_bootstrap_peer():
    single = yaml.safe_load(COMPOSE.read_text())["services"]["qdrant"]
    cluster = yaml.safe_load(CLUSTER.read_text())
    nodes = cluster["services"]
    assert sorted(nodes) == ["qdrant-1", "qdrant-2", "qdrant-3"]
    first = nodes["qdrant-1"]["command"]
    assert first == ["./qdrant", "--uri", "http://qdrant-1:6335"]  # the bootstrap peer bootstraps nothing
    volumes, host_ports = set(), []
    for name, node in nodes.items():
        assert node["image"] == single["image"]  # the same pinned image as the single server
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["environment"]["QDRANT__SERVICE__API_KEY"] == single["environment"]["QDRANT__SERVICE__API_KEY"]
        assert node["healthcheck"]["test"] == single["healthcheck"]["test"]
        command = node["command"]
        assert command[command.index("--uri") + 1] == f"http://{name}:6335"  # its own address for its peers
        if name != "qdrant-1":
            assert command[command.index("--bootstrap") + 1] == "http://qdrant-1:6335"
            assert node["depends_on"] == {"qdrant-1": {"condition": "service_healthy"}}
        volume, target = node["volumes"][0].split(":")
        assert target == "/qdrant/storage" and len(node["volumes"]) == 1
        volumes.add(volume)
        host_ports += [port.split(":")[0] for port in node["ports"]]
        assert not any(port.endswith(":6335") for port in node["ports"])  # peer traffic stays inside
    assert len(volumes) == 3 and volumes == set(cluster["volumes"])  # one volume per node
    assert len(set(host_ports)) == len(host_ports) and {"6333", "6334"} <= set(host_ports)


class _Readiness(http.server.BaseHTTPRequestHandler):
    ready = False

    def do_GET(self):
        status = 200 if self.path == "/readyz" and type(self).ready else 503
        body = b"all shards are ready" if status == 200 else b"not ready"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_healthcheck_waits_for_readiness_not_an_open_port():
    """The qdrant service's healthcheck command, run with bash against a server that
    answers /readyz as Qdrant does: unhealthy while not ready, healthy once ready, and
    unhealthy (at once) when nothing listens."""
    test = yaml.safe_load(COMPOSE.read_text())["services"]["qdrant"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("$$", "$")  # compose's escape for a literal $
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    probe = script.replace("/6333", f"/{port}")

    def healthy() -> bool:
        return subprocess.run(["bash", "-c", probe], capture_output=True, timeout=10).returncode == 0

    try:
        assert not healthy()  # the port is open, but the shards are still loading
        _Readiness.ready = True
        assert healthy()
    finally:
        server.shutdown()
        server.server_close()
    assert not healthy()  # nothing listening


def test_the_serve_service_runs_serve_in_front_of_qdrant():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    serve, qdrant_url = services["serve"], "http://qdrant:6333"
    assert serve["command"][0] == "serve" and "--watch" in serve["command"]
    assert serve["depends_on"] == {"qdrant": {"condition": "service_healthy"}}
    assert serve["environment"]["QDRANT_URL"] == qdrant_url
    # It binds every address inside the container, so a token is required, and it is
    # published on the host's loopback unless asked.
    assert serve["environment"]["CLIPSEARCH_TOKEN"].startswith("${CLIPSEARCH_TOKEN:?")
    assert serve["ports"] == ["${CLIPSEARCH_PUBLISH:-127.0.0.1}:8765:8765"]
    assert "profiles" in serve and "serve" in serve["profiles"]


def test_the_serve_healthcheck_asks_the_health_endpoint():
    test = yaml.safe_load(COMPOSE.read_text())["services"]["serve"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    command = [arg.replace(":8765/", f":{server.server_address[1]}/") for arg in test[1:]]
    command[0] = sys.executable
    try:
        assert subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert subprocess.run(command, capture_output=True, timeout=30).returncode != 0  # nothing listening
