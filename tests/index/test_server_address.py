"""A server's address given without http:// (`--index qdrant:6333`, QDRANT_URL or
CLIPSEARCH_INDEX likewise) is refused in one line naming where it came from, instead of
becoming a new embedded index folder of that name in the current directory."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli

from support import draw_collection


@pytest.mark.parametrize("given", ["--index", "QDRANT_URL", "CLIPSEARCH_INDEX"])
@pytest.mark.parametrize("address", ["qdrant-server:6333", "10.0.0.5:6333", "[::1]:6333"])
def test_a_host_and_port_without_http_is_refused_naming_where_it_came_from(tmp_path, monkeypatch, tiny_model_dir,
                                                                         given, address):
    monkeypatch.chdir(tmp_path)
    draw_collection(tmp_path / "photos", 2)
    args = ["ingest", "photos", "--model", str(tiny_model_dir), "--workers", "0", "-q"]
    if given == "--index":
        args += ["--index", address]
    else:
        monkeypatch.setenv(given, address)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert f"{given} {address!r} looks like a server's HOST:PORT" in line and f"give http://{address}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no index folder made


def test_a_folder_that_bears_such_a_name_is_an_index_still(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    draw_collection(tmp_path / "photos", 2)
    (tmp_path / "backup:2024").mkdir()
    common = ["--model", str(tiny_model_dir), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, ["ingest", "photos", "--index", "backup:2024", *common]).exit_code == 0
    made = CliRunner().invoke(cli, ["ingest", "photos", "--index", "./new:2024", *common])
    assert made.exit_code == 0 and (tmp_path / "new:2024").is_dir()  # the way to a new one, as the line says


def test_migrate_names_its_own_flag_for_a_host_and_port(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    draw_collection(tmp_path / "photos", 2)
    index = str(tmp_path / "index")
    common = ["--model", str(tiny_model_dir), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, ["ingest", "photos", "--index", index, *common]).exit_code == 0
    result = CliRunner().invoke(cli, ["migrate", "--index", index, "--to", "qdrant:6333"])
    assert result.exit_code == 2 and "--to 'qdrant:6333' looks like a server's HOST:PORT" in result.output
    assert not (tmp_path / "qdrant:6333").exists()
