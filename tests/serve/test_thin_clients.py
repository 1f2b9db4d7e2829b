"""`clipsearch search --server` and `clipsearch status --server`: thin clients of a real
`clipsearch serve` subprocess, checked against the local commands on a copy of the
same index (the served one is locked), and what the local commands say while serve
holds the index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError

from support import COLOURS, SHAPES, ServeProcess, draw_collection, draw_image, free_port

pytestmark = pytest.mark.slow

TOKEN = "thin-client-test-token-0123456789"
HEAVY = ("torch", "onnxruntime", "qdrant_client", "qdrant_edge", "numpy", "PIL", "sentence_transformers",
         "transformers", "tokenizers")


def base_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    return env


class Serving:
    def __init__(self, root: Path, model: Path, index: Path, copy: Path, photos: Path, url: str,
                 proc: subprocess.Popen, server_cache: Path, local_cache: Path, log: Path):
        self.root, self.model, self.index, self.copy, self.photos = root, model, index, copy, photos
        self.url, self.proc, self.server_cache, self.local_cache, self.log = url, proc, server_cache, local_cache, log


@pytest.fixture(scope="module")
def serving(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("thin")
    photos = root / "photos"
    draw_collection(photos, 12)
    combos = [(c, s) for s in SHAPES for c in COLOURS]
    for i in range(12, 16):  # four more, all different from the others, in a subfolder (--in)
        colour, shape = combos[i]
        draw_image(photos / "sub" / f"{i:03d}-{colour}-{shape}.png", colour, shape)
    for i, name in ((16, b"\xff\xfe.png"), (17, b"b\xe9.png")):  # names that are not UTF-8, in such a folder
        colour, shape = combos[i]
        draw_image(Path(os.fsdecode(os.fsencode(str(photos)) + b"/caf\xe9/" + name)), colour, shape)
    index, server_cache = root / "index", root / "server-cache"
    env = base_env(server_cache)
    done = subprocess.run([sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index", str(index),
                           "--model", str(tiny_model_dir), "--workers", "0", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    copy = root / "index-copy"
    shutil.copytree(index, copy)  # before serve holds the index: the local runs search this one
    log = root / "serve.log"
    args = ["--index", str(index), "--model", str(tiny_model_dir), "--token", TOKEN]
    with ServeProcess(args, log, env={"CLIPSEARCH_CACHE_DIR": str(server_cache)}, timeout=90) as server:
        # The local runs use the same exported text tower as the server (a copy of its
        # cache, taken now): both encode text the same way.
        local_cache = root / "local-cache"
        shutil.copytree(server_cache, local_cache, ignore=shutil.ignore_patterns("thumbnails"))
        yield Serving(root, tiny_model_dir, index, copy, photos, server.url, server.process, server_cache,
                      local_cache, log)


# -- running the two ways -----------------------------------------------------------------


def local(serving: Serving, monkeypatch, *args: str, command: str = "search", raw: bool = False):
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(serving.local_cache))
    result = CliRunner().invoke(cli, [command, *args, "--index", str(serving.copy), "--model", str(serving.model)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes if raw else result.stdout


def thin(serving: Serving, monkeypatch, *args: str, command: str = "search", token: str | None = TOKEN,
         raw: bool = False):
    """Through the server, as a user would type it (no --index, no --model)."""
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(serving.root / "thin-cache-unused"))
    result = CliRunner().invoke(cli, [command, *args, "--server", serving.url, *(["--token", token] if token else [])],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes if raw else result.stdout


def table(text: str) -> list[tuple[int, float, str]]:
    rows = []
    for line in text.splitlines():
        rank, score, path = line.split(maxsplit=2)
        rows.append((int(rank), float(score), path))
    return rows


def same_table(a: str, b: str) -> None:
    """The same ranks and paths; scores within the text encoders' float noise (the
    server runs the same exported tower, on all cores)."""
    ra, rb = table(a), table(b)
    assert [(r, p) for r, _, p in ra] == [(r, p) for r, _, p in rb]
    assert [s for _, s, _ in ra] == pytest.approx([s for _, s, _ in rb], abs=2e-4)
    assert ra


def same_json_hits(a: list[dict], b: list[dict]) -> None:
    assert [{**h, "score": None} for h in a] == [{**h, "score": None} for h in b]
    assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=2e-4)


# -- search --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    [],
    ["-k", "3"],
    ["--add", "2:sunset", "--subtract", "people"],
    ["-k", "50"],
], ids=["plain", "k3", "add-subtract", "k-beyond-count"])
def test_table_output_matches_the_local_search(serving, monkeypatch, extra):
    same_table(local(serving, monkeypatch, "red circle", *extra), thin(serving, monkeypatch, "red circle", *extra))


def test_paths_and_json_match_the_local_search(serving, monkeypatch):
    assert (thin(serving, monkeypatch, "blue square", "-f", "paths", "-k", "5")
            == local(serving, monkeypatch, "blue square", "-f", "paths", "-k", "5"))
    remote = [json.loads(line) for line in thin(serving, monkeypatch, "blue square", "-f", "json").splitlines()]
    here = [json.loads(line) for line in local(serving, monkeypatch, "blue square", "-f", "json").splitlines()]
    assert list(remote[0]) == list(here[0]) == ["rank", "score", "path", "width", "height", "id",
                                                "taken", "camera", "location"]
    same_json_hits(remote, here)


def test_in_folder_and_min_score_match_the_local_search(serving, monkeypatch):
    sub = str(serving.photos / "sub")
    remote = thin(serving, monkeypatch, "green", "--in", sub)
    assert len(table(remote)) == 4 and all(p.startswith(sub + os.sep) for _, _, p in table(remote))
    same_table(local(serving, monkeypatch, "green", "--in", sub), remote)
    # a relative --in is this directory's folder, as locally
    monkeypatch.chdir(serving.photos)
    same_table(local(serving, monkeypatch, "green", "--in", "sub"), thin(serving, monkeypatch, "green", "--in", "sub"))
    scores = [s for _, s, _ in table(local(serving, monkeypatch, "yellow"))]
    threshold = f"{(scores[2] + scores[3]) / 2:.6f}"  # between the third and the fourth hit: no tie at the edge
    remote = thin(serving, monkeypatch, "yellow", "--min-score", threshold)
    assert len(table(remote)) == 3
    same_table(local(serving, monkeypatch, "yellow", "--min-score", threshold), remote)


def test_names_that_are_not_utf8_come_out_as_locally(serving, monkeypatch):
    """The API sends such a name's bytes (`path_bytes`) beside its \\xNN form: paths0
    is exact for xargs -0, the other formats quote and escape as a local search does,
    and --in takes such a folder."""
    folder = os.fsencode(str(serving.photos)) + b"/caf\xe9"
    names = {folder + b"/\xff\xfe.png", folder + b"/b\xe9.png"}
    under = os.fsdecode(folder)
    for fmt in ("paths0", "paths", "json"):
        remote = thin(serving, monkeypatch, "x", "--in", under, "-f", fmt, raw=True)
        here = local(serving, monkeypatch, "x", "--in", under, "-f", fmt, raw=True)
        if fmt == "json":
            same_json_hits([json.loads(line) for line in remote.splitlines()],
                           [json.loads(line) for line in here.splitlines()])
        else:
            assert remote == here, fmt
        if fmt == "paths0":
            assert set(remote.split(b"\0")[:-1]) == names
    same_table(local(serving, monkeypatch, "x", "--in", under), thin(serving, monkeypatch, "x", "--in", under))
    everything = thin(serving, monkeypatch, "x", "-k", "50", "-f", "paths0", raw=True)
    assert names <= set(everything.split(b"\0"))


def test_many_queries_one_request_each_keyed_as_locally(serving, monkeypatch, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("red circle\n\nblue square\n")
    remote = json.loads(thin(serving, monkeypatch, "--queries", str(queries), "-f", "json", "-k", "4"))
    here = json.loads(local(serving, monkeypatch, "--queries", str(queries), "-f", "json", "-k", "4"))
    assert list(remote) == list(here) == ["red circle", "blue square"]
    for label in here:
        same_json_hits(remote[label], here[label])
    text = thin(serving, monkeypatch, "--queries", str(queries), "-k", "2")
    assert [line for line in text.splitlines() if line.startswith("#")] == ["# red circle", "# blue square"]


def test_image_upload_leaves_an_indexed_image_out_of_its_own_results(serving, monkeypatch):
    example = sorted(serving.photos.glob("*.png"))[0]
    remote = table(thin(serving, monkeypatch, "--image", str(example), "-k", "5"))
    assert [r for r, _, _ in remote] == [1, 2, 3, 4, 5]
    assert str(example) not in [p for _, _, p in remote]
    here = table(local(serving, monkeypatch, "--image", str(example), "-k", "5"))
    # the server embeds the upload; locally the stored vector answers: the same neighbours
    assert [p for _, _, p in remote][:3] == [p for _, _, p in here][:3]
    # a QUERY that is an image file uploads it too
    assert table(thin(serving, monkeypatch, str(example), "-k", "5")) == remote


def test_an_image_from_elsewhere_is_uploaded_and_embedded(serving, monkeypatch, tmp_path):
    outside = draw_image(tmp_path / "query.jpg", "red", "circle", fmt="JPEG")
    hits = table(thin(serving, monkeypatch, "--image", str(outside), "-k", "3"))
    assert len(hits) == 3 and all(str(serving.photos) in p for _, _, p in hits)  # a name not UTF-8 is quoted


def test_gallery_embeds_the_servers_thumbnails(serving, monkeypatch, tmp_path):
    page = tmp_path / "hits.html"
    paths = thin(serving, monkeypatch, "purple triangle", "-k", "4", "-f", "paths", "--gallery", str(page))
    html = page.read_text()
    assert html.count("src='data:image/jpeg;base64,") == 4
    for path in paths.split():
        assert path in html
    assert TOKEN not in html
    assert f"{serving.url}/api/images/" in html  # each thumbnail links to the server's file
    thin(serving, monkeypatch, "purple triangle", "--add", "3:red", "--subtract", "green", "--gallery", str(page))
    assert "<h2>purple triangle + 3 x red - green</h2>" in page.read_text()


@pytest.mark.parametrize("args, needle, status", [
    (["--add", "IMAGE"], "takes text only", 2),  # refused here: a bad flag value
    (["-k", "0"], "-k must be at least 1", 2),
    (["-k", "20000"], "11000 at most", 1),  # beyond what paging reaches (a -k 5000 is paged: test_api_contract)
    (["   "], "the query is empty", 2),
])
def test_bad_requests_fail_with_one_line(serving, monkeypatch, args, needle, status):
    example = str(sorted(serving.photos.glob("*.png"))[0])
    args = [example if a == "IMAGE" else a for a in args]
    if args[0] == "--add":
        args = ["red", *args]
    result = CliRunner().invoke(cli, ["search", *args, "--server", serving.url, "--token", TOKEN])
    assert result.exit_code == status, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert TOKEN not in result.output


# -- status --------------------------------------------------------------------------------


def test_status_matches_the_local_facts(serving, monkeypatch):
    remote = json.loads(thin(serving, monkeypatch, "--json", command="status"))
    here = json.loads(local(serving, monkeypatch, "--json", command="status"))
    server = remote.pop("server")
    assert here.pop("server") is None  # a local status has no server
    assert server["pid"] == serving.proc.pid and server["watching"] is False and server["version"]
    assert remote.pop("location") == str(serving.index)
    here.pop("location")
    assert remote == here
    text = thin(serving, monkeypatch, command="status")
    local_text = local(serving, monkeypatch, command="status")

    def without_location(t: str) -> list[str]:
        return [line for line in t.splitlines() if not line.startswith("index:")]

    assert without_location(text)[:-1] == without_location(local_text)
    assert text.splitlines()[-1] == f"serve:        {serving.url} (pid {serving.proc.pid}, version {server['version']})"


# -- tokens and unreachable servers, through the console script ------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], env=env, capture_output=True,
                          text=True, errors="surrogateescape", timeout=120)  # -f paths: names are bytes


def test_a_token_is_needed_and_taken_from_the_flag_or_the_environment(serving):
    env = base_env(serving.root / "thin-cache")
    refused = run_cli(["search", "red", "--server", serving.url], env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == (f"Error: clipsearch serve at {serving.url}: the server needs a token: "
                                      "--token / CLIPSEARCH_TOKEN")
    wrong = run_cli(["status", "--server", serving.url, "--token", "not-the-right-token-42"], env)
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr and "not-the-right" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    by_flag = run_cli(["search", "red", "--server", serving.url, "--token", TOKEN, "-f", "paths"], env)
    assert by_flag.returncode == 0 and len(by_flag.stdout.split()) == 10, by_flag.stderr
    by_env = run_cli(["search", "red", "-f", "paths"], {**env, "CLIPSEARCH_SERVER": serving.url + "/",
                                                          "CLIPSEARCH_TOKEN": TOKEN})
    assert by_env.returncode == 0 and by_env.stdout == by_flag.stdout, by_env.stderr
    for done in (refused, wrong, by_flag, by_env):
        assert TOKEN not in done.stdout + done.stderr


def test_a_dead_url_is_one_line():
    port = free_port()
    env = base_env(Path("/nonexistent-cache"))
    for args in (["search", "red"], ["status"]):
        done = run_cli([*args, "--server", f"http://127.0.0.1:{port}"], env)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.strip() == (f"Error: cannot reach clipsearch serve at http://127.0.0.1:{port}: "
                                       "connection refused (--server / CLIPSEARCH_SERVER)")


def test_a_url_that_is_not_serve_is_one_line():
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):  # another service answering JSON to everything
        def do_GET(self):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        for args in (["search", "red"], ["status"]):
            done = run_cli([*args, "--server", url], base_env(Path("/nonexistent-cache")))
            assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
            assert "is it clipsearch serve?" in done.stderr and "Traceback" not in done.stderr
    finally:
        other.shutdown()


def test_an_index_flag_beats_the_exported_server_and_is_said_ignored_beside_the_server_flag(serving, tmp_path):
    """Flags win over environment variables: --index (or --collection) with
    CLIPSEARCH_SERVER exported works on that index here; beside --server it is ignored,
    and said so (a script passing one flag set to every command still works)."""
    env = {**base_env(serving.root / "thin-cache"), "CLIPSEARCH_SERVER": serving.url, "CLIPSEARCH_TOKEN": TOKEN}
    elsewhere = tmp_path / "laptop-index"
    local = run_cli(["status", "--json", "--index", str(elsewhere)], env)
    assert local.returncode == 0, local.stderr
    facts = json.loads(local.stdout)
    assert facts["location"] == str(elsewhere) and facts["exists"] is False and facts["server"] is None
    served = run_cli(["status", "--json"], env)
    assert json.loads(served.stdout)["server"]["pid"] == serving.proc.pid  # without the flag: the server
    both = run_cli(["status", "--json", "--server", serving.url, "--index", str(elsewhere), "-c", "other"], env)
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["server"]["pid"] == serving.proc.pid
    assert both.stderr.strip() == ("clipsearch: --index and --collection are ignored with --server: the server "
                                   "answers from the index it holds")


@pytest.mark.parametrize("given", ["http://nas:8765/login?token=SECRET-TOKEN-0123456789",
                                   "http://anna:SECRET-PASSWORD@nas:8765", "http://nas:8765/clipsearch"])
def test_a_server_url_that_is_not_the_address_alone_is_refused_without_its_secrets(given):
    """serve's login link pasted whole, or a URL with user:password: refused before any
    request, naming the variable or flag, quoting neither the token nor the password."""
    for args, env in ((["search", "red", "--server", given], {}), (["duplicates"], {"CLIPSEARCH_SERVER": given})):
        done = run_cli(args, {**base_env(Path("/nonexistent-cache")), **env})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "SECRET" not in done.stderr, done.stderr
        assert "is not serve's address alone" in done.stderr


def test_the_thin_path_imports_no_model_index_or_numpy(serving):
    env = {**base_env(serving.root / "thin-cache"), "CLIPSEARCH_SERVER": serving.url, "CLIPSEARCH_TOKEN": TOKEN}
    code = ("import sys, json\n"
            "from clipsearch.cli import cli\n"
            "cli.main(sys.argv[1:], prog_name='clipsearch', standalone_mode=False)\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    for args in (["search", "red circle", "-k", "3"], ["status", "--json"], ["duplicates", "-q"],
                 ["search", "--image", str(sorted(serving.photos.glob("*.png"))[0])]):
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() or args[0] == "duplicates"  # this library has no duplicates to print
        modules = json.loads(done.stderr.strip().splitlines()[-1])
        loaded = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
        assert loaded == [], f"{args}: {loaded}"


# -- the local commands while serve holds the index -------------------------------------------


@pytest.mark.parametrize("args", [["search", "red"], ["status"], ["duplicates"],
                                  ["ingest", "PHOTOS", "--workers", "0"]],
                         ids=["search", "status", "duplicates", "ingest"])
def test_local_commands_on_a_served_index_name_the_server(serving, args):
    args = [str(serving.photos) if a == "PHOTOS" else a for a in args]
    env = base_env(serving.local_cache)
    done = run_cli([*args, "--index", str(serving.index), "--model", str(serving.model)], env)
    assert done.returncode == 75, done.stderr  # busy: held by serve
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"held by `clipsearch serve` (pid {serving.proc.pid})" in lines[0]
    assert f"--server {serving.url}" in lines[0]
    assert "search it, see its status or find duplicates with --server" in lines[0]
    assert "to ingest, reindex or migrate, stop serve first" in lines[0]  # no --server there


@pytest.mark.parametrize(("k", "offset"), [(10_500, 500), (10_999, 1), (11_000, 0), (10, 10_000), (1_000, 9_000)])
def test_the_thin_clients_pages_stay_within_the_servers_limits(k, offset):
    """Every page the client asks for is one the server answers (k <= 1000, offset <=
    10000), whenever offset + k is within what paging reaches: full pages first asked
    for offsets past 10000."""
    from clipsearch.remote import SERVE_MAX_K, SERVE_MAX_OFFSET, ServeClient

    asked = []

    def page(count, skip):
        assert count <= SERVE_MAX_K and skip <= SERVE_MAX_OFFSET, (count, skip)
        asked.append((count, skip))
        return {"hits": [{"rank": skip + i + 1, "score": 0.5, "path": f"/p/{skip + i}.jpg", "id": str(skip + i)}
                         for i in range(count)]}

    hits = ServeClient("http://127.0.0.1:9", tell=lambda _: None)._paged(page, k, offset)
    assert [hit.rank for hit in hits] == list(range(offset + 1, offset + k + 1))
    assert sum(count for count, _ in asked) == k


def test_the_thin_client_refuses_an_offset_past_the_servers_before_asking():
    from clipsearch.remote import ServeClient

    with pytest.raises(ClipsearchError, match="offset 10001 is beyond"):
        ServeClient("http://127.0.0.1:9", tell=lambda _: None)._paged(lambda count, skip: pytest.fail(), 5, 10_001)
