"""minigpt/files.py: file names as the user reads them."""

from __future__ import annotations

from minigpt.files import relative_name


def test_relative_name_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert relative_name(tmp_path / "runs" / "a") == "runs/a"
    assert relative_name("runs/a") == "runs/a"
    assert relative_name(tmp_path.parent / "elsewhere") == "../elsewhere"
