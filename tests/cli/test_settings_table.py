"""One settings table (clipsearch/config.py): every variable the program reads is
declared there, read through it, documented from it, and a bad value is one line
naming the variable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipsearch import config
from clipsearch.cli import cli
from clipsearch.config import BY_NAME, SETTINGS, Settings
from clipsearch.errors import ClipsearchError
from clipsearch.options import SettingOption

from support import ROOT, draw_collection

PACKAGE_DIRS = ("clipsearch", "ingest", "search", "finetune", "serve")
OURS = re.compile(r"^(CLIPSEARCH_|QDRANT_)")


def package_modules() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


def declared_variables() -> set[str]:
    return {variable for setting in SETTINGS for variable in setting.env}


def env_reads(tree: ast.AST) -> list[tuple[int, str | None]]:
    """(line, key or None when not a constant) of each os.environ/os.getenv read."""
    reads = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv",
                                                                        "os.environ.setdefault"):
            key = node.args[0] if node.args else None
        else:
            continue
        reads.append((node.lineno, key.value if isinstance(key, ast.Constant) else None))
    return reads


def test_every_clipsearch_variable_named_in_the_code_is_in_the_table():
    declared = declared_variables()
    undeclared = []
    for path in package_modules():
        for name in set(re.findall(r"\bCLIPSEARCH_[A-Z0-9_]+\b", path.read_text())):
            if name not in declared and name not in config.COMPOSE_VARIABLES:
                undeclared.append(f"{path.relative_to(ROOT)}: {name}")
    assert not undeclared, f"declare these in clipsearch/config.py SETTINGS: {undeclared}"


def test_no_module_but_the_table_reads_our_variables():
    offenders = []
    for path in package_modules():
        if path == ROOT / "clipsearch" / "config.py":
            continue
        for line, key in env_reads(ast.parse(path.read_text())):
            if key is not None and OURS.match(key):
                offenders.append(f"{path.relative_to(ROOT)}:{line} reads {key}")
    assert not offenders, f"read settings through clipsearch.config: {offenders}"


def test_the_scan_catches_a_raw_read():
    """The check above is not vacuous: it sees each way of reading the environment."""
    sample = ast.parse("import os\nos.environ.get('CLIPSEARCH_X')\nos.environ['QDRANT_URL']\n"
                       "os.getenv('CLIPSEARCH_Y')\n")
    assert [key for _, key in env_reads(sample)] == ["CLIPSEARCH_X", "QDRANT_URL", "CLIPSEARCH_Y"]


def test_every_flag_of_the_table_is_a_cli_option_with_its_help():
    """Each setting with a flag is an option of some command, built from the table:
    its parameter has the setting's name, its help names the variables, and it passes
    None when absent so that the environment and then the default apply."""
    from_table: dict[str, list[click.Option]] = {}
    for command in cli.commands.values():
        for param in command.params:
            if isinstance(param, SettingOption):
                assert param.name == param.setting.name
                from_table.setdefault(param.name, []).append(param)
    for setting in SETTINGS:
        if setting.flag is None:
            continue
        assert setting.name in from_table, f"{setting.name}: no command has {setting.flag} from the table"
        for param in from_table[setting.name]:
            assert setting.flag in param.opts or setting.flag in param.secondary_opts or setting.name == "model"
            assert all(variable in param.help for variable in setting.env), param.help
            assert param.default is None


@pytest.mark.parametrize("variable, bad", [
    ("CLIPSEARCH_BATCH_SIZE", "abc"), ("CLIPSEARCH_BATCH_SIZE", "0"), ("CLIPSEARCH_WORKERS", "-1"),
    ("CLIPSEARCH_MAX_MEGAPIXELS", "lots"), ("CLIPSEARCH_SHARD", "3/2"), ("CLIPSEARCH_GRPC", "maybe"),
    ("CLIPSEARCH_GRPC_PORT", "70000"), ("CLIPSEARCH_RETRY_SECONDS", "soon"), ("CLIPSEARCH_DEVICE", "gpu"),
    ("CLIPSEARCH_FAST_PATH", "perhaps"), ("CLIPSEARCH_QUERY_CACHE", "2"), ("CLIPSEARCH_KNOWN_BAD", "x"),
    ("CLIPSEARCH_PROGRESS_SECONDS", "-1"),
])
def test_a_bad_value_is_one_line_naming_the_variable(variable, bad):
    setting = next(s for s in SETTINGS if variable in s.env)
    with pytest.raises(ClipsearchError) as caught:
        config.value(setting.name, env={variable: bad})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{variable}={bad!r} ")


@pytest.mark.parametrize("variable, bad, args", [
    ("CLIPSEARCH_BATCH_SIZE", "abc", ["ingest", "."]),
    ("CLIPSEARCH_GRPC", "maybe", ["status"]),
    ("CLIPSEARCH_DEVICE", "gpu", ["search", "x"]),
])
def test_the_cli_reports_a_bad_variable_in_one_line(tmp_path, variable, bad, args):
    result = CliRunner().invoke(cli, args + ["--index", str(tmp_path / "idx")], env={variable: bad})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and variable in lines[0], result.output
    assert "Traceback" not in result.output


def test_flags_win_over_the_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_COLLECTION", "from-env")
    monkeypatch.setenv("CLIPSEARCH_GRPC_PORT", "7000")
    settings = Settings.resolve(collection="from-flag", index=":memory:")
    assert (settings.collection, settings.grpc_port, settings.retry_seconds) == ("from-flag", 7000, 30.0)
    monkeypatch.setenv("CLIPSEARCH_INDEX", "")  # empty counts as unset: QDRANT_URL is next
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.example:6333")
    assert Settings.resolve().index == "http://qdrant.example:6333"
    assert config.value("batch_size", 7) == 7 and config.value("batch_size") == BY_NAME["batch_size"].default


def test_a_bad_flag_is_refused_by_the_same_parser(tmp_path):
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path), "--shard", "5/2", "--index", str(tmp_path / "i")])
    assert result.exit_code == 2 and "--shard" in result.output and "I/N" in result.output


def test_an_empty_flag_counts_as_not_given(tmp_path, tiny_model_dir):
    """`--shard "$SHARD"` with SHARD unset takes every file, as an empty variable would."""
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--shard", "", "--index", str(tmp_path / "i"),
                                      "--model", str(tiny_model_dir), "-w", "0", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert '"embedded": 3' in result.output


@pytest.mark.parametrize("flag", ["--index", "--collection", "--model", "--server", "--token"])
def test_an_empty_flag_naming_a_place_is_refused(tmp_path, monkeypatch, flag):
    """`--index "$IDX"` with IDX unset fell back to the environment's or the default
    index: an ingest wrote to another index than the one meant."""
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "meant-elsewhere"))
    command = ["search", "x"] if flag in ("--server", "--token") else ["ingest", str(tmp_path)]
    result = CliRunner().invoke(cli, [*command, flag, ""])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output and "is empty: give a value" in result.output
    assert not (tmp_path / "meant-elsewhere").exists()


def test_a_collection_name_with_a_line_break_is_refused_and_status_quotes_an_odd_index(tmp_path):
    refused = CliRunner().invoke(cli, ["status", "--index", str(tmp_path / "i"), "--collection", "a\nfake: 1"])
    assert refused.exit_code == 2 and "collection name 'a\\nfake: 1' is not valid" in refused.output
    odd = tmp_path / "index\nfake:        1"
    shown = CliRunner().invoke(cli, ["status", "--index", str(odd)])
    assert shown.exit_code == 0, shown.output
    assert f"index:        $'{tmp_path}/index\\nfake:        1'" in shown.output.splitlines()


def test_a_numbered_cuda_device_is_a_valid_flag(tmp_path):
    ok = CliRunner().invoke(cli, ["status", "--device", "cuda:1", "--index", str(tmp_path / "i")])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["status", "--device", "gpu", "--index", str(tmp_path / "i")])
    assert bad.exit_code == 2 and "--device" in bad.output and "cuda:N" in bad.output


def test_zero_retry_seconds_means_no_retries():
    assert Settings.resolve(env={"CLIPSEARCH_RETRY_SECONDS": "0"}, index=":memory:").retry_seconds == 0.0


def test_a_misspelt_variable_is_named_in_a_warning_and_the_rest_are_quiet(tmp_path):
    draw_collection(tmp_path / "photos", 1)
    env = {"CLIPSEARCH_INDX": str(tmp_path / "meant"), "CLIPSEARCH_FROBNICATE": "1",
           "CLIPSEARCH_COLLECTION": "images", "CLIPSEARCH_PHOTOS": str(tmp_path / "photos")}
    result = CliRunner().invoke(cli, ["status", "--index", str(tmp_path / "index")], env=env)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: CLIPSEARCH_FROBNICATE is not a clipsearch setting: ignored",
        "warning: CLIPSEARCH_INDX is not a clipsearch setting (did you mean CLIPSEARCH_INDEX?): ignored"]


def test_the_variables_docker_compose_reads_are_known_as_not_settings():
    """A user exports CLIPSEARCH_PHOTOS for compose: it is no typo, and warns of none."""
    read = set()
    for compose in ROOT.glob("docker-compose*.yml"):
        read |= set(re.findall(r"\$\{(CLIPSEARCH_[A-Z0-9_]+)", compose.read_text()))
    assert read - declared_variables() == config.COMPOSE_VARIABLES
