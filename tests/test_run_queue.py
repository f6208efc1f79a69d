"""minigpt/studies/run_queue.py: the studies' runs as processes, a few at a time."""

import sys

import pytest

from minigpt.errors import UserError
from minigpt.studies.run_queue import train_queue


def fake_python(tmp_path, status_by_folder: dict[str, int]):
    """A stand-in for the interpreter: records its command line, exits with the folder's status."""
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\nimport sys, json\n"
                      f"status = {status_by_folder!r}\n"
                      "folder = [a for a in sys.argv if a.startswith('hydra.run.dir=')][0].split('/')[-1]\n"
                      "print(json.dumps(sys.argv[1:]))\nsys.exit(status[folder])\n")
    script.chmod(0o755)
    return str(script)


def test_every_run_is_trained_its_output_kept_and_an_unfinished_folder_overwritten(tmp_path):
    python = fake_python(tmp_path, {"a": 0, "b": 3, "c": 0})
    (tmp_path / "runs" / "c").mkdir(parents=True)  # an unfinished run: trained again from the start
    runs = [(name, tmp_path / "runs" / name, [f"seed={i}"]) for i, name in enumerate("abc")]
    logged = []
    seconds = train_queue(runs, jobs=2, python=python, ok_status=(0, 3), poll_s=0.01,
                          log=lambda label, command: logged.append(label))
    assert sorted(seconds) == ["a", "b", "c"] and logged == ["a", "b", "c"]
    a = (tmp_path / "runs" / "a.log").read_text()
    assert '"seed=0"' in a and '"trainer.progress=false"' in a and "overwrite" not in a
    assert '"trainer.overwrite=true"' in (tmp_path / "runs" / "c.log").read_text()


def test_a_failed_run_is_one_line_naming_its_log(tmp_path):
    python = fake_python(tmp_path, {"a": 0, "b": 3})
    runs = [(name, tmp_path / name, []) for name in "ab"]
    with pytest.raises(UserError, match=r"run b failed \(exit 3\); see .*b\.log"):
        train_queue(runs, jobs=1, python=python, poll_s=0.01)  # 3 is not accepted unless asked
