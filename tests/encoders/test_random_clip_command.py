"""The README offers `python -m clipsearch.testing.random_clip FOLDER` for a dry run:
it must never delete a folder of someone's files because they named it."""

from __future__ import annotations

import json

import pytest

from clipsearch.testing.random_clip import main


def test_it_refuses_a_folder_that_holds_anything_unless_told_to_replace_it(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.txt").write_text("years of work")
    with pytest.raises(SystemExit) as refused:
        main([str(folder)])
    assert refused.value.code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (folder / "chapter1.txt").read_text() == "years of work"

    with pytest.raises(SystemExit):
        main([str(tmp_path / "model"), "huge"])  # an unknown size is a usage error, not a KeyError
    assert not (tmp_path / "model").exists()

    main([str(folder), "--replace"])
    assert not (folder / "chapter1.txt").exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "clip"
    main([str(tmp_path / "empty-is-fine")])
    assert (tmp_path / "empty-is-fine" / "config.json").is_file()
