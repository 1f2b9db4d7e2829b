"""What a script (cron, a service, jq) reads from clipsearch: exit status 2 for every bad
value of a flag, whichever check catches it; one encoding of a file name that is not
UTF-8 in every JSON output (`path_bytes`, base64); JSON outputs whose keys are always
there; an ingest stopped by a signal still printing its --json summary; and the Python
API naming a wrong argument instead of failing deep inside."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch import IngestOptions, ingest
from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.errors import UsageError
from clipsearch.index.commands import STATUS_KEYS
from clipsearch.names import shown as shown_name

from support import draw_collection, draw_image

LATIN1 = os.fsdecode(b"caf\xe9.png")  # a name from an old archive: not UTF-8


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_dir):
    """An index of 6 drawn photos, one of them byte-identical to a copy named in Latin-1."""
    root = tmp_path_factory.mktemp("scripting")
    photos = root / "photos"
    draw_collection(photos, 6)
    shutil.copyfile(photos / "000-red-circle.png", photos / LATIN1)
    index = root / os.fsdecode(b"idx\xffb")  # the index folder's name is not UTF-8 either
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        settings = Settings.resolve(model=str(tiny_model_dir), index=str(index))
        ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    return {"photos": photos, "settings": settings, "args": ["--index", str(index), "--model", str(tiny_model_dir)],
            "cache": str(root / "cache")}


def invoke(library, *args: str):
    return CliRunner().invoke(cli, [*args, *library["args"]], env={"CLIPSEARCH_CACHE_DIR": library["cache"]})


# -- exit status 2: a flag value clipsearch's own checks refuse ---------------------------------


@pytest.mark.parametrize("args", [
    ["search", "a cat", "-k", "0"],
    ["search", "a cat", "--after", "2023-13"],
    ["search", "a cat", "--after", "2024", "--before", "2023"],
    ["search", "a cat", "--near", "1,2"],
    ["search", "a cat", "--camera", "--"],
    ["search", "a cat", "--add", "0:dog"],
    ["search", "a cat", "--subtract", "1e300:people"],
    ["search", "   "],
    ["search", "a cat", "--queries", "-"],
    ["duplicates", "--similar", "2"],
    ["status", "--check", "--server", "http://127.0.0.1:9"],
    ["reindex"],
    ["migrate", "--to", ""],
], ids=lambda args: " ".join(args))
def test_a_bad_flag_value_exits_2_as_a_value_of_the_wrong_type_does(args, tmp_path):
    """Checked before any index opens (there is none here): a script tells "I called it
    wrongly" from "it failed" by the status alone, as for `-k abc`."""
    result = CliRunner().invoke(cli, [*args, "--index", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output


@pytest.mark.parametrize("args, message", [
    (["search", "a cat", "-k", "abc"], "Error: Invalid value for '-k' / '--top': 'abc' is not a valid integer range."),
    (["search", "a cat", "--bogus"], "Error: No such option '--bogus'."),
    (["ingest"], "Error: Missing argument 'FOLDERS...'."),
    (["serach", "a cat"], "Error: No such command 'serach'."),
    (["--bogus"], "Error: No such option '--bogus'."),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_what_click_refuses_is_one_line_too_with_the_help_to_read(args, message):
    """README: every message on stderr is one line; click put the usage and a hint
    above it."""
    result = CliRunner().invoke(cli, args, prog_name="clipsearch")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(message), result.output
    command = "clipsearch" if args[0] in ("serach", "--bogus") else f"clipsearch {args[0]}"
    assert result.output.rstrip().endswith(f"(see '{command} --help')"), result.output


@pytest.mark.parametrize("args", [
    ["search", "a cat"],  # the index
    ["search", "a cat", "--subtract", "gone.jpg"],
    ["search", "--image", "nosuch.png"],
    ["search", "a cat", "--gallery", "/nonexistent/page.html"],
], ids=lambda args: " ".join(args))
def test_what_a_value_names_missing_here_still_exits_1(args, tmp_path):
    """As a missing index: the same command may work once the drive is mounted."""
    result = CliRunner().invoke(cli, [*args, "--index", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output


def test_a_bad_flag_value_over_a_server_exits_2(tmp_path):
    """search --server checks its flags itself (it imports no engine)."""
    example = draw_image(tmp_path / "example.png")
    for args in (["-k", "0"], ["--add", str(example)]):
        result = CliRunner().invoke(cli, ["search", "a cat", "--server", "http://127.0.0.1:9", *args])
        assert result.exit_code == 2, result.output


# -- one encoding of a name that is not UTF-8 ------------------------------------------------


def name_of(entry: dict) -> bytes:
    """The name's bytes as a reader other than Python gets them from a JSON entry."""
    return base64.b64decode(entry["path_bytes"]) if "path_bytes" in entry else entry["path"].encode()


def test_search_json_gives_path_bytes_for_a_name_that_is_not_utf8(library):
    result = invoke(library, "search", "a red circle", "-k", "20", "-f", "json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    wanted = os.fsencode(str(library["photos"] / LATIN1))
    (latin1,) = [hit for hit in hits if "path_bytes" in hit]
    assert name_of(latin1) == wanted
    assert latin1["path"] == os.fsdecode(wanted)  # `path` itself as it is documented: \udcXX
    assert sorted(name_of(hit) for hit in hits) == sorted(os.fsencode(str(p)) for p in library["photos"].iterdir())


def test_search_queries_json_gives_path_bytes_too(library, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("a red circle\na blue square\n")
    result = invoke(library, "search", "--queries", str(queries), "-k", "20", "-f", "json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    for hits in answers.values():
        assert [name_of(hit) for hit in hits if "path_bytes" in hit] == [os.fsencode(str(library["photos"] / LATIN1))]


def test_duplicates_json_gives_path_bytes_too(library):
    result = invoke(library, "duplicates", "-f", "json")
    assert result.exit_code == 0, result.output
    (group,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(name_of(entry) for entry in group["files"]) == sorted(
        os.fsencode(str(library["photos"] / name)) for name in ("000-red-circle.png", LATIN1))
    assert all(set(entry) >= {"path", "id", "size", "score"} for entry in group["files"])


def test_status_check_quotes_an_index_path_that_is_not_utf8_as_status_does(library):
    checked = invoke(library, "status", "--check")
    shown = invoke(library, "status")
    assert checked.exit_code == 0 and shown.exit_code == 0, checked.output + shown.output
    quoted = shown_name(library["settings"].index)
    assert quoted.startswith("$'") and quoted.endswith("idx\\xffb'")
    assert f"index:        {quoted}" in shown.stdout
    assert checked.stdout.splitlines()[-1] == f"collection 'images' at {quoted}: healthy"


# -- JSON outputs' keys ----------------------------------------------------------------------


def test_status_json_has_every_key_and_names_the_index_as_status_check_does(library, tmp_path):
    printed = invoke(library, "status", "--json").stdout
    facts = json.loads(printed)
    # The index's name is not UTF-8: JSON has it as text and its bytes beside, as a hit's path.
    assert list(facts) == [*STATUS_KEYS, "location_bytes"]
    assert "\\udc" not in printed and facts["location"].endswith("idx\\xffb")
    assert base64.b64decode(facts["location_bytes"]) == os.fsencode(library["settings"].index)
    assert facts["model"]["precision"] == "fp32" and facts["versions"] == [] and facts["layout"] is None
    checked = json.loads(invoke(library, "status", "--check", "--json").stdout)
    assert set(checked) == {"location", "location_bytes", "collection", "healthy", "findings"}
    assert checked["location"] == facts["location"] and checked["location_bytes"] == facts["location_bytes"]
    assert checked["healthy"] is True
    missing = CliRunner().invoke(cli, ["status", "--json", "--index", str(tmp_path / "none")])
    assert list(json.loads(missing.stdout)) == list(STATUS_KEYS)


def test_ingest_json_says_it_was_not_stopped(tmp_path, tiny_model_dir):
    draw_collection(tmp_path / "photos", 2)
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(tmp_path / "index"),
                                      "--model", str(tiny_model_dir), "-w", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stopped"] is None and summary["embedded"] == 2 and summary["not_pruned"] is None
    assert summary["error"] is None


# -- an ingest stopped by a signal -----------------------------------------------------------


def _stopped_after_8(command: list[str], env: dict, signum: int) -> str:
    """Run `command` (a writer with --json and a progress line) until it has embedded 8
    images, send it `signum`, and return its stdout once it has ended with 128 + signum."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("found") and int(line.split("embedded ")[1].split(",")[0]) >= 8
                  for line in list(lines)):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    process.send_signal(signum)
    assert _ended(process, lines) == 128 + signum, "".join(lines)
    return process.stdout.read()  # type: ignore[union-attr]


def _ended(process: subprocess.Popen, lines: list[str], timeout: float = 120) -> int:
    """The exit status of a command told to stop; one that hangs (its pool's shutdown
    waiting on a lock) is killed with its group and fails the test, not the whole run.
    Its summary is small: waiting before reading stdout cannot block it."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError("the stopped command hung; its stderr ends:\n" + "".join(lines[-20:])) from None


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_ingest_prints_its_partial_summary_as_json(tmp_path, tiny_model_dir, signum):
    """A service reading --json learns what was kept, then the status says it stopped."""
    photos = tmp_path / "photos"
    files = draw_collection(photos, 600)  # enough that the signal comes before the last one
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_CACHE_DIR=str(tmp_path / "cache"),
               CLIPSEARCH_PROGRESS_SECONDS="0.1", HF_HUB_OFFLINE="1")
    index = str(tmp_path / "index")
    stdout = _stopped_after_8([sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index", index,
                               "--json", "--batch-size", "4", "--workers", "1"], env, signum)
    summary = json.loads(stdout)
    assert summary["stopped"] == signal.Signals(signum).name
    assert 8 <= summary["embedded"] < len(files), summary
    status = subprocess.run([sys.executable, "-m", "clipsearch.cli", "status", "--index", index, "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert json.loads(status.stdout)["points"] == summary["embedded"]


@pytest.mark.slow
def test_a_stopped_reindex_prints_its_partial_summary_as_json_and_resumes(tmp_path, tiny_model_dir):
    """As ingest's: what the new version holds so far, `stopped` the signal's name."""
    photos = tmp_path / "photos"
    files = draw_collection(photos, 400)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_CACHE_DIR=str(tmp_path / "cache"),
               CLIPSEARCH_PROGRESS_SECONDS="0.1", HF_HUB_OFFLINE="1")
    index = str(tmp_path / "index")
    subprocess.run([sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index", index, "-q"], env=env,
                   check=True, timeout=300)
    # int8 vectors are other vectors: the same model re-embeds every image
    reindex = [sys.executable, "-m", "clipsearch.cli", "reindex", "--model", str(tiny_model_dir), "--index", index,
               "--precision", "int8", "--json", "--batch-size", "4", "--workers", "1"]
    stdout = _stopped_after_8(reindex, env, signal.SIGTERM)
    summary = json.loads(stdout)
    assert summary["stopped"] == "SIGTERM" and summary["switched"] is False
    assert 8 <= summary["embedded"] < len(files), summary

    finished = subprocess.run(reindex, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    done = json.loads(finished.stdout)
    assert done["stopped"] is False and done["switched"] is True
    assert done["resumed"] >= summary["embedded"] and done["resumed"] + done["embedded"] == len(files), done


def test_a_stop_with_its_summary_is_printed_as_json_before_the_cli_exits(tmp_path, tiny_model_dir, monkeypatch):
    """The CLI's side, whatever stopped the pipeline: a Terminated that carries the run's
    summary (ingest/pipeline.py attaches it) comes out as JSON, exit 143."""
    from clipsearch.errors import Terminated
    from clipsearch.ingest import pipeline

    def stopped(*args, **kwargs):
        stop = Terminated(signal.SIGTERM)
        stop.summary = pipeline.IngestSummary(found=9, embedded=4, seconds=1.5)  # type: ignore[attr-defined]
        raise stop

    monkeypatch.setattr(pipeline, "ingest", stopped)
    draw_image(tmp_path / "photos" / "a.png")
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(tmp_path / "index"),
                                      "--json"])
    assert result.exit_code == 143, result.output
    summary = json.loads(result.stdout)
    assert summary["stopped"] == "SIGTERM" and summary["embedded"] == 4


# -- the Python API's arguments --------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    ({"query": b"a dog"}, "query= must be text (str); a file name as bytes goes to image=, got bytes"),
    ({"query": 123}, "query= must be text (str), got int"),
    ({"query": ["a", "b"]}, "query= must be text (str), got list"),
    ({"query": "a dog", "k": "5"}, "k= must be an int, got str"),
    ({"query": "a dog", "k": 2.0}, "k= must be an int, got float"),
    ({"query": "a dog", "min_score": "x"}, "min_score= must be a number, got str"),
    ({"query": "a dog", "settings": {"index": "x"}}, "settings= must be a clipsearch Settings"),
    ({"query": "a dog", "add": b"sunset"}, "add= must be a term (str) or a list of terms, got bytes"),
    ({"query": "a dog", "subtract": [1]}, "subtract= must be a term (str) or a list of terms, got list"),
    ({"query": "a dog", "under": 5}, "under= must be a path (str, bytes or os.PathLike), got int"),
    ({"query": "a dog", "where": "2023"}, "where= must be a clipsearch.index.where.Where, got str"),
])
def test_search_names_an_argument_of_the_wrong_type(arguments, message):
    from clipsearch.search import search

    with pytest.raises(TypeError) as raised:
        search(**arguments)
    assert str(raised.value) == f"search(): {message}" or str(raised.value).startswith(f"search(): {message}")


@pytest.mark.parametrize("arguments, message", [
    ({"k": 0}, "k must be at least 1, got 0"),
    ({"min_score": float("nan")}, "min_score=nan is not a finite number"),
])
def test_search_refuses_a_value_out_of_range_as_a_usage_error(arguments, message):
    from clipsearch.search import search

    with pytest.raises(UsageError, match=message):
        search("a dog", **arguments)


def test_search_takes_an_image_path_as_bytes(library):
    from clipsearch.search import search

    example = os.fsencode(str(library["photos"] / LATIN1))
    hits = search(image=example, k=3, settings=library["settings"])
    assert len(hits) == 3 and all(os.fsencode(hit.path) != example for hit in hits)
    assert search(image=Path(os.fsdecode(example)), k=3, settings=library["settings"]) == hits


@pytest.mark.parametrize("call, message", [
    (lambda s: s.text(b"a dog"), "Searcher.text(): query= must be text (str), got bytes"),
    (lambda s: s.text(123), "Searcher.text(): query= must be text (str), got int"),
    (lambda s: s.text("a dog", k="5"), "Searcher.text(): k= must be an int, got str"),
    (lambda s: s.text("a dog", where="2023"),
     "Searcher.text(): where= must be a clipsearch.index.where.Where, got str"),
    (lambda s: s.text("a dog", min_score="0.2"), "Searcher.text(): min_score= must be a number, got str"),
    (lambda s: s.text("a dog", under=3), "Searcher: under= must be a path (str, bytes or os.PathLike), got int"),
])
def test_a_searcher_names_an_argument_of_the_wrong_type(library, call, message):
    """As search() does: what a web form sends goes to Searcher.text(), unchecked until now."""
    from clipsearch import QueryEncoders, Searcher, open_index

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPSEARCH_CACHE_DIR", library["cache"])
        encoder = QueryEncoders(library["settings"]).get()
        with pytest.raises(TypeError) as caught:
            Searcher(encoder, None)
        assert str(caught.value) == ("Searcher(): index= must be an open clipsearch index (open_index(settings)), "
                                     "got NoneType")
        with open_index(library["settings"]) as index:
            searcher = Searcher(encoder, index)
            with pytest.raises(TypeError) as caught:
                call(searcher)
            assert str(caught.value) == message
            assert len(searcher.text("a dog", k=2, under=os.fsencode(str(library["photos"])))) == 2
            example = str(library["photos"] / "000-red-circle.png")
            assert len(searcher.image(example, k=2)) == 2  # a method still (an edit once nested it away)


@pytest.mark.parametrize("command", [["search", "a red circle", "-k", "6", "-f", "paths"], ["duplicates"],
                                     ["status", "--json"]])
def test_a_reader_that_closed_the_pipe_early_leaves_exit_status_141(library, command):
    """`clipsearch search ... | head -1`: 141, as SIGPIPE ends a Unix tool, and no line
    on stderr (click said 1, a failure with no message). Not 0: the command did not
    finish (status --check's own 1 was still to come)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write meets EPIPE
    env = {**os.environ, "CLIPSEARCH_CACHE_DIR": library["cache"], "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "clipsearch.cli", *command, *library["args"]], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "Error" not in done.stderr and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_a_closed_stderr_is_no_reason_to_stop_quietly(tmp_path, tiny_model_dir):
    """The EPIPE that means "the reader is done" is stdout's alone: a line for a dead
    stderr (a warning before the work) leaves the command's own failure, exit 1."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "CLIPSEARCH_BATCHSIZE": "8", "HF_HUB_OFFLINE": "1"}  # misspelt: a warning first
    try:
        done = subprocess.run([sys.executable, "-m", "clipsearch.cli", "ingest", str(tmp_path / "nowhere"),
                               "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir)],
                              stdout=subprocess.PIPE, stderr=write, env=env, timeout=300)
    finally:
        os.close(write)
    assert done.returncode not in (0, 141), done.returncode
